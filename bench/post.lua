-- POST /api/v1/llm/feedback/responses with a unique id per request:
-- BENCH_RUN (unique per run) + thread number + a per-thread counter.
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tag", (os.getenv("BENCH_RUN") or tostring(os.time())) .. "-" .. threads)
end

local counter = 0

function request()
  counter = counter + 1
  local body = '{"id":"w' .. tag .. '-' .. counter ..
    '","rating":"thumbs_up","description":"Helpful answer, thanks.","model":"gpt-4o"}'
  return wrk.format("POST", "/api/v1/llm/feedback/responses", nil, body)
end
