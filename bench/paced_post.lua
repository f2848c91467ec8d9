-- wrk script: POST a fixed offered load of distinct messages (open-loop pacing per wrk thread).
--
-- args: <bodies file> <rate per thread, req/s; 0 = closed loop> <run tag> <first patient number> <Authorization header value>
-- The bodies file has one JSON body per line, with @@ID@@ where the message id goes and @@NHS@@
-- where the patient's NHS number goes. Every request gets its own id (<tag>-<thread>-<n>), so no
-- request is a re-send, and its own patient (a synthetic 999 NHS number with a valid check
-- digit), as real referrals mostly are: the same few patients in every message would make every
-- transaction wait for the one before on the Patient row.
-- Pacing: request k of a thread is due at start + k/rate. delay() holds a free connection
-- until the next due time; when every connection is busy the request goes late, and
-- the lateness is counted (so a saturated server shows as late sends, not as good latency).
-- done() prints one JSON line, prefixed "WRK-JSON ", for bench/ingest.py to read.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } timespec;
  int clock_gettime(int clk_id, timespec *tp);
]]
local ts = ffi.new("timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local bodies, interval_ms, tag
local sent, issued, start_ms, next_patient = 0, 0, nil, 0
-- globals, not locals: done() reads them from each thread with thread:get()
late_1ms, late_max_ms, statuses = 0, 0, {}

function init(args)
  bodies = {}
  for line in io.lines(args[1]) do
    if #line > 0 then table.insert(bodies, line) end
  end
  local rate = tonumber(args[2])
  interval_ms = rate > 0 and 1000 / rate or 0 -- rate 0: closed loop, no pacing
  tag = args[3] .. "-" .. tostring(tid)
  next_patient = tonumber(args[4]) + tid * 100000
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = args[5]
end

function delay()
  if interval_ms == 0 then return 0 end
  local now = now_ms()
  if start_ms == nil then start_ms = now end
  local due = start_ms + sent * interval_ms
  sent = sent + 1
  if due >= now then return due - now end
  local late = now - due
  if late > 1 then late_1ms = late_1ms + 1 end
  if late > late_max_ms then late_max_ms = late end
  return 0
end

local function nhs_number(serial)
  -- 999 + 6 digits + the modulus 11 check digit; a serial whose check digit would be 10 moves on
  while true do
    local base = string.format("999%06d", serial % 1000000)
    local sum = 0
    for i = 1, 9 do sum = sum + tonumber(base:sub(i, i)) * (11 - i) end
    local check = (11 - sum % 11) % 11
    if check < 10 then return base .. check end
    serial = serial + 1
  end
end

function request()
  local n = issued -- not `sent`: another connection's delay() may run between a delay() and its request()
  issued = issued + 1
  local number = nhs_number(next_patient)
  next_patient = tonumber(number:sub(4, 9)) + 1
  local body = bodies[(n % #bodies) + 1]:gsub("@@ID@@", string.format("%s-%08d", tag, n)):gsub("@@NHS@@", number)
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  local key = tostring(status)
  if headers["X-Duplicate-Of"] or headers["x-duplicate-of"] then key = key .. "-duplicate" end
  statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
  local status_parts, late, late_max = {}, 0, 0
  local merged = {}
  for _, thread in ipairs(threads) do
    late = late + thread:get("late_1ms")
    local m = thread:get("late_max_ms")
    if m > late_max then late_max = m end
    for k, v in pairs(thread:get("statuses")) do merged[k] = (merged[k] or 0) + v end
  end
  for k, v in pairs(merged) do table.insert(status_parts, string.format('"%s":%d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'WRK-JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"late_over_1ms":%d,"late_max_ms":%.1f,"statuses":{%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout, late, late_max, table.concat(status_parts, ",")))
end
