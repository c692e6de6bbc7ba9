-- Started as root, moat gives up root (DESIGN §10, README "Privileges"):
-- every thread runs as `user`, the spool and the control socket are the
-- user's, and a reload can still bind a port below 1024.
local moat = require "helpers.moat"
local socket = require "socket"
local lfs = require "lfs"

local it_root = moat.is_root() and it or pending

-- Every thread's ids and effective capabilities, from /proc/PID/task/*/status.
local function threads(pid)
  local out = {}
  for tid in lfs.dir("/proc/" .. pid .. "/task") do
    if tid:match("^%d+$") then
      local st = moat.read_file("/proc/" .. pid .. "/task/" .. tid .. "/status") or ""
      out[#out + 1] = {
        tid = tonumber(tid),
        uid = { st:match("\nUid:%s+(%d+)%s+(%d+)%s+(%d+)%s+(%d+)") },
        gid = { st:match("\nGid:%s+(%d+)%s+(%d+)%s+(%d+)%s+(%d+)") },
        groups = st:match("\nGroups:([^\n]*)"),
        capeff = st:match("\nCapEff:%s+(%x+)"),
      }
    end
  end
  return out
end

local function nobody()
  local p = io.popen("id -u nobody; id -g nobody")
  local u, g = tonumber(p:read("l")), tonumber(p:read("l"))
  p:close()
  return u, g
end

-- A free port below 1024 on 127.0.0.1 (only root can bind it, so only a
-- moat that kept CAP_NET_BIND_SERVICE can open it on reload).
local function low_port()
  for port = 1023, 600, -1 do
    local s = socket.tcp()
    s:setoption("reuseaddr", true)
    local ok = s:bind("127.0.0.1", port)
    s:close()
    if ok and moat.claim_port(port) then return port end
  end
  error("no free port below 1024")
end

local function config(user, extra_sock)
  return table.concat({
    'server_name = "mx.example.test"',
    'main_domain = "example.test"',
    'local_domains = { "example.test" }',
    'spool_dir = "spool"',
    'control_socket = "moat.sock"',
    'listener "smtp" { { port = %PORT%, address = "127.0.0.1" }' ..
      (extra_sock and (', { port = ' .. extra_sock .. ', address = "127.0.0.1" }') or '') .. ' }',
    'tables = { client_ips = "client.ips" }',
    'policies = { "relay" }',
    user and ('user = %q'):format(user) or '',
  }, "\n") .. "\n"
end

describe("privileges", function()
  after_each(function() moat.stop_all() end)

  it_root("started as root with user = \"nobody\", every thread runs as nobody", function()
    local uid, gid = nobody()
    local srv = moat.start { config = config("nobody"), files = { ["client.ips"] = "127.0.0.1\n" } }
    srv:wait_log("event=privileges_dropped")
    local ts = threads(srv.pid)
    assert.is_true(#ts >= 2, "expected worker threads")
    for _, t in ipairs(ts) do
      for i = 1, 4 do
        assert.equals(uid, tonumber(t.uid[i]), "thread " .. t.tid .. " uid field " .. i)
        assert.equals(gid, tonumber(t.gid[i]), "thread " .. t.tid .. " gid field " .. i)
      end
      assert.equals("", (t.groups:gsub("%s", "")), "thread " .. t.tid .. " supplementary groups")
      -- Only the main (event loop) thread keeps one capability: NET_BIND_SERVICE (bit 10).
      local want = t.tid == srv.pid and "0000000000000400" or "0000000000000000"
      assert.equals(want, t.capeff, "thread " .. t.tid .. " CapEff")
    end

    -- Mail is spooled, and the files are nobody's.
    local c = moat.client(srv.port)
    c:ehlo()
    local r = c:transaction { from = "a@remote.example", rcpts = { "joe@example.test" }, data = moat.message("p") }
    assert.equals(250, r.final[1], r.final[2])
    c:close()
    local files = srv:spool_files()
    assert.equals(1, #files)
    for _, f in ipairs { srv.dir .. "/spool", srv.dir .. "/spool/new", srv.dir .. "/spool/tmp",
                         srv.dir .. "/spool/new/" .. files[1].id .. ".eml",
                         srv.dir .. "/spool/new/" .. files[1].id .. ".env" } do
      assert.equals(uid, lfs.attributes(f, "uid"), f)
    end

    -- The control socket is nobody's, mode 0600, and moatctl still works.
    local sock = srv.dir .. "/moat.sock"
    assert.equals(uid, lfs.attributes(sock, "uid"))
    assert.equals("rw-------", lfs.attributes(sock, "permissions"))
    local rc, out = srv:ctl("reload")
    assert.equals(0, rc, out)
    assert.truthy(out:find("reloaded", 1, true), out)
  end)

  it_root("a reload run as nobody can still open a port below 1024", function()
    local srv = moat.start { config = config("nobody"), files = { ["client.ips"] = "127.0.0.1\n" } }
    srv:wait_log("event=privileges_dropped")
    local port = low_port()
    srv:write("moat.conf", (config("nobody", port):gsub("%%PORT%%", tostring(srv.port))))
    local rc, out = srv:ctl("reload")
    assert.equals(0, rc, out)
    local c = moat.client(port)
    assert.equals(220, c.greeting_code, tostring(c.greeting))
    c:close()
  end)

  it_root("user = \"root\" must be spelled out to stay root, and logs a warning", function()
    local srv = moat.start { config = config("root"), files = { ["client.ips"] = "127.0.0.1\n" } }
    srv:wait_log("event=running_as_root")
    for _, t in ipairs(threads(srv.pid)) do assert.equals("0", t.uid[2]) end
  end)

  it_root("an unknown user stops the start with a clear error", function()
    local _, conf = moat.prepare { config = config("no-such-user-moat"), files = { ["client.ips"] = "127.0.0.1\n" } }
    local p = io.popen(("MOAT_ROOT=%s timeout 10 %s -c %s 2>&1; echo rc=$?"):format(
      moat.shquote(moat.root), moat.shquote(moat.bin()), moat.shquote(conf)))
    local out = p:read("a")
    p:close()
    assert.truthy(out:find("no-such-user-moat", 1, true), out)
    assert.truthy(out:find("rc=1", 1, true), out)
  end)

  it("rejects an empty user name in --check", function()
    local _, conf = moat.prepare { config = config(""), files = { ["client.ips"] = "127.0.0.1\n" } }
    local rc, _, err = moat.check(conf)
    assert.equals(1, rc)
    assert.truthy(err:find("user", 1, true), err)
  end)
end)
