"""A stdio MCP server with every tool, resource and prompt the official conformance suite's
server scenarios ask for (@modelcontextprotocol/conformance 0.1.16: test_simple_text …
test_elicitation_sep1330_enums, test://static-text …, test_simple_prompt …; 0.2.0's
2026-07-28 scenarios: test_logging_tool, test_missing_capability,
test_streaming_elicitation, the SEP-2106 schema keywords, a tool with SEP-2243
x-mcp-header arguments), written from the scenarios' checks. server-everything has few of them, so behind a gantry bridge this server lets the
whole suite, sampling and elicitation included, judge what gantry relays. It speaks the
session era only: a 2026-07-28 client reaches it through gantry's translation.
Plain JSON-RPC lines, one request at a time, like a simple real server, except that
requests keep being served while one waits for the client's answer. It sends its log
messages whatever level it is asked for, as some servers do: only gantry filters them."""
import json
import sys

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
WAV = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQAAAAA="
SCHEMA_2020_12 = "https://json-schema.org/draft/2020-12/schema"


def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def text(t):
    return {"type": "text", "text": t}


def resource(uri, body, mime="text/plain"):
    return {"type": "resource", "resource": {"uri": uri, "mimeType": mime, "text": body}}


def no_args(description):
    return {"description": description, "inputSchema": {"type": "object", "properties": {}}}


def string_args(description, *names):
    return {"description": description, "inputSchema": {
        "type": "object", "properties": {n: {"type": "string"} for n in names}}}


TOOLS = {
    "test_simple_text": no_args("Returns simple text content"),
    "test_image_content": no_args("Returns an image"),
    "test_audio_content": no_args("Returns audio"),
    "test_embedded_resource": no_args("Returns an embedded resource"),
    "test_multiple_content_types": no_args("Returns text, an image and a resource"),
    "test_tool_with_logging": no_args("Sends three log messages, then answers"),
    "test_logging_tool": no_args("Sends three log messages, then answers"),
    "test_missing_capability": no_args("Needs the client's model: asks it (sampling)"),
    "test_streaming_elicitation": no_args("Asks the user for a name while the call is open"),
    # 2026-07-28's input-required scenarios: each asks with session-era requests, which
    # gantry turns into InputRequiredResult round trips for a 2026-07-28 client.
    "test_input_required_result_elicitation": no_args("Asks the user's name"),
    "test_input_required_result_sampling": no_args("Asks the client's model a question"),
    "test_input_required_result_list_roots": no_args("Asks the client's roots"),
    "test_input_required_result_request_state": no_args("Asks the user to confirm"),
    "test_input_required_result_tampered_state": no_args("Asks the user to confirm"),
    "test_input_required_result_multiple_inputs": no_args("Asks a name, a greeting and the roots"),
    "test_input_required_result_multi_round": no_args("Asks a name, then a colour"),
    "test_input_required_result_capabilities": no_args("Asks the client's model only"),
    "test_tool_with_progress": no_args("Reports progress three times, then answers"),
    "test_error_handling": no_args("Always fails, as a tool result"),
    "test_sampling": string_args("Asks the client's model", "prompt"),
    "test_elicitation": string_args("Asks the user for a name and an email", "message"),
    "test_elicitation_sep1034_defaults": no_args("Asks with default values (SEP-1034)"),
    "test_elicitation_sep1330_enums": no_args("Asks with every enum form (SEP-1330)"),
    "test_reconnection": no_args("Answers; over HTTP the stream would close first"),
    # SEP-2243: arguments a client mirrors in Mcp-Param-* headers, which gantry checks.
    "test_param_headers": {"description": "Echoes where it would deploy", "inputSchema": {
        "type": "object", "required": ["region"], "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "replicas": {"type": "integer", "x-mcp-header": "Replicas"}}}},
    "json_schema_2020_12_tool": {"description": "An input schema in JSON Schema 2020-12", "inputSchema": {
        "$schema": SCHEMA_2020_12, "type": "object",
        "$defs": {"address": {"$anchor": "addressDef", "type": "object", "properties": {
            "street": {"type": "string"}, "city": {"type": "string"}}}},
        "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"},
                       "contactMethod": {"type": "string", "enum": ["phone", "email"]},
                       "phone": {"type": "string"}, "email": {"type": "string"}},
        "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
        "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
        "then": {"required": ["phone"]}, "else": {"required": ["email"]},
        "additionalProperties": False}},
}

DEFAULTS_SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "default": "John Doe"},
    "age": {"type": "integer", "default": 30},
    "score": {"type": "number", "default": 95.5},
    "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
    "verified": {"type": "boolean", "default": True}}}

ENUMS_SCHEMA = {"type": "object", "properties": {
    "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
    "titledSingle": {"type": "string", "oneOf": [
        {"const": "value1", "title": "First"}, {"const": "value2", "title": "Second"}]},
    "legacyEnum": {"type": "string", "enum": ["opt1", "opt2"], "enumNames": ["Option 1", "Option 2"]},
    "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2"]}},
    "titledMulti": {"type": "array", "items": {"anyOf": [
        {"const": "value1", "title": "First"}, {"const": "value2", "title": "Second"}]}}}}

RESOURCES = [
    {"uri": "test://static-text", "name": "static-text", "mimeType": "text/plain"},
    {"uri": "test://static-binary", "name": "static-binary", "mimeType": "image/png"},
    {"uri": "test://watched-resource", "name": "watched-resource", "mimeType": "text/plain"},
    {"uri": "test://example-resource", "name": "example-resource", "mimeType": "text/plain"},
]
TEMPLATES = [{"uriTemplate": "test://template/{id}/data", "name": "template", "mimeType": "application/json"}]

PROMPTS = [
    {"name": "test_simple_prompt", "description": "A prompt without arguments"},
    {"name": "test_prompt_with_arguments", "description": "A prompt with two arguments",
     "arguments": [{"name": "arg1", "required": True}, {"name": "arg2", "required": True}]},
    {"name": "test_prompt_with_embedded_resource", "description": "A prompt embedding a resource",
     "arguments": [{"name": "resourceUri", "required": True}]},
    {"name": "test_prompt_with_image", "description": "A prompt with an image"},
    {"name": "test_input_required_result_prompt", "description": "Asks the user for its context"},
]

next_id = 0


def ask(method, params):
    """A request to the client; its answer. Requests that come meanwhile are served, as a
    concurrent server would: a client may leave a question unanswered for a long time (a
    2026-07-28 client given an InputRequiredResult may never retry)."""
    global next_id
    next_id += 1
    mine = f"conformance-{next_id}"
    send({"jsonrpc": "2.0", "id": mine, "method": method, "params": params})
    while True:
        msg = json.loads(sys.stdin.readline())
        if msg.get("id") == mine and "method" not in msg:
            return msg
        serve(msg)


def call_tool(name, args, meta):
    if name == "test_simple_text":
        return {"content": [text("This is a simple text response for testing.")]}
    if name == "test_image_content":
        return {"content": [{"type": "image", "data": PNG, "mimeType": "image/png"}]}
    if name == "test_audio_content":
        return {"content": [{"type": "audio", "data": WAV, "mimeType": "audio/wav"}]}
    if name == "test_embedded_resource":
        return {"content": [resource("test://embedded-resource", "This is an embedded resource.")]}
    if name == "test_multiple_content_types":
        return {"content": [text("Several kinds of content:"), {"type": "image", "data": PNG, "mimeType": "image/png"},
                            resource("test://mixed-content-resource", '{"test": "data"}', "application/json")]}
    if name in ("test_tool_with_logging", "test_logging_tool"):
        for step in ["Tool execution started", "Tool processing data", "Tool execution completed"]:
            send({"jsonrpc": "2.0", "method": "notifications/message",
                  "params": {"level": "info", "logger": "conformance", "data": step}})
        return {"content": [text("Logged three messages.")]}
    if name == "test_tool_with_progress":
        token = meta.get("progressToken")
        if token is not None:
            for progress in [0, 50, 100]:
                send({"jsonrpc": "2.0", "method": "notifications/progress",
                      "params": {"progressToken": token, "progress": progress, "total": 100}})
        return {"content": [text("Progress reported.")]}
    if name == "test_error_handling":
        return {"isError": True, "content": [text("This tool intentionally returns an error for testing")]}
    if name in ("test_sampling", "test_missing_capability"):
        answer = ask("sampling/createMessage", {"messages": [
            {"role": "user", "content": text(args.get("prompt", "Say hello"))}], "maxTokens": 100})
        said = answer.get("result", {}).get("content", {}).get("text", json.dumps(answer.get("error")))
        return {"content": [text(f"LLM response: {said}")]}
    if name in ("test_elicitation", "test_elicitation_sep1034_defaults", "test_elicitation_sep1330_enums",
                "test_streaming_elicitation"):
        schema = {"test_elicitation": {"type": "object", "properties": {
            "username": {"type": "string"}, "email": {"type": "string"}}, "required": ["username", "email"]},
            "test_streaming_elicitation": {"type": "object", "properties": {"name": {"type": "string"}}},
            "test_elicitation_sep1034_defaults": DEFAULTS_SCHEMA,
            "test_elicitation_sep1330_enums": ENUMS_SCHEMA}[name]
        answer = ask("elicitation/create", {"message": args.get("message", "Please answer"), "requestedSchema": schema})
        return {"content": [text(f"Elicitation answered: {json.dumps(answer.get('result', answer.get('error')))}")]}
    if name.startswith("test_input_required_result_"):
        return {"content": [text(" ".join(input_required(name)))]}
    if name == "test_param_headers":
        return {"content": [text(f"Deploying to {args.get('region')}")]}
    if name == "test_reconnection":
        return {"content": [text("Reconnection test completed successfully")]}
    if name == "json_schema_2020_12_tool":
        return {"content": [text(json.dumps(args))]}
    return None


NAME_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def elicit(message, schema):
    answer = ask("elicitation/create", {"message": message, "requestedSchema": schema})
    return answer.get("result", {}).get("content") or {}


def sample(question, max_tokens=100):
    answer = ask("sampling/createMessage", {"messages": [
        {"role": "user", "content": text(question)}], "maxTokens": max_tokens})
    return answer.get("result", {}).get("content", {}).get("text", "")


def input_required(name):
    """What a tool of the input-required scenarios asks, as the lines of its answer."""
    if name in ("test_input_required_result_elicitation", "test_input_required_result_tampered_state"):
        return [f"Hello, {elicit('What is your name?', NAME_SCHEMA).get('name')}!"]
    if name in ("test_input_required_result_sampling", "test_input_required_result_capabilities"):
        return [f"The model said: {sample('What is the capital of France?')}"]
    if name == "test_input_required_result_list_roots":
        roots = ask("roots/list", {}).get("result", {}).get("roots", [])
        return ["Roots:", *[r.get("uri", "") for r in roots]]
    if name == "test_input_required_result_request_state":
        confirmed = elicit("Please confirm", {"type": "object", "properties": {"ok": {"type": "boolean"}},
                                              "required": ["ok"]})
        return [f"state-ok, confirmed: {confirmed.get('ok')}"]
    if name == "test_input_required_result_multiple_inputs":
        who = elicit("What is your name?", NAME_SCHEMA).get("name")
        greeting = sample("Generate a greeting", 50)
        roots = ask("roots/list", {}).get("result", {}).get("roots", [])
        return [f"{greeting}, {who}", *[r.get("uri", "") for r in roots]]
    if name == "test_input_required_result_multi_round":
        who = elicit("Step 1: What is your name?", NAME_SCHEMA).get("name")
        colour = elicit("Step 2: What is your favorite color?", {"type": "object", "properties": {
            "color": {"type": "string"}}, "required": ["color"]}).get("color")
        return [f"{who} likes {colour}"]
    return []


def read_resource(uri):
    if uri == "test://static-binary":
        return {"contents": [{"uri": uri, "mimeType": "image/png", "blob": PNG}]}
    if uri.startswith("test://template/") and uri.endswith("/data"):
        rid = uri[len("test://template/"):-len("/data")]
        return {"contents": [{"uri": uri, "mimeType": "application/json", "text": json.dumps({"id": rid})}]}
    if any(r["uri"] == uri for r in RESOURCES):
        return {"contents": [{"uri": uri, "mimeType": "text/plain", "text": f"The content of {uri}."}]}
    return None


def get_prompt(name, args):
    if name == "test_simple_prompt":
        return {"messages": [{"role": "user", "content": text("This is a simple prompt for testing.")}]}
    if name == "test_prompt_with_arguments":
        return {"messages": [{"role": "user", "content": text(
            f"Prompt with arguments: arg1='{args.get('arg1')}', arg2='{args.get('arg2')}'")}]}
    if name == "test_prompt_with_embedded_resource":
        uri = args.get("resourceUri", "test://example-resource")
        return {"messages": [{"role": "user", "content": resource(uri, f"The content of {uri}.")},
                             {"role": "user", "content": text("Please process the embedded resource above.")}]}
    if name == "test_input_required_result_prompt":
        context = elicit("What context should the prompt use?", {"type": "object", "properties": {
            "context": {"type": "string"}}, "required": ["context"]}).get("context")
        return {"messages": [{"role": "user", "content": text(f"Use this context: {context}")}]}
    if name == "test_prompt_with_image":
        return {"messages": [{"role": "user", "content": {"type": "image", "data": PNG, "mimeType": "image/png"}},
                             {"role": "user", "content": text("Please analyze the image above.")}]}
    return None


def handle(msg):
    method, params = msg.get("method"), msg.get("params") or {}
    if method == "initialize":
        asked = params.get("protocolVersion")
        return {"protocolVersion": asked if asked in ("2025-06-18", "2025-11-25", "2025-03-26") else "2025-11-25",
                "capabilities": {"tools": {}, "prompts": {}, "resources": {"subscribe": True},
                                 "logging": {}, "completions": {}},
                "serverInfo": {"name": "conformance-upstream", "version": "1.0.0"}}
    if method in ("ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"):
        return {}
    if method == "tools/list":
        return {"tools": [{"name": n, **t} for n, t in TOOLS.items()]}
    if method == "tools/call":
        return call_tool(params.get("name"), params.get("arguments") or {}, params.get("_meta") or {})
    if method == "resources/list":
        return {"resources": RESOURCES}
    if method == "resources/templates/list":
        return {"resourceTemplates": TEMPLATES}
    if method == "resources/read":
        return read_resource(params.get("uri"))
    if method == "prompts/list":
        return {"prompts": PROMPTS}
    if method == "prompts/get":
        return get_prompt(params.get("name"), params.get("arguments") or {})
    if method == "completion/complete":
        typed = (params.get("argument") or {}).get("value", "")
        values = [v for v in ["testValue1", "testValue2", "paris", "park"] if v.startswith(typed)]
        return {"completion": {"values": values, "total": len(values), "hasMore": False}}
    return None


def serve(msg):
    if "id" not in msg or "method" not in msg:
        return  # a notification, or an answer nobody waits for
    result = handle(msg)
    if result is None:
        known = msg["method"] in ("tools/call", "resources/read", "prompts/get")
        send({"jsonrpc": "2.0", "id": msg["id"], "error": {
            "code": -32602 if known else -32601, "message": f"{msg['method']}: nothing by that name"}})
    else:
        send({"jsonrpc": "2.0", "id": msg["id"], "result": result})


for line in sys.stdin:
    serve(json.loads(line))
