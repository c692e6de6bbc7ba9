-- Errors from config files and scripts name the whole path, however deep the
-- directory (Lua itself keeps only the last ~60 bytes of a chunk name).
local source = require "moat.source"

local made = {}

local function deep_file(body)
  local top = os.tmpname()
  os.remove(top)
  top = top .. "-moat-source"
  made[#made + 1] = top
  local dir = top .. "/" .. string.rep("long-directory-name/", 6)
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  local path = dir .. "moat.conf"
  local f = assert(io.open(path, "w"))
  f:write(body)
  f:close()
  return path
end

describe("moat.source", function()
  teardown(function()
    for _, d in ipairs(made) do os.execute("rm -rf '" .. d .. "'") end
  end)

  it("names the whole path for a syntax error", function()
    local path = deep_file("a = 1\nb = = 2\n")
    assert.is_true(#path > 80)
    local chunk, err = source.loadfile(path, {})
    assert.is_nil(chunk)
    assert.equals(path .. ":2:", err:sub(1, #path + 3))
  end)

  it("names the whole path for an error raised while the file runs", function()
    local path = deep_file("\n\nerror('no such thing', 1)\n")
    local ok, err = source.run(path, { error = error })
    assert.is_nil(ok)
    assert.equals(path .. ":3: no such thing", err)
  end)

  it("returns the file's value when it runs cleanly", function()
    local path = deep_file("return { x = 42 }\n")
    local ok, res = source.run(path, {})
    assert.is_true(ok)
    assert.equals(42, res.x)
  end)

  it("leaves messages about other files alone", function()
    local msg = "...other/dir/site.lua:4: boom"
    assert.equals(msg, source.full_path(msg, "/etc/moat/moat.conf"))
  end)

  it("reports a missing file", function()
    local chunk, err = source.loadfile("/nonexistent/moat.conf", {})
    assert.is_nil(chunk)
    assert.truthy(err:find("/nonexistent/moat.conf", 1, true), err)
  end)
end)
