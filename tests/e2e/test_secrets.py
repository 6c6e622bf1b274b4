"""Configuration secrets from Vault KV v2 (OpenBao: token and AppRole logins, the plan's
`kv put` flow), from `GANTRY_…_FILE` files (Docker secrets), and their absence from logs,
error bodies and the status endpoint."""

from __future__ import annotations

import json
import secrets
import subprocess

import httpx2
import pytest

from conftest import ADMIN_PASSWORD, BIN, to_toml

@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_secrets_resolve_from_vault_with_approle(control_plane, vault, database):
    jwt_secret = "vault-jwt-" + secrets.token_hex(24)
    session_key = __import__("base64").b64encode(secrets.token_bytes(32)).decode()
    vault.bao("kv", "put", "secret/gantry/api", f"jwt_secret={jwt_secret}", f"session_key={session_key}")
    vault.bao("kv", "put", "secret/gantry/upstreams", "greeting=from-vault")
    # The services' own identity: an AppRole that may read secret/gantry/* and nothing else.
    vault.bao("policy", "write", "gantry", "-", input='path "secret/data/gantry/*" { capabilities = ["read"] }')
    vault.bao("auth", "enable", "approle")
    vault.bao("write", "auth/approle/role/gantry", "token_policies=gantry", "token_ttl=1h")
    role_id = json.loads(vault.bao("read", "-format=json", "auth/approle/role/gantry/role-id"))["data"]["role_id"]
    secret_id = json.loads(vault.bao("write", "-format=json", "-f", "auth/approle/role/gantry/secret-id"))["data"]["secret_id"]

    g, api = control_plane({
        "vault": {"addr": vault.addr, "role_id": role_id, "secret_id": secret_id},
        "auth": {"jwt_secret": "vault:secret/data/gantry/api#jwt_secret",
                 "session_key": "vault:secret/data/gantry/api#session_key"},
    })
    token = api.login()["access_token"]
    # The access token is signed with the secret from Vault: verify it independently.
    import jwt
    claims = jwt.decode(token, jwt_secret, algorithms=["HS256"], audience="gantry-api")
    assert claims["iss"] == "gantry"
    status = api.request("GET", "/v1/status").text
    g.stop()
    for secret in (jwt_secret, session_key, secret_id, role_id):
        assert secret not in g.logs() + g.stdout_path.read_text()
        assert secret not in status


def test_vault_errors_name_the_setting_never_the_value(vault, tmp_path):
    vault.bao("kv", "put", "secret/gantry/db", "url=postgres://u:topsecret@db/appdb")
    cfg = tmp_path / "g.toml"
    base = {"vault": {"addr": vault.addr, "token": vault.root_token}}
    cfg.write_text(to_toml({**base, "database": {"url": "vault:secret/data/gantry/db#nope"}}))
    r = subprocess.run([BIN, "--config", str(cfg), "migrate"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and "database.url" in r.stderr and "no such field" in r.stderr, r.stderr
    cfg.write_text(to_toml({"vault": {"addr": vault.addr, "token": "wrong-token"},
                            "database": {"url": "vault:secret/data/gantry/db#url"}}))
    r = subprocess.run([BIN, "--config", str(cfg), "migrate"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and "permission denied" in r.stderr, r.stderr
    assert "topsecret" not in r.stderr + r.stdout
    # A secret that does not fit its setting is refused without being quoted.
    vault.bao("kv", "put", "secret/gantry/n", "v=not-a-number-secret")
    cfg.write_text(to_toml({**base, "database": {"max_connections": "vault:secret/data/gantry/n#v"}}))
    r = subprocess.run([BIN, "--config", str(cfg), "migrate"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and "not-a-number-secret" not in r.stderr, r.stderr


def test_file_secrets_override_the_environment_and_the_file(tmp_path):
    secret_file = tmp_path / "jwt_secret"
    file_secret = "from-docker-secret-" + secrets.token_hex(20)
    secret_file.write_text(file_secret + "\n")
    from conftest import Gantry
    # The file names jwt_secret "x…"; the *_FILE variable wins over it.
    gw = Gantry(tmp_path, {"database": {"url": f"sqlite://{tmp_path}/f.db"}, "auth": {"jwt_secret": "x" * 40}},
                env={"GANTRY_AUTH__JWT_SECRET_FILE": str(secret_file)})
    try:
        subprocess.run([BIN, "--config", str(gw.config_path), "admin", "create-user", "--email", "f@example.com",
                        "--password-stdin"], input=ADMIN_PASSWORD + "\n", capture_output=True, text=True,
                       timeout=60, cwd=tmp_path, check=True)
        r = httpx2.post(gw.base + "/api/v1/auth/login", json={"email": "f@example.com", "password": ADMIN_PASSWORD})
        assert r.status_code == 200, r.text
        import jwt
        jwt.decode(r.json()["access_token"], file_secret, algorithms=["HS256"], audience="gantry-api")
    finally:
        gw.stop()
    missing = subprocess.run([BIN, "version"], env={"GANTRY_AUTH__JWT_SECRET_FILE": "/nonexistent", "PATH": "/usr/bin"},
                             capture_output=True, text=True)
    assert missing.returncode == 0, "commands that read no configuration do not care"
    r = subprocess.run([BIN, "migrate"], env={"GANTRY_AUTH__JWT_SECRET_FILE": "/nonexistent"}, capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 2 and "auth.jwt_secret" in r.stderr and "/nonexistent" in r.stderr, r.stderr


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_registered_servers_read_vault_references_when_taken_up(control_plane, vault, tmp_path):
    import sys
    from pathlib import Path
    from conftest import free_port, port_open, wait_until
    token_value = "Bearer " + secrets.token_hex(16)
    vault.bao("kv", "put", "secret/gantry/upstream", f"auth={token_value}")
    port = free_port()
    # A real HTTP upstream that completes the MCP handshake only with this Authorization.
    upstream = subprocess.Popen([sys.executable, str(Path(__file__).parent / "failing_upstream.py"), str(port), token_value])
    try:
        wait_until(lambda: port_open(port), what="the guarded upstream")
        g, api = control_plane({"vault": {"addr": vault.addr, "token": vault.root_token},
                                "registry": {"allowed_hosts": ["127.0.0.1"]}})
        admin = api.login()["access_token"]
        settings = {"transport": "streamable-http", "url": f"http://127.0.0.1:{port}/mcp", "ping_interval_secs": 0,
                    "headers": {"Authorization": "vault:secret/data/gantry/upstream#auth"}}
        created = api.request("POST", "/v1/servers", token=admin, json_body={"name": "guarded", "settings": settings})
        assert created.status_code == 201, created.text
        health = lambda: api.request("GET", f"/v1/servers/{created.json()['id']}/health", token=admin).json()
        wait_until(lambda: health().get("status") == "up", what="the handshake with the secret from Vault")
        stored = api.request("GET", f"/v1/servers/{created.json()['id']}", token=admin).text
        assert "vault:secret/data/gantry/upstream#auth" in stored and token_value not in stored
        g.stop()
        assert token_value not in g.logs() + g.stdout_path.read_text()
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)
