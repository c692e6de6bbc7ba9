-- Integration: Temporarily Blocked / UnBlockable addresses (seed 002
-- "Temporarily Blocked Addresses", DESIGN §3 protection.temp_block /
-- temp_unblock, §6 "Temporary blocking"; src/tempblock.h: a rule
-- {count, seconds} fires at the count+1-th event in the window).
local moat = require "helpers.moat"
local tls = require "helpers.tls"

local PASSWORD = "hunter2-Secret"

local function protection(t)
  t = t or {}
  return ([[
protection = {
  temp_block = { failed_logins = { %d, 60 }, protocol_errors = { %d, 60 },
                 debug_failed_logins = { %d, 60 }, debug_protocol_errors = { %d, 60 },
                 block_time = 600, limit = %d },
  temp_unblock = { time = 3600, limit = 100 },
}
]]):format(t.logins or 2, t.errors or 3, t.debug_logins or 10, t.debug_errors or 10, t.limit or 100)
end

-- PORT: a tls = "ext" socket (AUTH in clear text).
local function start(opts)
  opts = opts or {}
  local tables = { accounts = "joe@example.test " .. tls.hash_password(PASSWORD) .. "\n" }
  for k, v in pairs(opts.tables or {}) do tables[k] = v end
  return moat.start {
    listener = '{ { port = %PORT%, address = "127.0.0.1", tls = "ext" } }',
    tables = tables,
    extra = protection(opts.protection),
    smtp = { max_errors = 20 },
  }
end

local function moatctl(srv, ...)
  local out = os.tmpname()
  local cmd = ("%s/moatctl -s '%s/moat.sock' %s >%s 2>&1; echo $?"):format(
    moat.root, srv.dir, table.concat({ ... }, " "), out)
  local p = assert(io.popen(cmd, "r"))
  local rc = tonumber(p:read("l"))
  p:close()
  local text = moat.read_file(out) or ""
  os.remove(out)
  return rc, text
end

-- The `moatctl blocked` line for ip: kind, seconds left, reason (or nil).
local function blocked_entry(srv, ip)
  local rc, out = moatctl(srv, "blocked")
  assert.equals(0, rc, out)
  for line in out:gmatch("[^\n]+") do
    local a, kind, left, reason = line:match("^(%S+) (%S+) (%d+)s (.*)$")
    if a == ip then return kind, tonumber(left), reason end
  end
  return nil, nil, out
end

local function session(srv, ip)
  local c = moat.client(srv.port, { source = ip })
  assert.equals(220, c.greeting_code, "greeting for " .. ip .. ": " .. tostring(c.greeting))
  assert.equals(250, (c:ehlo()))
  return c
end

local function fail_login(c)
  local code, text = tls.auth_plain(c, "joe@example.test", "wrong")
  assert.equals(535, code, text)
end

local function assert_blocked_greeting(srv, ip)
  local c = moat.client(srv.port, { source = ip })
  assert.equals(421, c.greeting_code, tostring(c.greeting))
  assert.truthy(c.greeting:find("^421 4%.7%.0 "), c.greeting)
  assert.is_true((c:closed(3)))
  c:close()
end

describe("moat temporary blocking", function()
  after_each(function() moat.stop_all() end)

  it("blocks an address at the 3rd failed login with failed_logins = {2, 60}; moatctl lists and unblocks it", function()
    local srv = start()
    local ip = "127.0.0.40"
    local c = session(srv, ip)
    fail_login(c)
    fail_login(c)
    c:close()
    -- counted per address, across sessions
    local c2 = session(srv, ip)
    assert.equals(250, (c2:cmd("NOOP")))
    fail_login(c2)
    local code, text = c2:read_reply()
    assert.equals(421, code, text)
    assert.truthy(text:find("^421 4%.7%.0 "), text)
    assert.is_true((c2:closed(3)))
    c2:close()
    local line = srv:wait_log("event=blocked ip=127%.0%.0%.40 ")
    assert.truthy(line:find("reason=failed_logins", 1, true), line)

    -- new connections: 421 4.7.0 and closed
    assert_blocked_greeting(srv, ip)
    srv:wait_log("event=refused ip=127%.0%.0%.40 .*reason=temporarily_blocked")
    -- other addresses are served
    session(srv, "127.0.0.41"):close()

    local kind, left, reason = blocked_entry(srv, ip)
    assert.equals("blocked", kind, reason)
    assert.truthy(left > 590 and left <= 600, tostring(left))
    assert.truthy(reason:find("failed logins", 1, true), reason)
    local rc, out = moatctl(srv, "test-address", ip)
    assert.equals(0, rc, out)
    assert.truthy(out:find("[" .. ip .. "]", 1, true) and out:find("is Blocked", 1, true), out)

    rc, out = moatctl(srv, "unblock", ip)
    assert.equals(0, rc, out)
    assert.truthy(out:find(ip .. " unblocked", 1, true), out)
    assert.is_nil((blocked_entry(srv, ip)))
    local c3 = session(srv, ip)
    -- unblocking forgets the counted failures: one more is not enough
    fail_login(c3)
    assert.equals(250, (c3:cmd("NOOP")))
    c3:close()
    -- unblocking an address that is not blocked is an error
    rc, out = moatctl(srv, "unblock", "127.0.0.41")
    assert.equals(1, rc, out)
    assert.truthy(out:find("not blocked", 1, true), out)
  end)

  it("blocks an address past protocol_errors = {3, 60}", function()
    local srv = start()
    local ip = "127.0.0.50"
    local c = session(srv, ip)
    for i = 1, 3 do
      local code, text = c:cmd("BOGUS" .. i)
      assert.equals(500, code, text)
    end
    local code, text = c:cmd("BOGUS4")
    assert.equals(500, code, text)
    code, text = c:read_reply()
    assert.equals(421, code, text)
    assert.truthy(text:find("^421 4%.7%.0 "), text)
    c:close()
    local line = srv:wait_log("event=blocked ip=127%.0%.0%.50 ")
    assert.truthy(line:find("reason=protocol_errors", 1, true), line)
    assert_blocked_greeting(srv, ip)
    local kind, _, reason = blocked_entry(srv, ip)
    assert.equals("blocked", kind, reason)
    assert.truthy(reason:find("protocol errors", 1, true), reason)
  end)

  it("past a debug threshold logs the dialogue verbatim, with AUTH data masked", function()
    local srv = start { protection = { logins = 5, debug_logins = 1 } }
    local ip = "127.0.0.60"
    local c = session(srv, ip)
    assert.equals(250, (c:cmd("NOOP before-debug")))
    fail_login(c)
    assert.same({}, srv:events("debug_on"))
    fail_login(c)                    -- the 2nd failure: past {1, 60}
    srv:wait_log("event=debug_on session=%S+ ip=127%.0%.0%.60")
    assert.equals(250, (c:cmd("NOOP after-debug")))
    -- AUTH with an initial response, and a LOGIN exchange: the data is masked
    assert.equals(535, (c:cmd("AUTH PLAIN " .. tls.b64("\0joe@example.test\0" .. PASSWORD .. "x"))))
    assert.equals(334, (c:cmd("AUTH LOGIN")))
    assert.equals(334, (c:cmd(tls.b64("joe@example.test"))))
    assert.equals(235, (c:cmd(tls.b64(PASSWORD))))
    assert.equals(221, (c:cmd("QUIT")))
    c:close()
    srv:wait_log("event=debug_out .*221 2%.0%.0")
    local log = srv:log()
    assert.falsy(log:find("before-debug", 1, true), "logged before the threshold")
    assert.truthy(log:find("event=debug_in [^\n]*line=\"NOOP after%-debug\""), log)
    assert.truthy(log:find("event=debug_out [^\n]*line=\"250 2%.0%.0 Ok\""), log)
    assert.truthy(log:find("event=debug_in [^\n]*line=%(authentication data%)")
                  or log:find("event=debug_in [^\n]*line=\"%(authentication data%)\""), log)
    assert.truthy(log:find("event=debug_out [^\n]*334 VXNlcm5hbWU6"), log)
    assert.truthy(log:find("event=debug_out [^\n]*235 2%.7%.0"), log)
    -- neither the password nor its base64 (nor the user's) is in the log
    assert.falsy(log:find(PASSWORD, 1, true), "password in the log")
    assert.falsy(log:find(tls.b64(PASSWORD), 1, true), "base64 password in the log")
    assert.falsy(log:find(tls.b64("joe@example.test"), 1, true), "base64 LOGIN user in the log")
    assert.falsy(log:find(tls.b64("\0joe@example.test\0" .. PASSWORD .. "x"), 1, true), "PLAIN blob in the log")
    -- only the debugged address is logged
    local other = session(srv, "127.0.0.61")
    assert.equals(250, (other:cmd("NOOP other-address")))
    other:close()
    assert.falsy(srv:log():find("other-address", 1, true))
  end)

  it("a debugged address's new sessions are logged from their start", function()
    local srv = start { protection = { logins = 5, debug_logins = 1 } }
    local ip = "127.0.0.62"
    local c = session(srv, ip)
    fail_login(c)
    fail_login(c)
    c:close()
    srv:wait_log("event=debug_on session=%S+ ip=127%.0%.0%.62")
    local c2 = moat.client(srv.port, { source = ip })
    assert.equals(250, (c2:ehlo("debugged.example")))
    assert.equals(250, (c2:cmd("NOOP second-session")))
    c2:close()
    srv:wait_log("event=debug_in [^\n]*NOOP second%-session", 2)
    srv:wait_log("event=debug_in [^\n]*EHLO debugged%.example", 1)
  end)

  it("a protocol-error debug threshold turns on the verbatim log too", function()
    local srv = start { protection = { errors = 10, debug_errors = 2 } }
    local ip = "127.0.0.63"
    local c = session(srv, ip)
    for i = 1, 3 do assert.equals(500, (c:cmd("BOGUS" .. i))) end
    srv:wait_log("event=debug_on session=%S+ ip=127%.0%.0%.63")
    assert.equals(250, (c:cmd("NOOP traced")))
    c:close()
    srv:wait_log("event=debug_in [^\n]*NOOP traced")
  end)

  it("a successful login makes the address unblockable", function()
    local srv = start()
    local ip = "127.0.0.70"
    local c = session(srv, ip)
    assert.equals(235, (tls.auth_plain(c, "joe@example.test", PASSWORD)))
    c:close()
    for _ = 1, 3 do
      local s = session(srv, ip)
      fail_login(s)
      fail_login(s)
      assert.equals(250, (s:cmd("NOOP")))
      s:close()
    end
    session(srv, ip):close()
    assert.same({}, srv:events("blocked", { ip = ip }))
    local kind, left, reason = blocked_entry(srv, ip)
    assert.equals("unblockable", kind, reason)
    assert.truthy(left > 3590 and left <= 3600, tostring(left))
    -- protocol errors do not block it either
    local s = session(srv, ip)
    for i = 1, 5 do assert.equals(500, (s:cmd("BOGUS" .. i))) end
    assert.equals(250, (s:cmd("NOOP")))
    s:close()
    session(srv, ip):close()
  end)

  it("never blocks a white hole (unblacklistable_ips), nor lists it as blocked", function()
    local srv = start { tables = { unblacklistable_ips = "127.0.0.80\n" } }
    local ip = "127.0.0.80"
    for _ = 1, 3 do
      local s = session(srv, ip)
      fail_login(s)
      fail_login(s)
      for i = 1, 4 do assert.equals(500, (s:cmd("BOGUS" .. i))) end
      assert.equals(250, (s:cmd("NOOP")))
      s:close()
    end
    session(srv, ip):close()
    assert.same({}, srv:events("blocked", { ip = ip }))
    local kind, _, text = blocked_entry(srv, ip)
    assert.is_nil(kind, text)
    local rc, out = moatctl(srv, "test-address", ip)
    assert.equals(0, rc, out)
    assert.falsy(out:find("Blocked", 1, true), out)
  end)

  it("blocks at most `limit` addresses", function()
    local srv = start { protection = { logins = 1, limit = 1 } }
    local a, b = "127.0.0.90", "127.0.0.91"
    local s = session(srv, a)
    fail_login(s)
    fail_login(s)
    assert.equals(421, (s:read_reply()))
    s:close()
    assert_blocked_greeting(srv, a)
    local s2 = session(srv, b)
    fail_login(s2)
    fail_login(s2)
    fail_login(s2)
    assert.equals(250, (s2:cmd("NOOP")))
    s2:close()
    session(srv, b):close()
    assert.is_nil((blocked_entry(srv, b)))
  end)
end)
