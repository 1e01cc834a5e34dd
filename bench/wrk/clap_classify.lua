-- wrk script: POST /classify with a real multipart body prepared by bench_clap_service.py.
-- BODY_FILE holds the whole multipart body; BOUNDARY its boundary. done() prints one JSON
-- line the driver parses (requests/s, latency percentiles, every error count).

local body_file = os.getenv("BODY_FILE")
local boundary = os.getenv("BOUNDARY")
local f = assert(io.open(body_file, "rb"), "cannot open BODY_FILE " .. tostring(body_file))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_s": %.3f, "rps": %.3f, "p50_ms": %.2f, "p90_ms": %.2f, '
      .. '"p99_ms": %.2f, "max_ms": %.2f, "connect": %d, "read": %d, "write": %d, '
      .. '"status": %d, "timeout": %d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    e.connect, e.read, e.write, e.status, e.timeout))
end
