-- wrk script for scripts/bench-tracking: cycles through the request paths
-- listed one a line in the file given after `--` (round robin; each thread
-- starts at its own offset so the threads do not hit the same token in
-- step), and prints one machine-readable summary line at the end:
--   BENCH requests=R duration_us=D rps=X non2xx=S errors=E p50_us=A p99_us=B
-- (`non2xx` is wrk's "Non-2xx or 3xx responses": status > 399; `errors` is
-- the sum of connect, read, write and timeout socket errors).
--
-- Usage: wrk ... -s scripts/bench-tracking.lua http://HOST:PORT -- PATHS_FILE

local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local paths = {}
local i = 0

function init(args)
  local file = args[1]
  if file == nil then error("bench-tracking.lua: pass the paths file after --") end
  for line in io.lines(file) do
    if line ~= "" then paths[#paths + 1] = line end
  end
  if #paths == 0 then error("bench-tracking.lua: no paths in " .. file) end
  i = (tid * 7919) % #paths
end

-- A browser's user agent: Herald takes the path of a person's open (a
-- request without one would be flagged as a machine's; same work).
local headers = { ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36" }

function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i], headers)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d rps=%.1f non2xx=%d errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
