"""Tokens from an external OpenID Connect provider: a JWKS server this test runs on
loopback (discovery document and keys), tokens signed by the test with real RSA keys.
Valid tokens provision the user; expired, wrong-audience, wrong-issuer, `alg: none` and
HS256-signed-with-the-public-key tokens are refused; rotated keys are fetched again."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import free_port, problem

both_stores = pytest.mark.parametrize("database", ["sqlite", "postgres"], indirect=True)

AUDIENCE = "https://gantry.test/api"


class Provider:
    """A minimal OpenID provider: discovery, a JWKS that can rotate, and token minting."""

    def __init__(self):
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}/"
        self.keys = {}
        self.published = []
        self.jwks_fetches = 0
        self.rotate()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": provider.issuer, "jwks_uri": f"{provider.issuer}jwks.json"}
                elif self.path == "/jwks.json":
                    provider.jwks_fetches += 1
                    body = {"keys": [provider.jwk(kid) for kid in provider.published]}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def rotate(self) -> str:
        kid = f"key-{len(self.keys) + 1}"
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.published = [kid]
        return kid

    def jwk(self, kid):
        numbers = self.keys[kid].public_key().public_numbers()
        b64 = lambda n: base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
        return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(numbers.n), "e": b64(numbers.e)}

    def token(self, kid=None, **overrides):
        kid = kid or self.published[-1]
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": AUDIENCE, "sub": "auth0|42", "email": "Dana@Example.com",
                  "email_verified": True, "name": "Dana", "iat": now, "exp": now + 300, **overrides}
        return jwt.encode(claims, self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def public_pem(self, kid):
        return self.keys[kid].public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)

    def close(self):
        self.server.shutdown()


@pytest.fixture
def provider():
    p = Provider()
    yield p
    p.close()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@both_stores
def test_provider_tokens_are_validated_and_users_provisioned(control_plane, provider):
    g, api = control_plane({"auth": {"oidc": {"issuer": provider.issuer, "audience": AUDIENCE,
                                               "tenant": "acme", "role": "viewer"}}})
    me = api.request("GET", "/v1/auth/me", token=provider.token())
    assert me.status_code == 200, me.text
    assert me.json()["user"]["email"] == "dana@example.com" and me.json()["role"] == "viewer"
    # Provisioned once: the same person again is the same user, now listed in the tenant.
    assert api.request("GET", "/v1/auth/me", token=provider.token()).json()["user"]["id"] == me.json()["user"]["id"]
    admin = api.login()["access_token"]
    assert "dana@example.com" in [m["email"] for m in api.request("GET", "/v1/users", token=admin).json()["items"]]
    # A viewer may look but not change.
    problem(api.request("POST", "/v1/keys", token=provider.token(), json_body={"name": "x"}), 403)

    now = int(time.time())
    refused = {
        "expired": provider.token(exp=now - 120, iat=now - 600),
        "wrong audience": provider.token(aud="https://someone-else"),
        "wrong issuer": provider.token(iss="https://evil.example/"),
        "unverified e-mail": provider.token(email_verified=False),
    }
    header, payload, _ = provider.token().split(".")
    refused["alg none"] = f"{b64url(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{payload}."
    # HS256 with the provider's public key as the HMAC secret: the classic confusion attack.
    kid = provider.published[-1]
    confused_header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    signing_input = f"{confused_header}.{payload}".encode()
    signature = hmac.new(provider.public_pem(kid), signing_input, hashlib.sha256).digest()
    refused["HS256 with the public key"] = f"{confused_header}.{payload}.{b64url(signature)}"
    refused["tampered payload"] = f"{header}.{b64url(json.dumps({'sub': 'x', 'email': 'admin@example.com'}).encode())}.{_}"
    # A token naming an existing account's address without vouching for it cannot take
    # that account over (here: the platform administrator's).
    claims_only = provider.token(email="admin@example.com", sub="auth0|evil")
    no_claim = jwt.decode(claims_only, options={"verify_signature": False})
    del no_claim["email_verified"]
    refused["existing account, unverified"] = jwt.encode(no_claim, provider.keys[provider.published[-1]],
                                                         algorithm="RS256", headers={"kid": provider.published[-1]})
    for what, token in refused.items():
        r = api.request("GET", "/v1/auth/me", token=token)
        assert r.status_code == 401, (what, r.text)
    # A new address without the claim is a new, unprivileged account.
    fresh = jwt.decode(provider.token(email="new@example.com"), options={"verify_signature": False})
    del fresh["email_verified"]
    token = jwt.encode(fresh, provider.keys[provider.published[-1]], algorithm="RS256", headers={"kid": provider.published[-1]})
    assert api.request("GET", "/v1/auth/me", token=token).json()["role"] == "viewer"


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_rotated_keys_are_fetched_again(control_plane, provider):
    g, api = control_plane({"auth": {"oidc": {"issuer": provider.issuer, "audience": AUDIENCE, "tenant": "acme"}}})
    assert api.request("GET", "/v1/auth/me", token=provider.token()).status_code == 200
    fetches = provider.jwks_fetches
    old = provider.published[-1]
    new = provider.rotate()
    r = api.request("GET", "/v1/auth/me", token=provider.token(kid=new))
    assert r.status_code == 200, r.text
    assert provider.jwks_fetches == fetches + 1, "an unknown kid makes gantry fetch the keys again"
    # The old key is no longer published; tokens it signs are refused.
    assert api.request("GET", "/v1/auth/me", token=provider.token(kid=old)).status_code == 401
    after = provider.jwks_fetches
    # A kid the provider does not publish is not asked for again and again.
    for _ in range(5):
        assert api.request("GET", "/v1/auth/me", token=provider.token(kid=old)).status_code == 401
    assert provider.jwks_fetches == after


def test_bad_oidc_configuration_is_refused_at_start(tmp_path):
    import subprocess
    from conftest import BIN, to_toml
    cfg = tmp_path / "g.toml"
    cfg.write_text(to_toml({"auth": {"oidc": {"issuer": "https://idp.example/", "audience": "a", "algorithms": ["HS256"]}}}))
    r = subprocess.run([BIN, "--config", str(cfg), "api"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "auth.oidc.algorithms" in r.stderr, r.stderr
