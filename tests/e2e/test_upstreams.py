"""Upstream transports against real servers, and the transparent single-server path."""

import asyncio
import subprocess
import time

import httpx2
import pytest
from mcp import types

from conftest import BIN, nginx_conf, port_open, TIME_SERVER, demo_stdio, everything_stdio, free_port, sdk_client, wait_until


def test_stdio_http_and_sse_upstreams_side_by_side(gantry, everything_http):
    http_port = everything_http("streamableHttp")
    sse_port = everything_http("sse")
    g = gantry({"upstreams": {
        "everything": everything_stdio(),
        "remote": {"transport": "streamable-http", "url": f"http://127.0.0.1:{http_port}/mcp"},
        "legacy": {"transport": "sse", "url": f"http://127.0.0.1:{sse_port}/sse"},
        "time": {"transport": "stdio", "command": str(TIME_SERVER), "args": ["--local-timezone", "UTC"]},
    }})

    async def use():
        async with sdk_client(g) as client:
            names = [t.name for t in (await client.list_tools()).tools]
            for server in ["everything", "remote", "legacy", "time"]:
                assert any(n.startswith(server + "__") for n in names), (server, names)
            for server in ["everything", "remote", "legacy"]:
                r = await client.call_tool(f"{server}__echo", {"message": server})
                assert server in r.content[0].text
            r = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert "UTC" in r.content[0].text
    asyncio.run(use())
    for server in ["everything", "remote", "legacy", "time"]:
        assert g.metric("mcp_upstream_up", server=server) == 1.0


def test_rmcp_streamable_http_server_as_upstream(gantry):
    """A second, independent Streamable HTTP server implementation (rmcp, via the demo)."""
    from conftest import BIN
    port = free_port()
    demo = subprocess.Popen([BIN, "demo-upstream", "--http", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: port_open(port), what="demo over HTTP")
        g = gantry({"upstreams": {"demo": {"transport": "streamable-http", "url": f"http://127.0.0.1:{port}/mcp"}}})
        r = g.modern("tools/call", {"name": "demo__add", "arguments": {"a": 20, "b": 22}})
        assert r.json()["result"]["content"][0]["text"] == "42"
        sid, _ = g.initialize(path="/mcp/demo")
        r = g.post({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"message": "via rmcp"}}},
                   path="/mcp/demo", headers={"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
        assert r.json()["result"]["content"][0]["text"] == "via rmcp"
    finally:
        demo.terminate()
        demo.wait(timeout=10)


def test_stdio_child_gets_command_args_env_and_cwd(gantry, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    g = gantry({"upstreams": {"everything": everything_stdio(
        env={"FROM_CONFIG": "plain", "FROM_REFERENCE": "env:PARENT_SECRET_SOURCE"}, cwd=str(work))}},
        env={"PARENT_SECRET_SOURCE": "from-parent-env", "GANTRY_LOG__FORMAT": "json"})

    async def use():
        async with sdk_client(g, path="/mcp/everything") as client:
            r = await client.call_tool("get-env", {})
            text = r.content[0].text
            assert '"FROM_CONFIG": "plain"' in text or '"FROM_CONFIG":"plain"' in text
            assert "from-parent-env" in text
            assert "GANTRY_LOG__FORMAT" not in text, "gantry's own variables stay out of children"
    asyncio.run(use())


def test_passthrough_relays_sampling_elicitation_progress_and_completion(gantry):
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    seen = {"sampling": 0, "elicitation": 0, "progress": [], "logs": 0}

    async def sampling(context, params):
        seen["sampling"] += 1
        assert params.messages[0].content.text.endswith("gateway?")
        return types.CreateMessageResult(role="assistant", model="test-model",
                                         content=types.TextContent(type="text", text="sampled-through-gantry"))

    async def elicitation(context, params):
        seen["elicitation"] += 1
        return types.ElicitResult(action="accept", content={"name": "Ada Lovelace"})

    async def progress(p, total, message):
        seen["progress"].append(p)

    async def logging_cb(params):
        seen["logs"] += 1

    async def use():
        async with sdk_client(g, path="/mcp/everything", sampling_callback=sampling,
                              elicitation_callback=elicitation, logging_callback=logging_cb) as client:
            names = [t.name for t in (await client.list_tools()).tools]
            assert "trigger-sampling-request" in names and "echo" in names, "names pass unchanged"
            r = await client.call_tool("trigger-sampling-request", {"prompt": "through the gateway?"})
            assert "sampled-through-gantry" in str(r.content)
            r = await client.call_tool("trigger-elicitation-request", {})
            assert "Ada Lovelace" in str(r.content)
            r = await client.call_tool("trigger-long-running-operation", {"duration": 1, "steps": 3},
                                       progress_callback=progress)
            assert "completed" in str(r.content).lower()
            await client.set_logging_level("debug")
            r = await client.call_tool("toggle-simulated-logging", {})
            await asyncio.sleep(0)  # the log messages arrive on the GET stream
            prompts = await client.list_prompts()
            assert prompts.prompts
            resources = await client.list_resources()
            assert resources.resources
            first = resources.resources[0]
            read = await client.read_resource(first.uri)
            assert read.contents
            completion = await client.complete(
                types.PromptReference(type="ref/prompt", name="completable-prompt"),
                argument={"name": "department", "value": "En"})
            assert completion.completion.values
    asyncio.run(use())
    assert seen["sampling"] == 1 and seen["elicitation"] == 1
    assert seen["progress"] == sorted(seen["progress"]) and len(seen["progress"]) >= 3


def test_unknown_fields_pass_through_untouched(gantry):
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    sid, _ = g.initialize(path="/mcp/everything")
    h = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    r = g.post({"jsonrpc": "2.0", "id": "x-1", "method": "tools/call",
                "params": {"name": "echo", "arguments": {"message": "m"}, "_meta": {"vendor/custom": {"a": 1}},
                           "extraField": True}}, path="/mcp/everything", headers=h)
    body = r.json()
    assert body["id"] == "x-1", "the client's id comes back as sent (string)"
    assert body["result"]["content"][0]["text"].endswith("m")
    tools = g.post({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}, path="/mcp/everything", headers=h).json()
    echo = next(t for t in tools["result"]["tools"] if t["name"] == "echo")
    assert "inputSchema" in echo and "description" in echo


TLS_SERVER = """
    log_format calls '$server_protocol $connection $request_method $status';
    access_log {dir}/access.log calls;
    server {{
        listen 127.0.0.1:{port} ssl{http2};
        ssl_certificate {dir}/server.pem;
        ssl_certificate_key {dir}/server.key;
        auth_basic "mcp";
        auth_basic_user_file {dir}/htpasswd;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_buffering off;
        }}
    }}"""


@pytest.fixture(params=["http/1.1", "h2"])
def tls_demo(tmp_path, request):
    """The demo server behind nginx with TLS (a certificate of a test CA) and Basic auth,
    offering HTTP/1.1 only, or HTTP/2 too (chosen by ALPN)."""
    d = tmp_path / "tls"
    d.mkdir()
    ssl = lambda *args: subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Gantry test CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "san.ext", "-out", "server.pem")
    password = ssl("passwd", "-apr1", "s3cret/pass").stdout.decode().strip()
    (d / "htpasswd").write_text(f"mcp-user:{password}\n")
    demo_port, port = free_port(), free_port()
    demo = subprocess.Popen([BIN, "demo-upstream", "--http", f"127.0.0.1:{demo_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    http2 = " http2" if request.param == "h2" else ""
    server = TLS_SERVER.format(dir=d, port=port, upstream=demo_port, http2=http2)
    (d / "nginx.conf").write_text(nginx_conf(d, server, user_root=True))
    nginx = subprocess.Popen(["nginx", "-p", str(d), "-c", str(d / "nginx.conf")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: port_open(port) and port_open(demo_port), what="nginx with TLS and the demo")
    yield {"port": port, "ca": d / "ca.pem", "protocol": request.param, "log": d / "access.log"}
    for p in (nginx, demo):
        p.terminate()
        p.wait(timeout=10)


def judged(g, name):
    """`/ready`'s upstreams once `name` has been tried: each connects in the background,
    and is "starting" until its first attempt ends."""
    def upstreams():
        ups = httpx2.get(g.base + "/ready", timeout=10).json()["upstreams"]
        return ups if ups[name]["status"] != "starting" else None
    return wait_until(upstreams, what=f"upstream {name} to leave 'starting'")


def test_https_upstream_is_verified_and_url_credentials_authenticate(gantry, tls_demo):
    """A remote server over TLS: its certificate is checked against the trust store (a private
    CA is trusted through SSL_CERT_FILE), and credentials in its URL are sent as Basic auth."""
    port, ca = tls_demo["port"], tls_demo["ca"]

    def server(password):
        return {"transport": "streamable-http", "url": f"https://mcp-user:{password}@localhost:{port}/mcp"}

    g = gantry({"upstreams": {"tls": server("s3cret%2Fpass"), "wrongpass": server("nope")}},
               env={"SSL_CERT_FILE": str(ca)})
    sid, init = g.initialize(path="/mcp/tls")
    r = g.post({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "over TLS"}}},
               path="/mcp/tls", headers={"Mcp-Session-Id": sid, "MCP-Protocol-Version": init["protocolVersion"]})
    assert r.json()["result"]["content"][0]["text"] == "over TLS", r.text
    for i in range(5):
        r = g.post({"jsonrpc": "2.0", "id": 2 + i, "method": "tools/call", "params": {"name": "add", "arguments": {"a": i, "b": 1}}},
                   path="/mcp/tls", headers={"Mcp-Session-Id": sid, "MCP-Protocol-Version": init["protocolVersion"]})
        assert r.json()["result"]["content"][0]["text"] == str(i + 1), r.text
    # The upstream's answered POSTs: in the protocol the server offered, and on connections
    # kept open and reused (HTTP/2 multiplexes them all on one).
    posts = [line.split() for line in tls_demo["log"].read_text().splitlines()]
    posts = [(proto, conn) for proto, conn, method, status in posts if method == "POST" and status in ("200", "202")]
    assert len(posts) == 8, posts
    expected = "HTTP/2.0" if tls_demo["protocol"] == "h2" else "HTTP/1.1"
    assert {proto for proto, _ in posts} == {expected}, posts
    if tls_demo["protocol"] == "h2":
        # (Two connections when the first two requests start together.)
        assert len({conn for _, conn in posts}) <= 2, posts
    else:
        # HTTP/1.1: the connection of `initialize` goes on to carry the GET stream, so the
        # calls need another; each answer's stream is read to its end after the answer, so
        # the next call finds the connection free — unless it starts before that end has
        # arrived through nginx, and takes a second one. Never a connection per call.
        calls = [conn for _, conn in posts[2:]]
        switches = sum(a != b for a, b in zip(calls, calls[1:]))
        assert switches <= 2, posts
    ready = judged(g, "wrongpass")
    assert ready["wrongpass"]["status"] == "down" and "401" in ready["wrongpass"]["reason"], ready
    assert "s3cret" not in g.logs() and "nope" not in ready["wrongpass"]["reason"]

    # Without the test CA in the trust store, the same server is refused.
    untrusting = gantry({"upstreams": {"tls": server("s3cret%2Fpass")}})
    down = judged(untrusting, "tls")["tls"]
    assert down["status"] == "down" and "certificate" in down["reason"].lower(), down
