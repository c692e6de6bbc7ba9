-- Out of file descriptors (DESIGN §10): with the fd limit at 64 and 100
-- clients, moat stops accepting for a moment instead of spinning on accept,
-- keeps serving the sessions it has, and serves new ones once descriptors
-- come back.  The limit in force is logged at start.
local moat = require "helpers.moat"
local socket = require "socket"

local function cpu_seconds(pid)
  local stat = moat.read_file("/proc/" .. pid .. "/stat")
  local rest = stat:match("^%d+ %b() (.*)$")
  local f = {}
  for x in rest:gmatch("%S+") do f[#f + 1] = x end
  -- fields 14 and 15 (utime, stime), counted from the state field as 3
  return (tonumber(f[12]) + tonumber(f[13])) / 100
end

describe("out of file descriptors", function()
  local srv, clients
  after_each(function()
    for _, c in ipairs(clients or {}) do c:close() end
    if srv and moat.alive(srv.pid) then os.execute("kill -KILL " .. srv.pid) end
    if srv and not os.getenv("MOAT_KEEP_TMP") then os.execute("rm -rf " .. moat.shquote(srv.dir)) end
  end)

  it("backs off instead of spinning, keeps its sessions, and recovers", function()
    srv = moat.launch { shell = "ulimit -n 64", extra = "shutdown_timeout = 1" }
    assert.truthy(srv.log():find("event=fd_limit soft=64 hard=64", 1, true), srv.log())
    local first = moat.client(srv.port)
    assert.equals(220, first.greeting_code)
    clients = {}
    for i = 1, 100 do clients[i] = moat.client(srv.port, { greeting = false }) end
    assert(moat.poll(function() return srv.log():find("event=accept_paused", 1, true) end, 5), srv.log())
    socket.sleep(0.2)
    local t0, c0 = socket.gettime(), cpu_seconds(srv.pid)
    socket.sleep(1.5)
    local used = (cpu_seconds(srv.pid) - c0) / (socket.gettime() - t0)
    assert.is_true(used < 0.25, ("moat used %.0f%% of a core while out of descriptors"):format(used * 100))

    -- the session opened before goes on
    local code = first:ehlo()
    assert.equals(250, code)

    -- descriptors come back: new connections are served again
    for _, c in ipairs(clients) do c:close() end
    clients = {}
    local ok = moat.poll(function()
      local c = moat.client(srv.port, { timeout = 1 })
      local served = c.greeting_code == 220
      c:close()
      return served
    end, 10, 0.2)
    assert.truthy(ok, "no greeting after the clients closed; log:\n" .. srv.log())
    assert.truthy(srv.log():find("event=accept_resumed", 1, true))
    first:close()
    os.execute("kill -TERM " .. srv.pid)
    assert.truthy(moat.poll(function() return srv.rc() end, 5))
    assert.equals(0, srv.rc())
  end)
end)
