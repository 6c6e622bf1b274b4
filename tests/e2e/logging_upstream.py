"""An MCP server that logs as a real one does: it declares `logging`, keeps the level its
client last set with `logging/setLevel` (`warning` until one is set, as servers start
quieter than `debug`) and sends only messages at or above it. Its `log_each_level` tool sends one message per level, least
severe first (data: the level's name), then answers; with `later` it answers first, so the
messages belong to no call.

Over stdio by default (plain JSON-RPC lines, one request at a time; over stdio nothing ties
a log message to a call, so a client sees them all outside calls). With `--http PORT` it
serves Streamable HTTP on 127.0.0.1:PORT/mcp instead, where a call's messages come in its
own event stream before its answer (`later` is not served there: it has no GET stream)."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
TOOL = {"name": "log_each_level", "description": "one log message per level at or above the one set",
        "inputSchema": {"type": "object", "properties": {"later": {"type": "boolean"}}}}
level = LEVELS.index("warning")


def logs() -> list[dict]:
    return [{"jsonrpc": "2.0", "method": "notifications/message",
             "params": {"level": name, "logger": "logging-upstream", "data": name}} for name in LEVELS[level:]]


def handle(msg: dict) -> dict:
    """The answer to a request; a call's log messages are the transport's to send."""
    global level
    method, params, rid = msg.get("method"), msg.get("params") or {}, msg.get("id")
    if method == "initialize":
        result = {"protocolVersion": params.get("protocolVersion", "2025-11-25"),
                  "capabilities": {"tools": {}, "logging": {}},
                  "serverInfo": {"name": "logging-upstream", "version": "1.0.0"}}
    elif method == "logging/setLevel":
        level = LEVELS.index(params["level"])
        result = {}
    elif method == "tools/list":
        result = {"tools": [TOOL]}
    elif method in ("tools/call", "ping"):
        result = {"content": [{"type": "text", "text": "logged"}]} if method == "tools/call" else {}
    else:
        return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"Method not found: {method}"}}
    return {"jsonrpc": "2.0", "id": rid, "result": result}


def serve_stdio():
    def send(msg):
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("id") is None:
            continue
        calls = msg.get("method") == "tools/call"
        later = calls and bool((msg.get("params", {}).get("arguments") or {}).get("later"))
        if calls and not later:
            for note in logs():
                send(note)
        send(handle(msg))
        if later:
            for note in logs():
                send(note)


class Http(BaseHTTPRequestHandler):
    def do_POST(self):
        msg = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if msg.get("id") is None:
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        answer = handle(msg)
        if msg.get("method") == "tools/call":
            body = "".join(f"event: message\ndata: {json.dumps(m)}\n\n" for m in [*logs(), answer]).encode()
            kind = "text/event-stream"
        else:
            body, kind = json.dumps(answer).encode(), "application/json"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        if msg.get("method") == "initialize":
            self.send_header("Mcp-Session-Id", "logging-upstream-session")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.send_response(405)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_DELETE(self):
        self.do_GET()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Http).serve_forever()
    else:
        serve_stdio()
