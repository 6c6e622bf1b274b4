"""A stdio MCP server whose `flood` tool sends `count` progress notifications as fast as the
pipe takes them (or in bursts of `burst`, `pause_ms` apart), then its result: an upstream
far chattier than its client reads. The result's text names the count, so a client can
tell it got the answer. Its `big` tool answers with a text of `size` bytes on one line. Its
`ask` tool sends `count` sampling requests at once (each padded with `size` bytes), waits until each has an answer (from
the client, or an error from the gateway), and answers with a JSON text of how many were
answered, how many declined, and the reasons given. Its `ask_then_flood` tool sends one
sampling request, then `asks` more (each padded with `size` bytes), then `count` progress
notifications (saying "flood sent" on stderr once written), then waits for every request's
answer, sends one more progress notification (`count` + 1) and answers with the first
answer's text (and, when it sent more, how many of them were declined and why). Its `ask_later` tool answers at once,
then sends `count` sampling requests that belong to no call; once each has an answer it
says on stderr, after "later: ", how many were answered and declined, and why. Its
`log_later` tool answers at once, then sends `count` log messages (data `{"n": i, "pad":
…}`, padded with `size` bytes) that belong to no call, in one burst (saying "logs sent"
on stderr once written)."""
import json
import sys
import time

print("chatty-upstream starting", file=sys.stderr, flush=True)


def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


TOOL = {"name": "flood", "description": "progress notifications in one burst, then a result",
        "inputSchema": {"type": "object", "properties": {
            "count": {"type": "integer"}, "burst": {"type": "integer"}, "pause_ms": {"type": "integer"}},
            "required": ["count"]}}

BIG = {"name": "big", "description": "a result whose text is `size` bytes",
       "inputSchema": {"type": "object", "properties": {"size": {"type": "integer"}}, "required": ["size"]}}

ASK = {"name": "ask", "description": "`count` sampling requests at once; says how they were answered",
       "inputSchema": {"type": "object", "properties": {"count": {"type": "integer"}, "size": {"type": "integer"}},
                       "required": ["count"]}}


def answers(ids: set) -> dict:
    """Reads what the gateway sends until each request in `ids` has its answer (from the
    client or the gateway), answering pings meanwhile; the answers by id."""
    got = {}
    while len(got) < len(ids):
        msg = json.loads(sys.stdin.readline())
        if msg.get("method") == "ping":
            send({"jsonrpc": "2.0", "id": msg["id"], "result": {}})
        elif msg.get("id") in ids:
            got[msg["id"]] = msg
    return got


def ask(count: int, size: int) -> str:
    params = {"messages": [], "maxTokens": 1, "systemPrompt": "s" * size}
    ids = [f"ask-{i}" for i in range(count)]
    sys.stdout.write("".join(json.dumps({"jsonrpc": "2.0", "id": i, "method": "sampling/createMessage",
                                         "params": params}) + "\n" for i in ids))
    sys.stdout.flush()
    reasons = [m["error"]["message"] for m in answers(set(ids)).values() if "error" in m]
    return json.dumps({"answered": count - len(reasons), "declined": len(reasons), "reasons": sorted(set(reasons))})


ASK_THEN_FLOOD = {"name": "ask_then_flood", "description": "a sampling request, then a flood of progress",
                  "inputSchema": {"type": "object", "properties": {
                      "count": {"type": "integer"}, "asks": {"type": "integer"}, "size": {"type": "integer"}},
                      "required": ["count"]}}


def ask_then_flood(count: int, token, asks: int = 0, size: int = 0) -> str:
    send({"jsonrpc": "2.0", "id": "wait-0", "method": "sampling/createMessage",
          "params": {"messages": [], "maxTokens": 1}})
    more = [f"more-{i}" for i in range(asks)]
    for i in more:
        send({"jsonrpc": "2.0", "id": i, "method": "sampling/createMessage",
              "params": {"messages": [], "maxTokens": 1, "systemPrompt": "s" * size}})
    for start in range(0, count, 1000):
        sys.stdout.write("".join(json.dumps({"jsonrpc": "2.0", "method": "notifications/progress", "params": {
            "progressToken": token, "progress": i + 1, "total": count}}) + "\n"
            for i in range(start, min(start + 1000, count))))
    sys.stdout.flush()
    print("flood sent", file=sys.stderr, flush=True)
    got = answers({"wait-0", *more})
    msg = got["wait-0"]
    send({"jsonrpc": "2.0", "method": "notifications/progress", "params": {
        "progressToken": token, "progress": count + 1, "total": count}})
    text = "answer: " + msg.get("result", {}).get("content", {}).get("text", json.dumps(msg))
    if more:
        reasons = [got[i]["error"]["message"] for i in more if "error" in got[i]]
        text += " " + json.dumps({"declined": len(reasons), "reasons": sorted(set(reasons))})
    return text


ASK_LATER = {"name": "ask_later", "description": "`count` sampling requests outside any call, after answering",
             "inputSchema": {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}}
later = {"count": 0, "answers": {}}


def ask_later(count: int):
    later.update(count=count, answers={})
    sys.stdout.write("".join(json.dumps({"jsonrpc": "2.0", "id": f"later-{i}", "method": "sampling/createMessage",
                                         "params": {"messages": [], "maxTokens": 1}}) + "\n" for i in range(count)))
    sys.stdout.flush()


LOG_LATER = {"name": "log_later", "description": "`count` log messages of `size` bytes outside any call, after answering",
             "inputSchema": {"type": "object", "properties": {"count": {"type": "integer"}, "size": {"type": "integer"}},
                             "required": ["count", "size"]}}


def log_later(count: int, size: int):
    pad = "x" * size
    for i in range(count):
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": {
            "level": "info", "logger": "chatty", "data": {"n": i, "pad": pad}}}) + "\n")
    sys.stdout.flush()
    print("logs sent", file=sys.stderr, flush=True)


def later_answered(msg):
    later["answers"][msg["id"]] = msg
    if len(later["answers"]) == later["count"]:
        reasons = [m["error"]["message"] for m in later["answers"].values() if "error" in m]
        print("later: " + json.dumps({"answered": later["count"] - len(reasons), "declined": len(reasons),
                                      "reasons": sorted(set(reasons))}), file=sys.stderr, flush=True)


for line in sys.stdin:
    msg = json.loads(line)
    method, rid = msg.get("method"), msg.get("id")
    if rid is None:
        continue
    if method is None:
        if str(rid).startswith("later-"):
            later_answered(msg)
        continue
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": rid, "result": {
            "protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
            "serverInfo": {"name": "chatty", "version": "1"}}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": rid, "result": {"tools": [TOOL, BIG, ASK, ASK_THEN_FLOOD, ASK_LATER, LOG_LATER]}})
    elif method == "tools/call" and msg.get("params", {}).get("name") == "big":
        size = int(msg["params"].get("arguments", {}).get("size", 0))
        send({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": "z" * size}]}})
    elif method == "tools/call" and msg.get("params", {}).get("name") == "ask_then_flood":
        params = msg["params"]
        args = params.get("arguments", {})
        text = ask_then_flood(int(args.get("count", 0)), params.get("_meta", {}).get("progressToken"),
                              int(args.get("asks", 0)), int(args.get("size", 0)))
        send({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": text}]}})
    elif method == "tools/call" and msg.get("params", {}).get("name") == "ask_later":
        send({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": "asking"}]}})
        ask_later(int(msg["params"].get("arguments", {}).get("count", 0)))
    elif method == "tools/call" and msg.get("params", {}).get("name") == "log_later":
        send({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": "logging"}]}})
        args = msg["params"].get("arguments", {})
        log_later(int(args.get("count", 0)), int(args.get("size", 0)))
    elif method == "tools/call" and msg.get("params", {}).get("name") == "ask":
        args = msg["params"].get("arguments", {})
        text = ask(int(args.get("count", 0)), int(args.get("size", 0)))
        send({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": text}]}})
    elif method == "tools/call":
        params = msg.get("params", {})
        args = params.get("arguments", {})
        count = int(args.get("count", 0))
        burst = int(args.get("burst", 0)) or max(count, 1)
        token = params.get("_meta", {}).get("progressToken")
        for start in range(0, count if token is not None else 0, burst):
            if start:
                time.sleep(int(args.get("pause_ms", 0)) / 1000)
            sys.stdout.write("".join(
                json.dumps({"jsonrpc": "2.0", "method": "notifications/progress", "params": {
                    "progressToken": token, "progress": i + 1, "total": count,
                    "message": f"step {i + 1} of {count}"}}) + "\n"
                for i in range(start, min(start + burst, count))))
        send({"jsonrpc": "2.0", "id": rid, "result": {
            "content": [{"type": "text", "text": f"flooded {count}"}]}})
    else:
        send({"jsonrpc": "2.0", "id": rid, "result": {}})
