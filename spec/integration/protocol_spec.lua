-- Integration: every SMTP reply a client can provoke, with its exact text.
local socket = require "socket"
local moat = require "helpers.moat"

local LIMITS = { max_recipients = 3, max_message_size = 2048, max_errors = 10, max_line_length = 1000 }

describe("moat SMTP replies", function()
  local srv, c
  before_each(function()
    srv = moat.start { smtp = LIMITS }
    c = moat.client(srv.port)
    assert.equals(220, c.greeting_code)
  end)
  after_each(function()
    if c then c:close() end
    moat.stop_all()
  end)

  it("503 5.5.1 for MAIL before EHLO", function()
    assert.same({ 503, "503 5.5.1 Error: send HELO/EHLO first" }, { c:cmd("MAIL FROM:<a@remote.example>") })
  end)

  it("503 5.5.1 for RCPT before MAIL and for DATA before MAIL", function()
    c:ehlo()
    assert.same({ 503, "503 5.5.1 Error: need MAIL command" }, { c:cmd("RCPT TO:<joe@example.test>") })
    assert.same({ 503, "503 5.5.1 Error: need MAIL command" }, { c:cmd("DATA") })
  end)

  it("503 5.5.1 for a nested MAIL", function()
    c:ehlo()
    assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example>")))
    assert.same({ 503, "503 5.5.1 Error: nested MAIL command" }, { c:cmd("MAIL FROM:<b@remote.example>") })
  end)

  it("250 for HELO, RSET and NOOP; RSET ends the transaction", function()
    assert.same({ 250, "250 mx.example.test" }, { c:cmd("HELO client.example") })
    assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example>")))
    assert.same({ 250, "250 2.0.0 Ok" }, { c:cmd("RSET") })
    assert.same({ 503, "503 5.5.1 Error: need MAIL command" }, { c:cmd("RCPT TO:<joe@example.test>") })
    assert.same({ 250, "250 2.0.0 Ok" }, { c:cmd("NOOP") })
  end)

  it("501 5.5.4 for EHLO without a name and for MAIL without FROM:", function()
    assert.same({ 501, "501 5.5.4 Syntax: EHLO hostname" }, { c:cmd("EHLO") })
    assert.same({ 501, "501 5.5.4 Syntax: HELO hostname" }, { c:cmd("HELO ") })
    c:ehlo()
    assert.same({ 501, "501 5.5.4 Syntax: MAIL FROM:<address>" }, { c:cmd("MAIL TO:<a@remote.example>") })
    assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example>")))
    assert.same({ 501, "501 5.5.4 Syntax: RCPT TO:<address>" }, { c:cmd("RCPT FROM:<a@remote.example>") })
    assert.same({ 501, "501 5.5.4 Syntax: DATA" }, { c:cmd("DATA now") })
  end)

  it("501 5.1.7 for a bad sender address", function()
    c:ehlo()
    assert.same({ 501, "501 5.1.7 Bad sender address syntax" }, { c:cmd("MAIL FROM:<a b@remote.example>") })
    assert.same({ 501, "501 5.1.7 Bad sender address syntax" }, { c:cmd("MAIL FROM:a@remote.example") })
    -- the transaction did not start
    assert.same({ 503, "503 5.5.1 Error: need MAIL command" }, { c:cmd("RCPT TO:<joe@example.test>") })
  end)

  it("501 5.1.3 for a bad recipient address", function()
    c:ehlo()
    assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example>")))
    assert.same({ 501, "501 5.1.3 Bad recipient address syntax" }, { c:cmd("RCPT TO:<joe@exa..mple>") })
    assert.same({ 501, "501 5.1.3 Bad recipient address syntax" }, { c:cmd("RCPT TO:<>") })
    assert.same({ 501, "501 5.1.3 Bad recipient address syntax" }, { c:cmd("RCPT TO:<joe@example.test") })
  end)

  it("500 5.5.2 for an unknown command", function()
    assert.same({ 500, "500 5.5.2 Error: command not recognized" }, { c:cmd("FOO bar") })
    assert.same({ 500, "500 5.5.2 Error: command not recognized" }, { c:cmd("") })
  end)

  it("500 5.5.2 for a command line over 2048 bytes, and the session goes on", function()
    c:ehlo()
    local ok = "NOOP " .. ("x"):rep(2048 - 5)             -- exactly 2048 bytes: allowed
    assert.equals(2048, #ok)
    assert.same({ 250, "250 2.0.0 Ok" }, { c:cmd(ok) })
    assert.same({ 500, "500 5.5.2 Error: line too long" }, { c:cmd(ok .. "x") })
    assert.same({ 500, "500 5.5.2 Error: line too long" }, { c:cmd("NOOP " .. ("y"):rep(10000)) })
    assert.same({ 250, "250 2.0.0 Ok" }, { c:cmd("NOOP") })
  end)

  it("accepts a 2048-byte command even when its line end arrives in a later packet", function()
    c:ehlo()
    local line = "NOOP " .. ("x"):rep(2048 - 5)
    c.sock:setoption("tcp-nodelay", true)
    assert(c:send(line .. "\r"))
    socket.sleep(0.2)                                     -- let moat read the partial line
    assert(c:send("\n"))
    assert.same({ 250, "250 2.0.0 Ok" }, { c:read_reply() })
  end)

  it("502 for EXPN", function()
    c:ehlo()
    assert.same({ 502, "502 5.5.1 Command not implemented" }, { c:cmd("EXPN staff") })
  end)

  it("252 for VRFY", function()
    assert.same({ 252, "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery" },
                { c:cmd("VRFY joe") })
  end)

  it("214 for HELP", function()
    assert.same({ 214, "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP" },
                { c:cmd("HELP") })
  end)

  it("announces the configured SIZE in EHLO", function()
    local code, text = c:ehlo()
    assert.equals(250, code)
    assert.truthy(text:find("\n250%-SIZE 2048\n"), text)
  end)

  it("552 5.3.4 for MAIL SIZE= over the limit; SIZE= within it is accepted", function()
    c:ehlo()
    assert.same({ 552, "552 5.3.4 Message size exceeds fixed maximum message size" },
                { c:cmd("MAIL FROM:<a@remote.example> SIZE=2049") })
    assert.same({ 250, "250 2.1.0 Ok" }, { c:cmd("MAIL FROM:<a@remote.example> SIZE=2048") })
  end)

  it("501 5.5.4 for a malformed SIZE=", function()
    c:ehlo()
    assert.same({ 501, "501 5.5.4 Bad SIZE parameter" }, { c:cmd("MAIL FROM:<a@remote.example> SIZE=12k") })
  end)

  it("552 5.3.4 after the dot for data over max_message_size, nothing stored, session goes on", function()
    c:ehlo()
    local big = moat.message("big", ("0123456789abcdef\r\n"):rep(150))   -- ~2.7 kB
    assert.is_true(#big > 2048)
    local r = c:transaction { from = "a@remote.example", rcpts = { "joe@example.test" }, data = big }
    assert.same({ 552, "552 5.3.4 Message size exceeds fixed maximum message size" }, r.final)
    assert.same({}, srv:spool_names())
    srv:wait_log("event=message .*verdict=reject .*reply=\"message too big\"")
    -- the next transaction on the same connection works
    local r2 = c:transaction { from = "a@remote.example", rcpts = { "joe@example.test" } }
    assert.equals(250, r2.final[1])
    assert.equals(1, #srv:spool_files())
  end)

  it("500 5.5.2 after the dot for a data line over max_line_length", function()
    c:ehlo()
    srv:stop()
    srv = moat.start { smtp = { max_line_length = 1000 } }
    c:close()
    c = moat.client(srv.port)
    c:ehlo()
    local r = c:transaction { from = "a@remote.example", rcpts = { "joe@example.test" },
                              data = moat.message("long", ("z"):rep(1500) .. "\r\n") }
    assert.same({ 500, "500 5.5.2 Line too long (more than 1000 bytes)" }, r.final)
    assert.same({}, srv:spool_names())
  end)

  it("takes a message of exactly max_message_size bytes and refuses one byte more", function()
    c:ehlo()
    -- lines stay under max_line_length (1000): only the size limit is tested
    local function sized(n)
      local head = "Subject: exact\r\n\r\n"
      local body = (("a"):rep(98) .. "\r\n"):rep(19)     -- 1900 bytes
      local m = head .. body .. ("b"):rep(n - #head - #body - 2) .. "\r\n"
      assert.equals(n, #m)
      return m
    end
    local exact = sized(2048)
    local r = c:transaction { from = "a@remote.example", rcpts = { "joe@example.test" }, data = exact }
    assert.same({ 250, "250 2.0.0 Ok: queued as " .. tostring(r.id) }, r.final)
    local over = sized(2049)
    local r2 = c:transaction { from = "a@remote.example", rcpts = { "joe@example.test" }, data = over }
    assert.same({ 552, "552 5.3.4 Message size exceeds fixed maximum message size" }, r2.final)
    local files = srv:spool_files()
    assert.equals(1, #files)
    assert.equals(2048, files[1].envelope.size)
  end)

  it("500 5.5.2 for a NUL byte in a command", function()
    assert.same({ 500, "500 5.5.2 Error: NUL byte in command" }, { c:cmd("NOOP a\0b") })
    assert.same({ 250, "250 2.0.0 Ok" }, { c:cmd("NOOP") })
  end)

  it("takes a data line of exactly max_line_length bytes, also split across packets", function()
    c:ehlo()
    local line = ("q"):rep(1000)
    local r = c:transaction { from = "a@remote.example", rcpts = { "joe@example.test" },
                              data = moat.message("edge", line .. "\r\n") }
    assert.equals(250, r.final[1])
    assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example>")))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    assert.equals(354, (c:cmd("DATA")))
    c.sock:setoption("tcp-nodelay", true)
    assert(c:send("Subject: split\r\n\r\n" .. line .. "\r"))
    socket.sleep(0.2)
    assert(c:send("\n.\r\n"))
    assert.equals(250, (c:read_reply()))
    local r3 = c:transaction { from = "a@remote.example", rcpts = { "joe@example.test" },
                               data = moat.message("over", line .. "q\r\n") }
    assert.same({ 500, "500 5.5.2 Line too long (more than 1000 bytes)" }, r3.final)
    assert.equals(2, #srv:spool_files())
  end)

  it("452 4.5.3 past max_recipients; the first ones are kept", function()
    c:ehlo()
    assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example>")))
    for i = 1, 3 do
      assert.same({ 250, "250 2.1.5 Ok" }, { c:cmd("RCPT TO:<u" .. i .. "@example.test>") })
    end
    assert.same({ 452, "452 4.5.3 Too many recipients" }, { c:cmd("RCPT TO:<u4@example.test>") })
    assert.same({ 452, "452 4.5.3 Too many recipients" }, { c:cmd("RCPT TO:<u5@example.test>") })
    assert.equals(354, (c:cmd("DATA")))
    assert(c:send(moat.dot_stuff(moat.message())))
    assert.equals(250, (c:read_reply()))
    local rcpts = {}
    for _, r in ipairs(srv:spool_files()[1].envelope.rcpts) do rcpts[#rcpts + 1] = r.addr end
    assert.same({ "u1@example.test", "u2@example.test", "u3@example.test" }, rcpts)
  end)

  it("555 5.5.4 for an unknown MAIL or RCPT parameter", function()
    c:ehlo()
    assert.same({ 555, "555 5.5.4 Unsupported MAIL parameter" }, { c:cmd("MAIL FROM:<a@remote.example> FOO=bar") })
    assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example> BODY=8BITMIME SMTPUTF8")))
    assert.same({ 555, "555 5.5.4 Unsupported RCPT parameter" }, { c:cmd("RCPT TO:<joe@example.test> NOTIFY=NEVER") })
  end)

  it("554 5.5.1 for DATA with no valid recipients", function()
    c:close()
    c = moat.client(srv.port, { source = "127.0.0.5" })
    c:ehlo()
    assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example>")))
    assert.equals(550, (c:cmd("RCPT TO:<x@elsewhere.example>")))
    assert.same({ 554, "554 5.5.1 Error: no valid recipients" }, { c:cmd("DATA") })
  end)

  it("553 5.6.7 for a UTF-8 address without SMTPUTF8", function()
    c:ehlo()
    assert.same({ 553, "553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter" },
                { c:cmd("MAIL FROM:<j\xc3\xb6rg@remote.example>") })
    assert.equals(250, (c:cmd("MAIL FROM:<j\xc3\xb6rg@remote.example> SMTPUTF8")))
  end)
end)

describe("moat session limits", function()
  after_each(function() moat.stop_all() end)

  it("421 4.7.0 after max_errors protocol errors, then closes", function()
    local srv = moat.start { smtp = { max_errors = 3 } }
    local c = moat.client(srv.port, { source = "127.0.0.7" })
    assert.same({ 500, "500 5.5.2 Error: command not recognized" }, { c:cmd("BOGUS1") })
    assert.same({ 503, "503 5.5.1 Error: send HELO/EHLO first" }, { c:cmd("MAIL FROM:<a@remote.example>") })
    assert.same({ 500, "500 5.5.2 Error: command not recognized" }, { c:cmd("BOGUS3") })
    assert.same({ 421, "421 4.7.0 mx.example.test Too many errors, closing connection" }, { c:read_reply() })
    assert.is_true((c:closed()))
    c:close()
    srv:wait_log("event=too_many_errors .*ip=127%.0%.0%.7")
  end)

  it("421 4.4.2 after smtp.timeout seconds of silence, then closes", function()
    local srv = moat.start { smtp = { timeout = 1 } }
    local c = moat.client(srv.port)
    assert.equals(250, (c:ehlo()))
    local t0 = socket.gettime()
    local code, text = c:read_reply()
    local waited = socket.gettime() - t0
    assert.same({ 421, "421 4.4.2 mx.example.test Error: timeout exceeded" }, { code, text })
    assert.is_true(waited > 0.8 and waited < 3, "timeout after " .. waited .. " s")
    assert.is_true((c:closed()))
    c:close()
    srv:wait_log("event=timeout ")
  end)

  it("421 4.4.2 for a client that goes silent in the middle of DATA; nothing stored", function()
    local srv = moat.start { smtp = { timeout = 1 } }
    local c = moat.client(srv.port)
    c:ehlo()
    assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example>")))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    assert.equals(354, (c:cmd("DATA")))
    assert(c:send("Subject: half\r\n\r\npart"))
    assert.same({ 421, "421 4.4.2 mx.example.test Error: timeout exceeded" }, { c:read_reply() })
    assert.is_true((c:closed()))
    c:close()
    assert.same({}, srv:spool_names())
  end)

  it("554 5.5.1 for data sent before the greeting, then closes", function()
    local srv = moat.start { smtp = { greet_delay_ms = 500 } }
    local c = moat.client(srv.port, { greeting = false, source = "127.0.0.8" })
    assert(c:send("EHLO eager.example\r\n"))
    assert.same({ 554, "554 5.5.1 mx.example.test Protocol error: data sent before the greeting" },
                { c:read_reply() })
    assert.is_true((c:closed()))
    c:close()
    srv:wait_log("event=pregreet .*ip=127%.0%.0%.8")
  end)

  it("greets a patient client after greet_delay_ms and then serves it", function()
    local srv = moat.start { smtp = { greet_delay_ms = 300 } }
    local c = moat.client(srv.port, { greeting = false, timeout = 3 })
    local t0 = socket.gettime()
    assert.same({ 220, "220 mx.example.test ESMTP moat" }, { c:read_reply() })
    assert.is_true(socket.gettime() - t0 >= 0.25)
    assert.equals(250, (c:ehlo()))
    assert.same({ 250, "250 2.0.0 Ok" }, { c:cmd("NOOP") })
    c:close()
  end)

  it("times out an idle client after a delayed greeting", function()
    local srv = moat.start { smtp = { greet_delay_ms = 100, timeout = 1 } }
    local c = moat.client(srv.port, { timeout = 4 })
    assert.equals(220, c.greeting_code)
    assert.same({ 421, "421 4.4.2 mx.example.test Error: timeout exceeded" }, { c:read_reply() })
    c:close()
  end)
end)
