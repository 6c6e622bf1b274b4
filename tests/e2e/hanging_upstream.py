"""A stdio MCP server that completes the handshake, then stays alive but never answers
again: the failure that only health pings can notice."""
import json
import sys

print("hanging-upstream starting", file=sys.stderr, flush=True)

for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("method") == "initialize":
        reply = {"jsonrpc": "2.0", "id": msg["id"], "result": {
            "protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
            "serverInfo": {"name": "hanging", "version": "1"}}}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
