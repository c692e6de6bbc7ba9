-- The rules policy (Server-Wide Rules, seed 002 "Filtering Mail",
-- docs/rules.md) over real SMTP: every action (reject, discard, redirect,
-- add_header), per-transaction header state, and load errors.
local H = require "helpers.moat"

local RULES = [[
; reject messages that have no To: header
if header "To" missing then reject 550 "5.7.1 No To: header"
if header "Subject" matches "*viagra*" then discard
if from matches "*@partner.example" then add_header "X-Partner: yes"
if rcpt matches "sales@*" then redirect "sales-archive@example.test"
if helo matches "*.tagged.example" and not ip matches "127.0.0.1"
   then add_header "X-Tagged: helo" and add_header "X-Second: also"
]]

local function msg(headers, body)
  return table.concat(headers, "\r\n") .. "\r\n\r\n" .. (body or "hello\r\n")
end

local WITH_TO = { "From: <a@remote.example>", "To: <joe@example.test>", "Subject: Hello" }
local NO_TO = { "From: <a@remote.example>", "Subject: Hello" }

describe("rules policy", function()
  local srv
  setup(function()
    srv = H.start { tag = "rules", policies = { "relay", "rules" }, tables = { rules = RULES } }
  end)
  teardown(function() H.stop_all() end)

  local function session(source, helo)
    local c = H.client(srv.port, { source = source or "127.0.0.50" })
    assert.equal(220, c.greeting_code)
    assert.equal(250, (c:ehlo(helo or "sender.example")))
    return c
  end

  local function send(c, t)
    local before = srv:spool_files()
    local r = c:transaction { from = t.from or "a@remote.example", rcpts = t.rcpts or { "joe@example.test" },
                              data = t.data }
    assert.equal(354, r.data[1], r.data[2])
    local after = srv:spool_files()
    local new
    if #after > #before then
      for _, f in ipairs(after) do
        if f.id == r.id then new = f end
      end
    end
    return r.final[1], r.final[2], new, #after - #before
  end

  it("accepts an ordinary message unchanged", function()
    local c = session()
    local code, text, f = send(c, { data = msg(WITH_TO) })
    assert.equal(250, code, text)
    assert.truthy(f)
    assert.is_nil(f.eml:find("X-Partner", 1, true))
    c:close()
  end)

  it("rejects a message with no To: header (reject CODE TEXT)", function()
    local c = session()
    local code, text, _, n = send(c, { data = msg(NO_TO) })
    assert.equal(550, code)
    assert.equal("550 5.7.1 No To: header", text)
    assert.equal(0, n)
    srv:wait_log("rules: .*rules:2: reject")
    c:close()
  end)

  it("sees a wrapped To: header as present, and its name in any case", function()
    local c = session()
    local code = send(c, { data = msg({ "From: <a@remote.example>", "tO: <joe@example.test>,\r\n\t<x@example.test>" }) })
    assert.equal(250, code)
    c:close()
  end)

  it("keeps header state per transaction", function()
    local c = session()
    assert.equal(250, (send(c, { data = msg(WITH_TO) })))
    assert.equal(550, (send(c, { data = msg(NO_TO) })))
    assert.equal(250, (send(c, { data = msg(WITH_TO) })))
    -- RSET between transactions changes nothing either.
    assert.equal(250, (c:cmd("RSET")))
    assert.equal(550, (send(c, { data = msg(NO_TO) })))
    c:close()
  end)

  it("discards a message whose Subject matches (250, nothing stored)", function()
    local c = session()
    local code, text, _, n = send(c, { data = msg({ "To: <joe@example.test>", "Subject: Cheap VIAGRA here" }) })
    assert.equal(250, code, text)
    assert.equal(0, n)
    c:close()
  end)

  it("adds a header for mail from a partner, visible in the .eml", function()
    local c = session()
    local code, text, f = send(c, { from = "news@partner.example", data = msg(WITH_TO) })
    assert.equal(250, code, text)
    assert.truthy(f)
    assert.truthy(f.eml:find("\r\nX-Partner: yes\r\n", 1, true) or f.eml:find("^X-Partner: yes\r\n"), f.eml)
    -- Added headers come before the message's own.
    assert.is_true(f.eml:find("X-Partner: yes", 1, true) < f.eml:find("From: <a@remote.example>", 1, true))
    c:close()
  end)

  it("redirects: the .env has the redirect address as the only recipient", function()
    local c = session()
    local code, text, f = send(c, { rcpts = { "joe@example.test", "sales@example.test" }, data = msg(WITH_TO) })
    assert.equal(250, code, text)
    assert.truthy(f)
    local rcpts = f.envelope.rcpts
    assert.equal(1, #rcpts)
    assert.equal("sales-archive@example.test", rcpts[1].addr)
    c:close()
  end)

  it("runs several actions of one rule, on helo and ip conditions", function()
    local c = session("127.0.0.51", "host.tagged.example")
    local code, text, f = send(c, { data = msg(WITH_TO) })
    assert.equal(250, code, text)
    assert.truthy(f.eml:find("X-Tagged: helo\r\n", 1, true))
    assert.truthy(f.eml:find("X-Second: also\r\n", 1, true))
    c:close()
    -- "and not ip matches 127.0.0.1": the client address is not tagged.
    c = session("127.0.0.1", "host.tagged.example")
    code, text, f = send(c, { data = msg(WITH_TO) })
    assert.equal(250, code, text)
    assert.is_nil(f.eml:find("X-Tagged", 1, true))
    c:close()
  end)
end)

describe("rules policy files", function()
  teardown(function() H.stop_all() end)

  it("a parse error fails --check with file and line", function()
    local dir, conf = H.prepare { tag = "rules-check", policies = { "rules" },
                                  tables = { rules = "; ok\nif header \"To\" missing\n  then explode\n" } }
    local rc, out, err = H.check(conf)
    assert.equal(1, rc, out .. err)
    assert.matches("rules:3: unknown action 'explode'", out .. err)
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("an empty rules file is fine", function()
    local dir, conf = H.prepare { tag = "rules-check", policies = { "rules" }, tables = { rules = "; nothing yet\n" } }
    local rc, out, err = H.check(conf)
    assert.equal(0, rc, out .. err)
    os.execute("rm -rf '" .. dir .. "'")
  end)
end)
