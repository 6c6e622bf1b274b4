"""A misbehaving Streamable HTTP upstream for tests: initialize works (when a required
Authorization value is given as the second argument, only with that header), every
later request is answered with HTTP 500."""
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if REQUIRED and self.headers.get("authorization") != REQUIRED:
            self.send_response(401); self.send_header("content-length", "0"); self.end_headers()
            return
        if body.get("method") == "initialize":
            out = json.dumps({"jsonrpc":"2.0","id":body["id"],"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"flaky","version":"1"}}}).encode()
            self.send_response(200); self.send_header("content-type","application/json"); self.send_header("content-length",str(len(out))); self.end_headers(); self.wfile.write(out)
        elif "id" not in body:
            self.send_response(202); self.send_header("content-length","0"); self.end_headers()
        else:
            self.send_response(500); self.send_header("content-length","0"); self.end_headers()
    def do_GET(self):
        self.send_response(405); self.send_header("content-length","0"); self.end_headers()
REQUIRED = sys.argv[2] if len(sys.argv) > 2 else None
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
