-- Proxy mode (delivery = { mode = "proxy", next_hop = ... }): before-queue
-- relaying.  The next hop's own replies reach the client (per recipient, and
-- its final "queued as" with its own id), moat's policies run first, nothing
-- is queued locally, a next hop that is down or dies answers 451 4.4.1, and a
-- client session keeps one next-hop connection across transactions.  Next
-- hops: a second moat (helpers/nexthop.lua: "bad" 550, "later" 451), Postfix's
-- smtp-sink, and a tiny Lua LMTP server.
local socket = require "socket"
local H = require "helpers.moat"
local NH = require "helpers.nexthop"

local SENDER = "sender@remote.example"

local FRONT_SCRIPT = [[
local moat = require "moat"
return { rcpt = function(s, rcpt)
  if rcpt.addr.localpart == "blocked" then return moat.reject(550, "5.7.1 blocked by the front") end
end }
]]

local function proxy(next_hop, opts)
  opts = opts or {}
  local d = { mode = "proxy", next_hop = next_hop, timeout = 5 }
  for k, v in pairs(opts.delivery or {}) do d[k] = v end
  return H.start { tag = "proxy", extra = "delivery = " .. H.lua_value(d),
                   scripts = opts.scripts or { ["front.lua"] = FRONT_SCRIPT } }
end

local function session(srv)
  local c = H.client(srv.port)
  assert.equals(220, c.greeting_code)
  assert.equals(250, (c:ehlo()))
  return c
end

local function data(c, msg)
  assert.same(354, (c:cmd("DATA")))
  assert(c:send(H.dot_stuff(msg)))
  return c:read_reply()
end

local function message(mid)
  return ("From: <%s>\r\nMessage-ID: <%s>\r\nSubject: proxied\r\n\r\nthrough the proxy\r\n.dot\r\n"):format(SENDER, mid)
end

describe("proxy mode", function()
  local clients = {}
  local function track(c) clients[#clients + 1] = c return c end
  after_each(function()
    for _, c in ipairs(clients) do c:close() end
    clients = {}
    NH.stop_all()
    H.stop_all()
  end)

  it("passes the next hop's replies through: per-recipient refusals and its own queue id; nothing queued here", function()
    local hop = NH.moat {}
    local front = proxy(hop.hop)
    local c = track(session(front))
    assert.same({ 250, "250 2.1.0 Ok" }, { c:cmd("MAIL FROM:<" .. SENDER .. ">") })
    assert.same({ 550, "550 5.1.1 no such user" }, { c:cmd("RCPT TO:<bad@dest.example>") })
    assert.same({ 451, "451 4.2.0 try later" }, { c:cmd("RCPT TO:<later@dest.example>") })
    assert.same({ 250, "250 2.1.5 Ok" }, { c:cmd("RCPT TO:<good@dest.example>") })
    local code, text = data(c, message("p1@remote.example"))
    assert.equals(250, code, text)
    local got = NH.wait_messages(hop, 1)
    assert.equals(1, #got)
    assert.equals("250 2.0.0 Ok: queued as " .. got[1].id, text)   -- the next hop's id
    assert.same({ { addr = "good@dest.example" } }, { { addr = got[1].envelope.rcpts[1].addr } })
    assert.equals(1, #got[1].envelope.rcpts)
    assert.equals(SENDER, got[1].envelope.from)
    assert.truthy(got[1].eml:find("\r\n\r\nthrough the proxy\r\n.dot\r\n$"), got[1].eml)
    -- the front's Received line and the next hop's refusals in the front's log
    assert.truthy(got[1].eml:find("by mx.example.test (moat) with ESMTP id", 1, true))
    assert.same({}, front:spool_names())
    local line = front:wait_log("event=message ")
    assert.truthy(line:find(" verdict=accept policy=proxy ", 1, true), line)
    assert.truthy(line:find("queued as " .. got[1].id, 1, true), line)
    assert.same({}, front:spool_names())
  end)

  it("smtp-sink's soft refusal of MAIL reaches the client as it is", function()
    local sink, why = NH.sink { soft = "MAIL" }
    if not sink then pending(why) return end
    local front = proxy(sink.hop)
    local c = track(session(front))
    assert.same({ 450, "450 4.3.0 Error: command failed" }, { c:cmd("MAIL FROM:<" .. SENDER .. ">") })
    assert.equals(503, (c:cmd("RCPT TO:<good@dest.example>")))
    assert.same({}, front:spool_names())
  end)

  it("policies run first: a recipient the front refuses never reaches the next hop", function()
    local hop = NH.moat {}
    local front = proxy(hop.hop)
    local c = track(session(front))
    assert.equals(250, (c:cmd("MAIL FROM:<" .. SENDER .. ">")))
    assert.same({ 550, "550 5.7.1 blocked by the front" }, { c:cmd("RCPT TO:<blocked@dest.example>") })
    assert.same({ 550, "550 5.1.1 no such user" }, { c:cmd("RCPT TO:<bad@dest.example>") })
    assert.equals(250, (c:cmd("RCPT TO:<good@dest.example>")))
    assert.equals(250, (data(c, message("p2@remote.example"))))
    local got = NH.wait_messages(hop, 1)
    -- the next hop saw (and logged) bad@ and good@, never blocked@
    hop:wait_log("event=rcpt_rejected [^\n]*rcpt=bad@dest%.example")
    hop:wait_log("event=message [^\n]*rcpts=good@dest%.example ")
    assert.falsy(hop:log():find("blocked@", 1, true), hop:log())
    assert.same({ "good@dest.example" }, { got[1].envelope.rcpts[1].addr, got[1].envelope.rcpts[2] })
    front:wait_log("event=rcpt_rejected [^\n]*rcpt=blocked@dest%.example [^\n]*policy=front%.lua")
  end)

  it("next hop down: 451 4.4.1 at MAIL, never a 250", function()
    local front = proxy("127.0.0.1:" .. H.free_port())
    local c = track(session(front))
    for _ = 1, 2 do
      assert.same({ 451, "451 4.4.1 Next hop unavailable, try again later" }, { c:cmd("MAIL FROM:<" .. SENDER .. ">") })
      assert.equals(503, (c:cmd("RCPT TO:<good@dest.example>")))
      assert.equals(503, (c:cmd("DATA")))
    end
    front:wait_log("event=proxy_error ")
    assert.same({}, front:spool_names())
    assert.same({}, front:events("message"))
  end)

  it("next hop dies after RCPT: 451 4.4.1 at the end, nothing accepted anywhere", function()
    local hop = NH.moat {}
    local front = proxy(hop.hop)
    local c = track(session(front))
    assert.equals(250, (c:cmd("MAIL FROM:<" .. SENDER .. ">")))
    assert.equals(250, (c:cmd("RCPT TO:<good@dest.example>")))
    hop:signal("KILL")
    assert.truthy(H.poll(function() return not hop:alive() end, 5))
    socket.sleep(0.2)
    local code, text = c:cmd("DATA")
    if code == 354 then
      assert(c:send(H.dot_stuff(message("p3@remote.example"))))
      code, text = c:read_reply()
    end
    assert.equals(451, code, text)
    assert.truthy(text:find("^451 4%.4%.1 "), text)
    assert.same({}, front:spool_names())
    assert.same({}, hop:spool_names())
    front:wait_log("event=proxy_error ")
    local line = front:events("message")[1]
    assert.truthy(line == nil or not line:find("verdict=accept", 1, true), line)
  end)

  it("RSET and a second transaction reuse the session's one next-hop connection", function()
    local hop = NH.moat {}
    local front = proxy(hop.hop)
    local c = track(session(front))
    assert.equals(250, (c:cmd("MAIL FROM:<" .. SENDER .. ">")))
    assert.equals(250, (c:cmd("RCPT TO:<nobody@dest.example>")))
    assert.equals(250, (c:cmd("RSET")))
    assert.equals(250, (c:cmd("MAIL FROM:<" .. SENDER .. ">")))
    assert.equals(250, (c:cmd("RCPT TO:<first@dest.example>")))
    assert.equals(250, (data(c, message("p4@remote.example"))))
    assert.equals(250, (c:cmd("MAIL FROM:<other@remote.example>")))
    assert.equals(250, (c:cmd("RCPT TO:<second@dest.example>")))
    assert.equals(250, (data(c, message("p5@remote.example"))))
    local got = NH.wait_messages(hop, 2)
    assert.equals(2, #got)
    local rcpts = {}
    for _, m in ipairs(got) do rcpts[#rcpts + 1] = m.envelope.from .. " " .. m.envelope.rcpts[1].addr end
    table.sort(rcpts)
    assert.same({ "other@remote.example second@dest.example", SENDER .. " first@dest.example" }, rcpts)
    assert.equals(1, #hop:events("connect"), hop:log())
    assert.equals(221, (c:cmd("QUIT")))
    hop:wait_log("event=disconnect ")
    assert.equals(1, #hop:events("connect"))
    assert.same({}, front:spool_names())
  end)

  it("an SMTP next hop's 5xx or 4xx to the final dot is the client's reply, word for word", function()
    local f = NH.fake {}
    local front = proxy(f.hop)
    local c = track(session(front))
    for _, want in ipairs { "554 5.7.1 content refused by the next hop", "452 4.3.1 next hop out of space",
                            "250 2.0.0 Ok: queued as F0003" } do
      assert.equals(250, (c:cmd("MAIL FROM:<" .. SENDER .. ">")))
      assert.equals(250, (c:cmd("RCPT TO:<x@dest.example>")))
      local msg = ("From: <%s>\r\nX-Fake-Reply: %s\r\nSubject: eod\r\n\r\nbody\r\n"):format(SENDER, want)
      if want:sub(1, 3) == "250" then msg = message("ok@remote.example") end
      local code, text = data(c, msg)
      assert.same({ tonumber(want:sub(1, 3)), want }, { code, text })
    end
    assert.equals(3, #f:messages(), "the next hop saw each message")
    assert.same({}, front:spool_names(), "nothing queued in moat")
    assert.truthy(H.poll(function() return #front:events("message") >= 3 end, 5), front:log())
    local rejected = front:events("message")
    assert.truthy(rejected[1]:find("verdict=reject", 1, true) and rejected[1]:find("554 5.7.1", 1, true), rejected[1])
    assert.truthy(rejected[3]:find("verdict=accept", 1, true), rejected[3])
  end)

  describe("LMTP next hop", function()
    it("one reply per recipient: a failure among them is not answered 250", function()
      local f = NH.fake { lmtp = true }
      local front = proxy(f.hop, { delivery = { protocol = "lmtp" } })
      local c = track(session(front))
      assert.equals(250, (c:cmd("MAIL FROM:<" .. SENDER .. ">")))
      assert.equals(250, (c:cmd("RCPT TO:<dbad@dest.example>")))
      assert.equals(250, (c:cmd("RCPT TO:<good@dest.example>")))
      local code, text = data(c, message("l1@remote.example"))
      assert.equals(1, #f:messages())
      -- the first failure stands for the message (the client retries or
      -- bounces); the last reply, a 250, would silently lose dbad@
      assert.are_not.equal(250, code, "client told 250 although dbad@dest.example got 550: " .. tostring(text))
      assert.same({ 550, "550 5.2.2 <dbad@dest.example> mailbox full" }, { code, text })
    end)

    it("DATA refused (554): the client gets an answer", function()
      local f = NH.fake { lmtp = true, data_reply = "554 5.6.0 no thanks" }
      local front = proxy(f.hop, { delivery = { protocol = "lmtp" } })
      local c = track(session(front))
      c:settimeout(4)
      assert.equals(250, (c:cmd("MAIL FROM:<" .. SENDER .. ">")))
      assert.equals(250, (c:cmd("RCPT TO:<x@dest.example>")))
      assert.equals(250, (c:cmd("RCPT TO:<y@dest.example>")))
      local code, text = data(c, message("l2@remote.example"))
      -- one reply per recipient is expected, but a refused DATA gives
      -- exactly one: it must answer the client anyway
      assert.equals(554, code, "no final reply: " .. tostring(text))
      assert.equals("554 5.6.0 no thanks", text)
      assert.same({}, front:spool_names())
    end)
  end)
end)
