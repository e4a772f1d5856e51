-- wrk script: POST /items where every item is new (the expensive path).
-- Arguments: a prefix unique to the run; "random" for ids spread over the
-- whole key space (like UUIDs) instead of a sequence per thread; items per
-- request (default 1). The counters' storage cares about the ids:
-- sequential ones land next to each other in its sorted tables, random
-- ones anywhere.
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  prefix = (args[1] or "wrk") .. "-" .. tid .. "-"
  random_ids = args[2] == "random"
  per_request = tonumber(args[3]) or 1
  math.randomseed(os.time() * 1000 + tid)
  n = 0
end
local function next_id()
  if random_ids then
    return string.format("%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
  end
  n = n + 1
  return prefix .. n
end
function request()
  local items = {}
  for i = 1, per_request do
    items[i] = '{"id":"' .. next_id() .. '","tenant":"wrk"}'
  end
  local body = "[" .. table.concat(items, ",") .. "]"
  return wrk.format("POST", "/items", {["Content-Type"] = "application/json"}, body)
end
