-- Integration: listener admission (DESIGN section 6 "Connection", seed 000).
local moat = require "helpers.moat"

-- A connection closed by moat before any greeting.
local function assert_refused(c)
  assert.is_nil(c.greeting_code, "got a greeting: " .. tostring(c.greeting))
  assert.truthy(c.greeting == "closed" or c.greeting == "connection reset by peer",
                "expected a closed connection, got " .. tostring(c.greeting))
  c:close()
end

describe("moat listeners", function()
  after_each(function() moat.stop_all() end)

  it("restrict = grant: only the listed remote addresses are greeted", function()
    local srv = moat.start {
      listener = '{ { port = %PORT%, address = "127.0.0.1", restrict = "grant", remote = "127.0.0.1, 127.0.0.20-127.0.0.29" } }',
    }
    assert_refused(moat.client(srv.port, { source = "127.0.0.2" }))
    srv:wait_log("event=refused ip=127%.0%.0%.2 socket=%S+ reason=not_granted")
    for _, ip in ipairs { "127.0.0.1", "127.0.0.25" } do
      local c = moat.client(srv.port, { source = ip })
      assert.same({ 220, "220 mx.example.test ESMTP moat" }, { c.greeting_code, c.greeting })
      c:close()
    end
    assert.falsy(srv:log():find("event=connect [^\n]*ip=127%.0%.0%.2 "), "a refused address got a session")
  end)

  it("restrict = deny: the listed remote addresses are closed without greeting", function()
    local srv = moat.start {
      listener = '{ { port = %PORT%, address = "127.0.0.1", restrict = "deny", remote = "127.0.0.2/32" } }',
    }
    assert_refused(moat.client(srv.port, { source = "127.0.0.2" }))
    srv:wait_log("event=refused ip=127%.0%.0%.2 .*reason=restricted")
    local c = moat.client(srv.port, { source = "127.0.0.4" })
    assert.equals(220, c.greeting_code)
    assert.equals(250, (c:ehlo()))
    c:close()
  end)

  it("denied_ips: closed without greeting, others are served", function()
    local srv = moat.start { tables = { denied_ips = "; denied\n127.0.0.3   ; this one\n192.0.2.0/24\n" } }
    assert_refused(moat.client(srv.port, { source = "127.0.0.3" }))
    srv:wait_log("event=refused ip=127%.0%.0%.3 .*reason=denied_ips")
    local c = moat.client(srv.port, { source = "127.0.0.4" })
    assert.equals(220, c.greeting_code)
    c:close()
  end)

  it("address = \"all\" serves IPv4 and IPv6 on the same port", function()
    local srv = moat.start { listener = '{ { port = %PORT%, address = "all" } }', any_address = true,
                             tables = { client_ips = "127.0.0.1\n::1\n" } }
    for _, host in ipairs { "127.0.0.1", "127.0.0.9", "::1" } do
      local c = moat.client(srv.port, { host = host })
      assert.same({ 220, "220 mx.example.test ESMTP moat" }, { c.greeting_code, c.greeting }, host)
      assert.equals(250, (c:ehlo()), host)
      c:close()
    end
    srv:wait_log("event=connect [^\n]* ip=::1 [^\n]*local=::1 ")
    srv:wait_log("event=connect [^\n]* local=127%.0%.0%.9 ")
    -- one IPv4 and one IPv6-only socket (README: Choices made where the contract was silent)
    assert.equals(2, #srv:events("listening"), srv:log())
  end)

  it("serves two sockets of one listener", function()
    local srv = moat.start {
      ports = 1,
      listener = '{ { port = %PORT%, address = "127.0.0.1" }, { port = %PORT1%, address = "127.0.0.1", restrict = "grant", remote = "127.0.0.9" } }',
    }
    local c = moat.client(srv.port)
    assert.equals(220, c.greeting_code)
    c:close()
    assert_refused(moat.client(srv.vars.PORT1))
    local c2 = moat.client(srv.vars.PORT1, { source = "127.0.0.9" })
    assert.equals(220, c2.greeting_code)
    c2:close()
    srv:wait_log("event=listening socket=%S+ address=127%.0%.0%.1 port=" .. srv.vars.PORT1 .. " tls=off")
  end)

  it("tells hooks which socket and address a session came from", function()
    local srv = moat.start { scripts = { ["who.lua"] = [[
      local moat = require "moat"
      return { helo = function(s, name)
        return moat.reject(550, ("5.7.1 ip=%s local=%s:%d tls=%s secure=%s status=%s lan=%s"):format(
          s.ip, s.local_ip, s.local_port, s.tls, tostring(s.secure), s.status, tostring(s.lan)))
      end }
    ]] } }
    local c = moat.client(srv.port, { source = "127.0.0.6" })
    assert.same({ 550, ("550 5.7.1 ip=127.0.0.6 local=127.0.0.1:%d tls=off secure=false status=other lan=false")
                       :format(srv.port) }, { c:ehlo() })
    c:close()
  end)
end)
