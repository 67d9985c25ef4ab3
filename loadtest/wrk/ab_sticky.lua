-- A mix of routing inputs: 10% of requests force an arm with x-ab-group,
-- 50% carry a sticky user key (10k users), the rest are weighted.
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local report = require("report")
done = report.done

local counter = 0
request = function()
  counter = counter + 1
  local r = counter % 10
  local headers = {}
  if r == 0 then
    headers["x-ab-group"] = "v2"
  elseif r <= 5 then
    headers["x-user-id"] = "user-" .. (counter * 7919 % 10000)
  end
  return wrk.format("GET", "/v1/models", headers)
end
