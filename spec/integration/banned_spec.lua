-- The banned policy over real SMTP (seed 002 "Banning Mail by Header and Body
-- Lines", DESIGN §4): a banned header field (whole, a wrapped one with its
-- CR LF) or body line rejects the message after the final dot with
-- 554 5.7.1 and stores nothing; near misses and lines that differ in case go
-- through.
local H = require "helpers.moat"

-- The files as an administrator writes them: \r\n \t are two-character escapes.
local BANNED_HEADERS = table.concat({
  "Subject: You have won a prize",
  "Subject: Cheap meds\\r\\n\\tfor you",
  "X-Mailer: *BulkBlaster*",
  "",
  "Received: from *by relay.bulkhost.invalid*",
}, "\n") .. "\n"

local BANNED_BODY = table.concat({
  "Click here to claim your prize",
  "*http://promo.cheap-meds.invalid/*",
  "; not a comment: a pattern",
}, "\n") .. "\n"

local function msg(headers, body)
  return table.concat(headers, "\r\n") .. "\r\n\r\n" .. (body or "hello\r\n")
end

local BASE = { "From: <sender@remote.example>", "To: <joe@example.test>" }

local function with(extra)
  local t = { BASE[1], BASE[2] }
  for _, h in ipairs(extra) do t[#t + 1] = h end
  return t
end

describe("banned policy", function()
  local srv, c
  setup(function()
    srv = H.start { tag = "banned", policies = { "relay", "banned" },
                    tables = { banned_headers = BANNED_HEADERS, banned_body = BANNED_BODY } }
  end)
  teardown(function()
    if c then c:close() end
    H.stop_all()
  end)

  local function send(data)
    if not c then
      c = H.client(srv.port, { source = "127.0.0.40" })
      assert.equal(220, c.greeting_code)
      assert.equal(250, (c:ehlo("sender.example")))
    end
    local before = #srv:spool_names()
    local r = c:transaction { from = "sender@remote.example", rcpts = { "joe@example.test" }, data = data }
    assert.equal(354, r.data[1], r.data[2])
    return r.final[1], r.final[2], #srv:spool_names() - before
  end

  local function rejected(data)
    local code, text, stored = send(data)
    assert.equal(554, code, text)
    assert.equal("554 5.7.1 Message content rejected (banned line)", text)
    assert.equal(0, stored)
  end

  local function accepted(data)
    local code, text, stored = send(data)
    assert.equal(250, code, text)
    assert.equal(2, stored)   -- .eml and .env
  end

  it("accepts an ordinary message", function()
    accepted(msg(with { "Subject: Lunch?" }, "Shall we meet at noon?\r\n"))
  end)

  it("rejects a banned header field after the final dot", function()
    rejected(msg(with { "Subject: You have won a prize" }))
    srv:wait_log("banned header line: matched .*banned_headers:1")
    srv:wait_log("event=message [^\n]*verdict=reject [^\n]*policy=banned")
  end)

  it("rejects a wrapped header field banned by a pattern with the \\r\\n escape", function()
    rejected(msg(with { "Subject: Cheap meds\r\n\tfor you" }))
  end)

  it("does not take the unwrapped or differently wrapped field for the wrapped one", function()
    accepted(msg(with { "Subject: Cheap meds for you" }))
    accepted(msg(with { "Subject: Cheap meds\r\n for you" }))
  end)

  it("rejects header fields matched by wildcards, wrapped or not", function()
    rejected(msg(with { "X-Mailer: the BulkBlaster 3000" }))
    rejected(msg({ "Received: from a.example (a.example [192.0.2.9])\r\n\tby relay.bulkhost.invalid; Mon, 3 Jun 2024",
                   BASE[1], BASE[2] }))
  end)

  it("rejects a banned body line", function()
    rejected(msg(with { "Subject: Hi" }, "Dear friend,\r\nClick here to claim your prize\r\nBye\r\n"))
    rejected(msg(with { "Subject: Hi" }, "see <a href=\"http://promo.cheap-meds.invalid/x\">this</a>\r\n"))
    srv:wait_log("banned body line: matched .*banned_body:2")
  end)

  it("treats a line starting with ';' as a pattern, not a comment", function()
    rejected(msg(with { "Subject: Hi" }, "; not a comment: a pattern\r\n"))
  end)

  it("lets near misses through", function()
    accepted(msg(with { "Subject: You have won a prize!" }))
    accepted(msg(with { "Subject: You have won a priz" }))
    accepted(msg(with { "Subject: Hi" }, "Click here to claim your prize.\r\n"))
    accepted(msg(with { "Subject: Hi" }, " Click here to claim your prize\r\n"))
    accepted(msg(with { "Subject: Hi" }, "http://promo.cheap-meds.invalid\r\n"))
  end)

  it("compares case-sensitively", function()
    accepted(msg(with { "Subject: you have won a prize" }))
    accepted(msg(with { "subject: You have won a prize" }))
    accepted(msg(with { "Subject: Hi" }, "click here to claim your prize\r\n"))
    accepted(msg(with { "X-Mailer: the bulkblaster 3000" }))
  end)

  it("keeps header patterns for header fields and body patterns for body lines", function()
    accepted(msg(with { "Subject: Hi" }, "Subject: You have won a prize\r\n"))
    accepted(msg(with { "Click here to claim your prize: yes" }))
  end)

  it("compares the dot-unstuffed line", function()
    -- The client sends "..." for a body line "." + pattern; moat compares ".Click...".
    accepted(msg(with { "Subject: Hi" }, ".Click here to claim your prize\r\n"))
  end)

  it("keeps the session usable after a rejection", function()
    rejected(msg(with { "Subject: You have won a prize" }))
    accepted(msg(with { "Subject: Fine" }))
  end)
end)

describe("banned policy next to a site script's data_line hook", function()
  -- banned's hook is a line filter the core runs in C; with a Lua data_line
  -- hook in the chain too, the chain runs in Lua and calls the filter as a
  -- hook: the same verdicts, in chain order.
  local SITE = [[
local moat = require "moat"
return { data_line = function(s, line, part)
  if part == "body" then s.vars.body_lines = (s.vars.body_lines or 0) + 1 end
  if line == "site says no" then return moat.reject(550, "5.7.1 refused by the site") end
end, data_end = function(s) s:log("site saw " .. tostring(s.vars.body_lines) .. " body lines") end }
]]
  teardown(function() H.stop_all() end)

  it("both run: banned first, then the site hook, which sees every line that passed", function()
    local srv = H.start { tag = "banned-mixed", policies = { "relay", "banned" }, scripts = { ["site.lua"] = SITE },
                          tables = { banned_headers = BANNED_HEADERS, banned_body = BANNED_BODY } }
    local c = H.client(srv.port)
    c:ehlo()
    local function final(body, subject)
      local r = c:transaction { from = "a@remote.example", rcpts = { "joe@example.test" },
                                data = msg(with { "Subject: " .. (subject or "Hi") }, body) }
      return r.final[1], r.final[2]
    end
    assert.same({ 250 }, { (final("one\r\ntwo\r\nthree\r\n")) })
    srv:wait_log("site saw 3 body lines")
    assert.same({ 554, "554 5.7.1 Message content rejected (banned line)" },
                { final("ok\r\nClick here to claim your prize\r\n") })
    srv:wait_log("banned body line: matched .*banned_body:1")
    assert.same({ 550, "550 5.7.1 refused by the site" }, { final("site says no\r\n") })
    -- a banned header is refused by banned, whatever the site's hook says later
    assert.same({ 554, "554 5.7.1 Message content rejected (banned line)" },
                { final("site says no\r\n", "You have won a prize") })
    c:close()
    -- the log line follows the reply: wait for the fourth
    assert.truthy(H.poll(function() return #srv:events("message") >= 4 end, 5), srv:log())
    local policies = {}
    for _, l in ipairs(srv:events("message")) do policies[#policies + 1] = l:match(" policy=(%S+)") or "-" end
    assert.same({ "-", "banned", "site.lua", "banned" }, policies)
  end)
end)

describe("banned policy files", function()
  teardown(function() H.stop_all() end)

  it("a pattern of stars only fails --check with file and line", function()
    local dir, conf = H.prepare { tag = "banned-check", policies = { "banned" },
                                  tables = { banned_body = "ok\n\n*\n" } }
    local rc, out, err = H.check(conf)
    assert.equal(1, rc, out .. err)
    assert.matches("banned_body:3: the pattern '%*' would match every line", out .. err)
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("no patterns at all: messages go through", function()
    local srv = H.start { tag = "banned-empty", policies = { "relay", "banned" },
                          tables = { banned_headers = "\n\n", banned_body = "" } }
    local c = H.client(srv.port)
    c:ehlo()
    local r = c:transaction { from = "a@remote.example", rcpts = { "joe@example.test" }, data = H.message("x") }
    assert.equal(250, r.final[1])
    c:close()
    srv:stop()
  end)
end)
