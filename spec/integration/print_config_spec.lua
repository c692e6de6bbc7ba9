-- moat -c FILE --print-config (DESIGN §10): every setting, defaults included,
-- in the config's own syntax; the output passes --check and prints itself.
local moat = require "helpers.moat"

local function print_config(conf)
  local p = assert(io.popen(("MOAT_ROOT=%s %s -c %s --print-config 2>&1; echo \"rc=$?\""):format(
    moat.shquote(moat.root), moat.shquote(moat.bin()), moat.shquote(conf))))
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)\n?$"))
  return rc, (out:gsub("rc=%d+\n?$", ""))
end

describe("--print-config", function()
  it("prints the defaults of a minimal config, and the output is a valid config", function()
    -- written by hand: moat.prepare would add the specs' user/shutdown_timeout
    local dir = moat.tmpdir("minimal")
    local conf = dir .. "/moat.conf"
    moat.write_file(conf, 'spool_dir = "spool"\nlistener "smtp" { { port = 2525 } }\nsmtp = { max_recipients = 7 }\n')
    local rc, out = print_config(conf)
    assert.equals(0, rc, out)
    -- defaults the file never mentions
    for _, line in ipairs {
      'user = "moat"', "shutdown_timeout = 30", "spool_threads = 4", 'spool_sync = "fsync"',
      'log_level = "info"', "watch = false", "  max_message_size = 10485760,", "  timeout = 300,",
      "  max_recipients = 7,", '  mode = "spool",', "  timeout_ms = 500,",
      ("spool_dir = %q"):format(dir .. "/spool"),
      '    address = "all",', '    tls = "off",', "  max_connections = 0,",
    } do
      assert.truthy(out:find("\n" .. line .. "\n", 1, true), "missing: " .. line .. "\n" .. out)
    end
    assert.truthy(out:find('\nlistener "smtp" {\n', 1, true), out)

    -- saved elsewhere, it passes --check and prints the same again
    local dir2 = moat.tmpdir("printed")
    moat.write_file(dir2 .. "/printed.conf", out)
    local crc, cout, cerr = moat.check(dir2 .. "/printed.conf")
    assert.equals(0, crc, cout .. cerr .. "\n" .. out)
    local rc2, out2 = print_config(dir2 .. "/printed.conf")
    assert.equals(0, rc2, out2)
    assert.equals(out, out2)
    os.execute("rm -rf " .. moat.shquote(dir) .. " " .. moat.shquote(dir2))
  end)

  it("keeps what the stock config sets (policies, scripts, tables) and passes --check", function()
    local rc, out = print_config(moat.root .. "/conf/moat.conf")
    assert.equals(0, rc, out)
    assert.truthy(out:find('\npolicies = { "blacklist", "router", "relay"', 1, true), out)
    assert.truthy(out:find('\nscripts = { "' .. moat.root .. '/conf/site.lua" }', 1, true), out)
    assert.truthy(out:find('\n  client_ips = "' .. moat.root .. '/conf/client.ips",', 1, true), out)
    local dir = moat.tmpdir("printed")
    moat.write_file(dir .. "/moat.conf", out)
    local crc, cout, cerr = moat.check(dir .. "/moat.conf")
    assert.equals(0, crc, cout .. cerr)
    os.execute("rm -rf " .. moat.shquote(dir))
  end)

  it("reports a broken config like --check, exit 1", function()
    local _, conf = moat.prepare { config = 'spool_dir = "spool"\nbogus = 1\n' }
    local rc, out = print_config(conf)
    assert.equals(1, rc)
    assert.truthy(out:find("bogus", 1, true), out)
  end)
end)
