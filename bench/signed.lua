-- wrk script: replay pre-signed Standard Webhooks deliveries, each id once, and count statuses.
--   wrk -t1 -c32 -d10s --latency -s bench/signed.lua URL/hooks/bench -- deliveries.tsv
-- Signing is done beforehand in Python (bench/ingest.py writes the file: id, timestamp,
-- signature, body per line) because wrk's LuaJIT has no HMAC; replaying costs wrk nothing.
local deliveries = {}
local next_index = 1
statuses = {}
wrapped = 0

function init(args)
  for line in io.lines(args[1]) do
    local id, stamp, signature, body = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)\t(.*)$")
    deliveries[#deliveries + 1] = wrk.format("POST", nil, {
      ["content-type"] = "application/json", ["webhook-id"] = id,
      ["webhook-timestamp"] = stamp, ["webhook-signature"] = signature}, body)
  end
end

function request()
  local req = deliveries[next_index]
  next_index = next_index + 1
  if next_index > #deliveries then next_index = 1; wrapped = wrapped + 1 end
  return req
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

local threads = {}
function setup(thread) table.insert(threads, thread) end

function done(summary, latency, requests)
  local total, wraps = {}, 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do total[status] = (total[status] or 0) + n end
    wraps = wraps + thread:get("wrapped")
  end
  local parts = {}
  for status, n in pairs(total) do parts[#parts + 1] = string.format('"%s": %d', status, n) end
  io.write(string.format('WRK_JSON {"requests": %d, "seconds": %.3f, "p50_ms": %.3f, "p90_ms": %.3f, ' ..
    '"p99_ms": %.3f, "max_ms": %.3f, "errors_connect": %d, "errors_read": %d, "errors_write": %d, ' ..
    '"errors_timeout": %d, "errors_status": %d, "wrapped": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(90) / 1e3,
    latency:percentile(99) / 1e3, latency.max / 1e3, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, summary.errors.status, wraps, table.concat(parts, ", ")))
end
