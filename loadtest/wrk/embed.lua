-- OpenAI embedding requests to weir-engine, one sentence each, POSTed to
-- $WEIR_PATH (default /v1/embeddings) for the model $WEIR_MODEL (default
-- all-minilm-l6-v2:1). The sentences are those of the reference benchmark's
-- batch (loadtest/reference/ort_embed.py BENCH_SENTENCES), sent in turn.
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local report = require("report")

local base = {
  "A man is playing a guitar.", "The quick brown fox jumps over the lazy dog.",
  "Weir routes requests to model servers and balances the load between them.",
  "What is the capital of France?",
}
local path = os.getenv("WEIR_PATH") or "/v1/embeddings"
local model = os.getenv("WEIR_MODEL") or "all-minilm-l6-v2:1"
local requests = {}
for i = 0, 31 do
  local sentence = base[i % #base + 1] .. " (" .. i .. ")"
  requests[i + 1] = wrk.format("POST", path, { ["content-type"] = "application/json" },
    '{"model":"' .. model .. '","input":"' .. sentence .. '"}')
end

local next = 0
function request()
  next = next % #requests + 1
  return requests[next]
end

done = report.done
