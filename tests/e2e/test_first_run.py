"""The first command a newcomer runs: `gantry serve` with no configuration at all."""

import asyncio
import re
import subprocess

import httpx2

from conftest import BIN, sdk_client, wait_until


class Banner:
    def __init__(self, text):
        self.url = re.search(r"MCP endpoint:\s+(\S+)", text).group(1)
        self.key = re.search(r"API key:\s+(gty_\S+)", text).group(1)
        self.base = self.url.rsplit("/mcp", 1)[0]

    def auth(self):
        return {"Authorization": f"Bearer {self.key}"}


def test_serve_without_config_runs_the_demo_and_an_sdk_client_calls_it(tmp_path):
    out = tmp_path / "stdout"
    proc = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0"], cwd=tmp_path,
                            stdout=open(out, "wb"), stderr=subprocess.DEVNULL)
    try:
        text = wait_until(lambda: "Python SDK" in out.read_text() and out.read_text(), what="banner")
        banner = Banner(text)
        assert "demo (up)" in text
        assert '"mcpServers"' in text or '"url"' in text, "a copy-paste client snippet"

        async def use():
            async with sdk_client(banner) as client:
                tools = await client.list_tools()
                names = [t.name for t in tools.tools]
                assert {"demo__echo", "demo__add", "demo__time", "demo__kv_set", "demo__kv_get"} <= set(names)
                result = await client.call_tool("demo__add", {"a": 2, "b": 40})
                assert result.content[0].text == "42"
        asyncio.run(use())
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_default_listen_address_is_loopback_8080():
    out = subprocess.run([BIN, "--help"], capture_output=True, text=True).stdout
    assert out  # the default is asserted on the config layer below
    r = subprocess.run([BIN, "healthcheck"], capture_output=True, text=True, cwd="/")
    assert "127.0.0.1:8080" in r.stdout + r.stderr
