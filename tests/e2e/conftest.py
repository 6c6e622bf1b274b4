"""Black-box harness: starts the real `gantry` binary on a random loopback port with a
config written per test, and real MCP servers and clients around it.

Environment (set by scripts/test.sh):
  E2E_GANTRY_BIN     the gantry binary under test
  E2E_TOOLS_DIR   cache holding the npm and PyPI test dependencies
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import secrets
import signal
import socket
import subprocess
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import pytest

BIN = os.environ.get("E2E_GANTRY_BIN", "/var/tmp/gantry-target/debug/gantry")
TOOLS = Path(os.environ.get("E2E_TOOLS_DIR", "/var/tmp/gantry-tools"))
EVERYTHING_JS = TOOLS / "npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
INSPECTOR_CLI = TOOLS / "npm/node_modules/.bin/mcp-inspector-cli"
TIME_SERVER = TOOLS / "venv/bin/mcp-server-time"
MODERN = "2026-07-28"
ACCEPT = "application/json, text/event-stream"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def to_toml(config: dict) -> str:
    """Enough TOML for gantry configs: tables of scalars, arrays and inline tables,
    `upstreams` as named sub-tables and `auth.api_keys` as an array of tables."""
    lines = []
    for section, body in config.items():
        if section == "upstreams":
            for name, up in body.items():
                lines.append(f"[upstreams.{name}]")
                lines += [f"{k} = {toml_value(v)}" for k, v in up.items()]
            continue
        lines.append(f"[{section}]")
        for k, v in body.items():
            if section == "auth" and k == "api_keys":
                continue
            lines.append(f"{k} = {toml_value(v)}")
        for key in body.get("api_keys", []) if section == "auth" else []:
            lines.append("[[auth.api_keys]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in key.items()]
    return "\n".join(lines) + "\n"


def everything_stdio(**extra) -> dict:
    return {"transport": "stdio", "command": "node", "args": [str(EVERYTHING_JS), "stdio"], **extra}


def demo_stdio(**extra) -> dict:
    return {"transport": "stdio", "command": BIN, "args": ["demo-upstream"], **extra}


class Gantry:
    """One running gantry process."""

    def __init__(self, tmp: Path, config: dict, args=(), env=None, session_key=None, role="serve",
                 stderr=None, key=None):
        # Another process's `key`, for a replica of it: the same principal on both.
        self.key = key or "gty_" + secrets.token_urlsafe(32)
        config = json.loads(json.dumps(config))
        config.setdefault("auth", {}).setdefault("api_keys", []).append(
            {"name": "test", "sha256": hashlib.sha256(self.key.encode()).hexdigest()}
        )
        if session_key:
            config["auth"]["session_key"] = session_key
        config.setdefault("log", {}).setdefault("level", "info,gantry=debug")
        self.dir = tmp
        self.config_path = tmp / f"gantry-{secrets.token_hex(4)}.toml"
        self.config_path.write_text(to_toml(config))
        self.ready_file = tmp / f"ready-{secrets.token_hex(4)}"
        self.log_path = tmp / f"gantry-{secrets.token_hex(4)}.log"
        self.stdout_path = tmp / f"stdout-{secrets.token_hex(4)}.log"
        env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [BIN, "--config", str(self.config_path), role, "--listen", "127.0.0.1:0",
             "--ready-file", str(self.ready_file), *args],
            stdout=open(self.stdout_path, "wb"),
            stderr=stderr or open(self.log_path, "wb"),
            env=env,
            cwd=tmp,
        )
        deadline = time.time() + 60
        while not self.ready_file.exists() or not self.ready_file.read_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"gantry exited {self.proc.returncode}: {self.logs()}")
            if time.time() > deadline:
                raise RuntimeError(f"gantry not ready in 60 s: {self.logs()}")
            time.sleep(0.05)
        self.addr = self.ready_file.read_text().strip()
        self.base = f"http://{self.addr}"
        self.url = f"{self.base}/mcp"

    def logs(self) -> str:
        """stderr so far. gantry writes its log from a thread of its own, a moment after the
        fact; while it runs, a request with a marker id is made and its access line awaited
        first, so that every line logged before the call is in the file."""
        def read():
            return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        if getattr(self, "base", None) and self.proc.poll() is None:
            marker = "logs-read-" + secrets.token_hex(6)
            try:
                httpx2.get(self.base + "/health", headers={"x-request-id": marker}, timeout=10)
            except httpx2.HTTPError:
                return read()
            deadline = time.time() + 10
            while marker not in read() and time.time() < deadline and self.proc.poll() is None:
                time.sleep(0.02)
        return read()

    def logged(self, text: str, upstream: str) -> bool:
        """Whether a log line so far holds `text` and names `upstream`."""
        return any(text in line and f'"upstream":"{upstream}"' in line for line in self.logs().splitlines())

    def auth(self, extra=None) -> dict:
        return {"Authorization": f"Bearer {self.key}", **(extra or {})}

    def post(self, body, path="/mcp", headers=None, **kw) -> httpx2.Response:
        h = {"Content-Type": "application/json", "Accept": ACCEPT, **self.auth(), **(headers or {})}
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return httpx2.post(self.base + path, content=content, headers=h, timeout=kw.pop("timeout", 30), **kw)

    def modern(self, method, params=None, path="/mcp", headers=None, id=1, name=None, capabilities=None,
               **kw) -> httpx2.Response:
        body, h = self.modern_request(method, params, headers, id, name, capabilities)
        return self.post(body, path=path, headers=h, **kw)

    def modern_request(self, method, params=None, headers=None, id=1, name=None,
                       capabilities=None) -> tuple[dict, dict]:
        """The body and the MCP headers of a stateless (2026-07-28) request; `post` adds the rest."""
        params = dict(params or {})
        params["_meta"] = {
            **params.get("_meta", {}),
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": capabilities or {},
            "io.modelcontextprotocol/clientInfo": {"name": "pytest", "version": "1"},
        }
        h = {"MCP-Protocol-Version": MODERN, "Mcp-Method": method}
        n = name or params.get("name") or params.get("uri") or params.get("taskId")
        if n and method in ("tools/call", "prompts/get", "resources/read", "tasks/get", "tasks/update",
                            "tasks/cancel"):
            h["Mcp-Name"] = n
        h.update(headers or {})
        return {"jsonrpc": "2.0", "id": id, "method": method, "params": params}, h

    def initialize(self, path="/mcp", version="2025-11-25", capabilities=None) -> tuple[str, dict]:
        r = self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": capabilities or {},
            "clientInfo": {"name": "pytest", "version": "1"}}}, path=path)
        assert r.status_code == 200, r.text
        sid = r.headers["mcp-session-id"]
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, path=path,
                  headers={"Mcp-Session-Id": sid, "MCP-Protocol-Version": r.json()["result"]["protocolVersion"]})
        return sid, r.json()["result"]

    def metrics(self) -> str:
        return httpx2.get(self.base + "/metrics", timeout=10).text

    def metric(self, name: str, **labels) -> float | None:
        want = {k: str(v) for k, v in labels.items()}
        for line in self.metrics().splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            label_part = head[len(name):]
            if label_part and not label_part.startswith("{"):
                continue
            got = dict(kv.split("=", 1) for kv in label_part.strip("{}").split(",") if kv)
            got = {k: v.strip('"') for k, v in got.items()}
            if all(got.get(k) == v for k, v in want.items()):
                return float(value)
        return None

    def stop(self, sig=signal.SIGTERM, timeout=30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_everything_http(mode: str):
    """server-everything served on its own over `mode` (streamableHttp or sse); (process, port)."""
    port = free_port()
    proc = subprocess.Popen(["node", str(EVERYTHING_JS), mode], env={**os.environ, "PORT": str(port)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: port_open(port), timeout=30, what=f"server-everything {mode}")
    return proc, port


def nginx_conf(dir: Path, http: str, user_root: bool = False) -> str:
    """A whole nginx.conf for a test: one worker in the foreground, its files in `dir`,
    and `http` (servers, logs) inside the http block. `user_root` lets the worker read
    files in the test's private temporary directory."""
    return (("user root;\n" if user_root else "") + f"""worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{http}
}}
""")


@pytest.fixture
def everything_http():
    procs = []
    def start(mode):
        proc, port = start_everything_http(mode)
        procs.append(proc)
        return port
    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


@pytest.fixture
def redis_prefix():
    """A Redis key prefix of the test's own on the machine's Redis; its keys are removed
    afterwards."""
    import redis
    prefix = f"gantry-test-{secrets.token_hex(4)}:"
    yield prefix
    r = redis.Redis(host="127.0.0.1", port=6379)
    for k in r.keys(prefix + "*"):
        r.delete(k)


@pytest.fixture
def gantry(tmp_path):
    started: list[Gantry] = []

    def start(config: dict | None = None, **kw) -> Gantry:
        g = Gantry(tmp_path, config or {}, **kw)
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()


def streamed_messages(url: str, body: dict, headers: dict, timeout: float = 30):
    """POSTs `body` and yields the JSON-RPC messages of its event-stream answer as they
    arrive, so that a test can answer them while it reads; leaving the loop closes the
    stream."""
    with httpx2.stream("POST", url, content=json.dumps(body), headers=headers, timeout=timeout) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and line[5:].strip():
                yield json.loads(line[5:])


class StreamReader:
    """Reads an event stream (a session's GET stream, a listen stream) in the background,
    queueing each JSON-RPC message it carries for `next`. It ends (`ended`) with the
    stream, when told to (`done`, at its next line), or when gantry stops at the test's end."""

    def __init__(self, g: "Gantry", method: str, path: str, headers: dict, body: dict | None = None):
        self.messages: queue.Queue = queue.Queue()
        self.primed, self.done, self.ended = threading.Event(), threading.Event(), threading.Event()
        headers = {**g.auth(), **headers}
        args = (method, g.base + path, headers, body and json.dumps(body))
        threading.Thread(target=self._read, args=args, daemon=True).start()

    def _read(self, method, url, headers, content):
        try:
            with httpx2.stream(method, url, headers=headers, content=content,
                               timeout=httpx2.Timeout(30, read=None)) as r:
                for line in r.iter_lines():
                    self.primed.set()
                    if line.startswith("data:") and line[5:].strip():
                        self.messages.put(json.loads(line[5:]))
                    if self.done.is_set():
                        return
        except httpx2.HTTPError:
            pass  # gantry stopped
        finally:
            self.ended.set()

    def next(self, method: str, holding: str = "", timeout: float = 15) -> dict:
        """The next message of `method` whose params hold `holding`; those before it are passed over."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.messages.get(timeout=left)
            except queue.Empty:
                break
            if message.get("method") == method and holding in json.dumps(message.get("params", {})):
                return message
        raise AssertionError(f"no {method} holding {holding!r} on the stream")

    def drain(self):
        """Passes over every message come so far."""
        while not self.messages.empty():
            self.messages.get_nowait()


def subscribed_session(g: "Gantry", uri: str, path: str) -> dict:
    """A new 2025-11-25 session on `path` subscribed to `uri`: its headers."""
    sid, _ = g.initialize(path=path)
    session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    r = g.post({"jsonrpc": "2.0", "id": 1, "method": "resources/subscribe", "params": {"uri": uri}},
               path=path, headers=session)
    assert r.json()["result"] == {}, r.text
    return session


def sse_messages(response: httpx2.Response) -> list[dict]:
    """JSON-RPC messages of a JSON or SSE response body."""
    if response.headers.get("content-type", "").startswith("application/json"):
        return [response.json()]
    out = []
    for line in response.text.splitlines():
        if line.startswith("data:") and line[5:].strip():
            out.append(json.loads(line[5:].strip()))
    return out


@asynccontextmanager
async def sdk_client(g: Gantry, path="/mcp", mode="legacy", **kw):
    """The official Python SDK's high-level client, authenticated with the test key."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers=g.auth(), timeout=httpx2.Timeout(60.0))
    async with http:
        transport = streamable_http_client(g.base + path, http_client=http)
        async with Client(transport, mode=mode, **kw) as client:
            yield client


def wait_until(predicate, timeout=30.0, interval=0.05, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------------------------------
# Control plane: a fresh database per test, on SQLite or on the machine's PostgreSQL.

PG_ADMIN_DSN = os.environ.get("E2E_PG_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
PG_HOST = "127.0.0.1:5432"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "correct horse battery staple"


def pg_admin():
    import psycopg

    return psycopg.connect(PG_ADMIN_DSN, autocommit=True)


class Database:
    """One test's database. On PostgreSQL, migrations run as the database owner
    (`postgres`) and the services connect as `gantry_app`, the role that owns nothing,
    so row-level security applies to everything they do."""

    def __init__(self, kind: str, tmp: Path):
        self.kind = kind
        self.tmp = tmp
        if kind == "sqlite":
            self.url = f"sqlite://{tmp}/gantry-test-{secrets.token_hex(4)}.db"
            self.migrate_url = None
        else:
            self.name = "gantry_test_" + secrets.token_hex(6)
            with pg_admin() as c:
                c.execute(f'CREATE DATABASE "{self.name}"')
            self.migrate_url = f"postgres://postgres@{PG_HOST}/{self.name}"
            self.url = f"postgres://gantry_app@{PG_HOST}/{self.name}"

    def config(self) -> dict:
        c = {"url": self.url}
        if self.migrate_url:
            c["migrate_url"] = self.migrate_url
        return c

    def gantry(self, *args, input=None, config=None) -> subprocess.CompletedProcess:
        """Runs a one-shot gantry command (migrate, admin …) against this database."""
        path = self.tmp / f"cli-{secrets.token_hex(4)}.toml"
        path.write_text(to_toml({"database": self.config(), **(config or {})}))
        return subprocess.run([BIN, "--config", str(path), *args], input=input, capture_output=True,
                              text=True, timeout=60, cwd=self.tmp)

    def migrate(self):
        r = self.gantry("migrate")
        assert r.returncode == 0, r.stderr
        if self.kind == "postgres":
            # The test cluster trusts local connections; in the Docker stack the database's
            # init script gives gantry_app a password instead.
            with pg_admin() as c:
                c.execute("ALTER ROLE gantry_app LOGIN")

    def drop(self):
        if self.kind == "postgres":
            with pg_admin() as c:
                c.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    db = Database(request.param, tmp_path)
    yield db
    db.drop()


class Api:
    """An HTTP client for /api with the helpers every control-plane test needs."""

    def __init__(self, g: Gantry):
        self.g = g
        self.base = g.base + "/api"

    def request(self, method, path, token=None, json_body=None, **kw) -> httpx2.Response:
        headers = kw.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx2.request(method, self.base + path, headers=headers, json=json_body, timeout=30, **kw)

    def login(self, email=ADMIN_EMAIL, password=ADMIN_PASSWORD, tenant=None) -> dict:
        body = {"email": email, "password": password}
        if tenant:
            body["tenant"] = tenant
        r = self.request("POST", "/v1/auth/login", json_body=body)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
def control_plane(gantry, database):
    """Migrates the test's database, creates a platform administrator who owns tenant
    `acme`, and starts `gantry serve` on it. Returns (gantry, api, database)."""

    def start(config: dict | None = None, role="serve", bootstrap=True):
        database.migrate()
        if bootstrap:
            r = database.gantry("admin", "create-user", "--email", ADMIN_EMAIL, "--tenant", "acme",
                                "--platform-admin", "--password-stdin", input=ADMIN_PASSWORD + "\n")
            assert r.returncode == 0, r.stderr
        config = json.loads(json.dumps(config or {}))
        config.setdefault("database", {}).update(database.config())
        config.setdefault("auth", {}).setdefault("jwt_secret", secrets.token_urlsafe(48))
        config.setdefault("auth", {}).setdefault("api_key_cache_secs", 0)
        g = gantry(config, role=role)
        return g, Api(g)

    return start


MEMBER_PASSWORD = "member password 1234"


def new_key(api: Api, token: str, policy: dict | None = None) -> str:
    """A fresh API key of the caller's tenant (scope mcp), optionally with a policy."""
    body = {"name": "k-" + secrets.token_hex(3)}
    if policy is not None:
        body["policy"] = policy
    r = api.request("POST", "/v1/keys", token=token, json_body=body)
    assert r.status_code == 201, r.text
    return r.json()["key"]


def problem(r: httpx2.Response, status: int) -> dict:
    """Asserts an RFC 9457 problem response and returns its body."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json", r.headers
    body = r.json()
    assert body["status"] == status and body["type"].startswith("urn:gantry:problem:") and body["title"], body
    return body


# ---------------------------------------------------------------------------------------
# MongoDB wire protocol: SecantusDB, a real server process (ENVIRONMENT.md), restartable
# on the same storage so tests can take the audit store away and bring it back.

SECANTUSD = TOOLS / "venv/bin/secantusd-py"


class MongoServer:
    def __init__(self, tmp: Path):
        self.port = free_port()
        self.storage = tmp / f"secantus-{secrets.token_hex(4)}"
        self.log = tmp / f"secantus-{secrets.token_hex(4)}.log"
        self.proc = None
        self.url = f"mongodb://127.0.0.1:{self.port}/gantry_audit"

    def start(self):
        self.proc = subprocess.Popen(
            [str(SECANTUSD), "--host", "127.0.0.1", "--port", str(self.port), "--storage-path", str(self.storage),
             "--log-level", "WARNING"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        wait_until(lambda: port_open(self.port) or self.proc.poll() is not None, timeout=60, what="secantusd")
        assert self.proc.poll() is None, self.log.read_text()
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self):
        import pymongo

        return pymongo.MongoClient(f"mongodb://127.0.0.1:{self.port}", serverSelectionTimeoutMS=5000)


@pytest.fixture
def mongo(tmp_path):
    server = MongoServer(tmp_path)
    yield server
    server.stop()


# ---------------------------------------------------------------------------------------
# Vault's API: OpenBao in dev mode (in-memory, unsealed), a real server process.

BAO = TOOLS / "venv/bin/bao"


class VaultServer:
    def __init__(self, tmp: Path):
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.root_token = "root-" + secrets.token_hex(8)
        self.log = tmp / "openbao.log"
        self.proc = subprocess.Popen(
            [str(BAO), "server", "-dev", f"-dev-listen-address=127.0.0.1:{self.port}",
             f"-dev-root-token-id={self.root_token}"],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)

        def healthy():
            try:
                return httpx2.get(f"{self.addr}/v1/sys/health", timeout=1).status_code == 200
            except httpx2.HTTPError:
                return self.proc.poll() is not None
        wait_until(healthy, timeout=60, what="openbao")
        assert self.proc.poll() is None, self.log.read_text()

    def bao(self, *args, input=None) -> str:
        env = {**os.environ, "VAULT_ADDR": self.addr, "VAULT_TOKEN": self.root_token, "BAO_ADDR": self.addr,
               "BAO_TOKEN": self.root_token}
        r = subprocess.run([str(BAO), *args], env=env, capture_output=True, text=True, timeout=60, input=input)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def vault(tmp_path):
    server = VaultServer(tmp_path)
    yield server
    server.stop()


def key_call(base: str, key: str, method: str, params: dict | None = None, path: str = "/mcp") -> httpx2.Response:
    """One stateless (2026-07-28) MCP request authenticated with `key`."""
    params = dict(params or {})
    params["_meta"] = {"io.modelcontextprotocol/protocolVersion": MODERN,
                       "io.modelcontextprotocol/clientCapabilities": {}}
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Accept": ACCEPT,
               "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if "name" in params:
        headers["Mcp-Name"] = params["name"]
    return httpx2.post(base + path, headers=headers, timeout=30,
                       json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
