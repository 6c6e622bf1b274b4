"""Tasks (2025-11-25, SEP-1686) through gantry, in front of server-everything, whose
`simulate-research-query` runs as a task for about four seconds. gantry talks to the
server over one session for every caller, so a task must be its creator's alone: another
caller can neither see it, read its result nor cancel it, and the server's task list, which
holds everyone's, is not offered."""

import base64
import hashlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx2

from conftest import ACCEPT, TOOLS, everything_stdio, streamed_messages, wait_until

RESEARCH = {"name": "simulate-research-query", "arguments": {"topic": "gateways"}, "task": {"ttl": 60000}}


def session(g, key: str, path: str, capabilities=None) -> dict:
    """Headers of a new 2025-11-25 session opened with `key`; the initialize result too."""
    auth = {"Authorization": f"Bearer {key}"}
    r = g.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": capabilities or {},
        "clientInfo": {"name": "pytest", "version": "1"}}}, path=path, headers=auth)
    assert r.status_code == 200, r.text
    headers = {**auth, "Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
    g.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, path=path, headers=headers)
    return headers, r.json()["result"]


def rpc(g, headers: dict, method: str, params: dict, path: str) -> dict:
    r = g.post({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, path=path, headers=headers,
               timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_task_is_its_creators_alone(gantry):
    other = "gty_" + secrets.token_urlsafe(32)
    g = gantry({"upstreams": {"everything": everything_stdio()},
                "auth": {"api_keys": [{"name": "other", "sha256": hashlib.sha256(other.encode()).hexdigest()}]}})
    path = "/mcp/everything"
    mine, init = session(g, g.key, path)
    assert "requests" in init["capabilities"]["tasks"], init["capabilities"]
    assert "list" not in init["capabilities"]["tasks"], "the server's list holds every caller's tasks"
    theirs, _ = session(g, other, path)

    created = rpc(g, mine, "tools/call", RESEARCH, path)["result"]["task"]
    task_id = created["taskId"]
    assert created["status"] == "working"

    for method in ("tasks/get", "tasks/result", "tasks/cancel"):
        error = rpc(g, theirs, method, {"taskId": task_id}, path)["error"]
        assert error["code"] == -32602 and "Unknown task" in error["message"], (method, error)
    tampered = task_id[:-2] + ("AA" if not task_id.endswith("AA") else "BB")
    assert rpc(g, mine, "tasks/get", {"taskId": tampered}, path)["error"]["code"] == -32602
    for who in (mine, theirs):
        error = rpc(g, who, "tasks/list", {}, path)["error"]
        assert error["code"] == -32601 and "tasks/get" in error["message"], error

    status = rpc(g, mine, "tasks/get", {"taskId": task_id}, path)["result"]
    assert status["taskId"] == task_id and status["status"] in ("working", "completed"), status
    # tasks/result waits for the task to end.
    result = rpc(g, mine, "tasks/result", {"taskId": task_id}, path)["result"]
    assert "Research Report: gateways" in result["content"][0]["text"], result
    assert result["_meta"]["io.modelcontextprotocol/related-task"]["taskId"] == task_id
    assert rpc(g, mine, "tasks/get", {"taskId": task_id}, path)["result"]["status"] == "completed"
    # Still not theirs once done.
    assert rpc(g, theirs, "tasks/result", {"taskId": task_id}, path)["error"]["code"] == -32602


def test_a_task_made_on_the_aggregate_is_followed_there(gantry):
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    mine, init = session(g, g.key, "/mcp")
    assert init["capabilities"]["tasks"] == {"requests": {"tools": {"call": {}}}, "cancel": {}}, init
    params = {**RESEARCH, "name": "everything__simulate-research-query"}
    task_id = rpc(g, mine, "tools/call", params, "/mcp")["result"]["task"]["taskId"]
    result = rpc(g, mine, "tasks/result", {"taskId": task_id}, "/mcp")["result"]
    assert "Research Report: gateways" in result["content"][0]["text"], result
    # The server's own endpoint serves it too: the same caller, the same server.
    other, _ = session(g, g.key, "/mcp/everything")
    assert rpc(g, other, "tasks/get", {"taskId": task_id}, "/mcp/everything")["result"]["taskId"] == task_id


def test_a_tasks_question_goes_to_its_creator_alone(gantry):
    # An ambiguous research query asks its client to clarify (elicitation) while the task
    # runs; the server sends the question for the task, through its tasks/result.
    other = "gty_" + secrets.token_urlsafe(32)
    g = gantry({"upstreams": {"everything": everything_stdio()},
                "auth": {"api_keys": [{"name": "other", "sha256": hashlib.sha256(other.encode()).hexdigest()}]}})
    path = "/mcp/everything"
    can_answer = {"elicitation": {}}
    mine, _ = session(g, g.key, path, can_answer)
    theirs, _ = session(g, other, path, can_answer)
    # Another caller, listening for anything the server asks outside its own calls.
    overheard, listening, stop = [], threading.Event(), threading.Event()

    def listen():
        with httpx2.stream("GET", g.base + path, headers={**theirs, "Accept": "text/event-stream"},
                           timeout=httpx2.Timeout(30, read=20)) as r:
            listening.set()
            for line in r.iter_lines():
                if line.startswith("data: ") and line[6:]:
                    overheard.append(json.loads(line[6:]))
                if stop.is_set():
                    return
    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert listening.wait(10)

    params = {**RESEARCH, "arguments": {"topic": "python", "ambiguous": True}}
    task_id = rpc(g, mine, "tools/call", params, path)["result"]["task"]["taskId"]
    asked, got = [], {}

    def wait_for_result():
        body = {"jsonrpc": "2.0", "id": 2, "method": "tasks/result", "params": {"taskId": task_id}}
        headers = {**mine, "Content-Type": "application/json", "Accept": ACCEPT}
        for msg in streamed_messages(g.base + path, body, headers, timeout=60):
            if msg.get("method") == "elicitation/create":
                asked.append(msg)
                answer = {"jsonrpc": "2.0", "id": msg["id"],
                          "result": {"action": "accept", "content": {"interpretation": "the snake"}}}
                assert g.post(answer, path=path, headers=mine).status_code == 202
            elif msg.get("id") == 2:
                got["result"] = msg["result"]
                return

    def their_long_call():
        body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "trigger-long-running-operation", "arguments": {"duration": 6, "steps": 3},
            "_meta": {"progressToken": "t"}}}
        headers = {**theirs, "Content-Type": "application/json", "Accept": ACCEPT}
        overheard.extend(streamed_messages(g.base + path, body, headers, timeout=60))

    waiting = threading.Thread(target=wait_for_result, daemon=True)
    waiting.start()
    wait_until(lambda: g.metric("mcp_requests_in_flight", server="everything") == 1, what="tasks/result waiting")
    # The other caller's call is now the latest in flight, where a question of unknown
    # origin would go.
    theirs_running = threading.Thread(target=their_long_call, daemon=True)
    theirs_running.start()
    waiting.join(timeout=60)
    theirs_running.join(timeout=60)
    result = got["result"]
    stop.set()
    assert len(asked) == 1, asked
    related = asked[0]["params"]["_meta"]["io.modelcontextprotocol/related-task"]["taskId"]
    assert related == task_id, "the task named as its creator knows it"
    assert "the snake" in result["content"][0]["text"], result
    assert not [m for m in overheard if m.get("method") == "elicitation/create"], overheard


# 2026-07-28 clients speak tasks as the Tasks extension (io.modelcontextprotocol/tasks)
# has them: the server decides, `tasks/get` carries the result and the task's questions,
# `tasks/update` answers them. gantry speaks it in front of the 2025-11-25 server.
EXTENSION = "io.modelcontextprotocol/tasks"
WITH_TASKS = {"extensions": {EXTENSION: {}}}
TERMINAL = ("completed", "failed", "cancelled")


def modern_task(g, arguments: dict, path="/mcp/everything", capabilities=WITH_TASKS, **kw) -> dict:
    name = "simulate-research-query" if path != "/mcp" else "everything__simulate-research-query"
    r = g.modern("tools/call", {"name": name, "arguments": arguments}, path=path, capabilities=capabilities, **kw)
    # 2026-07-28: a capability the client did not declare is a 400 with -32021.
    missing_capability = r.json().get("error", {}).get("code") == -32021
    assert r.status_code == (400 if missing_capability else 200), r.text
    return r.json()


def poll(g, task_id: str, until, path="/mcp/everything", capabilities=WITH_TASKS, **kw) -> dict:
    """`tasks/get` at the interval the task asks for, until `until(task)`; the last answer."""
    deadline = time.monotonic() + 60
    while True:
        r = g.modern("tasks/get", {"taskId": task_id}, path=path, capabilities=capabilities, **kw)
        assert r.status_code == 200, r.text
        task = r.json()["result"]
        if until(task):
            return task
        assert task["status"] not in TERMINAL, task
        assert time.monotonic() < deadline, task
        # The protocol's own pacing: clients SHOULD wait pollIntervalMs between polls.
        time.sleep(task.get("pollIntervalMs", 500) / 1000)


def test_a_modern_client_runs_a_tool_as_a_task_and_polls_its_result(gantry):
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    for path in ("/mcp/everything", "/mcp"):
        capabilities = g.modern("server/discover", path=path).json()["result"]["capabilities"]
        assert capabilities["extensions"] == {EXTENSION: {}}, (path, capabilities)
        assert "tasks" not in capabilities, "2025-11-25's capability is not 2026-07-28's"

    # A tool that only runs as a task, for a client that did not declare the extension.
    error = modern_task(g, {"topic": "gateways"}, capabilities={})["error"]
    assert error["code"] == -32021, error
    assert error["data"]["requiredCapabilities"] == {"extensions": {EXTENSION: {}}}, error

    created = modern_task(g, {"topic": "gateways"})["result"]
    assert created["resultType"] == "task" and created["status"] == "working", created
    assert created["ttlMs"] == 300000 and created["pollIntervalMs"] == 1000, created
    assert "task" not in created and "ttl" not in created, "the extension's shape, not 2025-11-25's"
    task_id = created["taskId"]
    # A tool that is not a task's stays a plain call for the same client.
    echo = g.modern("tools/call", {"name": "echo", "arguments": {"message": "hi"}}, path="/mcp/everything",
                    capabilities=WITH_TASKS).json()["result"]
    assert echo["resultType"] == "complete" and "hi" in echo["content"][0]["text"], echo

    done = poll(g, task_id, lambda t: t["status"] in TERMINAL)
    assert done["status"] == "completed" and done["resultType"] == "complete", done
    assert done["taskId"] == task_id
    assert "Research Report: gateways" in done["result"]["content"][0]["text"], done
    assert done["result"]["resultType"] == "complete", "the tool's result, in the client's era"

    # The extension's own rules: declared capability, Mcp-Name routing header, its methods.
    r = g.modern("tasks/get", {"taskId": task_id}, path="/mcp/everything")
    assert r.status_code == 400 and r.json()["error"]["code"] == -32021, r.text
    r = g.modern("tasks/get", {"taskId": task_id}, path="/mcp/everything", capabilities=WITH_TASKS,
                 headers={"Mcp-Name": "another-task"})
    assert r.status_code == 400 and r.json()["error"]["code"] == -32020, r.text
    for method in ("tasks/result", "tasks/list"):
        r = g.modern(method, {"taskId": task_id}, path="/mcp/everything", capabilities=WITH_TASKS)
        assert r.status_code == 404 and r.json()["error"]["code"] == -32601, (method, r.text)
    # Task status notifications are the extension's too.
    listen = {"notifications": {"toolsListChanged": True, "taskIds": [task_id]}}
    r = g.modern("subscriptions/listen", listen, path="/mcp/everything")
    assert r.json()["error"]["code"] == -32021, r.text
    for task_ids in (task_id, [task_id] * 257):
        r = g.modern("subscriptions/listen", {"notifications": {"taskIds": task_ids}}, path="/mcp/everything",
                     capabilities=WITH_TASKS)
        assert r.status_code == 400 and r.json()["error"]["code"] == -32602, r.text
        assert "taskIds" in r.json()["error"]["message"], r.text


def listened(g, listen: dict, path: str, capabilities: dict, until, id="listen-1"):
    """Opens a `subscriptions/listen` stream and yields its messages until `until(message)`
    (or 60 s)."""
    body, headers = g.modern_request("subscriptions/listen", listen, id=id, capabilities=capabilities)
    headers = {**g.auth(), **headers, "Content-Type": "application/json", "Accept": ACCEPT}
    deadline = time.monotonic() + 60
    with httpx2.stream("POST", g.base + path, content=json.dumps(body), headers=headers, timeout=30) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data:") and line[5:].strip():
                message = json.loads(line[5:])
                yield message
                if until(message):
                    return
            assert time.monotonic() < deadline, "the stream brought nothing more"


def test_a_modern_client_listening_for_its_task_hears_each_status_without_polling(gantry):
    other = "gty_" + secrets.token_urlsafe(32)
    g = gantry({"upstreams": {"everything": everything_stdio()},
                "auth": {"api_keys": [{"name": "other", "sha256": hashlib.sha256(other.encode()).hexdigest()}]}})
    capabilities = {**WITH_TASKS, "elicitation": {}}
    task_id = modern_task(g, {"topic": "python", "ambiguous": True}, path="/mcp", capabilities=capabilities)[
        "result"]["taskId"]
    theirs = modern_task(g, {"topic": "theirs"}, path="/mcp", capabilities=capabilities,
                         headers={"Authorization": f"Bearer {other}"})["result"]["taskId"]
    listen = {"notifications": {"taskIds": [task_id, theirs, "no-such-task", task_id]}}
    heard = []
    for message in listened(g, listen, "/mcp", capabilities,
                            until=lambda m: m.get("params", {}).get("status") in TERMINAL):
        if message["method"] == "notifications/subscriptions/acknowledged":
            assert message["params"]["notifications"] == {"taskIds": [task_id]}, "its own task, once"
            continue
        assert message["method"] == "notifications/tasks", message
        task = message["params"]
        assert task["taskId"] == task_id and task["_meta"]["io.modelcontextprotocol/subscriptionId"] == "listen-1"
        assert "resultType" not in task, task
        heard.append(task)
        if task["status"] == "input_required":
            (key, question), = task["inputRequests"].items()
            assert "python" in question["params"]["message"], question
            answer = {"taskId": task_id, "inputResponses": {key: {"action": "accept",
                                                                   "content": {"interpretation": "snake"}}}}
            assert g.modern("tasks/update", answer, path="/mcp", capabilities=capabilities).json()["result"]
    statuses = [t["status"] for t in heard]
    assert statuses[0] == "working" and statuses[-1] == "completed", statuses
    assert "input_required" in statuses, statuses
    assert all(a != b or a == "working" for a, b in zip(statuses, statuses[1:])), "told of changes only"
    assert "python (snake)" in heard[-1]["result"]["content"][0]["text"], heard[-1]


def test_a_modern_clients_task_asks_its_question_in_tasks_get_and_hears_the_answer(gantry):
    other = "gty_" + secrets.token_urlsafe(32)
    g = gantry({"upstreams": {"everything": everything_stdio()},
                "auth": {"api_keys": [{"name": "other", "sha256": hashlib.sha256(other.encode()).hexdigest()}]}})
    capabilities = {**WITH_TASKS, "elicitation": {}}
    created = modern_task(g, {"topic": "python", "ambiguous": True}, path="/mcp", capabilities=capabilities)
    task_id = created["result"]["taskId"]

    asking = poll(g, task_id, lambda t: t["status"] == "input_required", path="/mcp", capabilities=capabilities)
    (key, question), = asking["inputRequests"].items()
    assert question["method"] == "elicitation/create", question
    assert "python" in question["params"]["message"], question
    # Asked again until answered, under the same key.
    again = poll(g, task_id, lambda t: True, path="/mcp", capabilities=capabilities)
    assert again["status"] == "input_required" and list(again["inputRequests"]) == [key], again

    answer = {"taskId": task_id, "inputResponses": {key: {"action": "accept", "content": {"interpretation": "snake"}}}}
    theirs = g.modern("tasks/update", answer, path="/mcp", capabilities=capabilities,
                      headers={"Authorization": f"Bearer {other}"}).json()
    assert theirs["error"]["code"] == -32602, "another caller's task is unknown to them"
    ack = g.modern("tasks/update", answer, path="/mcp", capabilities=capabilities).json()
    assert ack["result"] == {"resultType": "complete"}, ack
    # An answer to a key that is no longer open is ignored.
    assert g.modern("tasks/update", answer, path="/mcp", capabilities=capabilities).json()["result"] == ack["result"]

    done = poll(g, task_id, lambda t: t["status"] in TERMINAL, path="/mcp", capabilities=capabilities)
    assert done["status"] == "completed", done
    assert "python (snake)" in done["result"]["content"][0]["text"], done


def test_a_listening_client_hears_that_a_task_its_server_forgot_failed(gantry):
    from test_resilience import children
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    task_id = modern_task(g, {"topic": "crash"})["result"]["taskId"]
    server = children(g.proc.pid)[0]
    heard = []
    for message in listened(g, {"notifications": {"taskIds": [task_id]}}, "/mcp/everything", WITH_TASKS,
                            until=lambda m: m.get("params", {}).get("status") in TERMINAL):
        if message["method"] == "notifications/tasks":
            heard.append(message["params"])
            if len(heard) == 1:
                # The server dies with the task; gantry restarts it, without the task.
                os.kill(server, signal.SIGKILL)
    assert heard[0]["status"] == "working", heard
    gone = heard[-1]
    assert gone["status"] == "failed" and gone["taskId"] == task_id, gone
    assert gone["error"]["code"] == -32602, gone
    assert g.metric("mcp_upstream_restarts_total", server="everything") == 1


def test_a_modern_client_cancels_its_task(gantry):
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    task_id = modern_task(g, {"topic": "gateways"})["result"]["taskId"]
    ack = g.modern("tasks/cancel", {"taskId": task_id}, path="/mcp/everything", capabilities=WITH_TASKS).json()
    assert ack["result"] == {"resultType": "complete"}, ack
    done = poll(g, task_id, lambda t: t["status"] in TERMINAL)
    assert done["status"] == "cancelled", done


def everything_replicas(gantry):
    """Two gantry processes in front of server-everything with the same API key and
    session key, as replicas behind a load balancer have."""
    session_key = base64.b64encode(secrets.token_bytes(32)).decode()
    config = {"upstreams": {"everything": everything_stdio()}}
    a = gantry(config, session_key=session_key)
    return a, gantry(config, session_key=session_key, key=a.key)


def test_a_task_request_that_reaches_another_replica_is_carried_to_the_one_running_it(gantry):
    # Stateless clients carry no session a load balancer could keep on one replica, and
    # each replica has its own upstream session: the task lives on the one that made it.
    a, b = everything_replicas(gantry)
    task_id = modern_task(a, {"topic": "replicas"})["result"]["taskId"]

    done = poll(b, task_id, lambda t: t["status"] in TERMINAL)
    assert done["status"] == "completed" and "Research Report: replicas" in done["result"]["content"][0]["text"]
    assert b.metric("mcp_requests_forwarded_total", held="task", outcome="forwarded") >= 1
    assert b.metric("mcp_requests_total", server="everything", method="tasks/get") is None, "b's upstream saw none"
    assert a.metric("mcp_requests_total", server="everything", method="tasks/get", outcome="ok") >= 1

    a.stop()
    error = b.modern("tasks/get", {"taskId": task_id}, path="/mcp/everything", capabilities=WITH_TASKS).json()["error"]
    assert error["code"] == -32602 and "could not be reached" in error["message"], error
    assert b.metric("mcp_requests_forwarded_total", held="task", outcome="unreachable") == 1


def test_a_listen_that_reaches_another_replica_hears_the_task_running_on_the_first(gantry):
    a, b = everything_replicas(gantry)
    task_id = modern_task(a, {"topic": "replicas"})["result"]["taskId"]
    heard = list(listened(b, {"notifications": {"taskIds": [task_id]}}, "/mcp/everything", WITH_TASKS,
                          until=lambda m: m.get("params", {}).get("status") in TERMINAL))
    assert heard[0]["params"]["notifications"] == {"taskIds": [task_id]}, heard[0]
    done = heard[-1]["params"]
    assert done["status"] == "completed" and "Research Report: replicas" in done["result"]["content"][0]["text"]
    assert b.metric("mcp_requests_forwarded_total", held="task", outcome="forwarded") >= 1
    assert b.metric("mcp_requests_total", server="everything", method="tasks/get") is None, "b's upstream saw none"


def official_tasks_client(g, tmp_path, path: str, tool: str, arguments: dict, protocol: str) -> dict:
    """Runs a tool as a task with @modelcontextprotocol/ext-tasks on the official TypeScript
    client (tasks_extension_client.mjs), answering any question with "snake"; its report."""
    # Node resolves the script's imports from beside it.
    (tmp_path / "node_modules").symlink_to(TOOLS / "npm/node_modules")
    script = tmp_path / "tasks_extension_client.mjs"
    script.write_text((Path(__file__).parent / "tasks_extension_client.mjs").read_text())
    run = subprocess.run(["node", str(script), g.base + path, g.key, tool, json.dumps(arguments), "snake"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PROTOCOL": protocol})
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_official_tasks_extension_client_runs_a_task_through_gantry(gantry, tmp_path):
    # 2026-07-28: the client finds the extension in server/discover, polls, answers the
    # task's question through tasks/update, and decodes every answer against the
    # extension's schemas.
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    report = official_tasks_client(g, tmp_path, "/mcp/everything", "simulate-research-query",
                                   {"topic": "python", "ambiguous": True}, "2026-07-28")
    assert report["asked"] == ["elicitation"], report
    assert report["outcome"] == "completed", report
    assert "Research Report: python (snake)" in report["result"]["content"][0]["text"], report
    assert g.metric("mcp_requests_total", server="everything", method="tasks/get", outcome="ok") >= 2


def test_the_official_tasks_client_runs_2025_11_25_tasks_on_both_endpoints(gantry, tmp_path):
    # The same client in a 2025-11-25 session, where it asks for the task itself once the
    # server (or on /mcp, gantry) offers tasks. No question here: its 2025-11-25 requester
    # reads tasks/result only once the task has ended, and server-everything gives a task's
    # questions only to tasks/result, so a question would wait for ever (directly too).
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    for path, tool in (("/mcp/everything", "simulate-research-query"), ("/mcp", "everything__simulate-research-query")):
        (tmp_path / path.strip("/").replace("/", "-")).mkdir()
        report = official_tasks_client(g, tmp_path / path.strip("/").replace("/", "-"), path, tool,
                                       {"topic": "gateways"}, "2025-11-25")
        assert report["outcome"] == "completed", (path, report)
        assert "Research Report: gateways" in report["result"]["content"][0]["text"], (path, report)
    assert g.metric("mcp_requests_total", server="everything", method="tasks/result", outcome="ok") == 2
