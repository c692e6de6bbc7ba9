-- make install (DESIGN §10): FHS layout under PREFIX in DESTDIR, an existing
-- configuration never overwritten, a systemd unit systemd-analyze accepts.
local moat = require "helpers.moat"
local lfs = require "lfs"

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("a")
  p:close()
  return tonumber(out:match("rc=(%d+)\n?$")), (out:gsub("rc=%d+\n?$", ""))
end

describe("make install", function()
  it("installs moat, moatctl, the runtime, /etc/moat and moat.service; keeps an existing config", function()
    local dest = moat.tmpdir("install")
    local make = ("make -s -C %s install DESTDIR=%s"):format(moat.shquote(moat.root), moat.shquote(dest))
    local rc, out = sh(make)
    assert.equals(0, rc, out)
    for _, f in ipairs { "/usr/local/sbin/moat", "/usr/local/sbin/moatctl",
                         "/usr/local/share/moat/lua/moat/config.lua", "/usr/local/share/moat/policies/relay.lua",
                         "/etc/moat/moat.conf", "/etc/moat/client.ips", "/lib/systemd/system/moat.service",
                         "/usr/local/share/man/man8/moat.8", "/usr/local/share/man/man8/moatctl.8",
                         "/usr/local/share/man/man5/moat.conf.5" } do
      assert.truthy(lfs.attributes(dest .. f), "missing " .. f)
    end
    assert.equals("directory", lfs.attributes(dest .. "/var/spool/moat", "mode"))
    -- the installed man pages render without a single groff warning
    if os.execute("command -v groff >/dev/null 2>&1") then
      for _, m in ipairs { "man8/moat.8", "man8/moatctl.8", "man5/moat.conf.5" } do
        local grc, gout = sh("groff -t -man -Tutf8 -ww -z " .. moat.shquote(dest .. "/usr/local/share/man/" .. m))
        assert.equals(0, grc, gout)
        assert.equals("", gout, m)
      end
    end
    local conf = moat.read_file(dest .. "/etc/moat/moat.conf")
    assert.truthy(conf:find('spool_dir = "/var/spool/moat"', 1, true), conf)
    assert.truthy(conf:find('control_socket = "/run/moat/moat.sock"', 1, true), conf)

    -- a second install keeps the administrator's edits
    moat.write_file(dest .. "/etc/moat/moat.conf", conf .. "-- edited\n")
    rc, out = sh(make)
    assert.equals(0, rc, out)
    assert.truthy(out:find("keeping", 1, true), out)
    assert.equals(conf .. "-- edited\n", moat.read_file(dest .. "/etc/moat/moat.conf"))

    local unit = moat.read_file(dest .. "/lib/systemd/system/moat.service")
    for _, l in ipairs { "Type=notify", "ExecReload=", "NoNewPrivileges=yes", "ProtectSystem=strict",
                         "ReadWritePaths=/var/spool/moat", "PrivateTmp=yes", "CapabilityBoundingSet=" } do
      assert.truthy(unit:find("\n" .. l, 1, true), "unit lacks " .. l)
    end
    if os.execute("command -v systemd-analyze >/dev/null 2>&1") then
      -- verify wants the binaries at their paths: point it at the staged ones
      local u = dest .. "/moat.service"
      moat.write_file(u, (unit:gsub("/usr/local/sbin/", dest .. "/usr/local/sbin/")))
      local vrc, vout = sh("systemd-analyze verify " .. moat.shquote(u))
      assert.equals(0, vrc, vout)
      assert.equals("", vout)
    end
    os.execute("rm -rf " .. moat.shquote(dest))
  end)
end)
