-- wrk script: didlogic's mixed workload, 70% CDR, 20% recording, 10% SMS, every body unique
-- (so none is a duplicate). The hook token comes from $DIDGATE_TOKEN. At the end it prints
-- `sent N acked N other N`: requests written, 2xx answers read, other answers read, so the
-- driver can check acked <= stored <= sent against the store.
local token = os.getenv("DIDGATE_TOKEN") or "token"
-- Ids must be unique across runs against the same store, or later runs are all duplicates.
local run = os.getenv("DIDGATE_RUN") or tostring(os.time())
-- Where recording URLs point: a local file server when the archiver is measured.
local recording_base = os.getenv("DIDGATE_RECORDING_BASE") or "https://ddl-aws-bucket.com/rec/"
-- With DIDGATE_PACE_MS, each connection waits that long before each request: a steady rate
-- (about connections * 1000 / (pace + latency) per second) instead of as fast as it can.
local pace_ms = tonumber(os.getenv("DIDGATE_PACE_MS") or "0")
if pace_ms > 0 then
  delay = function()
    return pace_ms
  end
end
-- With DIDGATE_CALLDATE_NOW, calls carry the current time (so alert rules, whose windows end
-- now, have every call of the run to judge); else the seed's fixed date.
local calldate_now = os.getenv("DIDGATE_CALLDATE_NOW") ~= nil
local function calldate()
  if calldate_now then
    return os.date("!%Y-%m-%dT%H:%M:%SZ")
  end
  return "2026-05-12T05:17:58Z"
end
-- Globals, not locals: done() reads them from each thread with thread:get().
counter = 0
acked = 0
other = 0
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

local json_headers = { ["Content-Type"] = "application/json" }
local form_headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }

request = function()
  counter = counter + 1
  local id = string.format("%s-%d-%d", run, thread_id, counter)
  local pick = counter % 10
  if pick < 7 then
    local body = '{"calldate":"' .. calldate() .. '","callid":"' .. id ..
      '","direction":"outbound","disposition":"ANSWERED","dst":"448081697031","duration":9,' ..
      '"billsec":7,"event":"cdr","src":"441273004315","user_id":76141}'
    return wrk.format("POST", "/hooks/" .. token .. "/cdr", json_headers, body)
  elseif pick < 9 then
    local body = '{"calldate":"' .. calldate() .. '","callid":"' .. id ..
      '","event":"recording","recording_url":"' .. recording_base .. id ..
      '.mp3?X-Amz-Expires=604800&X-Amz-Signature=0123456789abcdef","user_id":76141}'
    return wrk.format("POST", "/hooks/" .. token .. "/recording", json_headers, body)
  else
    local body = "src=15551234567&dst=448001234567&message=Hello+world+" .. id ..
      "&received_at=2026-05-13+12%3A45%3A40+UTC"
    return wrk.format("POST", "/hooks/" .. token .. "/sms", form_headers, body)
  end
end

response = function(status, headers, body)
  if status >= 200 and status < 300 then
    acked = acked + 1
  else
    other = other + 1
  end
end

done = function(summary, latency, requests)
  local sent, ok, bad = 0, 0, 0
  for _, t in ipairs(threads) do
    sent = sent + t:get("counter")
    ok = ok + t:get("acked")
    bad = bad + t:get("other")
  end
  io.write(string.format("sent %d acked %d other %d\n", sent, ok, bad))
end
