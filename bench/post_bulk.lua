-- wrk script: POST /items with 1,000 items per request, ids unique per
-- thread and run, so every item is new (the expensive path).
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
  local items = {}
  for i = 1, 1000 do
    n = n + 1
    items[i] = '{"id":"' .. prefix .. n .. '","tenant":"wrk-bulk"}'
  end
  local body = "[" .. table.concat(items, ",") .. "]"
  return wrk.format("POST", "/items", {["Content-Type"] = "application/json"}, body)
end
