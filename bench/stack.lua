-- wrk script of bench/stack.py: replay pre-signed deliveries (bench/signed.lua's file format).
--   wrk -t1 -c50 -d600s --latency -s bench/stack.lua URL/hooks/bench -- deliveries.tsv once
--   wrk -t1 -c50 -d10s  --latency -s bench/stack.lua URL/hooks/bench -- deliveries.tsv
-- With "once", each delivery is sent exactly once: a connection that finds none left idles (a
-- long delay() instead of a filler request, so the latency figures are the deliveries' only) and,
-- when the last delivery is answered, the script prints WRK_DONE and stops its thread; wrk itself
-- waits for -d or SIGINT, which bench/stack.py sends on reading WRK_DONE. Without "once" it wraps
-- around like signed.lua (a wrapped delivery is a duplicate: 200, no new event).
-- One thread only (-t1): wrk calls request() once on thread 0 to check it before any connection
-- exists ("verified" below), and that call must not use up a delivery.
local deliveries = {}
local next_index = 1
local once = false
local answered = 0
local verified = false
local claimed = 0 -- once: delay() said "go" but request() has not been called yet
statuses = {}
wrapped = 0

function init(args)
  for line in io.lines(args[1]) do
    local id, stamp, signature, body = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)\t(.*)$")
    deliveries[#deliveries + 1] = wrk.format("POST", nil, {
      ["content-type"] = "application/json", ["webhook-id"] = id,
      ["webhook-timestamp"] = stamp, ["webhook-signature"] = signature}, body)
  end
  once = args[2] == "once"
end

-- delay() runs before each request after a connection's first; in "once" mode it hands out the
-- remaining deliveries (claimed) so that no connection is sent off without one.
function delay()
  if not once then return 0 end
  if next_index + claimed > #deliveries then return 3600000 end -- nothing left: idle until stopped
  claimed = claimed + 1
  return 0
end

function request()
  if not verified then verified = true; return deliveries[1] end -- wrk's check, never sent
  if claimed > 0 then claimed = claimed - 1 end
  if next_index > #deliveries then -- once: only after a reconnect; resend the last (a duplicate)
    next_index = 1; wrapped = wrapped + 1
    if once then next_index = #deliveries end
  end
  local req = deliveries[next_index]
  next_index = next_index + 1
  return req
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  answered = answered + 1
  if once and answered == #deliveries then
    io.write("WRK_DONE\n")
    io.flush()
    wrk.thread:stop()
  end
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
