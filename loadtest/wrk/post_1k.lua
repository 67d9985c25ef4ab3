-- POSTs of a 1 KiB OpenAI chat body to $WEIR_PATH (default
-- /v1/chat/completions): with and without the route's Wasm filter.
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local report = require("report")

local text = string.rep("The quick brown fox jumps over the lazy dog. 敏捷的狐狸跳过懒狗。", 12)
text = text:sub(1, 900)
wrk.method = "POST"
wrk.path = os.getenv("WEIR_PATH") or "/v1/chat/completions"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"model":"tiny-lm","messages":[{"role":"user","content":"' .. text .. '"}]}'
done = report.done
