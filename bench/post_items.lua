-- wrk script: single-item POST /items with ids unique per thread and run,
-- so every request adds a new item (the expensive path).
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  prefix = (args[1] or "wrk") .. "-" .. tid .. "-"
  n = 0
end
function request()
  n = n + 1
  local body = '[{"id":"' .. prefix .. n .. '","tenant":"wrk"}]'
  return wrk.format("POST", "/items", {["Content-Type"] = "application/json"}, body)
end
