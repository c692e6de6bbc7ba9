local wildcard = require "moat.wildcard"

local function m(pattern, s, opts)
  return wildcard.compile(pattern, opts):match(s)
end

describe("moat.wildcard", function()
  describe("compile/match without stars", function()
    it("is plain equality", function()
      assert.is_true((m("abc", "abc")))
      assert.is_false(m("abc", "abcd"))
      assert.is_false(m("abc", "ab"))
      assert.is_false(m("abc", ""))
    end)

    it("returns an empty capture list", function()
      local ok, caps = m("abc", "abc")
      assert.is_true(ok)
      assert.same({}, caps)
    end)

    it("is case-sensitive by default", function()
      assert.is_false(m("Spam", "spam"))
    end)

    it("honours opts.nocase", function()
      assert.is_true((m("Spam.Example", "sPAM.eXAMPLE", { nocase = true })))
    end)

    it("matches the empty pattern only against the empty string", function()
      assert.is_true((m("", "")))
      assert.is_false(m("", "x"))
    end)
  end)

  describe("stars", function()
    it("'*' alone matches anything, including the empty string", function()
      local ok, caps = m("*", "")
      assert.is_true(ok); assert.same({ "" }, caps)
      ok, caps = m("*", "anything at all")
      assert.is_true(ok); assert.same({ "anything at all" }, caps)
    end)

    it("captures a prefix wildcard", function()
      local ok, caps = m("*.dynamic.example", "host-1.dynamic.example")
      assert.is_true(ok); assert.same({ "host-1" }, caps)
      assert.is_false(m("*.dynamic.example", "dynamic.example"))
    end)

    it("captures a suffix wildcard", function()
      local ok, caps = m("bounce-*", "bounce-12345")
      assert.is_true(ok); assert.same({ "12345" }, caps)
      ok, caps = m("bounce-*", "bounce-")
      assert.is_true(ok); assert.same({ "" }, caps)
    end)

    it("captures a middle wildcard", function()
      local ok, caps = m("promo*@spam.example", "promo-summer@spam.example")
      assert.is_true(ok); assert.same({ "-summer" }, caps)
      assert.is_false(m("promo*@spam.example", "xpromo@spam.example"))
      assert.is_false(m("promo*@spam.example", "promo@spam.example.org"))
    end)

    it("captures several stars, all but the last lazily", function()
      local ok, caps = m("*-*", "a-b-c")
      assert.is_true(ok); assert.same({ "a", "b-c" }, caps)
      ok, caps = m("*@*.*", "joe@mail.example.test")
      assert.is_true(ok); assert.same({ "joe", "mail", "example.test" }, caps)
    end)

    it("handles consecutive stars", function()
      local ok, caps = m("a**b", "axyzb")
      assert.is_true(ok); assert.same({ "", "xyz" }, caps)
    end)

    it("does not let prefix and suffix overlap", function()
      assert.is_false(m("ab*ba", "aba"))
      assert.is_false(m("a*a", "a"))
      local ok, caps = m("a*a", "aa")
      assert.is_true(ok); assert.same({ "" }, caps)
    end)

    it("needs the middle pieces in order", function()
      assert.is_false(m("*b*a*", "ab"))
      assert.is_true((m("*a*b*", "xaybz")))
    end)

    it("keeps the subject's case in captures when nocase", function()
      local ok, caps = m("*@OLD.example", "Fred.Smith@old.EXAMPLE", { nocase = true })
      assert.is_true(ok); assert.same({ "Fred.Smith" }, caps)
    end)

    it("matches UTF-8 text byte for byte", function()
      local ok, caps = m("*@exämple.test", "jöe@exämple.test")
      assert.is_true(ok); assert.same({ "jöe" }, caps)
    end)
  end)

  describe("Lua pattern characters are literal", function()
    for _, c in ipairs({ ".", "%", "(", ")", "[", "]", "^", "$", "+", "-", "?" }) do
      it("'" .. c .. "'", function()
        assert.is_true((m("a" .. c .. "*", "a" .. c .. "tail")))
        assert.is_false(m("a" .. c .. "*", "aXtail"))
      end)
    end

    it("'%d' is not a digit class", function()
      assert.is_false(m("x%d*", "x5"))
      assert.is_true((m("x%d*", "x%d5")))
    end)

    it("'.' is not any character", function()
      assert.is_false(m("*.example", "hostXexample"))
    end)
  end)

  describe("hostile inputs", function()
    local function timed(f)
      local t = os.clock(); f(); return os.clock() - t
    end

    it("is not exponential on *a*a*a*a*a*b against a long run of a", function()
      local s = ("a"):rep(200000)
      local took = timed(function() assert.is_false(m("*a*a*a*a*a*b", s)) end)
      assert.is_true(took < 0.5, "took " .. took .. "s")
    end)

    it("is not exponential when the suffix matches but a middle piece does not", function()
      local s = ("a"):rep(200000) .. "b"
      local took = timed(function() assert.is_false(m("*a*a*a*c*a*b", s)) end)
      assert.is_true(took < 0.5, "took " .. took .. "s")
    end)

    it("stays fast with many stars", function()
      local p = ("*a"):rep(50) .. "*b"
      local s = ("a"):rep(100000) .. "b"
      local ok, caps
      local took = timed(function() ok, caps = m(p, s) end)
      assert.is_true(ok)
      assert.equal(51, #caps)
      assert.is_true(took < 0.5, "took " .. took .. "s")
    end)
  end)

  describe("expand", function()
    it("replaces stars with captures in order", function()
      assert.equal("fred@example.test", wildcard.expand("*@example.test", { "fred" }))
      assert.equal("b-a", wildcard.expand("*-*", { "b", "a" }))
    end)

    it("leaves a target without stars unchanged", function()
      assert.equal("jsmith", wildcard.expand("jsmith", { "x" }))
    end)

    it("reuses the last capture when there are more stars than captures", function()
      assert.equal("joe-joe@x", wildcard.expand("*-*@x", { "joe" }))
    end)

    it("uses the empty string when there are no captures", function()
      assert.equal("-@x", wildcard.expand("*-*@x", {}))
      assert.equal("@x", wildcard.expand("*@x"))
    end)

    it("inserts captures verbatim, never rescanning them", function()
      assert.equal("a%1*b@x", wildcard.expand("*@x", { "a%1*b" }))
      assert.equal("%%-*", wildcard.expand("*-*", { "%%", "*" }))
    end)

    it("round-trips with match", function()
      local ok, caps = m("report-*", "report-weekly")
      assert.is_true(ok)
      assert.equal("report-weekly@reports.example", wildcard.expand("report-*@reports.example", caps))
    end)
  end)

  it("has_wildcard and the one-shot match helper", function()
    assert.is_true(wildcard.has_wildcard("a*"))
    assert.is_false(wildcard.has_wildcard("a"))
    local ok, caps = wildcard.match("*.x", "a.X", { nocase = true })
    assert.is_true(ok); assert.same({ "a" }, caps)
  end)

  it("exposes the number of stars", function()
    assert.equal(0, wildcard.compile("abc").stars)
    assert.equal(3, wildcard.compile("*a*b*").stars)
  end)
end)
