-- GET /api/v1/llm/feedback/responses/pre-N on preloaded entries.
local rows = tonumber(os.getenv("BENCH_ROWS") or "10000")

function request()
  return wrk.format("GET", "/api/v1/llm/feedback/responses/pre-" .. math.random(1, rows), nil, nil)
end
