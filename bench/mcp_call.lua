-- wrk script: a JSON-RPC tools/call per request with a unique id; every response body is
-- checked for the echoed marker, and failures are counted and reported.
-- Environment: BENCH_PATH, BENCH_TOOL, BENCH_AUTH (optional), BENCH_SESSION (optional),
-- BENCH_VERSION (protocol version header), BENCH_ID_BASE (where ids start; a warm-up run
-- on the same session uses other ids). BENCH_VERSION=2026-07-28 sends stateless requests:
-- no session, the version and client capabilities in `_meta`, Mcp-Method and Mcp-Name.
local threads = {}
local counter = 0
local bad = 0

function setup(thread)
  thread:set("id_base", tonumber(os.getenv("BENCH_ID_BASE") or "0") + #threads * 100000000)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.path = os.getenv("BENCH_PATH") or "/mcp"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Accept"] = "application/json, text/event-stream"
  local auth = os.getenv("BENCH_AUTH")
  if auth and auth ~= "" then wrk.headers["Authorization"] = "Bearer " .. auth end
  local session = os.getenv("BENCH_SESSION")
  if session and session ~= "" then wrk.headers["Mcp-Session-Id"] = session end
  version = os.getenv("BENCH_VERSION") or "2025-11-25"
  wrk.headers["MCP-Protocol-Version"] = version
  tool = os.getenv("BENCH_TOOL") or "echo"
  meta = ""
  if version == "2026-07-28" then
    wrk.headers["Mcp-Method"] = "tools/call"
    wrk.headers["Mcp-Name"] = tool
    meta = string.format(',"_meta":{"io.modelcontextprotocol/protocolVersion":"%s",'
      .. '"io.modelcontextprotocol/clientCapabilities":{}}', version)
  end
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"%s","arguments":{"message":"bench-%d"}%s}}',
    id_base + counter, tool, counter, meta)
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status ~= 200 or not string.find(body, "bench%-") or string.find(body, '"error"') then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local failures = 0
  for _, t in ipairs(threads) do failures = failures + (t:get("bad") or 0) end
  io.write(string.format(
    'RESULT {"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,"bad":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, failures,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout + summary.errors.status))
end
