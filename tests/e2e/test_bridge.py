"""`gantry bridge -- CMD`: one stdio server served over Streamable HTTP, the way MCP
servers run as their own containers behind the gateway."""

import asyncio
import subprocess
import sys

import httpx2
import pytest

from conftest import BIN, MODERN, TIME_SERVER, sdk_client, wait_until


def time_server_args():
    return ["--", str(TIME_SERVER), "--local-timezone", "UTC"]


@pytest.mark.parametrize("mode", ["legacy", MODERN])
def test_bridge_serves_one_stdio_server_at_mcp(gantry, mode):
    bridge = gantry({}, role="bridge", args=time_server_args())
    r = httpx2.post(bridge.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert r.status_code == 401, "API keys are required unless --no-auth"

    async def use():
        async with sdk_client(bridge, mode=mode) as client:
            tools = [t.name for t in (await client.list_tools()).tools]
            assert "get_current_time" in tools, "names are the server's own: no prefix"
            result = await client.call_tool("get_current_time", {"timezone": "UTC"})
            assert "UTC" in str(result.content)
    asyncio.run(use())


def healthcheck(g) -> int:
    """What `gantry healthcheck` (a container's HEALTHCHECK) exits with against `g`."""
    return subprocess.run([BIN, "healthcheck", "--addr", g.addr], capture_output=True, timeout=30).returncode


def test_a_bridge_is_healthy_only_while_its_server_is_up(gantry):
    up = gantry({}, role="bridge", args=["--name", "time", *time_server_args()])
    wait_until(lambda: httpx2.get(up.base + "/ready").status_code == 200, what="the bridge's server up")
    assert healthcheck(up) == 0

    # A server that exits at once: restarted with backoff, never up. The bridge has
    # nothing to serve, and its container must say so rather than pass for healthy.
    down = gantry({}, role="bridge", args=["--name", "broken", "--", sys.executable, "-c", "raise SystemExit(3)"])
    ready = wait_until(lambda: (lambda r: r if r.json()["status"] != "starting" else None)(
        httpx2.get(down.base + "/ready")), what="the bridge's first attempt")
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable", ready.text
    assert ready.json()["upstreams"]["broken"]["status"] != "up"
    assert healthcheck(down) == 1


def test_bridge_without_keys_refuses_to_start_unless_no_auth(tmp_path):
    cfg = tmp_path / "b.toml"
    cfg.write_text('[server]\nlisten = "127.0.0.1:0"\n')
    r = subprocess.run([BIN, "--config", str(cfg), "bridge", *time_server_args()],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--no-auth" in r.stderr


def test_gateway_in_front_of_a_bridge(gantry):
    bridge = gantry({}, role="bridge", args=["--name", "time", *time_server_args()])
    g = gantry({"upstreams": {"time": {
        "transport": "streamable-http", "url": bridge.url,
        "headers": {"Authorization": f"Bearer {bridge.key}"}}}})

    async def use():
        async with sdk_client(g) as client:
            result = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert "UTC" in str(result.content)
    asyncio.run(use())
    assert g.metric("mcp_upstream_up", server="time") == 1.0
    assert bridge.metric("mcp_upstream_up", server="time") == 1.0
