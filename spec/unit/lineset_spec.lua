-- Unit: moat.lineset (src/lineset.c as a Lua module, build/lua/moat/lineset.so):
-- the C matcher behind the banned policy, and line filters, the data_line
-- hooks the core can run without Lua.  The matcher's agreement with
-- moat.wildcard on many patterns is in banned_spec and the fuzz_banned target.
local lineset = require "moat.lineset"

local REJECT = { action = "reject", code = 554, text = "5.7.1 no" }

describe("moat.lineset", function()
  it("matches whole lines, '*' as any run, byte for byte", function()
    local set = lineset.new { "Subject: *pills*", "exact line", "*\r\n\tbulk" }
    assert.equal(1, set:match("Subject: cheap pills now"))
    assert.equal(2, set:match("exact line"))
    assert.equal(3, set:match("X-Mailer: x\r\n\tbulk"))
    assert.is_nil(set:match("exact line "))
    assert.is_nil(set:match("subject: cheap pills"))       -- case-sensitive
    assert.is_nil(set:match("X-Mailer: x\r\n bulk"))
  end)

  it("handles NUL bytes and empty lines as ordinary bytes", function()
    local set = lineset.new { "a\0b*", "" }
    assert.equal(1, set:match("a\0bc"))
    assert.equal(2, set:match(""))
    assert.is_nil(set:match("a"))
  end)

  it("an empty set matches nothing", function()
    assert.is_nil(lineset.new({}):match("anything"))
  end)

  it("reports which index holds each pattern", function()
    local exact, gram, prefix, suffix, scan = lineset.new({ "x", "*longpiece*", "To: *", "*-- ", "*a*b*" }):stats()
    assert.same({ 1, 1, 1, 1, 1 }, { exact, gram, prefix, suffix, scan })
  end)

  describe("filter", function()
    it("is a data_line hook: the verdict and the label of the pattern on a match, nothing otherwise", function()
      local f = lineset.filter { header = lineset.new { "Subject: win*" }, body = lineset.new { "spam", "*click*" },
                                 verdict = REJECT, header_labels = { "H1" }, body_labels = { "B1", "B2" } }
      local logged = {}
      local s = { log = function(_, m) logged[#logged + 1] = m end }
      assert.equal(REJECT, f(s, "please click here", "body"))
      assert.equal(REJECT, f(s, "Subject: win a prize", "header"))
      assert.is_nil(f(s, "spam", "header"))                  -- header lines see the header set only
      assert.is_nil(f(s, "Subject: win a prize", "body"))
      assert.same({ "B2", "H1" }, logged)
      assert.is_true(lineset.is_filter(f))
      assert.is_false(lineset.is_filter(function() end))
      assert.is_false(lineset.is_filter(lineset.new {}))
    end)

    it("may have only one of its sets", function()
      local f = lineset.filter { body = lineset.new { "x" }, verdict = REJECT }
      assert.equal(REJECT, f({ log = function() end }, "x", "body"))
      assert.is_nil(f({}, "x", "header"))
    end)

    it("refuses a verdict the core could not give on its own (accept, a 2xx code, none)", function()
      local set = lineset.new { "x" }
      for _, v in ipairs { { action = "accept" }, { action = "reject", code = 250, text = "2.0.0 ok" }, {} } do
        local ok, err = pcall(lineset.filter, { body = set, verdict = v })
        assert.is_false(ok)
        assert.truthy(tostring(err):find("verdict must be", 1, true), err)
      end
      assert.is_false((pcall(lineset.filter, { body = set })))
      assert.truthy(lineset.filter { body = set, verdict = { action = "discard" } })
      assert.truthy(lineset.filter { body = set, verdict = { action = "tempfail", code = 451, text = "4.7.1 later" } })
    end)
  end)
end)
