-- systemd's notify protocol (DESIGN §10): with $NOTIFY_SOCKET set, moat says
-- READY=1 once listening, RELOADING=1 + MONOTONIC_USEC= then READY=1 around a
-- reload, STOPPING=1 on SIGTERM, and a one-line STATUS= with each.
local moat = require "helpers.moat"
local socket = require "socket"
local unix = require "socket.unix"

-- A datagram receiver on `name` (a path, or "@name" for the abstract namespace).
local function receiver(name)
  local s = assert(unix.dgram())
  local addr = name:sub(1, 1) == "@" and ("\0" .. name:sub(2)) or name
  assert(s:bind(addr))
  s:settimeout(5)
  return s
end

local function next_msg(s)
  local m, err = s:receive()
  assert(m, "no notify message: " .. tostring(err))
  return m
end

describe("sd_notify", function()
  after_each(function() moat.stop_all() end)

  it("READY, RELOADING/READY around a reload, STOPPING, over a socket path", function()
    local dir = moat.tmpdir("notify")
    local path = dir .. "/notify.sock"
    local r = receiver(path)
    local srv = moat.start { env = { NOTIFY_SOCKET = path } }
    local ready = next_msg(r)
    assert.truthy(ready:find("^READY=1\n"), ready)
    assert.truthy(ready:find("\nSTATUS=listening: generation 1, 1 listener$"), ready)
    -- The listener really is open when READY=1 arrives.
    local c = moat.client(srv.port)
    assert.equals(220, c.greeting_code)
    c:close()

    local before = socket.gettime()
    local rc, out = srv:ctl("reload")
    assert.equals(0, rc, out)
    local reloading = next_msg(r)
    assert.truthy(reloading:find("^RELOADING=1\n"), reloading)
    local usec = tonumber(reloading:match("\nMONOTONIC_USEC=(%d+)"))
    assert.truthy(usec and usec > 0, reloading)
    local again = next_msg(r)
    assert.truthy(again:find("^READY=1\nSTATUS=reloaded: generation 2"), again)

    -- A broken reload still ends with READY=1 (the old config keeps running).
    srv:write("moat.conf", "this is not lua")
    assert.equals(1, (srv:ctl("reload")))
    assert.truthy(next_msg(r):find("^RELOADING=1"))
    local failed = next_msg(r)
    assert.truthy(failed:find("^READY=1\nSTATUS=reload failed, running: generation 2"), failed)
    assert.is_true(socket.gettime() - before < 5)

    srv:signal("TERM")
    local stopping = next_msg(r)
    assert.truthy(stopping:find("^STOPPING=1\nSTATUS=stopping"), stopping)
    r:close()
    srv:stop()
    os.execute("rm -rf " .. moat.shquote(dir))
  end)

  it("an abstract socket name (@...) works too, and moat runs without any", function()
    -- luasocket cannot bind an abstract name (it stops at the NUL): Python can.
    local dir = moat.tmpdir("notify")
    local name = ("@moat-notify-%d-%d"):format(os.time(), math.random(1, 1e9))
    local out = dir .. "/got"
    local py = "import socket,sys\n" ..
      "s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\n" ..
      "s.bind('\\0'+sys.argv[1][1:]); open(sys.argv[2]+'.ready','w').close(); s.settimeout(10)\n" ..
      "m=s.recv(4096); open(sys.argv[2],'wb').write(m)\n"
    local pid = moat.spawn(("exec /usr/bin/python3 -c %s %s %s"):format(moat.shquote(py), moat.shquote(name),
      moat.shquote(out)))
    assert.truthy(moat.poll(function() return moat.read_file(out .. ".ready") end, 5), "receiver did not start")
    local srv = moat.start { env = { NOTIFY_SOCKET = name } }
    local got = moat.poll(function() return moat.read_file(out) end, 5)
    os.execute("kill " .. pid .. " 2>/dev/null")
    assert.truthy(got and got:find("^READY=1\n"), tostring(got))
    srv:stop()
    os.execute("rm -rf " .. moat.shquote(dir))
    -- A $NOTIFY_SOCKET nobody listens on: moat starts all the same.
    moat.start { env = { NOTIFY_SOCKET = "/nonexistent/notify.sock" } }:stop()
  end)
end)
