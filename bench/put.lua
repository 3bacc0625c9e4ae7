-- PUT /api/v1/llm/feedback/responses/pre-N on preloaded entries, alternating fields.
local rows = tonumber(os.getenv("BENCH_ROWS") or "10000")
local counter = 0

function request()
  counter = counter + 1
  local id = math.random(1, rows)
  local body
  if counter % 2 == 0 then
    body = '{"rating":"thumbs_down"}'
  else
    body = '{"description":"Could be more detailed."}'
  end
  return wrk.format("PUT", "/api/v1/llm/feedback/responses/pre-" .. id, nil, body)
end
