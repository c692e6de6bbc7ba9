local rules = require "moat.rules"

local function compile(text)
  local set, err = rules.compile(text, "conf/rules")
  assert(set, err)
  return set
end

local function err_of(text)
  local set, err = rules.compile(text, "conf/rules")
  assert.is_nil(set)
  assert.is_string(err)
  return err
end

local function ctx(t)
  t = t or {}
  return {
    from = t.from or "sender@remote.example", rcpts = t.rcpts or { "joe@example.test" },
    ip = t.ip or "192.0.2.7", helo = t.helo or "mail.remote.example",
    headers = t.headers or { to = { "<joe@example.test>" }, subject = { "Hello" } },
  }
end

local function final(set, c)
  local r = set:evaluate(c)
  return r.final and r.final.kind or nil, r
end

describe("moat.rules", function()
  describe("parser", function()
    it("accepts the documented example", function()
      local set = compile([[
; reject messages that have no To: header
if header "To" missing then reject 550 "5.7.1 No To: header"
if header "Subject" matches "*viagra*" then discard
if from matches "*@partner.example" then add_header "X-Partner: yes"
if rcpt matches "sales@*" then redirect "sales-archive@example.test"
]])
      assert.equal(4, #set.rules)
      assert.same({ 2, 3, 4, 5 }, { set.rules[1].line, set.rules[2].line, set.rules[3].line, set.rules[4].line })
      assert.is_true(set.needs_headers)
      assert.same({ to = true, subject = true }, set.headers)
    end)

    it("refuses an add_header value holding CR, LF or NUL at load, with its line (found by fuzzing)", function()
      assert.equal('conf/rules:2: add_header: the value may not contain CR, LF or NUL',
                   err_of('; header injection\nif ip matches "*" then add_header "X:\r"\n'):match("^[^\n]*"))
    end)

    it("accepts an empty file and a file of comments", function()
      assert.equal(0, #compile("").rules)
      assert.equal(0, #compile("; nothing\n   ; at all\n\n").rules)
    end)

    it("lets a rule span lines, takes trailing comments and any keyword case", function()
      local set = compile([[
IF header "Subject" matches "*sale*"   ; promotions
   AND NOT from matches "*@example.test"
THEN add_header "X-Promo: yes"
   and discard
]])
      assert.equal(1, #set.rules)
      assert.equal(2, #set.rules[1].conditions)
      assert.is_true(set.rules[1].conditions[2].negate)
      assert.equal(2, #set.rules[1].actions)
    end)

    it("keeps ';' inside strings and reads \\\" and \\\\", function()
      local set = compile([[if header "Subject" matches "a;b \"c\" \\d" then discard]])
      assert.equal('a;b "c" \\d', set.rules[1].conditions[1].pattern_text)
    end)

    it("reads CRLF files", function()
      assert.equal(2, #compile("if ip matches \"10.*\" then discard\r\nif helo matches \"x\" then discard\r\n").rules)
    end)

    it("reject takes an optional code and text", function()
      local set = compile([[
if ip matches "1.*" then reject
if ip matches "2.*" then reject 451
if ip matches "3.*" then reject "5.7.1 Go away"
if ip matches "4.*" then reject 554 "5.7.1 Go away"
]])
      local a = {}
      for i, r in ipairs(set.rules) do a[i] = { r.final.code, r.final.text } end
      assert.same({ 550, "5.7.1 Message rejected by server rules" }, a[1])
      assert.same({ 451, "5.7.1 Message rejected by server rules" }, a[2])
      assert.same({ 550, "5.7.1 Go away" }, a[3])
      assert.same({ 554, "5.7.1 Go away" }, a[4])
      assert.equal("integer", math.type(a[2][1]))
    end)

    local errors = {
      { "when ip matches \"x\" then discard", "conf/rules:1: expected 'if' to start a rule, got 'when'" },
      { "\n\nif subject matches \"x\" then discard", "conf/rules:3: unknown condition 'subject'" },
      { "if from is \"x\" then discard", "conf/rules:1: expected 'matches' after 'from', got 'is'" },
      { "if from matches x then discard", "conf/rules:1: expected a pattern in double quotes, got 'x'" },
      { "if header To missing then discard", "conf/rules:1: expected a header name in double quotes" },
      { "if header \"To\" absent then discard", "conf/rules:1: expected 'present', 'missing' or 'matches'" },
      { "if header \"Bad Name\" missing then discard", "conf/rules:1: bad header name \"Bad Name\"" },
      { "if header \"To:\" missing then discard", "conf/rules:1: bad header name" },
      { "if ip matches \"x\"\n\n discard", "conf/rules:3: expected 'then' after the conditions, got 'discard'" },
      { "if ip matches \"x\" then\n", "conf/rules:1: expected an action (reject, discard, redirect, add_header), got the end of the file" },
      { "if ip matches \"x\" then drop", "conf/rules:1: unknown action 'drop'" },
      { "if ip matches \"x\" then reject 250 \"ok\"", "conf/rules:1: reject code 250 is not 400..599" },
      { "if ip matches \"x\" then reject 6000", "conf/rules:1: reject code 6000 is not 400..599" },
      { "if ip matches \"x\" then redirect \"nobody\"", "conf/rules:1: redirect: \"nobody\" is not an address" },
      { "if ip matches \"x\" then redirect", "conf/rules:1: expected an address in double quotes, got the end of the file" },
      { "if ip matches \"x\" then add_header \"NoColon\"", "conf/rules:1: add_header: \"NoColon\" is not a header" },
      { "if ip matches \"x\" then add_header \"Bad Name: v\"", "conf/rules:1: add_header: \"Bad Name: v\" is not a header" },
      { "if ip matches \"x\" then discard and add_header \"X-A: b\"", "conf/rules:1: nothing may follow 'discard'" },
      { "if ip matches \"x\" then redirect \"a@b.example\" and discard", "conf/rules:1: nothing may follow 'redirect'" },
      { "\nif ip matches \"x", "conf/rules:2: unterminated string" },
      { "if ip matches \"a\\qb\" then discard", "conf/rules:1: bad escape '\\q'" },
      { "if ip matches \"x\" and then discard", "conf/rules:1: unknown condition 'then' (from, rcpt, ip, helo, header)" },
      { "if ip matches \"x\" then discard\nif", "conf/rules:2: expected a condition" },
      { "if ip matches \"x\" then discard \"extra\"", "conf/rules:1: expected 'if' to start a rule, got \"extra\"" },
      { "if not not ip matches \"x\" then discard", "conf/rules:1: unknown condition 'not'" },
    }
    for _, case in ipairs(errors) do
      it("reports " .. case[2], function()
        local err = err_of(case[1])
        assert.equal(case[2], err:sub(1, #case[2]))
      end)
    end
  end)

  describe("split_header", function()
    it("lowercases the name and trims the value", function()
      assert.same({ "subject", "Hello there" }, { rules.split_header("Subject:   Hello there  ") })
      assert.same({ "x-empty", "" }, { rules.split_header("X-Empty:") })
      assert.same({ "to", "<a@b>" }, { rules.split_header("To :<a@b>") })
    end)

    it("unfolds wrapped fields", function()
      assert.same({ "subject", "Hello \tworld" }, { rules.split_header("Subject: Hello\r\n \tworld") })
      assert.same({ "to", "<a@b>, <c@d>" }, { rules.split_header("To: <a@b>,\r\n <c@d>") })
    end)

    it("refuses a line that is not a header field", function()
      assert.is_nil(rules.split_header("no colon here"))
      assert.is_nil(rules.split_header(": no name"))
    end)
  end)

  describe("conditions", function()
    it("header missing / present", function()
      local set = compile('if header "To" missing then discard\nif header "cc" present then reject')
      assert.equal("discard", final(set, ctx { headers = { subject = { "x" } } }))
      assert.is_nil(final(set, ctx()))
      assert.equal("reject", final(set, ctx { headers = { to = { "a" }, cc = { "" } } }))
    end)

    it("header names are case-insensitive", function()
      local set = compile('if header "SUBJECT" matches "hi" then discard')
      assert.equal("discard", final(set, ctx { headers = { subject = { "hi" } } }))
    end)

    it("header matches: wildcards, case-insensitive, any of several fields", function()
      local set = compile('if header "Subject" matches "*viagra*" then discard')
      assert.equal("discard", final(set, ctx { headers = { subject = { "Cheap VIAGRA now" } } }))
      assert.is_nil(final(set, ctx { headers = { subject = { "Cheap meds" } } }))
      assert.equal("discard", final(set, ctx { headers = { subject = { "a", "viagra" } } }))
      assert.is_nil(final(set, ctx { headers = {} }))
    end)

    it("header matches is false for a missing header, not matches is true", function()
      local set = compile('if not header "X-Ok" matches "yes" then discard')
      assert.equal("discard", final(set, ctx { headers = {} }))
      assert.equal("discard", final(set, ctx { headers = { ["x-ok"] = { "no" } } }))
      assert.is_nil(final(set, ctx { headers = { ["x-ok"] = { "YES" } } }))
    end)

    it("from matches, with <> as the empty string", function()
      local set = compile('if from matches "*@partner.example" then discard\nif from matches "" then reject')
      assert.equal("discard", final(set, ctx { from = "Joe@Partner.Example" }))
      assert.is_nil(final(set, ctx { from = "joe@other.example" }))
      assert.equal("reject", final(set, ctx { from = "" }))
    end)

    it("rcpt matches any recipient", function()
      local set = compile('if rcpt matches "sales@*" then discard')
      assert.equal("discard", final(set, ctx { rcpts = { "joe@example.test", "Sales@example.test" } }))
      assert.is_nil(final(set, ctx { rcpts = { "joe@example.test" } }))
    end)

    it("not rcpt matches means no recipient matches", function()
      local set = compile('if not rcpt matches "*@example.test" then discard')
      assert.is_nil(final(set, ctx { rcpts = { "a@other.example", "b@example.test" } }))
      assert.equal("discard", final(set, ctx { rcpts = { "a@other.example" } }))
    end)

    it("ip and helo match", function()
      local set = compile('if ip matches "10.*" then discard\nif helo matches "*.dynamic.example" then reject')
      assert.equal("discard", final(set, ctx { ip = "10.1.2.3" }))
      assert.equal("reject", final(set, ctx { helo = "host-1.DYNAMIC.example" }))
      assert.is_nil(final(set, ctx()))
      assert.is_nil(final(set, ctx { helo = "" }))
    end)

    it("and needs every condition", function()
      local set = compile('if ip matches "10.*" and from matches "*@x.example" and header "To" present then discard')
      assert.equal("discard", final(set, ctx { ip = "10.0.0.1", from = "a@x.example" }))
      assert.is_nil(final(set, ctx { ip = "10.0.0.1", from = "a@y.example" }))
      assert.is_nil(final(set, ctx { ip = "11.0.0.1", from = "a@x.example" }))
      assert.is_nil(final(set, ctx { ip = "10.0.0.1", from = "a@x.example", headers = {} }))
    end)
  end)

  describe("actions", function()
    it("reject carries code and text", function()
      local set = compile('if header "To" missing then reject 550 "5.7.1 No To: header"')
      local kind, r = final(set, ctx { headers = {} })
      assert.equal("reject", kind)
      assert.equal(550, r.final.code)
      assert.equal("5.7.1 No To: header", r.final.text)
      assert.equal(1, r.final_line)
    end)

    it("redirect carries the address", function()
      local set = compile('if rcpt matches "sales@*" then redirect "sales-archive@example.test"')
      local kind, r = final(set, ctx { rcpts = { "sales@example.test" } })
      assert.equal("redirect", kind)
      assert.equal("sales-archive@example.test", r.final.address)
    end)

    it("add_header splits name and value and goes on", function()
      local set = compile([[
if from matches "*@partner.example" then add_header "X-Partner: yes"
if ip matches "*" then add_header "X-Checked:checked by rules" and add_header "X-Empty:"
if header "Subject" matches "*spam*" then discard
if ip matches "*" then add_header "X-Never: reached"
]])
      local kind, r = final(set, ctx { from = "a@partner.example", headers = { subject = { "spam" } } })
      assert.equal("discard", kind)
      assert.same({
        { name = "X-Partner", value = "yes", line = 1 },
        { name = "X-Checked", value = "checked by rules", line = 2 },
        { name = "X-Empty", value = "", line = 2 },
      }, r.add_headers)
      kind, r = final(set, ctx())
      assert.is_nil(kind)
      assert.equal(3, #r.add_headers)
      assert.equal("X-Never", r.add_headers[3].name)
    end)

    it("the first final action in file order wins", function()
      local set = compile('if ip matches "*" then discard\nif ip matches "*" then reject')
      assert.equal("discard", final(set, ctx()))
    end)
  end)
end)
