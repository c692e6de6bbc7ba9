-- Integration: a real moat accepts mail and spools it exactly as sent.
local moat = require "helpers.moat"

local function received_prefix_pattern(id, rcpt)
  -- The Received: header moat adds (section 7), then nothing else before the message.
  local p = "^Received: from client%.example %(127%.0%.0%.1 %[127%.0%.0%.1%]%)\r\n" ..
            "\tby mx%.example%.test %(moat%) with ESMTP id " .. id:gsub("%p", "%%%0")
  if rcpt then p = p .. "\r\n\tfor <" .. rcpt:gsub("%p", "%%%0") .. ">" end
  return p .. ";\r\n\t[^\r\n]+\r\n$"
end

describe("moat core", function()
  local srv
  before_each(function() srv = moat.start() end)
  after_each(function() moat.stop_all() end)

  it("greets and answers EHLO with the extensions", function()
    local c = moat.client(srv.port)
    assert.equals(220, c.greeting_code)
    assert.equals("220 mx.example.test ESMTP moat", c.greeting)
    local code, text = c:ehlo()
    assert.equals(250, code)
    assert.equals(table.concat({
      "250-mx.example.test", "250-PIPELINING", "250-SIZE 10485760", "250-8BITMIME",
      "250-ENHANCEDSTATUSCODES", "250 SMTPUTF8" }, "\n"), text)
    assert.same({ 221, "221 2.0.0 Bye" }, { c:cmd("QUIT") })
    assert.is_true((c:closed()))
    c:close()
  end)

  it("answers a pipelined transaction in order and spools it with its envelope", function()
    local c = moat.client(srv.port)
    assert.equals(250, (c:ehlo()))
    assert(c:send("MAIL FROM:<alice@remote.example>\r\nRCPT TO:<joe@example.test>\r\n" ..
                  "RCPT TO:<ann@corp.example.test>\r\nDATA\r\n"))
    assert.same({ { 250, "250 2.1.0 Ok" }, { 250, "250 2.1.5 Ok" }, { 250, "250 2.1.5 Ok" },
                  { 354, "354 End data with <CR><LF>.<CR><LF>" } }, c:read_replies(4))
    local msg = moat.message("pipelined", "one\r\ntwo\r\n")
    assert(c:send(moat.dot_stuff(msg)))
    local code, text = c:read_reply()
    assert.equals(250, code)
    local id = text:match("^250 2%.0%.0 Ok: queued as (%w+)$")
    assert.is_string(id, text)
    assert.same({ 221, "221 2.0.0 Bye" }, { c:cmd("QUIT") })
    c:close()

    local files = srv:spool_files()
    assert.equals(1, #files)
    local f = files[1]
    assert.equals(id, f.id)
    assert.equals(msg, f.eml:sub(-#msg))
    assert.matches(received_prefix_pattern(id), f.eml:sub(1, #f.eml - #msg))
    local env = f.envelope
    assert.equals(id, env.id)
    assert.equals("alice@remote.example", env.from)
    assert.equals("127.0.0.1", env.ip)
    assert.equals("client.example", env.helo)
    assert.equals(#msg, env.size)
    assert.is_string(env.received)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", env.received)
    -- Each recipient starts "pending" with no attempt (the queue runner's state).
    assert.same({
      { addr = "joe@example.test", status = "pending", attempts = 0, next_try = 0,
        route = { kind = "local", address = "joe@example.test", can_relay = false } },
      { addr = "ann@corp.example.test", status = "pending", attempts = 0, next_try = 0,
        route = { kind = "local", address = "ann@corp.example.test", can_relay = false } },
    }, env.rcpts)
    assert.is_number(env.received_at)
    assert.equals(1, select(2, f.env:gsub("\n", "")))      -- one JSON line
    assert.equals("\n", f.env:sub(-1))
    srv:wait_log("event=message .*qid=" .. id .. " .*verdict=accept")
  end)

  it("keeps pipelined replies in order when a recipient in the middle is refused", function()
    local c = moat.client(srv.port, { source = "127.0.0.5" })
    assert.equals(250, (c:ehlo()))
    assert(c:send("MAIL FROM:<alice@remote.example>\r\nRCPT TO:<joe@example.test>\r\n" ..
                  "RCPT TO:<x@elsewhere.example>\r\nRCPT TO:<ann@example.test>\r\nDATA\r\n"))
    assert.same({ { 250, "250 2.1.0 Ok" }, { 250, "250 2.1.5 Ok" },
                  { 550, "550 5.7.1 <x@elsewhere.example>: relaying denied" },
                  { 250, "250 2.1.5 Ok" },
                  { 354, "354 End data with <CR><LF>.<CR><LF>" } }, c:read_replies(5))
    assert(c:send(moat.dot_stuff(moat.message())))
    assert.equals(250, (c:read_reply()))
    c:close()
    local env = srv:spool_files()[1].envelope
    assert.equals("127.0.0.5", env.ip)
    assert.equals(2, #env.rcpts)
    assert.equals("joe@example.test", env.rcpts[1].addr)
    assert.equals("ann@example.test", env.rcpts[2].addr)
  end)

  it("stores the message byte for byte through dot-stuffing, 8-bit data and long lines", function()
    local high = {}
    for b = 0x80, 0xff do high[#high + 1] = string.char(b) end
    local long = ("0123456789"):rep(500)               -- 5000 bytes
    local msg = table.concat({
      "From: <a@remote.example>",
      "Subject: dots",
      "",
      ".",                       -- a lone dot: must not end the message
      "..",
      "...three",
      ".leading dot",
      "a . inside",
      "end with dot .",
      " .",
      table.concat(high),
      long,
      ".",
      "last line",
      "",
    }, "\r\n")
    local c = moat.client(srv.port)
    c:ehlo()
    local r = c:transaction { from = "a@remote.example", rcpts = { "joe@example.test" },
                              params = "BODY=8BITMIME", data = msg }
    assert.same({ 250, "250 2.0.0 Ok: queued as " .. tostring(r.id) }, r.final)
    c:close()
    local f = srv:spool_files()[1]
    assert.equals(r.id, f.id)
    assert.equals(#msg, f.envelope.size)
    local added = f.eml:sub(1, #f.eml - #msg)
    assert.matches(received_prefix_pattern(r.id, "joe@example.test"), added)
    -- byte-identical: compare lengths first for a readable failure
    assert.equals(#msg, #f.eml - #added)
    assert.is_true(f.eml:sub(-#msg) == msg, "message body differs from what was sent")
  end)

  it("ends DATA only at CRLF.CRLF: a bare-LF dot line does not end the message", function()
    local c = moat.client(srv.port)
    c:ehlo()
    assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example>")))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    assert.equals(354, (c:cmd("DATA")))
    -- A smuggling attempt: "\n.\n" then a second transaction inside the body.
    assert(c:send("Subject: smuggle\r\n\r\nline\n.\nMAIL FROM:<evil@x.example>\r\nRSET\r\n.\r\nNOOP\r\n"))
    local code, text = c:read_reply()
    assert.equals(250, code, text)
    assert.same({ 250, "250 2.0.0 Ok" }, { c:read_reply() })    -- the NOOP, nothing in between
    c:close()
    local files = srv:spool_files()
    assert.equals(1, #files)
    assert.truthy(files[1].eml:find("MAIL FROM:<evil@x.example>\r\nRSET\r\n", 1, true))
  end)

  it("accepts several transactions on one connection, each its own spool file", function()
    local c = moat.client(srv.port)
    c:ehlo()
    local ids = {}
    for i = 1, 3 do
      local r = c:transaction { from = "a@remote.example", rcpts = { "joe@example.test" },
                                data = moat.message("n" .. i) }
      assert.equals(250, r.final[1])
      ids[#ids + 1] = r.id
    end
    c:close()
    local files = srv:spool_files()
    assert.equals(3, #files)
    table.sort(ids)
    assert.same(ids, { files[1].id, files[2].id, files[3].id })
    assert.equals(0, #srv:spool_names() % 2)
  end)

  it("refuses to relay for a non-client, relays for a client", function()
    local c = moat.client(srv.port, { source = "127.0.0.5" })
    c:ehlo()
    assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example>")))
    assert.same({ 550, "550 5.7.1 <bob@elsewhere.example>: relaying denied" },
                { c:cmd("RCPT TO:<bob@elsewhere.example>") })
    c:close()
    srv:wait_log("event=rcpt_rejected .*ip=127%.0%.0%.5 .*rcpt=bob@elsewhere%.example .*policy=relay")

    local c2 = moat.client(srv.port)
    c2:ehlo()
    local r = c2:transaction { from = "a@example.test", rcpts = { "bob@elsewhere.example" } }
    assert.equals(250, r.final[1])
    c2:close()
    local env = srv:spool_files()[1].envelope
    assert.same({ kind = "remote", address = "bob@elsewhere.example", host = "elsewhere.example",
                  can_relay = false }, env.rcpts[1].route)
  end)

  it("logs connect, message and disconnect events", function()
    local c = moat.client(srv.port, { source = "127.0.0.9" })
    c:ehlo("helo.example")
    local r = c:transaction { from = "a@remote.example", rcpts = { "joe@example.test" } }
    assert.equals(250, r.final[1])
    c:cmd("QUIT")
    c:close()
    srv:wait_log("event=disconnect .*ip=127%.0%.0%.9")
    srv:wait_log("event=connect .*ip=127%.0%.0%.9 .*status=other")
    srv:wait_log("event=message .*qid=" .. r.id .. " ip=127%.0%.0%.9 helo=helo%.example " ..
                 "from=a@remote%.example rcpts=joe@example%.test size=%d+ verdict=accept")
  end)

  it("takes a whole transaction and QUIT in one write", function()
    local c = moat.client(srv.port)
    assert.equals(250, (c:ehlo()))
    local msg = moat.message("one write")
    assert(c:send("MAIL FROM:<a@remote.example>\r\nRCPT TO:<joe@example.test>\r\nDATA\r\n" ..
                  moat.dot_stuff(msg) .. "QUIT\r\n"))
    local r = c:read_replies(5)
    assert.same({ 250, 250, 354, 250, 221 }, { r[1][1], r[2][1], r[3][1], r[4][1], r[5][1] })
    assert.is_true((c:closed()))
    c:close()
    local f = srv:spool_files()[1]
    assert.equals(msg, f.eml:sub(-#msg))
  end)

  it("serves many concurrent sessions, interleaved", function()
    local clients = {}
    for i = 1, 20 do
      clients[i] = moat.client(srv.port, { source = "127.0.1." .. i })
      assert.equals(220, clients[i].greeting_code)
    end
    for i = 1, 20 do assert.equals(250, (clients[i]:ehlo("c" .. i .. ".example"))) end
    for i = 1, 20 do
      assert(clients[i]:send("MAIL FROM:<s" .. i .. "@remote.example>\r\nRCPT TO:<joe@example.test>\r\nDATA\r\n"))
    end
    for i = 20, 1, -1 do
      local r = clients[i]:read_replies(3)
      assert.same({ 250, 250, 354 }, { r[1][1], r[2][1], r[3][1] })
      assert(clients[i]:send(moat.dot_stuff(moat.message("from " .. i))))
    end
    for i = 1, 20 do
      assert.equals(250, (clients[i]:read_reply()))
      clients[i]:close()
    end
    local files = srv:spool_files()
    assert.equals(20, #files)
    local seen = {}
    for _, f in ipairs(files) do
      local n = f.envelope.from:match("^s(%d+)@")
      assert.equals("127.0.1." .. n, f.envelope.ip)
      assert.equals("c" .. n .. ".example", f.envelope.helo)
      assert.truthy(f.eml:find("Subject: from " .. n .. "\r\n", 1, true))
      seen[n] = true
    end
    for i = 1, 20 do assert.is_true(seen[tostring(i)]) end
  end)

  it("escapes odd addresses in the JSON envelope", function()
    local c = moat.client(srv.port)
    c:ehlo()
    local from = '"odd \\"name\\" x"@remote.example'
    local r = c:transaction { from = from, rcpts = { "joe@example.test" } }
    assert.equals(250, r.final[1])
    c:close()
    local f = srv:spool_files()[1]
    assert.is_table(f.envelope, f.env)
    assert.equals(from, f.envelope.from)
  end)

  it("takes the null sender <> and HELO (not EHLO)", function()
    local c = moat.client(srv.port)
    assert.same({ 250, "250 mx.example.test" }, { c:cmd("HELO old.example") })
    local r = c:transaction { from = "", rcpts = { "joe@example.test" } }
    assert.equals(250, r.final[1])
    c:close()
    local f = srv:spool_files()[1]
    assert.equals("", f.envelope.from)
    assert.matches("^Received: from old%.example %(127%.0%.0%.1 %[127%.0%.0%.1%]%)\r\n\tby mx%.example%.test %(moat%) with SMTP id ", f.eml)
  end)

  it("leaves nothing in spool/tmp and pairs every .eml with its .env", function()
    local c = moat.client(srv.port)
    c:ehlo()
    for i = 1, 3 do
      assert.equals(250, c:transaction { from = "a@remote.example", rcpts = { "joe@example.test" } }.final[1])
    end
    c:close()
    local lfs = require "lfs"
    local tmp = {}
    for f in lfs.dir(srv.dir .. "/spool/tmp") do
      if f ~= "." and f ~= ".." then tmp[#tmp + 1] = f end
    end
    assert.same({}, tmp)
    local names = srv:spool_names()
    assert.equals(6, #names)
    for i = 1, 6, 2 do
      local id = names[i]:match("^(.+)%.eml$")
      assert.equals(id .. ".env", names[i + 1])
    end
  end)

  it("stops on SIGTERM with a client in the middle of DATA, storing nothing partial", function()
    local c = moat.client(srv.port)
    c:ehlo()
    assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example>")))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    assert.equals(354, (c:cmd("DATA")))
    assert(c:send("Subject: half\r\n\r\nonly part of it\r\n"))
    local idle = moat.client(srv.port)
    srv:wait_log("event=connect ", 5, 2)
    srv:signal("TERM")
    assert.truthy(moat.poll(function() return not srv:alive() end, 10), "moat did not stop")
    -- shutdown_timeout ran out (the helper sets 3 s): 421, then the close
    local code, text = c:read_reply()
    assert.equals(421, code, tostring(text))
    assert.truthy(tostring(text):find("^421 4%.3%.2 "), text)
    assert.is_true((c:closed()))
    assert.same({}, srv:spool_names())
    srv:wait_log("event=stopped")
    srv:stop()                                  -- fails on a sanitizer report
    c:close()
    idle:close()
  end)
end)

