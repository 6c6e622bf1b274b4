"""The mongo image's first-start interface for SecantusDB.

On an empty data directory, starts the server without authentication on loopback, creates
MONGO_INITDB_ROOT_USERNAME with MONGO_INITDB_ROOT_PASSWORD(_FILE) (role root), runs
/docker-entrypoint-initdb.d/*.js with mongosh as that user, stops it, then serves with
SCRAM authentication required. `ping` as first argument checks health.
"""
import glob
import os
import subprocess
import sys
import time

from urllib.parse import quote

import pymongo

DATA = "/data/db"
SERVER = "/opt/secantus/bin/secantusd-py"
MARKER = os.path.join(DATA, ".initdb-done")


def password():
    path = os.environ.get("MONGO_INITDB_ROOT_PASSWORD_FILE")
    if path:
        with open(path) as f:
            return f.read().strip()
    return os.environ.get("MONGO_INITDB_ROOT_PASSWORD", "")


def wait_ready(client, seconds=60):
    deadline = time.time() + seconds
    while True:
        try:
            client.admin.command("ping")
            return
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def initdb(user):
    proc = subprocess.Popen([SERVER, "--host", "127.0.0.1", "--port", "27018", "--storage-path", DATA])
    try:
        client = pymongo.MongoClient("mongodb://127.0.0.1:27018/", serverSelectionTimeoutMS=2000)
        wait_ready(client)
        client.admin.command("createUser", user, pwd=password(), roles=[{"role": "root", "db": "admin"}])
        print(f"init: created root user {user}", flush=True)
        for script in sorted(glob.glob("/docker-entrypoint-initdb.d/*.js")):
            print(f"init: running {script}", flush=True)
            # The password goes in the URL, as the mongo image passes it on mongosh's command line.
            url = f"mongodb://{quote(user, safe='')}:{quote(password(), safe='')}@127.0.0.1:27018/admin"
            subprocess.run(["mongosh", "--quiet", url, script], check=True)
    finally:
        proc.terminate()
        proc.wait(30)
    open(MARKER, "w").close()


def ping():
    user = os.environ.get("MONGO_INITDB_ROOT_USERNAME")
    uri = "mongodb://127.0.0.1:27017/"
    kwargs = {"username": user, "password": password(), "authSource": "admin"} if user else {}
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=3000, **kwargs)
    client.admin.command("ping")


def main():
    if sys.argv[1:2] == ["ping"]:
        ping()
        return
    user = os.environ.get("MONGO_INITDB_ROOT_USERNAME")
    args = [SERVER, "--host", "0.0.0.0", "--port", "27017", "--storage-path", DATA]
    if user:
        if not os.path.exists(MARKER):
            initdb(user)
        args.append("--auth")
    os.execv(SERVER, args + sys.argv[1:])


if __name__ == "__main__":
    main()
