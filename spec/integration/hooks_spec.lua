-- Integration: site scripts and the hook chain (DESIGN section 5).
local socket = require "socket"
local moat = require "helpers.moat"

local TEMPFAIL = "451 4.3.0 Temporary policy error, try again later"

-- A client that has sent EHLO and MAIL FROM.
local function in_transaction(srv, opts)
  local c = moat.client(srv.port, opts)
  assert.equals(220, c.greeting_code)
  assert.equals(250, (c:ehlo()))
  assert.same({ 250, "250 2.1.0 Ok" }, { c:cmd("MAIL FROM:<sender@remote.example>") })
  return c
end

local function send_message(c, msg)
  assert.equals(354, (c:cmd("DATA")))
  assert(c:send(moat.dot_stuff(msg or moat.message())))
  return c:read_reply()
end

describe("moat hooks", function()
  local clients = {}
  local function track(c) clients[#clients + 1] = c; return c end
  after_each(function()
    for _, c in ipairs(clients) do c:close() end
    clients = {}
    moat.stop_all()
  end)

  it("a site script rejects matching recipients with its own code and text, others pass", function()
    local srv = moat.start { scripts = { ["site.lua"] = [[
      local moat = require "moat"
      return { rcpt = function(s, rcpt)
        if rcpt.addr.localpart:match("^spam") then
          return moat.reject(553, "5.7.1 No spam here, " .. rcpt.addr.raw)
        end
      end }
    ]] } }
    local c = track(in_transaction(srv))
    assert.same({ 553, "553 5.7.1 No spam here, spambox@example.test" }, { c:cmd("RCPT TO:<spambox@example.test>") })
    assert.same({ 250, "250 2.1.5 Ok" }, { c:cmd("RCPT TO:<joe@example.test>") })
    assert.same({ 250, "250 2.1.5 Ok" }, { c:cmd("RCPT TO:<nospam@example.test>") })
    assert.equals(250, (send_message(c)))
    local rcpts = {}
    for _, r in ipairs(srv:spool_files()[1].envelope.rcpts) do rcpts[#rcpts + 1] = r.addr end
    assert.same({ "joe@example.test", "nospam@example.test" }, rcpts)
    srv:wait_log("event=rcpt_rejected .*rcpt=spambox@example%.test .*verdict=reject policy=site%.lua")
  end)

  it("a script error gives 451 4.3.0, logs the traceback with the file name, never accepts", function()
    local srv = moat.start { scripts = { ["broken.lua"] = [[
      local moat = require "moat"
      return {
        rcpt = function(s, rcpt)
          if rcpt.addr.localpart == "boom" then
            undefined_function(rcpt)
          end
        end,
      }
    ]] } }
    local c = track(in_transaction(srv))
    assert.same({ 451, TEMPFAIL }, { c:cmd("RCPT TO:<boom@example.test>") })
    local line = srv:wait_log("event=hook_error ")
    assert.truthy(line:find("phase=rcpt", 1, true), line)
    assert.truthy(line:find("broken.lua:5:", 1, true), line)
    assert.truthy(line:find("undefined_function", 1, true), line)
    assert.truthy(line:find("traceback", 1, true), line)
    -- the recipient was not taken: DATA has nobody to deliver to
    assert.same({ 554, "554 5.5.1 Error: no valid recipients" }, { c:cmd("DATA") })
    -- the session and the script still work for other recipients
    assert.same({ 250, "250 2.1.5 Ok" }, { c:cmd("RCPT TO:<joe@example.test>") })
    assert.equals(250, (send_message(c)))
  end)

  it("an endless loop in a hook hits the instruction budget: 451 4.3.0, and moat keeps serving", function()
    local srv = moat.start { lua = { budget = 100000 }, scripts = { ["loop.lua"] = [[
      return { rcpt = function(s, rcpt)
        if rcpt.addr.localpart == "loop" then
          local n = 0
          while true do n = n + 1 end
        end
      end }
    ]] } }
    local c = track(in_transaction(srv))
    local t0 = socket.gettime()
    assert.same({ 451, TEMPFAIL }, { c:cmd("RCPT TO:<loop@example.test>") })
    assert.is_true(socket.gettime() - t0 < 2, "the budget should stop the loop quickly")
    local line = srv:wait_log("event=hook_error ")
    assert.truthy(line:find("loop.lua", 1, true), line)
    -- the same session goes on
    assert.same({ 250, "250 2.1.5 Ok" }, { c:cmd("RCPT TO:<joe@example.test>") })
    -- and a new connection is served, the looping hook again limited
    local c2 = track(in_transaction(srv))
    assert.same({ 451, TEMPFAIL }, { c2:cmd("RCPT TO:<loop@example.test>") })
    assert.same({ 250, "250 2.1.5 Ok" }, { c2:cmd("RCPT TO:<joe@example.test>") })
    assert.equals(250, (send_message(c2)))
    assert.equals(250, (send_message(c)))
    assert.equals(2, #srv:spool_files())
  end)

  it("moat.sleep suspends only its session: another completes a transaction meanwhile", function()
    local srv = moat.start { scripts = { ["slow.lua"] = [[
      local moat = require "moat"
      return { rcpt = function(s, rcpt)
        if rcpt.addr.localpart == "slow" then
          s:log("sleeping for " .. rcpt.addr.raw)
          moat.sleep(2)
          s:log("woke up")
        end
      end }
    ]] } }
    local a = track(in_transaction(srv, { timeout = 5 }))
    local t0 = socket.gettime()
    assert(a:send("RCPT TO:<slow@example.test>\r\n"))
    srv:wait_log("msg=\"sleeping for slow@example%.test\"")

    local b = track(moat.client(srv.port))
    assert.equals(250, (b:ehlo()))
    local r = b:transaction { from = "b@remote.example", rcpts = { "joe@example.test" } }
    assert.equals(250, r.final[1])
    assert.same({ 221, "221 2.0.0 Bye" }, { b:cmd("QUIT") })
    local b_done = socket.gettime() - t0
    assert.is_true(b_done < 1.0, ("the second session took %.2f s"):format(b_done))
    assert.equals(1, #srv:spool_files())

    assert.same({ 250, "250 2.1.5 Ok" }, { a:read_reply() })
    local a_done = socket.gettime() - t0
    assert.is_true(a_done >= 1.9, ("the sleeping RCPT answered after %.2f s"):format(a_done))
    assert.is_true(a_done < 4, ("the sleeping RCPT answered after %.2f s"):format(a_done))
    assert.equals(250, (send_message(a)))
    assert.equals(2, #srv:spool_files())
  end)

  it("runs scripts in order: the first script's accept() ends the chain", function()
    local srv = moat.start { scripts = {
      { "a.lua", [[
        local moat = require "moat"
        return { rcpt = function(s, rcpt)
          s:log("a saw " .. rcpt.addr.raw)
          if rcpt.addr.localpart == "vip" then return moat.accept() end
        end }
      ]] },
      { "b.lua", [[
        local moat = require "moat"
        return { rcpt = function(s, rcpt)
          s:log("b saw " .. rcpt.addr.raw)
          return moat.reject(550, "5.7.1 b rejects " .. rcpt.addr.raw)
        end }
      ]] },
    } }
    local c = track(in_transaction(srv))
    assert.same({ 250, "250 2.1.5 Ok" }, { c:cmd("RCPT TO:<vip@example.test>") })
    assert.same({ 550, "550 5.7.1 b rejects joe@example.test" }, { c:cmd("RCPT TO:<joe@example.test>") })
    c:cmd("QUIT")
    srv:wait_log("event=disconnect ")
    local log = srv:log()
    assert.truthy(log:find("a saw vip@example.test", 1, true))
    assert.truthy(log:find("a saw joe@example.test", 1, true))
    assert.truthy(log:find("b saw joe@example.test", 1, true))
    assert.falsy(log:find("b saw vip@example.test", 1, true), "b.lua ran after a.lua accepted")
    -- a saw joe before b did
    assert.is_true(log:find("a saw joe", 1, true) < log:find("b saw joe", 1, true))
  end)

  it("runs stock policies before scripts: a script's accept() cannot open the relay", function()
    local srv = moat.start { scripts = { ["open.lua"] = [[
      local moat = require "moat"
      return { rcpt = function(s, rcpt) s:log("open saw " .. rcpt.addr.raw); return moat.accept() end }
    ]] } }
    local c = track(in_transaction(srv, { source = "127.0.0.5" }))
    assert.same({ 550, "550 5.7.1 <x@elsewhere.example>: relaying denied" }, { c:cmd("RCPT TO:<x@elsewhere.example>") })
    assert.same({ 250, "250 2.1.5 Ok" }, { c:cmd("RCPT TO:<joe@example.test>") })
    srv:wait_log("event=rcpt_rejected .*rcpt=x@elsewhere%.example .*policy=relay")
    assert.falsy(srv:log():find("open saw x@elsewhere.example", 1, true))
    assert.truthy(srv:wait_log("open saw joe@example%.test"))
  end)

  it("a hook returning something that is not a verdict is an error, never an accept", function()
    local srv = moat.start { scripts = { ["truthy.lua"] = [[
      return { rcpt = function(s, rcpt) return true end }
    ]] } }
    local c = track(in_transaction(srv))
    assert.same({ 451, TEMPFAIL }, { c:cmd("RCPT TO:<joe@example.test>") })
    local line = srv:wait_log("event=hook_error ")
    assert.truthy(line:find("not a verdict", 1, true), line)
    assert.same({ 554, "554 5.5.1 Error: no valid recipients" }, { c:cmd("DATA") })
  end)

  it("moat.discard() in data_end answers 250 but stores nothing", function()
    local srv = moat.start { scripts = { ["discard.lua"] = [[
      local moat = require "moat"
      return { data_end = function(s, msg) return moat.discard() end }
    ]] } }
    local c = track(in_transaction(srv))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    local code, text = send_message(c)
    assert.equals(250, code)
    assert.matches("^250 2%.0%.0 Ok: queued as %w+$", text)
    assert.same({ 221, "221 2.0.0 Bye" }, { c:cmd("QUIT") })
    srv:wait_log("event=message .*verdict=discard policy=discard%.lua")
    assert.same({}, srv:spool_names())
  end)

  it("moat.discard() for one recipient keeps it out of the envelope", function()
    local srv = moat.start { scripts = { ["discard.lua"] = [[
      local moat = require "moat"
      return { rcpt = function(s, rcpt)
        if rcpt.addr.localpart == "bin" then return moat.discard() end
      end }
    ]] } }
    local c = track(in_transaction(srv))
    assert.same({ 250, "250 2.1.5 Ok" }, { c:cmd("RCPT TO:<bin@example.test>") })
    assert.same({ 250, "250 2.1.5 Ok" }, { c:cmd("RCPT TO:<joe@example.test>") })
    assert.equals(250, (send_message(c)))
    local env = srv:spool_files()[1].envelope
    assert.equals(1, #env.rcpts)
    assert.equals("joe@example.test", env.rcpts[1].addr)
  end)

  it("moat.drop() replies and closes the connection", function()
    local srv = moat.start { scripts = { ["drop.lua"] = [[
      local moat = require "moat"
      return { rcpt = function(s, rcpt) return moat.drop(421, "4.7.0 bye") end }
    ]] } }
    local c = track(in_transaction(srv))
    assert(c:send("RCPT TO:<joe@example.test>\r\nNOOP\r\n"))
    assert.same({ 421, "421 4.7.0 bye" }, { c:read_reply() })
    assert.is_true((c:closed()))
    srv:wait_log("event=disconnect ")
  end)

  it("moat.tempfail() gives 451 with the script's text", function()
    local srv = moat.start { scripts = { ["tf.lua"] = [[
      local moat = require "moat"
      return { mail_from = function(s, addr)
        if addr.domain == "busy.example" then return moat.tempfail("4.2.0 come back later") end
      end }
    ]] } }
    local c = track(moat.client(srv.port))
    c:ehlo()
    assert.same({ 451, "451 4.2.0 come back later" }, { c:cmd("MAIL FROM:<x@busy.example>") })
    srv:wait_log("event=mail_rejected .*from=x@busy%.example .*verdict=tempfail policy=tf%.lua")
    assert.same({ 250, "250 2.1.0 Ok" }, { c:cmd("MAIL FROM:<x@calm.example>") })
  end)

  it("s:add_header() in data_end puts the header into the stored message", function()
    local srv = moat.start { scripts = { ["hdr.lua"] = [[
      return { data_end = function(s, msg)
        s:add_header("X-Test", "1")
        s:add_header("X-Info", ("ip=%s status=%s helo=%s from=%s rcpts=%d size=%d"):format(
          s.ip, s.status, s.helo, s.from.raw, #s.rcpts, msg.size))
      end }
    ]] } }
    local c = track(in_transaction(srv))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    local msg = moat.message("with header")
    assert.equals(250, (send_message(c, msg)))
    local eml = srv:spool_files()[1].eml
    local added = eml:sub(1, #eml - #msg)
    assert.equals(msg, eml:sub(-#msg))
    assert.matches("^Received: [^\r\n]*\r\n\t.-\r\nX%-Test: 1\r\nX%-Info: ([^\r\n]*)\r\n$", added)
    assert.equals("ip=127.0.0.1 status=client helo=client.example from=sender@remote.example rcpts=1 size=" .. #msg,
                  added:match("X%-Info: ([^\r\n]*)"))
  end)

  it("data_line sees a wrapped header field as one line with its CRLF and tab inside", function()
    local srv = moat.start { scripts = { ["fold.lua"] = [[
      local moat = require "moat"
      return { data_line = function(s, line, part)
        if part == "header" and line:find("\r\n\t", 1, true) then
          if line == "Subject: hello\r\n\tworld" then
            return moat.reject(554, "5.7.1 folded subject seen whole")
          end
          return moat.reject(554, "5.7.1 folded header seen: " .. line:gsub("[\r\n\t]", "."))
        end
        if part == "body" and line:find("\r", 1, true) then
          return moat.reject(554, "5.7.1 body line carries CR")
        end
      end }
    ]] } }
    local c = track(in_transaction(srv))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    local folded = "From: <a@remote.example>\r\nSubject: hello\r\n\tworld\r\nTo: <joe@example.test>\r\n\r\nbody\r\n"
    assert.same({ 554, "554 5.7.1 folded subject seen whole" }, { send_message(c, folded) })
    assert.same({}, srv:spool_names())
    -- the same words unfolded, and a body line starting with a tab, pass
    assert.equals(250, (c:cmd("MAIL FROM:<sender@remote.example>")))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    local plain = "From: <a@remote.example>\r\nSubject: hello world\r\n\r\nbody\r\n\tindented\r\n"
    assert.equals(250, (send_message(c, plain)))
    assert.equals(1, #srv:spool_files())
  end)

  it("a data_line verdict is given only after the final dot", function()
    local srv = moat.start { scripts = { ["bl.lua"] = [[
      local moat = require "moat"
      return { data_line = function(s, line, part)
        if part == "body" and line == "BAD" then return moat.reject(554, "5.7.1 bad line") end
      end }
    ]] } }
    local c = track(in_transaction(srv))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    assert.equals(354, (c:cmd("DATA")))
    assert(c:send("Subject: x\r\n\r\nBAD\r\nmore\r\n"))
    c:settimeout(0.3)
    assert.same({ nil, "timeout" }, { c:read_reply() })   -- nothing before the dot
    c:settimeout(5)
    assert(c:send(".\r\n"))
    assert.same({ 554, "554 5.7.1 bad line" }, { c:read_reply() })
    assert.same({}, srv:spool_names())
    srv:wait_log("event=message .*verdict=reject policy=bl%.lua")
  end)

  it("connect, helo, and data hooks can refuse", function()
    local srv = moat.start { scripts = { ["gate.lua"] = [[
      local moat = require "moat"
      return {
        connect = function(s)
          if s.ip == "127.0.0.66" then return moat.reject(554, "5.7.1 go away") end
        end,
        helo = function(s, name)
          if name == "bad.example" then return moat.reject(550, "5.7.1 bad helo") end
        end,
        data = function(s)
          if s.from.raw == "nodata@remote.example" then return moat.reject(554, "5.7.1 no data for you") end
        end,
      }
    ]] } }
    local c1 = track(moat.client(srv.port, { source = "127.0.0.66" }))
    assert.same({ 554, "554 5.7.1 go away" }, { c1.greeting_code, c1.greeting })
    assert.is_true((c1:closed()))

    local c2 = track(moat.client(srv.port))
    assert.equals(220, c2.greeting_code)
    assert.same({ 550, "550 5.7.1 bad helo" }, { c2:cmd("EHLO bad.example") })
    assert.same({ 503, "503 5.5.1 Error: send HELO/EHLO first" }, { c2:cmd("MAIL FROM:<nodata@remote.example>") })
    assert.equals(250, (c2:ehlo("good.example")))
    assert.equals(250, (c2:cmd("MAIL FROM:<nodata@remote.example>")))
    assert.equals(250, (c2:cmd("RCPT TO:<joe@example.test>")))
    assert.same({ 554, "554 5.7.1 no data for you" }, { c2:cmd("DATA") })
    assert.same({ 250, "250 2.1.0 Ok" }, { c2:cmd("MAIL FROM:<fine@remote.example>") })
  end)

  it("scripts cannot reach io or os.execute", function()
    local srv = moat.start { scripts = { ["sandbox.lua"] = [[
      local moat = require "moat"
      return { rcpt = function(s, rcpt)
        return moat.reject(550, ("5.7.1 io=%s execute=%s exit=%s popen=%s"):format(
          type(io), type(os.execute), type(os.exit), type(io and io.popen)))
      end }
    ]] } }
    local c = track(in_transaction(srv))
    assert.same({ 550, "550 5.7.1 io=nil execute=nil exit=nil popen=nil" }, { c:cmd("RCPT TO:<joe@example.test>") })
  end)

  it("a script error in data_end gives 451 4.3.0 after the dot and stores nothing", function()
    local srv = moat.start { scripts = { ["de.lua"] = "return { data_end = function(s, msg) return msg.nothing.here end }\n" } }
    local c = track(in_transaction(srv))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    assert.same({ 451, TEMPFAIL }, { send_message(c) })
    assert.same({}, srv:spool_names())
    local line = srv:wait_log("event=hook_error ")
    assert.truthy(line:find("phase=data_end", 1, true), line)
    assert.truthy(line:find("de.lua:1:", 1, true), line)
  end)

  it("a script error in connect refuses the connection with 451 4.3.0", function()
    local srv = moat.start { scripts = { ["cx.lua"] = "return { connect = function(s) error('connect broke') end }\n" } }
    local c = track(moat.client(srv.port))
    assert.same({ 451, TEMPFAIL }, { c.greeting_code, c.greeting })
    assert.is_true((c:closed()))
    local line = srv:wait_log("event=hook_error ")
    assert.truthy(line:find("cx.lua:1: connect broke", 1, true), line)
  end)

  it("a client that leaves while its hook sleeps does not disturb moat", function()
    local srv = moat.start { scripts = { ["slow.lua"] = [[
      local moat = require "moat"
      return {
        rcpt = function(s, rcpt) s:log("sleeping"); moat.sleep(0.5); s:log("woke") end,
        disconnect = function(s) s:log("bye " .. s.ip) end,
      }
    ]] } }
    local a = in_transaction(srv, { source = "127.0.0.12" })
    assert(a:send("RCPT TO:<joe@example.test>\r\n"))
    srv:wait_log("msg=sleeping")
    a:close()
    srv:wait_log("event=disconnect [^\n]*ip=127%.0%.0%.12")
    srv:wait_log("msg=\"bye 127%.0%.0%.12\"")
    require("socket").sleep(0.7)            -- past the abandoned sleep's end
    assert.falsy(srv:log():find("msg=woke", 1, true), "the abandoned hook resumed")
    local b = track(in_transaction(srv))
    local t0 = socket.gettime()
    assert.same({ 250, "250 2.1.5 Ok" }, { b:cmd("RCPT TO:<joe@example.test>") })
    assert.is_true(socket.gettime() - t0 >= 0.45)
    assert.equals(250, (send_message(b)))
    assert.is_true(srv:alive())
  end)

  it("adds an enhanced status code to a verdict text without one; drop() has a default", function()
    local srv = moat.start { scripts = { ["plain.lua"] = [[
      local moat = require "moat"
      return { rcpt = function(s, rcpt)
        local l = rcpt.addr.localpart
        if l == "perm" then return moat.reject(550, "go away") end
        if l == "temp" then return moat.reject(450, "later") end
        if l == "drop" then return moat.drop() end
      end }
    ]] } }
    local c = track(in_transaction(srv))
    assert.same({ 550, "550 5.7.1 go away" }, { c:cmd("RCPT TO:<perm@example.test>") })
    assert.same({ 450, "450 4.7.1 later" }, { c:cmd("RCPT TO:<temp@example.test>") })
    assert.same({ 421, "421 4.7.1 Try again later" }, { c:cmd("RCPT TO:<drop@example.test>") })
    assert.is_true((c:closed()))
  end)

  it("a bad reply code or a tampered verdict is an error, never an accept", function()
    local srv = moat.start { scripts = { ["bad.lua"] = [[
      local moat = require "moat"
      return { rcpt = function(s, rcpt)
        local l = rcpt.addr.localpart
        if l == "code" then return moat.reject(250, "2.0.0 fine") end
        if l == "tamper" then local v = moat.reject(550, "5.7.1 no"); v.code = 250; return v end
        if l == "fake" then return setmetatable({ action = "accept" }, {}) end
      end }
    ]] } }
    local c = track(in_transaction(srv))
    assert.same({ 451, TEMPFAIL }, { c:cmd("RCPT TO:<code@example.test>") })
    assert.same({ 451, TEMPFAIL }, { c:cmd("RCPT TO:<tamper@example.test>") })
    assert.same({ 451, TEMPFAIL }, { c:cmd("RCPT TO:<fake@example.test>") })
    srv:wait_log("event=hook_error ", 5, 3)
    assert.same({ 554, "554 5.5.1 Error: no valid recipients" }, { c:cmd("DATA") })
  end)

  it("s.vars lives through the session; s.from and s.rcpts follow the transaction", function()
    local srv = moat.start { scripts = { ["vars.lua"] = [[
      local moat = require "moat"
      return {
        helo = function(s, name) s.vars.helo_seen = name end,
        mail_from = function(s, addr) s.vars.mails = (s.vars.mails or 0) + 1 end,
        rcpt = function(s, rcpt)
          if rcpt.addr.localpart == "report" then
            local r = {}
            for _, x in ipairs(s.rcpts) do r[#r + 1] = x.addr end
            return moat.reject(550, ("5.7.1 helo=%s mails=%d from=%s rcpts=%s"):format(
              s.vars.helo_seen, s.vars.mails, s.from.raw, table.concat(r, ",")))
          end
        end,
      }
    ]] } }
    local c = track(in_transaction(srv))
    assert.equals(250, (c:cmd("RCPT TO:<a@example.test>")))
    assert.equals(250, (c:cmd("RCPT TO:<b@example.test>")))
    assert.same({ 550, "550 5.7.1 helo=client.example mails=1 from=sender@remote.example rcpts=a@example.test,b@example.test" },
                { c:cmd("RCPT TO:<report@example.test>") })
    assert.equals(250, (c:cmd("RSET")))
    assert.equals(250, (c:cmd("MAIL FROM:<other@remote.example>")))
    assert.same({ 550, "550 5.7.1 helo=client.example mails=2 from=other@remote.example rcpts=" },
                { c:cmd("RCPT TO:<report@example.test>") })
  end)

  it("EHLO in the middle of a transaction resets it", function()
    local srv = moat.start()
    local c = track(in_transaction(srv))
    assert.equals(250, (c:cmd("RCPT TO:<a@example.test>")))
    assert.equals(250, (c:ehlo("again.example")))
    assert.same({ 503, "503 5.5.1 Error: need MAIL command" }, { c:cmd("DATA") })
  end)

  it("a data_line hook that sleeps still sees every line, also a message ending in its header", function()
    local srv = moat.start { scripts = { ["lines.lua"] = [[
      local moat = require "moat"
      local n = 0
      return {
        data = function(s) n = 0 end,
        data_line = function(s, line, part) n = n + 1; moat.sleep(0.01) end,
        data_end = function(s, msg) s:add_header("X-Lines", tostring(n)) end,
      }
    ]] } }
    local c = track(in_transaction(srv))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    -- 3 header fields (one folded) and 4 body lines: 7 calls; all sent in one write
    local msg = "A: 1\r\nB: 2\r\n 2b\r\nC: 3\r\n\r\nl1\r\nl2\r\nl3\r\nl4\r\n"
    assert.equals(250, (send_message(c, msg)))
    assert.truthy(srv:spool_files()[1].eml:find("\r\nX%-Lines: 7\r\n"))
    -- header only, no blank line: the last field is still given to the hook before data_end
    assert.equals(250, (c:cmd("MAIL FROM:<sender@remote.example>")))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    assert.equals(250, (send_message(c, "A: 1\r\nB: 2\r\n")))
    local files = srv:spool_files()
    assert.equals(2, #files)
    local found = 0
    for _, f in ipairs(files) do
      if f.eml:find("\r\nX%-Lines: 2\r\nA: 1\r\nB: 2\r\n$") then found = found + 1 end
    end
    assert.equals(1, found)
  end)

  it("a script error in data_line gives 451 4.3.0 after the dot", function()
    local srv = moat.start { scripts = { ["dl.lua"] = [[
      return { data_line = function(s, line, part)
        if part == "body" and line == "explode" then error("data_line broke") end
      end }
    ]] } }
    local c = track(in_transaction(srv))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    assert.same({ 451, TEMPFAIL }, { send_message(c, "Subject: x\r\n\r\nexplode\r\nafter\r\n") })
    assert.same({}, srv:spool_names())
    local line = srv:wait_log("event=hook_error ")
    assert.truthy(line:find("dl.lua:2: data_line broke", 1, true), line)
  end)

  it("a bad add_header call is a script error", function()
    local srv = moat.start { scripts = { ["ah.lua"] = [[
      return { data_end = function(s, msg) s:add_header("X-Bad", "two\r\nlines") end }
    ]] } }
    local c = track(in_transaction(srv))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    assert.same({ 451, TEMPFAIL }, { send_message(c) })
    assert.same({}, srv:spool_names())
    local line = srv:wait_log("event=hook_error ")
    assert.truthy(line:find("add_header", 1, true), line)
  end)

  it("a connect hook that sleeps delays the greeting only for its session", function()
    local srv = moat.start { scripts = { ["cs.lua"] = [[
      local moat = require "moat"
      return { connect = function(s) if s.ip == "127.0.0.30" then moat.sleep(0.5) end end }
    ]] } }
    local t0 = socket.gettime()
    local a = track(moat.client(srv.port, { source = "127.0.0.30", greeting = false }))
    local b = track(moat.client(srv.port))
    assert.equals(220, b.greeting_code)
    assert.is_true(socket.gettime() - t0 < 0.4)
    assert.same({ 220, "220 mx.example.test ESMTP moat" }, { a:read_reply() })
    assert.is_true(socket.gettime() - t0 >= 0.45)
    assert.equals(250, (a:ehlo()))
  end)
end)

