-- moat.conf(5) must document every setting and key the config loader
-- accepts: the keys are read from lua/moat/config.lua's checkers, so a new
-- key without a man page entry fails here (README "Running in production").
local function read(p)
  local f = assert(io.open(p, "r"))
  local s = f:read("a")
  f:close()
  return s
end

-- Every `key = checker` in config.lua: a key of a settings/record spec.
local function config_keys()
  local src = read("lua/moat/config.lua")
  local keys, seen = {}, {}
  local function add(k)
    if not seen[k] and not k:match("^__") then seen[k] = true; keys[#keys + 1] = k end
  end
  for k, rhs, call in src:gmatch("([%a_][%w_]*)%s*=%s*([%a_][%w_.]*)(%(?)") do
    if call == "(" and rhs ~= "function" then
      -- `local l = string_list(n, v)`: a call, not a checker
    elseif rhs == "function" or rhs == "string_list" or rhs == "check_bool" or rhs == "pair"
       or rhs == "secs" or rhs == "one_of" or rhs:match("^settings%.") then
      add(k)
    end
  end
  -- the table names and listener limits are plain lists in config.lua
  for list in src:gmatch("local table_names = (%b{})") do
    for k in list:gmatch('"([%w_]+)"') do add(k) end
  end
  for list in src:gmatch("local listener_limits = (%b{})") do
    for k in list:gmatch("([%a_][%w_]*)%s*=") do add(k) end
  end
  return keys
end

describe("docs/man/moat.conf.5", function()
  it("names every setting and record key that lua/moat/config.lua accepts", function()
    local page = read("docs/man/moat.conf.5")
    local keys = config_keys()
    assert.is_true(#keys > 80, "found only " .. #keys .. " keys: is the extraction broken?")
    local missing = {}
    for _, k in ipairs(keys) do
      if not page:find("%f[%w_]" .. k .. "%f[^%w_]") then missing[#missing + 1] = k end
    end
    assert.same({}, missing)
  end)
end)
