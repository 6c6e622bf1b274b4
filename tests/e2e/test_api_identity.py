"""Control plane identity, on SQLite and on PostgreSQL: health, sign-in with rotating
refresh tokens, throttling, and secrets kept out of logs and answers."""

from __future__ import annotations

import httpx2

from conftest import ADMIN_EMAIL, ADMIN_PASSWORD, key_call, problem


def test_health_ready_and_status(control_plane, database):
    g, api = control_plane()
    assert api.request("GET", "/health").json() == {"status": "ok"}
    ready = api.request("GET", "/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["database"]["status"] == "up"
    assert ready.json()["checks"]["database"]["backend"] == database.kind
    status = api.request("GET", "/v1/status").json()
    assert status["role"] == "serve"
    assert status["version"]
    assert status["uptime_secs"] >= 0
    assert status["components"]["database"]["status"] == "up"
    assert [u["name"] for u in status["upstreams"]] == ["demo"]
    assert status["upstreams"][0]["status"] == "up"


def test_login_refresh_rotation_reuse_and_logout(control_plane):
    g, api = control_plane()
    first = api.login(ADMIN_EMAIL.upper())  # e-mail addresses are case-insensitive
    assert first["token_type"] == "Bearer" and first["expires_in"] > 0
    assert first["tenant"]["slug"] == "acme" and first["tenant"]["role"] == "owner"
    me = api.request("GET", "/v1/auth/me", token=first["access_token"])
    assert me.status_code == 200, me.text
    assert me.json()["user"]["email"] == ADMIN_EMAIL
    assert "password_hash" not in me.json()["user"]

    second = api.request("POST", "/v1/auth/refresh", json_body={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200, second.text
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert api.request("GET", "/v1/auth/me", token=second["access_token"]).status_code == 200

    # Replaying the used token is theft or a bug: the whole sign-in is revoked.
    replay = api.request("POST", "/v1/auth/refresh", json_body={"refresh_token": first["refresh_token"]})
    problem(replay, 401)
    revoked = api.request("POST", "/v1/auth/refresh", json_body={"refresh_token": second["refresh_token"]})
    problem(revoked, 401)

    # A fresh sign-in is unaffected by the revoked family, and logout ends it.
    third = api.login()
    out = api.request("POST", "/v1/auth/logout", json_body={"refresh_token": third["refresh_token"]})
    assert out.status_code == 204
    problem(api.request("POST", "/v1/auth/refresh", json_body={"refresh_token": third["refresh_token"]}), 401)


def test_wrong_credentials_and_tokens_are_refused_alike(control_plane):
    g, api = control_plane()
    wrong = api.request("POST", "/v1/auth/login", json_body={"email": ADMIN_EMAIL, "password": "not the password"})
    unknown = api.request("POST", "/v1/auth/login", json_body={"email": "nobody@example.com", "password": "x" * 14})
    a, b = problem(wrong, 401), problem(unknown, 401)
    assert a["detail"] == b["detail"], "the answer must not reveal which e-mail addresses exist"
    assert wrong.headers["www-authenticate"].startswith("Bearer")

    problem(api.request("GET", "/v1/auth/me"), 401)
    problem(api.request("GET", "/v1/auth/me", token="not-a-jwt"), 401)
    good = api.login()["access_token"]
    header, payload, _sig = good.split(".")
    # alg=none, and a token signed with another secret, are both refused.
    none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"
    problem(api.request("GET", "/v1/auth/me", token=f"{none_header}.{payload}."), 401)
    problem(api.request("GET", "/v1/auth/me", token=f"{header}.{payload}.AAAA"), 401)


def test_login_throttling_locks_the_account_for_the_window(control_plane):
    g, api = control_plane({"auth": {"login_max_failures": 3, "login_window_secs": 600}})
    for _ in range(3):
        problem(api.request("POST", "/v1/auth/login", json_body={"email": ADMIN_EMAIL, "password": "guess guess guess"}), 401)
    # Even the right password is refused while locked: that is what stops guessing.
    locked = api.request("POST", "/v1/auth/login", json_body={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    problem(locked, 429)
    assert 0 < int(locked.headers["retry-after"]) <= 600


def test_secrets_never_appear_in_logs_or_answers(control_plane):
    jwt_secret = "jwt-secret-" + "s" * 40
    g, api = control_plane({"auth": {"jwt_secret": jwt_secret}})
    tokens = api.login()
    created = api.request("POST", "/v1/keys", token=tokens["access_token"], json_body={"name": "ci"}).json()
    key = created["key"]
    r = key_call(g.base, key, "tools/list")
    assert r.status_code == 200, r.text
    api.request("POST", "/v1/auth/login", json_body={"email": ADMIN_EMAIL, "password": "wrong " + ADMIN_PASSWORD})
    answers = [
        api.request("GET", "/v1/status").text,
        api.request("GET", "/ready").text,
        api.request("GET", "/v1/keys", token=tokens["access_token"]).text,
        api.request("GET", "/v1/auth/me", token=tokens["access_token"]).text,
    ]
    g.stop()
    logs = g.logs() + g.stdout_path.read_text()
    for secret in (jwt_secret, ADMIN_PASSWORD, key, tokens["refresh_token"], tokens["access_token"]):
        assert secret not in logs, "a secret reached the logs"
        for answer in answers:
            assert secret not in answer
