-- Integration: SMTP AUTH (RFC 4954 PLAIN and LOGIN), accounts with Roaming
-- and Relay (seed 002 "Restrictions for Roaming Users", DESIGN §4 accounts,
-- §6 Relay and the "trusted" status).
local moat = require "helpers.moat"
local tls = require "helpers.tls"

local function accounts()
  local h = tls.hash_password("secret")
  return table.concat({
    "; address  hash  [roaming=no] [relay=no]",
    "joe@example.test " .. h,
    "noroam@example.test " .. h .. " roaming=no",
    "norelay@example.test " .. h .. " relay=no",
    "ann@corp.example.test " .. h .. " roaming=yes   ; relay from the domain: no",
    "bob@corp.example.test " .. h .. " roaming=yes relay=yes",
    "carl@corp.example.test " .. h .. "   ; roaming and relay from the domain: no",
    "",
  }, "\n")
end

-- PORT: plain (STARTTLS), PORT1: tls = "ext" (AUTH allowed in clear text).
local function start(opts)
  opts = opts or {}
  local files = {}
  tls.domain_files(files, "example.test", "ex")
  return moat.start {
    ports = 1,
    files = files,
    listener = '{ { port = %PORT%, address = "127.0.0.1" }, { port = %PORT1%, address = "127.0.0.1", tls = "ext" } }',
    extra = [[
domains = {
  ["example.test"] = { addresses = { "127.0.0.1" }, certificate = "ex.pem", private_key = "ex.key",
                       roaming = true, relay = true },
  ["corp.example.test"] = { roaming = false, relay = false },
}
]],
    tables = { accounts = accounts() },
    policies = opts.policies or { "blacklist", "relay" },
    scripts = opts.scripts,
  }
end

local function moatctl(srv, ...)
  local args = { ... }
  local out = os.tmpname()
  local cmd = ("%s/moatctl -s '%s/moat.sock' %s >%s 2>&1; echo $?"):format(
    moat.root, srv.dir, table.concat(args, " "), out)
  local p = assert(io.popen(cmd, "r"))
  local rc = tonumber(p:read("l"))
  p:close()
  local text = moat.read_file(out) or ""
  os.remove(out)
  return rc, text
end

-- A session on the ext socket, after EHLO.
local function ext_session(srv, source)
  local c = moat.client(srv.vars.PORT1, { source = source })
  assert.equals(220, c.greeting_code, c.greeting)
  local code, text = c:ehlo()
  assert.equals(250, code, text)
  return c, text
end

-- The `moatctl blocked` line for ip: kind, seconds left (nil when not listed).
local function blocked_entry(srv, ip)
  local rc, out = moatctl(srv, "blocked")
  assert.equals(0, rc, out)
  for line in out:gmatch("[^\n]+") do
    local a, kind, left = line:match("^(%S+) (%S+) (%d+)s")
    if a == ip then return kind, tonumber(left) end
  end
  return nil, out
end

-- A site script whose auth hook logs what it sees and refuses joe's logins.
local AUTH_HOOK = [[
  local moat = require "moat"
  return { auth = function(s, user, ok)
    s:log("auth hook", user, ok, s.ip, s.tls)
    if user == "joe@example.test" then return moat.reject(550, "5.7.1 joe may not log in here") end
  end }
]]

local function offers_auth(ehlo_text)
  return ehlo_text:find("\n250[ -]AUTH PLAIN LOGIN\n") ~= nil or ehlo_text:find("\n250[ -]AUTH PLAIN LOGIN$") ~= nil
end

describe("moat AUTH", function()
  local srv
  before_each(function() srv = start() end)
  after_each(function() moat.stop_all() end)

  it("PLAIN with an initial response: 235, then AUTH is neither offered nor accepted again", function()
    local c, text = ext_session(srv, "127.0.0.5")
    assert.is_true(offers_auth(text), text)
    assert.same({ 235, "235 2.7.0 Authentication successful" },
                { tls.auth_plain(c, "joe@example.test", "secret") })
    local code, again = c:ehlo()
    assert.equals(250, code)
    assert.is_false(offers_auth(again), again)
    assert.equals(503, (tls.auth_plain(c, "joe@example.test", "secret")))
    c:close()
    local line = srv:wait_log("event=auth ")
    assert.truthy(line:find("ip=127.0.0.5", 1, true), line)
    assert.truthy(line:find("user=joe@example.test", 1, true), line)
    assert.truthy(line:find("relay=yes", 1, true), line)
  end)

  it("PLAIN with a 334 continuation; the user name is case-insensitive", function()
    local c = ext_session(srv, "127.0.0.5")
    local code, text, c334, t334 = tls.auth_plain(c, "Joe@Example.TEST", "secret", { continuation = true })
    assert.equals(334, c334, t334)
    assert.equals(235, code, text)
    c:close()
  end)

  it("PLAIN: an authorization identity equal to the user is accepted, another one refused", function()
    local c = ext_session(srv, "127.0.0.5")
    assert.equals(501, (c:cmd("AUTH PLAIN " .. tls.b64("bob@corp.example.test\0joe@example.test\0secret"))))
    assert.equals(235, (c:cmd("AUTH PLAIN " .. tls.b64("joe@example.test\0joe@example.test\0secret"))))
    c:close()
  end)

  it("LOGIN: Username and Password prompts, then 235; with an initial user name too", function()
    local c = ext_session(srv, "127.0.0.5")
    assert.same({ 334, "334 VXNlcm5hbWU6" }, { c:cmd("AUTH LOGIN") })
    assert.same({ 334, "334 UGFzc3dvcmQ6" }, { c:cmd(tls.b64("joe@example.test")) })
    assert.equals(235, (c:cmd(tls.b64("secret"))))
    c:close()
    local c2 = ext_session(srv, "127.0.0.5")
    assert.same({ 334, "334 UGFzc3dvcmQ6" }, { c2:cmd("AUTH LOGIN " .. tls.b64("joe@example.test")) })
    assert.equals(235, (c2:cmd(tls.b64("secret"))))
    c2:close()
  end)

  it("a wrong password or an unknown user gets 535 5.7.8; the session goes on", function()
    local c = ext_session(srv, "127.0.0.6")
    local code, text = tls.auth_plain(c, "joe@example.test", "wrong")
    assert.equals(535, code, text)
    assert.truthy(text:find("^535 5%.7%.8 "), text)
    code, text = tls.auth_login(c, "joe@example.test", "wrong")
    assert.equals(535, code, text)
    assert.truthy(text:find("^535 5%.7%.8 "), text)
    code, text = tls.auth_plain(c, "nobody@example.test", "secret")
    assert.equals(535, code, text)
    assert.truthy(text:find("^535 5%.7%.8 "), text)
    -- still usable, and a right password still works
    assert.equals(250, (c:cmd("NOOP")))
    assert.equals(235, (tls.auth_login(c, "joe@example.test", "secret")))
    c:close()
    srv:wait_log("event=auth_failed ", 5, 3)
    assert.equals(3, #srv:events("auth_failed", { ip = "127.0.0.6" }))
    assert.equals(0, #srv:events("auth", { user = "nobody@example.test" }))
  end)

  it("is not offered and is refused with 538 5.7.11 on a session that is not secure", function()
    local c = moat.client(srv.port, { source = "127.0.0.5" })
    local code, text = c:ehlo()
    assert.equals(250, code)
    assert.is_false(offers_auth(text), text)
    assert.truthy(text:find("STARTTLS", 1, true), text)
    code, text = tls.auth_plain(c, "joe@example.test", "secret")
    assert.equals(538, code, text)
    assert.truthy(text:find("^538 5%.7%.11 "), text)
    assert.equals(538, (c:cmd("AUTH LOGIN")))
    -- after STARTTLS it is offered and works
    assert(tls.starttls(c))
    code, text = c:ehlo()
    assert.is_true(offers_auth(text), text)
    assert.equals(235, (tls.auth_plain(c, "joe@example.test", "secret")))
    c:close()
  end)

  it("'*' cancels an exchange with 501; an unknown mechanism gets 504", function()
    local c = ext_session(srv, "127.0.0.5")
    assert.equals(334, (c:cmd("AUTH PLAIN")))
    local code, text = c:cmd("*")
    assert.equals(501, code, text)
    assert.equals(334, (c:cmd("AUTH LOGIN")))
    assert.equals(501, (c:cmd("*")))
    assert.equals(334, (c:cmd("AUTH LOGIN")))
    assert.equals(334, (c:cmd(tls.b64("joe@example.test"))))
    assert.equals(501, (c:cmd("*")))
    code, text = c:cmd("AUTH CRAM-MD5")
    assert.equals(504, code, text)
    assert.truthy(text:find("^504 5%.5%.4 "), text)
    -- the session is back in command mode, and not authenticated
    assert.equals(250, (c:cmd("NOOP")))
    assert.equals(235, (tls.auth_plain(c, "joe@example.test", "secret")))
    c:close()
    assert.equals(1, #srv:events("auth"))
  end)

  it("Roaming disabled: refused (535) from a non-client address, accepted from a client address", function()
    local c = ext_session(srv, "127.0.0.5")
    local code, text = tls.auth_plain(c, "noroam@example.test", "secret")
    assert.equals(535, code, text)
    c:close()
    local line = srv:wait_log("event=auth_failed .*user=noroam@example%.test")
    assert.truthy(line:find("roaming", 1, true), line)
    local c2 = ext_session(srv, "127.0.0.1")   -- client_ips
    assert.equals(235, (tls.auth_plain(c2, "noroam@example.test", "secret")))
    c2:close()
    -- the domain's Roaming setting applies to accounts that do not name it
    local c3 = ext_session(srv, "127.0.0.5")
    assert.equals(535, (tls.auth_plain(c3, "carl@corp.example.test", "secret")))
    c3:close()
  end)

  it("an authenticated Relay-enabled user relays; a Relay-disabled one is refused 550 5.7.1", function()
    -- unauthenticated, from a non-client: no relaying
    local c0 = ext_session(srv, "127.0.0.7")
    assert.equals(250, (c0:cmd("MAIL FROM:<x@remote.example>")))
    local code, text = c0:cmd("RCPT TO:<bob@other.example>")
    assert.equals(550, code, text)
    c0:close()

    local c = ext_session(srv, "127.0.0.8")
    assert.equals(235, (tls.auth_plain(c, "joe@example.test", "secret")))
    local r = c:transaction { from = "joe@example.test", rcpts = { "bob@other.example" }, data = moat.message("relayed") }
    assert.equals(250, r.rcpts[1][1], r.rcpts[1][2])
    assert.equals(250, r.final[1], r.final[2])
    c:close()

    local c2 = ext_session(srv, "127.0.0.9")
    assert.equals(235, (tls.auth_plain(c2, "norelay@example.test", "secret")))
    assert.equals(250, (c2:cmd("MAIL FROM:<norelay@example.test>")))
    code, text = c2:cmd("RCPT TO:<bob@other.example>")
    assert.equals(550, code, text)
    assert.truthy(text:find("^550 5%.7%.1 "), text)
    -- local mail is still fine
    assert.equals(250, (c2:cmd("RCPT TO:<joe@example.test>")))
    c2:close()
    srv:wait_log("event=auth .*user=norelay@example%.test.*relay=no")

    -- Relay from the domain (corp.example.test: relay = false) unless the account says otherwise
    local c3 = ext_session(srv, "127.0.0.12")
    assert.equals(235, (tls.auth_plain(c3, "ann@corp.example.test", "secret")))
    assert.equals(250, (c3:cmd("MAIL FROM:<ann@corp.example.test>")))
    assert.equals(550, (c3:cmd("RCPT TO:<bob@other.example>")))
    c3:close()
    local c4 = ext_session(srv, "127.0.0.13")
    assert.equals(235, (tls.auth_plain(c4, "bob@corp.example.test", "secret")))
    assert.equals(250, (c4:cmd("MAIL FROM:<bob@corp.example.test>")))
    assert.equals(250, (c4:cmd("RCPT TO:<bob@other.example>")))
    c4:close()

    assert.equals(1, #srv:spool_files())
  end)

  it("a Relay-enabled login makes the address trusted: later sessions from it relay without AUTH", function()
    local rc, out = moatctl(srv, "test-address", "127.0.0.10")
    assert.equals(0, rc, out)
    assert.truthy(out:find("[127.0.0.10] is Other", 1, true), out)

    local c = ext_session(srv, "127.0.0.10")
    assert.equals(235, (tls.auth_plain(c, "joe@example.test", "secret")))
    c:close()

    local c2 = ext_session(srv, "127.0.0.10")
    assert.equals(250, (c2:cmd("MAIL FROM:<x@remote.example>")))
    local code, text = c2:cmd("RCPT TO:<bob@other.example>")
    assert.equals(250, code, text)
    c2:close()
    -- also on the other socket of the listener
    local c3 = moat.client(srv.port, { source = "127.0.0.10" })
    assert.equals(250, (c3:ehlo()))
    assert.equals(250, (c3:cmd("MAIL FROM:<x@remote.example>")))
    assert.equals(250, (c3:cmd("RCPT TO:<bob@other.example>")))
    c3:close()

    rc, out = moatctl(srv, "test-address", "127.0.0.10")
    assert.equals(0, rc, out)
    assert.truthy(out:find("[127.0.0.10] is Trusted", 1, true), out)

    -- a Relay-disabled login does not make its address trusted
    local c4 = ext_session(srv, "127.0.0.11")
    assert.equals(235, (tls.auth_plain(c4, "norelay@example.test", "secret")))
    c4:close()
    local c5 = ext_session(srv, "127.0.0.11")
    assert.equals(250, (c5:cmd("MAIL FROM:<x@remote.example>")))
    assert.equals(550, (c5:cmd("RCPT TO:<bob@other.example>")))
    c5:close()
    rc, out = moatctl(srv, "test-address", "127.0.0.11")
    assert.truthy(out:find("[127.0.0.11] is Other", 1, true), out)
  end)

  it("Received: says ESMTPA for an authenticated session on a tls = \"ext\" socket (secure, no TLS)", function()
    local c = ext_session(srv, "127.0.0.16")
    local r = c:transaction { from = "x@remote.example", rcpts = { "joe@example.test" }, data = moat.message("plain") }
    assert.equals(250, r.final[1], r.final[2])
    assert.equals(235, (tls.auth_plain(c, "joe@example.test", "secret")))
    r = c:transaction { from = "joe@example.test", rcpts = { "bob@other.example" }, data = moat.message("authed") }
    assert.equals(250, r.final[1], r.final[2])
    c:close()
    local received = {}
    for _, m in ipairs(srv:spool_files()) do
      received[m.eml:match("Subject: (%S+)")] = m.eml:match("^(Received:.-)\r\n%S")
    end
    assert.truthy(received.authed:find(" with ESMTPA id ", 1, true), received.authed)
    assert.truthy(received.authed:find("(authenticated sender)", 1, true), received.authed)
    assert.falsy(received.authed:find("(using ", 1, true), received.authed)
    -- the same session before AUTH: plain ESMTP
    assert.truthy(received.plain:find(" with ESMTP id ", 1, true), received.plain)
    assert.falsy(received.plain:find("authenticated", 1, true), received.plain)
  end)

  it("Received: says ESMTPSA for an authenticated session over STARTTLS", function()
    local c = moat.client(srv.port, { source = "127.0.0.14" })
    assert.equals(250, (c:ehlo()))
    assert(tls.starttls(c))
    assert.equals(250, (c:ehlo()))
    assert.equals(235, (tls.auth_login(c, "joe@example.test", "secret")))
    local r = c:transaction { from = "joe@example.test", rcpts = { "bob@other.example" }, data = moat.message("sa") }
    assert.equals(250, r.final[1], r.final[2])
    c:close()
    local msgs = srv:spool_files()
    assert.equals(1, #msgs)
    local received = msgs[1].eml:match("^(Received:.-)\r\n%S")
    assert.truthy(received:find(" with ESMTPSA id ", 1, true), received)
    assert.truthy(received:find("(authenticated sender)", 1, true), received)
  end)

  it("the envelope (ID.env) records the authenticated user, and null without AUTH", function()
    local c = ext_session(srv, "127.0.0.15")
    local r = c:transaction { from = "x@remote.example", rcpts = { "joe@example.test" }, data = moat.message("anon") }
    assert.equals(250, r.final[1], r.final[2])
    assert.equals(235, (tls.auth_plain(c, "joe@example.test", "secret")))
    r = c:transaction { from = "joe@example.test", rcpts = { "joe@example.test" }, data = moat.message("authed") }
    assert.equals(250, r.final[1], r.final[2])
    c:close()
    local by_subject = {}
    for _, m in ipairs(srv:spool_files()) do by_subject[m.eml:match("Subject: (%S+)")] = m end
    assert.truthy(by_subject.anon.env:find('"user":null', 1, true), by_subject.anon.env)
    assert.equals("joe@example.test", by_subject.authed.envelope.user, by_subject.authed.env)
  end)
end)

describe("moat AUTH with an auth hook", function()
  local srv
  before_each(function() srv = start { scripts = { ["site.lua"] = AUTH_HOOK } } end)
  after_each(function() moat.stop_all() end)

  it("sees the user and ok=true after a right password; its verdict refuses the login", function()
    local c = ext_session(srv, "127.0.0.20")
    local code, text = tls.auth_plain(c, "joe@example.test", "secret")
    assert.same({ 550, "550 5.7.1 joe may not log in here" }, { code, text })
    srv:wait_log('event=script session=%S+ msg="auth hook joe@example%.test true 127%.0%.0%.20 ext"')
    local line = srv:wait_log("event=auth_refused ")
    assert.truthy(line:find("ip=127.0.0.20", 1, true), line)
    assert.truthy(line:find("user=joe@example.test", 1, true), line)
    assert.truthy(line:find("policy=site.lua", 1, true), line)
    assert.same({}, srv:events("auth", { user = "joe@example.test" }))
    -- the session goes on, not authenticated: AUTH is still offered, relaying is refused
    local _, again = c:ehlo()
    assert.is_true(offers_auth(again), again)
    assert.equals(250, (c:cmd("MAIL FROM:<joe@example.test>")))
    assert.equals(550, (c:cmd("RCPT TO:<bob@other.example>")))
    c:close()

    -- another user still logs in (from another address)
    local c2 = ext_session(srv, "127.0.0.21")
    assert.same({ 235, "235 2.7.0 Authentication successful" },
                { tls.auth_plain(c2, "bob@corp.example.test", "secret") })
    assert.equals(250, (c2:cmd("MAIL FROM:<bob@corp.example.test>")))
    assert.equals(250, (c2:cmd("RCPT TO:<bob@other.example>")))
    c2:close()
    srv:wait_log('msg="auth hook bob@corp%.example%.test true 127%.0%.0%.21 ext"')
    srv:wait_log("event=auth .*user=bob@corp%.example%.test.*relay=yes")

    -- bob's address became unblockable and trusted; joe's refused login left its address as it was
    assert.equals("unblockable", (blocked_entry(srv, "127.0.0.21")))
    local rc, out = moatctl(srv, "test-address", "127.0.0.21")
    assert.equals(0, rc, out)
    assert.truthy(out:find("[127.0.0.21] is Trusted", 1, true), out)
    local kind, listing = blocked_entry(srv, "127.0.0.20")
    assert.is_nil(kind, listing)
    rc, out = moatctl(srv, "test-address", "127.0.0.20")
    assert.equals(0, rc, out)
    assert.truthy(out:find("[127.0.0.20] is Other", 1, true), out)
    local c3 = ext_session(srv, "127.0.0.20")
    assert.equals(250, (c3:cmd("MAIL FROM:<x@remote.example>")))
    assert.equals(550, (c3:cmd("RCPT TO:<bob@other.example>")))
    c3:close()
  end)

  it("sees ok=false for a wrong password; the client gets 535, not the hook's verdict", function()
    local c = ext_session(srv, "127.0.0.22")
    local code, text = tls.auth_plain(c, "joe@example.test", "wrong")
    assert.equals(535, code, text)
    assert.truthy(text:find("^535 5%.7%.8 "), text)
    code, text = tls.auth_login(c, "bob@corp.example.test", "wrong")
    assert.equals(535, code, text)
    c:close()
    srv:wait_log('msg="auth hook joe@example%.test false 127%.0%.0%.22 ext"')
    srv:wait_log('msg="auth hook bob@corp%.example%.test false 127%.0%.0%.22 ext"')
    assert.equals(2, #srv:events("auth_failed", { ip = "127.0.0.22" }))
    assert.same({}, srv:events("auth_refused"))
    assert.same({}, srv:events("auth"))
    assert.is_nil((blocked_entry(srv, "127.0.0.22")))
  end)
end)
