-- POST prebuilt request bodies (see bench/bodies.py) and report one machine-readable line.
--
--   wrk -t2 -c32 -d10s --timeout 60s -s bench/wrk/post_bodies.lua http://127.0.0.1:8000 -- DIR
--
-- DIR holds `content_type`, `path`, `index` (body file names) and the body files. Each
-- connection cycles through the bodies (threads start at different ones). done() prints
--   WRK_JSON {"requests":..,"duration_s":..,"rps":..,"latency_ms":{"p50":..},"status":{..}}
-- with every HTTP status counted (2xx included) and 503s that carried Retry-After.

bodies_dir = bodies_dir or nil   -- the per-endpoint wrappers set a default
statuses = {}                    -- globals: done() reads them per thread with thread:get
retry_after = 0
local prepared = {}
local counter = 0
local threads = {}

local function read_file(path)
  local f = assert(io.open(path, "rb"), "cannot open " .. path)
  local data = f:read("*a")
  f:close()
  return data
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_index", #threads)
end

function init(args)
  local dir = args[1] or bodies_dir
  assert(dir, "pass the bodies folder after --, e.g. -- bench/bodies/classify")
  local content_type = trim(read_file(dir .. "/content_type"))
  local path = trim(read_file(dir .. "/path"))
  for name in io.lines(dir .. "/index") do
    if #trim(name) > 0 then
      local body = read_file(dir .. "/" .. trim(name))
      table.insert(prepared, wrk.format("POST", path, {["Content-Type"] = content_type}, body))
    end
  end
  assert(#prepared > 0, "no bodies listed in " .. dir .. "/index")
  counter = thread_index or 0
end

function request()
  counter = counter + 1
  return prepared[(counter % #prepared) + 1]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 503 and (headers["retry-after"] or headers["Retry-After"]) then
    retry_after = retry_after + 1
  end
end

local function json_object(tbl)
  local parts = {}
  for k, v in pairs(tbl) do
    table.insert(parts, string.format('"%s":%s', tostring(k), tostring(v)))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local counts, with_retry_after = {}, 0
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do counts[k] = (counts[k] or 0) + v end
    with_retry_after = with_retry_after + t:get("retry_after")
  end
  local pct = {}
  for _, p in ipairs({50, 90, 99, 99.9}) do
    pct[string.format("p%g", p)] = string.format("%.3f", latency:percentile(p) / 1000)
  end
  pct["mean"] = string.format("%.3f", latency.mean / 1000)
  pct["max"] = string.format("%.3f", latency.max / 1000)
  local e = summary.errors
  local errors = {connect = e.connect, read = e.read, write = e.write,
                  timeout = e.timeout, status = e.status}
  local seconds = summary.duration / 1e6
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_s":%.3f,"rps":%.3f,"bytes":%d,' ..
    '"latency_ms":%s,"status":%s,"retry_after_503":%d,"socket_errors":%s}\n',
    summary.requests, seconds, summary.requests / seconds, summary.bytes,
    json_object(pct), json_object(counts), with_retry_after, json_object(errors)))
end
