-- Open Inference Protocol tensor requests to weir-engine: one [1, 16] FP32
-- row for the shipped `mlp` model (INPUT0 [-1, 16] -> OUTPUT0 [-1, 4]),
-- POSTed to $WEIR_PATH (default /v2/models/mlp/infer).
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local report = require("report")

local data = {}
for i = 1, 16 do data[i] = string.format("%.2f", (i - 8) / 8) end
wrk.method = "POST"
wrk.path = os.getenv("WEIR_PATH") or "/v2/models/mlp/infer"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,16],"data":[' ..
  table.concat(data, ",") .. ']}]}'
done = report.done
