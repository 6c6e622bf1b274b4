"""API conventions: problem+json for every error, 422 naming the field, size limits,
unknown routes and methods, and an OpenAPI 3.1 document covering the routes."""

from __future__ import annotations

import httpx2
import pytest

from conftest import problem


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_bad_input_gets_problem_documents(control_plane):
    g, api = control_plane({"server": {"max_body_bytes": 4096}})
    login = api.base + "/v1/auth/login"
    malformed = httpx2.post(login, content=b'{"email": ', headers={"Content-Type": "application/json"})
    assert problem(malformed, 400)["type"] == "urn:gantry:problem:bad-request"
    wrong_type = httpx2.post(login, content=b"email=a", headers={"Content-Type": "application/x-www-form-urlencoded"})
    problem(wrong_type, 400)
    missing = problem(httpx2.post(login, json={"password": "x"}), 422)
    assert missing["field"] == "email" and missing["type"] == "urn:gantry:problem:validation"
    assert problem(httpx2.post(login, json={"email": 7, "password": "x"}), 422)["field"] == "email"
    assert problem(httpx2.post(login, json={"email": "a@b.c", "password": "x", "admin": True}), 422)["field"] == "admin"
    problem(httpx2.post(login, content=b'{"email": "' + b"a" * 10_000 + b'"}',
                        headers={"Content-Type": "application/json"}), 413)
    problem(httpx2.get(api.base + "/v1/no-such-thing"), 404)
    problem(httpx2.put(api.base + "/v1/keys"), 405)

    token = api.login()["access_token"]
    bad_member = api.request("POST", "/v1/users", token=token,
                             json_body={"email": "not-an-address", "password": "long enough pw", "role": "member"})
    assert problem(bad_member, 422)["field"] == "email"
    weak = api.request("POST", "/v1/users", token=token,
                       json_body={"email": "new@example.com", "password": "short", "role": "member"})
    assert problem(weak, 422)["field"] == "password"
    bad_role = api.request("POST", "/v1/users", token=token,
                           json_body={"email": "new@example.com", "password": "long enough pw", "role": "god"})
    assert problem(bad_role, 422)["field"] == "role"
    bad_slug = api.request("POST", "/v1/tenants", token=token, json_body={"slug": "Not A Slug", "name": "x"})
    assert problem(bad_slug, 422)["field"] == "slug"
    bad_scope = api.request("POST", "/v1/keys", token=token, json_body={"name": "k", "scopes": ["root"]})
    assert problem(bad_scope, 422)["field"] == "scopes"
    # Every answer carries a request id for the logs.
    assert bad_scope.headers["x-request-id"]


# The routes the other control-plane tests exercise: each must be in the description.
EXERCISED = {
    ("get", "/api/health"), ("get", "/api/ready"), ("get", "/api/v1/status"),
    ("post", "/api/v1/auth/login"), ("post", "/api/v1/auth/refresh"), ("post", "/api/v1/auth/logout"),
    ("get", "/api/v1/auth/me"), ("get", "/api/v1/tenants"), ("post", "/api/v1/tenants"),
    ("get", "/api/v1/tenants/{id}"), ("get", "/api/v1/users"), ("post", "/api/v1/users"),
    ("delete", "/api/v1/users/{id}"), ("get", "/api/v1/keys"), ("post", "/api/v1/keys"),
    ("get", "/api/v1/keys/{id}"), ("delete", "/api/v1/keys/{id}"), ("get", "/api/openapi.json"),
    ("get", "/api/v1/audit"), ("get", "/api/v1/tenants/{id}/policy"), ("put", "/api/v1/tenants/{id}/policy"),
    ("get", "/api/v1/tools"), ("post", "/api/v1/tools/{name}/call"),
    ("get", "/api/v1/servers"), ("post", "/api/v1/servers"), ("get", "/api/v1/servers/{id}"),
    ("put", "/api/v1/servers/{id}"), ("delete", "/api/v1/servers/{id}"), ("post", "/api/v1/servers/{id}/restart"),
    ("get", "/api/v1/servers/{id}/health"), ("get", "/api/v1/servers/{id}/tools"),
}


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_openapi_document_covers_every_route(control_plane):
    g, api = control_plane()
    doc = api.request("GET", "/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    documented = {(m, p) for p, item in doc["paths"].items() for m in item}
    assert EXERCISED <= documented, EXERCISED - documented
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    # Every documented route answers something other than "no such route".
    token = api.login()["access_token"]
    for method, path in sorted(documented):
        r = httpx2.request(method.upper(), g.base + path.replace("{id}", "00000000-0000-0000-0000-000000000000")
                           .replace("{name}", "demo__echo"),
                           headers={"Authorization": f"Bearer {token}"}, timeout=30)
        if r.status_code == 404:
            assert r.json()["detail"] != "route not found", (method, path)
        assert r.status_code != 405, (method, path)
