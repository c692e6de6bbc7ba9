-- Integration: moat -c FILE --check reports the first error with file and line.
local moat = require "helpers.moat"

-- Numbered config lines (the line numbers matter for the assertions).
local BASE = {
  'server_name = "mx.example.test"',                       -- 1
  'main_domain = "example.test"',                          -- 2
  'local_domains = { "example.test" }',                    -- 3
  'spool_dir = "spool"',                                   -- 4
  'control_socket = "moat.sock"',                          -- 5
  'listener "smtp" {',                                     -- 6
  '  { port = %PORT%, address = "127.0.0.1" },',           -- 7
  '}',                                                     -- 8
  'tables = { client_ips = "client.ips" }',                -- 9
  'policies = { "relay" }',                                -- 10
  'scripts = { "site.lua" }',                              -- 11
}

local SITE = [[
local moat = require "moat"
return { rcpt = function(s, rcpt) end }
]]

local dirs = {}

-- Write a config (BASE with line replacements / additions) and run --check.
-- edit = { [line] = "text" | false, append = { ... } }, files = { name = content }
local function check(edit, files)
  local lines = {}
  for i, l in ipairs(BASE) do
    local e = edit and edit[i]
    if e ~= false then lines[#lines + 1] = e or l end
  end
  for _, l in ipairs(edit and edit.append or {}) do lines[#lines + 1] = l end
  local f = { ["client.ips"] = "127.0.0.1\n", ["site.lua"] = SITE }
  for k, v in pairs(files or {}) do f[k] = v end
  local dir, conf = moat.prepare { config = table.concat(lines, "\n") .. "\n", files = f, tag = "check" }
  dirs[#dirs + 1] = dir
  local rc, out, err = moat.check(conf)
  return rc, out, err, conf, dir
end

describe("moat --check", function()
  teardown(function()
    if not os.getenv("MOAT_KEEP_TMP") then
      for _, d in ipairs(dirs) do os.execute("rm -rf '" .. d .. "'") end
    end
  end)

  it("accepts a good config: exit 0 and 'ok' on stdout", function()
    local rc, out, err, conf = check()
    assert.equals("", err)
    assert.equals(conf .. ": ok (1 listener, policies and scripts loaded)\n", out)
    assert.equals(0, rc)
  end)

  it("accepts the shipped conf/moat.conf", function()
    local rc, out, err = moat.check(moat.root .. "/conf/moat.conf")
    assert.equals("", err)
    assert.matches("conf/moat%.conf: ok %(", out)
    assert.equals(0, rc)
  end)

  it("names the file and line of an unknown setting", function()
    local rc, out, err, conf = check { [4] = 'spool_dir = "spool"', append = { "", "max_mesage_size = 1000" } }
    assert.equals(1, rc)
    assert.equals("", out)
    assert.equals(conf .. ":13: unknown setting 'max_mesage_size'\n", err)
  end)

  it("names the line of an unknown key inside a setting table", function()
    local rc, _, err, conf = check { append = { "smtp = {", "  max_recipients = 5,", "  timeuot = 5,", "}" } }
    assert.equals(1, rc)
    -- the line is within the setting (Lua gives the assignment's last line, the "}")
    local line = tonumber(err:match("^" .. conf:gsub("%p", "%%%0") .. ":(%d+): "))
    assert.is_number(line, err)
    assert.is_true(line >= 12 and line <= 15, err)
    assert.truthy(err:find("smtp: unknown key 'timeuot'", 1, true), err)
  end)

  it("rejects a setting of the wrong type with its line", function()
    local rc, _, err, conf = check { [3] = 'local_domains = "example.test"' }
    assert.equals(1, rc)
    assert.truthy(err:find(conf .. ":3:", 1, true), err)
    assert.truthy(err:find("local_domains", 1, true), err)
  end)

  it("names the address table file and line of a malformed entry", function()
    local rc, _, err, _, dir = check(nil, { ["client.ips"] = "; clients\n127.0.0.1\n10.0.0.300\n192.0.2.0/24\n" })
    assert.equals(1, rc)
    assert.truthy(err:find(dir .. "/client.ips:3", 1, true), err)
    assert.truthy(err:find("10.0.0.300", 1, true), err)
  end)

  it("names a missing table file", function()
    local rc, _, err, _, dir = check { [9] = 'tables = { client_ips = "client.ips", denied_ips = "nowhere.ips" }' }
    assert.equals(1, rc)
    assert.truthy(err:find(dir .. "/nowhere.ips", 1, true), err)
  end)

  it("names the script file and line of a syntax error", function()
    local rc, _, err, _, dir = check(nil, { ["site.lua"] = "local moat = require 'moat'\nlocal P = {}\nfunction P.rcpt(s, r)\n  if then end\nend\nreturn P\n" })
    assert.equals(1, rc)
    assert.truthy(err:find(dir .. "/site.lua:4:", 1, true), err)
  end)

  it("names the script file and line of an error while loading it", function()
    local rc, _, err, _, dir = check(nil, { ["site.lua"] = "local moat = require 'moat'\n\nlocal x = nil + 1\nreturn {}\n" })
    assert.equals(1, rc)
    assert.truthy(err:find(dir .. "/site.lua:3:", 1, true), err)
  end)

  it("rejects a script that returns no hook table or an unknown hook", function()
    local rc, _, err = check(nil, { ["site.lua"] = "return 42\n" })
    assert.equals(1, rc)
    assert.truthy(err:find("site.lua", 1, true), err)
    local rc2, _, err2, _, dir2 = check(nil, { ["site.lua"] = "return {\n  rctp = function(s) end,\n}\n" })
    assert.equals(1, rc2)
    assert.truthy(err2:find(dir2 .. "/site.lua:2: unknown hook 'rctp'", 1, true), err2)
  end)

  it("names a missing script file", function()
    local rc, _, err, _, dir = check { [11] = 'scripts = { "site.lua", "missing.lua" }' }
    assert.equals(1, rc)
    assert.truthy(err:find(dir .. "/missing.lua", 1, true), err)
  end)

  it("rejects an unknown policy name with its line", function()
    local rc, _, err, conf = check { [10] = 'policies = { "relay", "nosuch" }' }
    assert.equals(1, rc)
    assert.truthy(err:find(conf .. ":10: unknown policy 'nosuch'", 1, true), err)
  end)

  it("rejects two sockets on the same port and address, naming both", function()
    local rc, _, err = check { [7] = '  { port = %PORT%, address = "127.0.0.1" }, { port = %PORT%, address = "127.0.0.1" },' }
    assert.equals(1, rc)
    assert.truthy(err:find("listener 'smtp' socket 1 (127.0.0.1 port", 1, true), err)
    assert.truthy(err:find("listener 'smtp' socket 2 (127.0.0.1 port", 1, true), err)
    assert.truthy(err:find("use the same port and address", 1, true), err)
  end)

  it("rejects an 'all' socket and a specific one on the same port, across listeners", function()
    local rc, _, err = check { [8] = '}', append = { 'listener "other" { { port = %PORT%, address = "all" } }' } }
    assert.equals(1, rc)
    assert.truthy(err:find("listener 'smtp' socket 1", 1, true), err)
    assert.truthy(err:find("listener 'other' socket 1", 1, true), err)
  end)

  it("rejects a bad socket address and a bad remote list", function()
    local rc, _, err, conf = check { [7] = '  { port = %PORT%, address = "localhost" },' }
    assert.equals(1, rc)
    assert.truthy(err:find(conf .. ":", 1, true) and err:find("localhost", 1, true), err)
    local rc2, _, err2 = check { [7] = '  { port = %PORT%, address = "127.0.0.1", restrict = "grant", remote = "127.0.0.1, nonsense" },' }
    assert.equals(1, rc2)
    assert.truthy(err2:find("nonsense", 1, true), err2)
  end)

  it("rejects a metrics address that is a host name (no resolver call at start), with its line", function()
    local rc, _, err, conf = check { append = { 'metrics = { address = "localhost", port = 9125 }' } }
    assert.equals(1, rc)
    assert.truthy(err:find(conf .. ":12:", 1, true), err)
    assert.truthy(err:find("must be an IPv4 or IPv6 address, not 'localhost'", 1, true), err)
    for _, good in ipairs { "127.0.0.1", "::1" } do
      local rc2, out2, err2 = check { append = { ('metrics = { address = "%s", port = 9125 }'):format(good) } }
      assert.equals(0, rc2, out2 .. err2)
    end
  end)

  it("rejects restrict without a remote list", function()
    local rc, _, err, conf = check { [7] = '  { port = %PORT%, address = "127.0.0.1", restrict = "deny" },' }
    assert.equals(1, rc)
    assert.truthy(err:find(conf .. ":6:", 1, true) or err:find(conf .. ":7:", 1, true), err)
    assert.truthy(err:find("remote", 1, true), err)
  end)

  it("moat itself refuses to start on a bad config, with the same message", function()
    local _, _, err, conf = check { append = { "bogus = 1" } }
    local p = io.popen(("MOAT_ROOT='%s' '%s' -c '%s' 2>&1 >/dev/null; echo rc=$?"):format(moat.root, moat.bin(), conf))
    local out = p:read("a")
    p:close()
    assert.truthy(out:find(conf .. ":12: unknown setting 'bogus'", 1, true), out)
    assert.falsy(out:find("rc=0", 1, true), out)
    assert.equals(conf .. ":12: unknown setting 'bogus'\n", err)
  end)
end)
