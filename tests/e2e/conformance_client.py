"""The client the official conformance suite's client scenarios run, with gantry as the
client under test: `conformance_client.py URL` starts gantry with the scenario's server at
URL as its remote Streamable HTTP upstream, then has the official Python SDK use that
server through gantry's `/mcp/s`, as the scenario named by MCP_CONFORMANCE_SCENARIO asks
(the suite judges what reaches its server: gantry's handshake, calls and reconnections; for
a scenario whose context gives OAuth client credentials, gantry's token requests).
E2E_GANTRY_BIN names the binary. Exits non-zero, with the reason on stderr, when a step fails."""
import asyncio
import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

SCENARIO = os.environ.get("MCP_CONFORMANCE_SCENARIO", "")
CONTEXT = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT", "{}"))


def start_gantry(url: str, tmp: Path, key: str) -> tuple[subprocess.Popen, str]:
    config = tmp / "gantry.toml"
    text = ('[server]\nlisten = "127.0.0.1:0"\n'
            f'[[auth.api_keys]]\nname = "conformance"\nsha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n'
            f'[upstreams.s]\ntransport = "streamable-http"\nurl = {json.dumps(url)}\ntimeout_secs = 20\n')
    env = dict(os.environ)
    if "client_secret" in CONTEXT:
        # The secret reaches gantry as operators give it: by reference, not in the file.
        env["CONFORMANCE_CLIENT_SECRET"] = CONTEXT["client_secret"]
        text += (f'[upstreams.s.oauth]\nclient_id = {json.dumps(CONTEXT["client_id"])}\n'
                 'client_secret = "env:CONFORMANCE_CLIENT_SECRET"\n')
    if "private_key_pem" in CONTEXT:
        env["CONFORMANCE_PRIVATE_KEY"] = CONTEXT["private_key_pem"]
        text += (f'[upstreams.s.oauth]\nclient_id = {json.dumps(CONTEXT["client_id"])}\n'
                 'token_endpoint_auth = "private_key_jwt"\nprivate_key = "env:CONFORMANCE_PRIVATE_KEY"\n'
                 f'signing_alg = {json.dumps(CONTEXT["signing_algorithm"])}\n')
    config.write_text(text)
    ready = tmp / "ready"
    proc = subprocess.Popen([os.environ["E2E_GANTRY_BIN"], "--config", str(config), "serve", "--ready-file", str(ready)],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "gantry.log", "wb"), env=env)
    deadline = time.time() + 30
    while not (ready.exists() and ready.read_text()):
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"gantry did not start: {(tmp / 'gantry.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, f"http://{ready.read_text().strip()}"


def with_defaults(schema: dict) -> dict:
    """What a user accepting an elicitation form unchanged sends: every default."""
    return {k: p["default"] for k, p in schema.get("properties", {}).items() if "default" in p}


async def use(base: str, key: str):
    from mcp import Client, types
    from mcp.client.streamable_http import streamable_http_client

    async def elicit(context, params):
        return types.ElicitResult(action="accept", content=with_defaults(params.requested_schema))

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(30.0))
    async with http:
        transport = streamable_http_client(base + "/mcp/s", http_client=http)
        async with Client(transport, mode="legacy", elicitation_callback=elicit) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            calls = {"tools_call": ("add_numbers", {"a": 5, "b": 3}),
                     "sse-retry": ("test_reconnection", {}),
                     "elicitation-sep1034-client-defaults": ("test_client_elicitation_defaults", {}),
                     "auth/client-credentials-basic": ("test-tool", {})}
            if SCENARIO in calls:
                name, args = calls[SCENARIO]
                assert name in tools, f"{name} not listed through gantry: {tools}"
                result = await client.call_tool(name, args)
                assert not result.is_error, result
                print(result.content, file=sys.stderr)


def main():
    key = "gty_" + secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_gantry(sys.argv[1], Path(tmp), key)
        try:
            asyncio.run(use(base, key))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            sys.stderr.write((Path(tmp) / "gantry.log").read_text())


if __name__ == "__main__":
    main()
