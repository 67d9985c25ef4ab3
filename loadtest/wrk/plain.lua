-- Plain GETs: the weighted split decides the arm.
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local report = require("report")
done = report.done
