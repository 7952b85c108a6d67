-- wrk script: didlogic's mixed workload, 70% CDR, 20% recording, 10% SMS, every body unique
-- (so none is a duplicate). The hook token comes from $DIDGATE_TOKEN.
local token = os.getenv("DIDGATE_TOKEN") or "token"
-- Ids must be unique across runs against the same store, or later runs are all duplicates.
local run = os.getenv("DIDGATE_RUN") or tostring(os.time())
local counter = 0
local thread_id = 0
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
    local body = '{"calldate":"2026-05-12T05:17:58Z","callid":"' .. id ..
      '","direction":"outbound","disposition":"ANSWERED","dst":"448081697031","duration":9,' ..
      '"billsec":7,"event":"cdr","src":"441273004315","user_id":76141}'
    return wrk.format("POST", "/hooks/" .. token .. "/cdr", json_headers, body)
  elseif pick < 9 then
    local body = '{"calldate":"2026-05-12T05:17:58Z","callid":"' .. id ..
      '","event":"recording","recording_url":"https://ddl-aws-bucket.com/rec/' .. id ..
      '.mp3?X-Amz-Expires=604800&X-Amz-Signature=0123456789abcdef","user_id":76141}'
    return wrk.format("POST", "/hooks/" .. token .. "/recording", json_headers, body)
  else
    local body = "src=15551234567&dst=448001234567&message=Hello+world+" .. id ..
      "&received_at=2026-05-13+12%3A45%3A40+UTC"
    return wrk.format("POST", "/hooks/" .. token .. "/sms", form_headers, body)
  end
end
