"""The live Docker stack: deploy.sh brings docker/ up under Podman with the stand-in images
(docker/test/standins), the tests walk the rollout plan's verification steps against it,
and everything is removed at the end (containers, networks, volumes).

Needs tests/stack/prepare.sh to have run (scripts/test.sh does) and its environment
(DOCKER_HOST, DOCKER_CONFIG, CONTAINERS_CONF) exported.
"""
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "gantrystack"
ADMIN_EMAIL = "ops@example.com"
ADMIN_PASSWORD = "a long and careful passphrase"


def port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout=60, interval=1.0, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - the last error is reported on timeout
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class HealthcheckRunner:
    """Podman here runs no healthchecks by itself (no systemd timers): run them every second."""

    def __init__(self):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.stop.is_set():
            ids = subprocess.run(
                ["podman", "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                capture_output=True, text=True,
            ).stdout.split()
            procs = [subprocess.Popen(["podman", "healthcheck", "run", c],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in ids]
            for p in procs:
                p.wait()
            self.stop.wait(1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


class Stack:
    def __init__(self, directory: Path, https_port: int, http_port: int):
        self.dir = directory
        self.https_port = https_port
        self.http_port = http_port
        self.env = dict(os.environ, COMPOSE_FILE="docker-compose.yml:test/compose.test.yml",
                        COMPOSE_PROJECT_NAME=PROJECT)
        self.base = "https://localhost" + ("" if https_port == 443 else f":{https_port}")

    @property
    def tls(self):
        """Trusts exactly the certificate deploy.sh generated (it names localhost)."""
        return ssl.create_default_context(cafile=str(self.dir / "certs" / "fullchain.pem"))

    # --- commands -------------------------------------------------------------------
    def run(self, *args, check=True, input=None, timeout=600, env=None):
        r = subprocess.run(list(args), cwd=self.dir, env={**self.env, **(env or {})}, capture_output=True,
                           text=True, input=input, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r

    def compose(self, *args, **kw):
        return self.run("docker", "compose", *args, **kw)

    def exec(self, service, *args, **kw):
        return self.compose("exec", "-T", service, *args, **kw)

    def vault(self, *args):
        """The `vault` CLI inside the vault service, with the root token deploy.sh kept."""
        root = json.loads((self.dir / "secrets" / "vault-init.json").read_text())["root_token"]
        return self.compose("exec", "-T", "-e", f"VAULT_TOKEN={root}", "vault", "vault", *args)

    def env_value(self, name):
        for line in (self.dir / ".env").read_text().splitlines():
            if line.startswith(name + "="):
                return line.split("=", 1)[1]
        raise KeyError(name)

    def services(self):
        """{container name: (service, state, health)} of this project's containers."""
        out = self.compose("ps", "--all", "--format", "{{.Name}} {{.Service}} {{.State}} {{.Health}}").stdout
        rows = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 3:
                rows[parts[0]] = (parts[1], parts[2], parts[3] if len(parts) > 3 else "")
        return rows

    def wait_healthy(self, service, count=1, timeout=180):
        def ready():
            rows = [r for r in self.services().values() if r[0] == service]
            return len(rows) >= count and all(r[1] == "running" and r[2] == "healthy" for r in rows)
        wait_until(ready, timeout=timeout, what=f"{count} healthy {service}")

    # --- HTTP through nginx ------------------------------------------------------------
    def request(self, method, path, body=None, headers=None, token=None, raw=False):
        data = None
        hdrs = dict(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)
        try:
            resp = urllib.request.urlopen(req, context=self.tls, timeout=30)
            status, rheaders, payload = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            status, rheaders, payload = e.code, e.headers, e.read()
        if raw:
            return status, rheaders, payload
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload.decode(errors="replace")
        return status, rheaders, parsed

    def login(self, timeout=30):
        """Signs in as the admin. A 503 (a dependency unreachable for now: the API asks
        callers to retry shortly) is retried, as a client would, for up to `timeout`
        seconds; any other failure fails at once."""
        def answered():
            status, _, body = self.request("POST", "/api/v1/auth/login",
                                           {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
            if status == 503:
                print(f"sign-in answered 503, retrying: {body}")
                return None
            return status, body
        status, body = wait_until(answered, timeout=timeout, interval=2, what="sign-in not answered 503")
        assert status == 200, body
        return body["access_token"]

    def mcp_call(self, key, tool, arguments, session=None):
        """One tools/call over Streamable HTTP (2025-06-18) through nginx and the gateway;
        opens a session first when none is given. Returns (session, result)."""
        headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
        if session is None:
            status, h, body = self.request("POST", "/mcp", {
                "jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "stack-test", "version": "1"}}},
                headers=headers, token=key, raw=True)
            assert status == 200, body
            session = h["Mcp-Session-Id"]
            status, _, _ = self.request("POST", "/mcp", {"jsonrpc": "2.0", "method": "notifications/initialized"},
                                        headers={**headers, "Mcp-Session-Id": session}, token=key, raw=True)
            assert status == 202
        status, h, body = self.request("POST", "/mcp", {
            "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": arguments}},
            headers={**headers, "Mcp-Session-Id": session}, token=key, raw=True)
        assert status == 200, body
        text = body.decode()
        if h.get("Content-Type", "").startswith("text/event-stream"):
            text = "".join(line[5:].strip() for line in text.splitlines() if line.startswith("data:"))
        return session, json.loads(text)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    if not os.environ.get("DOCKER_HOST"):
        pytest.fail("DOCKER_HOST is not set: run through scripts/test.sh (tests/stack/prepare.sh)")
    work = tmp_path_factory.mktemp("stack")
    directory = work / "docker"
    shutil.copytree(ROOT / "docker", directory, ignore=shutil.ignore_patterns(".env", "secrets", "certs", "certbot", ".build"))
    # The test overlay's own MCP server (mcp_chatty in docker/test/compose.test.yml).
    (directory / "test" / "chatty").mkdir()
    shutil.copy(ROOT / "tests" / "e2e" / "chatty_upstream.py", directory / "test" / "chatty")
    https_port = 443 if port_free(443) else free_port()
    http_port = 80 if port_free(80) else free_port()
    env_text = (directory / "env.example").read_text()
    env_text = env_text.replace("BIND_ADDRESS=0.0.0.0", "BIND_ADDRESS=127.0.0.1")
    env_text = env_text.replace("HTTP_PORT=80", f"HTTP_PORT={http_port}").replace("HTTPS_PORT=443", f"HTTPS_PORT={https_port}")
    (directory / ".env").write_text(env_text)
    s = Stack(directory, https_port, http_port)
    # Leftovers of an interrupted earlier run would hold the project's names.
    s.compose("--profile", "restore", "down", "-v", "--remove-orphans", check=False, timeout=300)
    with HealthcheckRunner():
        try:
            s.deployed = s.run("bash", "deploy.sh", "--generate-secrets", "--no-pull", "--timeout", "300", timeout=900)
            yield s
        finally:
            if os.environ.get("STACK_KEEP"):  # for debugging: leave it running
                print(f"stack kept: cd {directory} && COMPOSE_PROJECT_NAME={PROJECT} ...")
            else:
                s.compose("--profile", "restore", "down", "-v", "--remove-orphans", check=False, timeout=300)


class Operator:
    """The platform admin and the API key the rollout plan has the operator create."""

    def __init__(self, created_user, key):
        self.created_user = created_user  # what `gantry admin create-user` printed
        self.key = key


@pytest.fixture(scope="session")
def operator(stack):
    """Creates, once, the first admin (ADMIN_EMAIL) and a key of the default tenant with the
    operator CLI inside an api_server container, as the README tells operators to. Every
    test that signs in or calls a tool asks for it, so any subset of the tests runs alone
    (`-k`) and none depends on another having run first."""
    def admin(*args, **kw):
        # Just after the stack starts, the CLI (a new process each time) may find Vault or
        # the database unreachable for a few seconds (name lookups stall under Podman):
        # it says so and exits non-zero, and running it again is what an operator does.
        def ran():
            r = stack.exec("api_server", "gantry", "admin", *args, check=False, **kw)
            if r.returncode != 0 and ("unavailable" in r.stderr or "Vault" in r.stderr):
                print(f"gantry admin {args[0]} exited {r.returncode}, retrying: {r.stderr.strip()}")
                return None
            return r
        r = wait_until(ran, timeout=60, interval=2, what=f"gantry admin {args[0]} to reach its dependencies")
        assert r.returncode == 0, r.stdout + r.stderr
        return r

    user = admin("create-user", "--email", ADMIN_EMAIL, "--platform-admin", "--password-stdin",
                 input=ADMIN_PASSWORD + "\n")
    made = admin("create-key", "--tenant", "default", "--name", "stack-test")
    key = re.search(r"gty_[A-Za-z0-9_-]+", made.stdout)
    assert key, f"create-key printed no key:\n{made.stdout}\n{made.stderr}"
    return Operator(user, key.group(0))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed check against the live stack reports what the gantry services logged last,
    since the stack is removed when the run ends."""
    outcome = yield
    report = outcome.get_result()
    stack = item.funcargs.get("stack") if hasattr(item, "funcargs") else None
    if report.when == "call" and report.failed and isinstance(stack, Stack):
        logs = stack.compose("logs", "--no-color", "--tail", "40", "api_server", "mcp_gateway",
                             check=False, timeout=60)
        report.sections.append(("gantry service logs (last 40 lines each)", logs.stdout + logs.stderr))
