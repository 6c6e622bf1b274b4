-- wrk script: GET requests with a bearer token; every answer must be 200 and JSON.
-- Environment: BENCH_PATH, BENCH_AUTH.
local threads = {}
local bad = 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "GET"
  wrk.path = os.getenv("BENCH_PATH") or "/api/health"
  local auth = os.getenv("BENCH_AUTH")
  if auth and auth ~= "" then wrk.headers["Authorization"] = "Bearer " .. auth end
end

function response(status, headers, body)
  if status ~= 200 or string.sub(body, 1, 1) ~= "{" then
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
