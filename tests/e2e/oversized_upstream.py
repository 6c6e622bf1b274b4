"""A Streamable HTTP MCP server whose tools answer with messages of any size, for tests of
gantry's `max_message_bytes`. Usage: oversized_upstream.py PORT. It also speaks the legacy
HTTP+SSE transport (GET /sse, then POST /messages), where every answer is an event of the
one stream.

Tools (`tools/call` with `name`):
- `endless_json`: a JSON answer with no declared length whose text never ends;
- `declared_huge`: a JSON answer declaring 10 GiB, then sending until the reader leaves;
- `endless_event`: an event stream whose one event never ends (one endless `data:` line);
- `endless_lines`: an event stream whose event is short `data:` lines with no blank line;
- `many_events`: `count` progress notifications of `size` bytes each as events, then the
  answer: a stream larger than any one of its messages;
- `fine`: a short answer.
Every endless answer stops after 1 GiB, so a reader that never stops still ends.

`tools/list` depends on the path's first part: `/mcp` lists the tools above in one page;
`/pages/mcp` lists `t1`…`t150`, one a page; `/endless-pages/mcp` sends pages of 100 kB
whose cursor always leads to another; `/looping-pages/mcp` gives the same cursor again.
`GET /lists-served` says how many `tools/list` requests it has answered."""
import json
import queue
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CAP = 1 << 30
CHUNK = b"x" * 65536
# Answers for the legacy stream: bytes to write, or a (head, unit) pair to send endlessly.
LEGACY = queue.Queue()
EVENT = b"event: message\ndata: "
TOOLS = ["endless_json", "declared_huge", "endless_event", "endless_lines", "many_events", "fine"]
PAGES = 150
LISTS_SERVED = [0]


def tool(name: str, description: str = "") -> dict:
    return {"name": name, "description": description, "inputSchema": {"type": "object"}}


def tools_page(mode: str, cursor) -> dict:
    n = int(cursor or 0) + 1
    if mode == "pages":
        return {"tools": [tool(f"t{n}")], **({"nextCursor": str(n)} if n < PAGES else {})}
    if mode == "endless-pages":
        return {"tools": [tool(f"t{n}_{i}", "y" * 1000) for i in range(100)], "nextCursor": str(n)}
    if mode == "looping-pages":
        return {"tools": [tool("again")], "nextCursor": "1"}
    return {"tools": [tool(t) for t in TOOLS]}


def event(msg: dict) -> bytes:
    return EVENT + json.dumps(msg).encode() + b"\n\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm the second waits for
    # the client's delayed ACK, 40 ms a request, and 150 pages would outlast the list timeout.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def answer_json(self, msg: dict):
        out = json.dumps(msg).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def empty(self, status: int):
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def stream(self, headers: dict):
        """Starts a 200 answer whose body ends when the connection closes."""
        self.send_response(200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True

    def endless(self, head: bytes, unit: bytes):
        """Writes `head`, then `unit` until CAP or until the reader closes the connection."""
        try:
            self.wfile.write(head)
            for _ in range(CAP // len(unit)):
                self.wfile.write(unit)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def legacy_post(self, msg: dict):
        """HTTP+SSE: accept the message; its answer goes to the stream."""
        self.empty(202)
        rid, params = msg.get("id"), msg.get("params", {})
        if rid is None:
            return
        if msg.get("method") == "initialize":
            result = {"protocolVersion": "2024-11-05", "capabilities": {"tools": {}},
                      "serverInfo": {"name": "oversized-legacy", "version": "1"}}
        elif msg.get("method") == "tools/list":
            result = {"tools": [tool(t) for t in ("endless_event", "fine")]}
        elif msg.get("method") == "tools/call" and params.get("name") == "endless_event":
            start = '{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"' % json.dumps(rid)
            LEGACY.put((EVENT + start.encode(), CHUNK))
            return
        elif msg.get("method") == "tools/call":
            result = {"content": [{"type": "text", "text": "fine"}]}
        else:
            result = {}
        LEGACY.put(event({"jsonrpc": "2.0", "id": rid, "result": result}))

    def legacy_stream(self):
        self.stream({"content-type": "text/event-stream"})
        while not LEGACY.empty():  # what a previous stream left unsent
            LEGACY.get()
        try:
            self.wfile.write(b"event: endpoint\ndata: /messages\n\n")
            self.wfile.flush()
            while isinstance(item := LEGACY.get(), bytes):
                self.wfile.write(item)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return
        self.endless(*item)

    def do_POST(self):
        msg = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path.startswith("/messages"):
            return self.legacy_post(msg)
        rid, method = msg.get("id"), msg.get("method")
        if rid is None:
            return self.empty(202)
        if method == "initialize":
            return self.answer_json({"jsonrpc": "2.0", "id": rid, "result": {
                "protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                "serverInfo": {"name": "oversized", "version": "1"}}})
        if method == "tools/list":
            LISTS_SERVED[0] += 1
            cursor = msg.get("params", {}).get("cursor")
            return self.answer_json({"jsonrpc": "2.0", "id": rid, "result": tools_page(self.path.split("/")[1], cursor)})
        if method != "tools/call":
            return self.answer_json({"jsonrpc": "2.0", "id": rid, "result": {}})
        params = msg.get("params", {})
        name, args = params.get("name"), params.get("arguments", {})
        start = ('{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"' % json.dumps(rid)).encode()
        json_headers, sse_headers = {"content-type": "application/json"}, {"content-type": "text/event-stream"}
        if name == "endless_json":
            self.stream(json_headers)
            self.endless(start, CHUNK)
        elif name == "declared_huge":
            self.stream({**json_headers, "content-length": str(10 << 30)})
            self.endless(start, CHUNK)
        elif name == "endless_event":
            self.stream(sse_headers)
            self.endless(EVENT + start, CHUNK)
        elif name == "endless_lines":
            self.stream(sse_headers)
            self.endless(b"event: message\n", b"data: " + CHUNK[:1000] + b"\n")
        elif name == "many_events":
            self.stream(sse_headers)
            count, size = int(args.get("count", 0)), int(args.get("size", 0))
            token = params.get("_meta", {}).get("progressToken", "p")
            for i in range(count):
                self.wfile.write(event({"jsonrpc": "2.0", "method": "notifications/progress", "params": {
                    "progressToken": token, "progress": i + 1, "message": "y" * size}}))
            self.wfile.write(event({"jsonrpc": "2.0", "id": rid, "result": {
                "content": [{"type": "text", "text": f"sent {count}"}]}}))
        else:
            self.answer_json({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": "fine"}]}})

    def do_GET(self):
        if self.path.startswith("/sse"):
            return self.legacy_stream()
        if self.path == "/lists-served":
            out = str(LISTS_SERVED[0]).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            return self.wfile.write(out)
        self.empty(405)

    def do_DELETE(self):
        self.empty(200)


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
