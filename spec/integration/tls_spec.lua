-- Integration: TLS (seed 000 "Secure Sockets", DESIGN §3 domains/listener
-- tls = on | ext | off, RFC 3207 STARTTLS).
local moat = require "helpers.moat"
local tls = require "helpers.tls"

-- Two domains with their own certificate: example.test owns 127.0.0.1,
-- other.test owns 127.0.0.2; nocert.test owns 127.0.0.3 and has none.
local DOMAINS = [[
domains = {
  ["example.test"] = { addresses = { "127.0.0.1" }, certificate = "ex.pem", private_key = "ex.key" },
  ["other.test"] = { addresses = { "127.0.0.2" }, certificate = "other.pem", private_key = "other.key" },
  ["nocert.test"] = { addresses = { "127.0.0.3" } },
}
]]

local function files(extra)
  local f = {}
  tls.domain_files(f, "example.test", "ex")
  tls.domain_files(f, "other.test", "other")
  for k, v in pairs(extra or {}) do f[k] = v end
  return f
end

local ACCOUNTS = function()
  return "joe@example.test " .. tls.hash_password("secret") .. "\n"
end

local function ehlo_lines(c)
  local code, text = c:ehlo()
  assert.equals(250, code, text)
  return text
end

local function has_ext(text, ext)
  for line in text:gmatch("[^\n]+") do
    if line:match("^250[ -](.*)$") == ext then return true end
  end
  return false
end

describe("moat TLS", function()
  after_each(function() moat.stop_all() end)

  describe("STARTTLS on a plain socket", function()
    local srv
    before_each(function()
      srv = moat.start {
        files = files(),
        ports = 1,
        listener = '{ { port = %PORT%, address = "127.0.0.1" }, { port = %PORT%, address = "127.0.0.3" } }',
        extra = DOMAINS,
        tables = { accounts = ACCOUNTS() },
      }
    end)

    it("is offered when the local address's domain has a certificate; EHLO again after the handshake", function()
      local c = moat.client(srv.port)
      local before = ehlo_lines(c)
      assert.is_true(has_ext(before, "STARTTLS"), before)
      assert.is_false(has_ext(before, "AUTH PLAIN LOGIN"), "AUTH offered in clear text:\n" .. before)
      assert(tls.starttls(c))
      assert.equals("example.test", tls.peer_cn(c))
      local proto = tls.protocol(c)
      assert.truthy(proto == "TLSv1.2" or proto == "TLSv1.3", proto)
      local after = ehlo_lines(c)
      assert.is_false(has_ext(after, "STARTTLS"), "STARTTLS offered twice:\n" .. after)
      assert.is_true(has_ext(after, "AUTH PLAIN LOGIN"), after)
      -- a second STARTTLS is out of sequence
      assert.equals(503, (c:cmd("STARTTLS")))
      assert.equals(250, (c:cmd("NOOP")))
      c:close()
      local line = srv:wait_log("event=tls ")
      assert.truthy(line:find("protocol=\"?TLSv1%.[23]"), line)
    end)

    it("delivers the last reply before closing: QUIT after STARTTLS gets its 221", function()
      local c = moat.client(srv.port)
      ehlo_lines(c)
      assert(tls.starttls(c))
      ehlo_lines(c)
      assert.same({ 221, "221 2.0.0 Bye" }, { c:cmd("QUIT") })
      c:close()
    end)

    it("delivers the 421 of too many errors after STARTTLS", function()
      srv:stop()
      srv = moat.start {
        files = files(), extra = DOMAINS, smtp = { max_errors = 2 },
      }
      local c = moat.client(srv.port)
      ehlo_lines(c)
      assert(tls.starttls(c))
      ehlo_lines(c)
      assert.equals(500, (c:cmd("BOGUS")))
      local replies = { c:cmd("BOGUS") }
      assert.equals(500, replies[1], replies[2])
      local code, text = c:read_reply()
      assert.equals(421, code, text)
      c:close()
    end)

    it("is not offered, and is refused, where the domain has no certificate", function()
      local c = moat.client(srv.port, { host = "127.0.0.3" })
      local text = ehlo_lines(c)
      assert.is_false(has_ext(text, "STARTTLS"), text)
      local code, reply = c:cmd("STARTTLS")
      assert.equals(454, code, reply)
      assert.truthy(reply:find("4.7.0", 1, true), reply)
      -- the session goes on in clear text
      assert.equals(250, (c:cmd("NOOP")))
      c:close()
    end)

    it("resets the session: a MAIL given before STARTTLS is forgotten", function()
      local c = moat.client(srv.port)
      ehlo_lines(c)
      assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example>")))
      assert(tls.starttls(c))
      ehlo_lines(c)
      local code, text = c:cmd("RCPT TO:<joe@example.test>")
      assert.equals(503, code, text)
      -- and HELO/EHLO is required again
      c:close()
      local c2 = moat.client(srv.port)
      ehlo_lines(c2)
      assert(tls.starttls(c2))
      assert.equals(503, (c2:cmd("MAIL FROM:<a@remote.example>")))
      c2:close()
    end)

    it("discards commands pipelined after STARTTLS (command injection)", function()
      local c = moat.client(srv.port)
      ehlo_lines(c)
      assert(c:send("STARTTLS\r\nRSET\r\n"))
      local code, text = c:read_reply()
      assert.equals(220, code, text)
      assert(tls.wrap(c))
      -- the first reply over TLS answers our EHLO, not the injected RSET
      assert(c:send("EHLO client.example\r\n"))
      code, text = c:read_reply()
      assert.equals(250, code, text)
      assert.truthy(text:find("^250%-mx%.example%.test"), "first reply over TLS was: " .. text)
      assert.equals(250, (c:cmd("NOOP")))
      -- nothing else is pending
      c:settimeout(0.3)
      local extra, err = c:read_reply()
      assert.is_nil(extra, "an extra reply: " .. tostring(err))
      assert.truthy(err == "timeout" or err == "wantread", err)   -- LuaSec says wantread
      c:close()
      local line = srv:wait_log("event=starttls_injection ")
      assert.truthy(line:find("discarded_bytes=6", 1, true), line)
    end)

    it("stamps Received: with ESMTPS, and ESMTPSA after AUTH", function()
      local c = moat.client(srv.port, { source = "127.0.0.1" })
      ehlo_lines(c)
      assert(tls.starttls(c))
      ehlo_lines(c)
      local r = c:transaction { from = "a@remote.example", rcpts = { "joe@example.test" }, data = moat.message("s") }
      assert.equals(250, r.final[1], r.final[2])
      assert.equals(235, (tls.auth_plain(c, "joe@example.test", "secret")))
      r = c:transaction { from = "joe@example.test", rcpts = { "joe@example.test" }, data = moat.message("sa") }
      assert.equals(250, r.final[1], r.final[2])
      c:close()
      local msgs = moat.poll(function()
        local m = srv:spool_files()
        return #m == 2 and m
      end)
      assert.truthy(msgs, "two messages expected in the spool")
      local by_subject = {}
      for _, m in ipairs(msgs) do by_subject[m.eml:match("Subject: (%S+)")] = m.eml end
      local rs = by_subject.s:match("^(Received:.-)\r\n%S")
      local rsa = by_subject.sa:match("^(Received:.-)\r\n%S")
      assert.truthy(rs:find(" with ESMTPS id ", 1, true), rs)
      assert.truthy(rs:find("(using TLSv1.", 1, true), rs)
      assert.truthy(rsa:find(" with ESMTPSA id ", 1, true), rsa)
      assert.truthy(rsa:find("(authenticated sender)", 1, true), rsa)
    end)

    it("refuses a client that forces TLS 1.1 (TLS 1.2 minimum)", function()
      local c = moat.client(srv.port)
      ehlo_lines(c)
      local ok, err = tls.starttls(c, { protocol = "tlsv1_1", ciphers = "DEFAULT:@SECLEVEL=0" })
      assert.is_nil(ok)
      assert.truthy(err:find("^handshake"), err)
      c:close()
      local line = srv:wait_log("event=tls_error ")
      assert.truthy(line:find("unsupported protocol", 1, true), line)
      assert.same({}, srv:events("tls"))
      -- the same client parameters with TLS 1.2 do work
      local c2 = moat.client(srv.port)
      ehlo_lines(c2)
      assert(tls.starttls(c2, { protocol = "tlsv1_2", ciphers = "DEFAULT:@SECLEVEL=0" }))
      assert.equals("TLSv1.2", tls.protocol(c2))
      assert.equals(250, (c2:ehlo()))
      c2:close()
    end)
  end)

  describe("tls = \"on\" (secure sockets)", function()
    local srv
    before_each(function()
      srv = moat.start {
        files = files(),
        ports = 1,
        listener = '{ { port = %PORT%, address = "127.0.0.1", tls = "on" }, ' ..
                   '{ port = %PORT%, address = "127.0.0.2", tls = "on" }, ' ..
                   '{ port = %PORT%, address = "127.0.0.3", tls = "on" }, ' ..
                   '{ port = %PORT1%, address = "127.0.0.1" } }',
        extra = DOMAINS,
        tables = { accounts = ACCOUNTS() },
      }
    end)

    it("does TLS before the 220 greeting; no STARTTLS, AUTH offered", function()
      local c = assert(tls.connect(srv.port))
      assert.equals(220, c.greeting_code, c.greeting)
      assert.equals("220 mx.example.test ESMTP moat", c.greeting)
      local text = ehlo_lines(c)
      assert.is_false(has_ext(text, "STARTTLS"), text)
      assert.is_true(has_ext(text, "AUTH PLAIN LOGIN"), text)
      assert.equals(503, (c:cmd("STARTTLS")))
      assert.equals(235, (tls.auth_plain(c, "joe@example.test", "secret")))
      c:close()
      srv:wait_log("event=tls ")
    end)

    it("a plain-text client on a secure socket gets no greeting", function()
      local c = moat.client(srv.port, { greeting = false })
      c:settimeout(1)
      local code, err = c:read_reply()
      assert.is_nil(code)
      assert.truthy(err ~= nil)
      c:close()
    end)

    it("without SNI uses the certificate of the domain owning the local address", function()
      local c1 = assert(tls.connect(srv.port, { host = "127.0.0.1" }))
      assert.equals("example.test", tls.peer_cn(c1))
      assert.equals(220, c1.greeting_code)
      c1:close()
      local c2 = assert(tls.connect(srv.port, { host = "127.0.0.2" }))
      assert.equals("other.test", tls.peer_cn(c2))
      assert.equals(220, c2.greeting_code)
      c2:close()
    end)

    it("SNI picks the named domain's certificate; an unknown name keeps the address's", function()
      local c1 = assert(tls.connect(srv.port, { host = "127.0.0.1", sni = "other.test" }))
      assert.equals("other.test", tls.peer_cn(c1))
      assert.equals(220, c1.greeting_code)
      c1:close()
      local c2 = assert(tls.connect(srv.port, { host = "127.0.0.2", sni = "EXAMPLE.test" }))
      assert.equals("example.test", tls.peer_cn(c2))
      c2:close()
      local c3 = assert(tls.connect(srv.port, { host = "127.0.0.2", sni = "unknown.example" }))
      assert.equals("other.test", tls.peer_cn(c3))
      c3:close()
      srv:wait_log("event=tls .*sni=other%.test")
    end)

    it("SNI also works with STARTTLS", function()
      local c = moat.client(srv.vars.PORT1)
      ehlo_lines(c)
      assert(tls.starttls(c, { sni = "other.test" }))
      assert.equals("other.test", tls.peer_cn(c))
      c:close()
    end)

    it("drops the connection when the domain of the local address has no certificate", function()
      local c, err = tls.connect(srv.port, { host = "127.0.0.3", timeout = 3 })
      assert.is_nil(c, "handshake should fail")
      assert.truthy(err)
      local line = srv:wait_log("event=tls_no_certificate ")
      assert.truthy(line:find("local=127.0.0.3", 1, true), line)
      assert.truthy(line:find("domain=nocert.test", 1, true), line)
      -- the others keep working
      local ok = assert(tls.connect(srv.port, { host = "127.0.0.1" }))
      assert.equals(220, ok.greeting_code)
      ok:close()
    end)
  end)

  describe("tls = \"ext\" (TLS done in front of moat)", function()
    it("offers no STARTTLS, refuses it with 503, and offers AUTH in clear text", function()
      local srv = moat.start {
        files = files(),
        listener = '{ { port = %PORT%, address = "127.0.0.1", tls = "ext" } }',
        extra = DOMAINS,
        tables = { accounts = ACCOUNTS() },
        scripts = { ["who.lua"] = [[
          local moat = require "moat"
          return { mail_from = function(s)
            return moat.reject(550, "5.7.1 tls=" .. s.tls .. " secure=" .. tostring(s.secure))
          end }
        ]] },
      }
      local c = moat.client(srv.port)
      local text = ehlo_lines(c)
      assert.is_false(has_ext(text, "STARTTLS"), text)
      assert.is_true(has_ext(text, "AUTH PLAIN LOGIN"), text)
      local code, reply = c:cmd("STARTTLS")
      assert.equals(503, code, reply)
      assert.equals(235, (tls.auth_login(c, "joe@example.test", "secret")))
      assert.same({ 550, "550 5.7.1 tls=ext secure=true" }, { c:cmd("MAIL FROM:<joe@example.test>") })
      c:close()
    end)
  end)
end)
