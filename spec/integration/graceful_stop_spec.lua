-- SIGTERM is a graceful stop (DESIGN §10): listening stops at once, sessions
-- between commands get 421 4.3.2, a message in DATA is finished and spooled,
-- shutdown_timeout bounds the wait, and moat exits 0.
local moat = require "helpers.moat"
local socket = require "socket"
local lfs = require "lfs"

local launch = moat.launch

local function files(dir)
  local n = {}
  if lfs.attributes(dir, "mode") ~= "directory" then return n end
  for f in lfs.dir(dir) do if f:sub(1, 1) ~= "." then n[#n + 1] = f end end
  return n
end

local function mid_data(port)
  local c = moat.client(port)
  c:ehlo()
  assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example>")))
  assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
  assert.equals(354, (c:cmd("DATA")))
  assert(c:send("Subject: in flight\r\n\r\nfirst half\r\n"))
  return c
end

describe("graceful stop", function()
  local srv
  after_each(function()
    if srv and srv.pid and moat.alive(srv.pid) then os.execute("kill -KILL " .. srv.pid) end
    if srv and not os.getenv("MOAT_KEEP_TMP") then os.execute("rm -rf " .. moat.shquote(srv.dir)) end
  end)

  it("stops listening, says 421 4.3.2 to idle sessions, finishes a message in DATA, exits 0", function()
    srv = launch { extra = "shutdown_timeout = 10" }
    local idle = moat.client(srv.port)
    idle:ehlo()
    local busy = mid_data(srv.port)
    socket.sleep(0.1)
    os.execute("kill -TERM " .. srv.pid)

    local code, text = idle:read_reply()
    assert.equals(421, code, tostring(text))
    assert.truthy(tostring(text):find("^421 4%.3%.2 "), text)
    assert.is_true((idle:closed()))

    -- No new connection is accepted any more.
    assert(moat.poll(function() return srv.log():find("event=stopping", 1, true) end, 5))
    local s = socket.tcp()
    s:settimeout(1)
    local ok = s:connect("127.0.0.1", srv.port)
    s:close()
    assert.is_nil(ok, "a connection was accepted after SIGTERM")

    -- The message in flight is finished, spooled, and then the session told 421.
    assert.is_nil(srv.rc(), "moat exited before the session in DATA finished")
    assert(busy:send("second half\r\n.\r\n"))
    local fc, ft = busy:read_reply()
    assert.equals(250, fc, tostring(ft))
    local c2, t2 = busy:read_reply()
    assert.equals(421, c2, tostring(t2))
    assert.truthy(moat.poll(function() return srv.rc() end, 5), "moat did not exit")
    assert.equals(0, srv.rc())
    local new = files(srv.dir .. "/spool/new")
    assert.equals(2, #new, table.concat(new, " "))   -- ID.eml + ID.env
    assert.same({}, files(srv.dir .. "/spool/tmp"))
    idle:close()
    busy:close()
  end)

  it("shutdown_timeout bounds the wait: a stalled client gets 421 4.3.2 and moat exits 0", function()
    srv = launch { extra = "shutdown_timeout = 1" }
    local busy = mid_data(srv.port)
    socket.sleep(0.1)
    local t0 = socket.gettime()
    os.execute("kill -TERM " .. srv.pid)
    local code, text = busy:read_reply()
    local waited = socket.gettime() - t0
    assert.equals(421, code, tostring(text))
    assert.truthy(tostring(text):find("^421 4%.3%.2 "), text)
    assert.truthy(moat.poll(function() return srv.rc() end, 5), "moat did not exit")
    assert.equals(0, srv.rc())
    assert.is_true(waited >= 0.9 and waited < 3, "waited " .. waited)
    assert.same({}, files(srv.dir .. "/spool/new"))
    assert.same({}, files(srv.dir .. "/spool/tmp"))
    assert.truthy(srv.log():find("event=shutdown_timeout sessions=1", 1, true), srv.log())
    busy:close()
  end)

  it("with no session open, SIGTERM exits at once", function()
    srv = launch()
    local t0 = socket.gettime()
    os.execute("kill -TERM " .. srv.pid)
    assert.truthy(moat.poll(function() return srv.rc() end, 5))
    assert.equals(0, srv.rc())
    assert.is_true(socket.gettime() - t0 < 1)
  end)
end)
