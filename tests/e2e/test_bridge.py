"""`gantry bridge -- CMD`: one stdio server served over Streamable HTTP, the way MCP
servers run as their own containers behind the gateway."""

import asyncio
import subprocess

import httpx2
import pytest

from conftest import BIN, MODERN, TIME_SERVER, sdk_client


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
