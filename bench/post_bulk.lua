-- wrk script: POST /items with 1,000 items per request, every item new.
-- Arguments: a prefix unique to the run, then "random" for ids spread over
-- the whole key space (like UUIDs) instead of a sequence per thread. The
-- counters' storage cares: sequential ids land next to each other in its
-- sorted tables, random ids land anywhere.
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  prefix = (args[1] or "wrk") .. "-" .. tid .. "-"
  random_ids = args[2] == "random"
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
  for i = 1, 1000 do
    items[i] = '{"id":"' .. next_id() .. '","tenant":"wrk-bulk"}'
  end
  local body = "[" .. table.concat(items, ",") .. "]"
  return wrk.format("POST", "/items", {["Content-Type"] = "application/json"}, body)
end
