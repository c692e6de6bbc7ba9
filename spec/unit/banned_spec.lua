local banned = require "moat.banned"
local wildcard = require "moat.wildcard"

local function set(text, kind)
  local s, err = banned.compile(text, "banned-test", kind)
  assert(s, err)
  return s
end

local function hit(s, line)
  local e = s:match(line)
  return e and e.line or nil
end

describe("moat.banned", function()
  describe("unescape", function()
    it("turns \\r \\n \\t \\\\ into CR, LF, tab and backslash", function()
      assert.equal("a\r\nb\tc\\d", banned.unescape("a\\r\\nb\\tc\\\\d"))
    end)

    it("keeps a backslash before any other character", function()
      assert.equal("C:\\xyz\\", banned.unescape("C:\\xyz\\"))
      assert.equal("\\*", banned.unescape("\\*"))
    end)

    it("reads \\\\r as a backslash and an r, not as CR", function()
      assert.equal("\\r", banned.unescape("\\\\r"))
    end)
  end)

  describe("file format", function()
    it("ignores empty lines, counts the others", function()
      local s = set("\nabc\n\n\ndef\n\n")
      assert.equal(2, s.count)
      assert.equal(2, hit(s, "abc"))
      assert.equal(5, hit(s, "def"))
    end)

    it("accepts CRLF line ends in the file", function()
      local s = set("abc\r\n*xyz*\r\n")
      assert.equal(1, hit(s, "abc"))
      assert.equal(2, hit(s, "..xyz.."))
      assert.is_nil(hit(s, "abc\r"))
    end)

    it("has no comments: a line starting with ';' or '#' is a pattern", function()
      local s = set("; buy now\n# cheap\n")
      assert.equal(1, hit(s, "; buy now"))
      assert.equal(2, hit(s, "# cheap"))
      assert.is_nil(hit(s, "buy now"))
    end)

    it("keeps leading and trailing blanks", function()
      local s = set("  indented \n")
      assert.equal(1, hit(s, "  indented "))
      assert.is_nil(hit(s, "indented"))
      assert.is_nil(hit(s, "  indented"))
    end)

    it("refuses a pattern of stars only, naming file and line", function()
      local s, err = banned.compile("ok\n\n**\n", "conf/banned-body")
      assert.is_nil(s)
      assert.matches("^conf/banned%-body:3: ", err)
      assert.is_nil((banned.compile("*", "f")))
    end)

    it("is empty for an empty file and matches nothing", function()
      local s = set("")
      assert.equal(0, s.count)
      assert.is_nil(s:match(""))
      assert.is_nil(s:match("anything"))
    end)

    it("reports the pattern as written and its line", function()
      local s = set("x\nSubject: *\\r\\n\\tfoo\n")
      local e = s:match("Subject: a\r\n\tfoo")
      assert.equal("Subject: *\\r\\n\\tfoo", e.text)
      assert.equal(2, e.line)
    end)
  end)

  describe("matching", function()
    it("compares exact lines whole", function()
      local s = set("Buy cheap watches now\n")
      assert.truthy(hit(s, "Buy cheap watches now"))
      assert.is_nil(hit(s, "Buy cheap watches now!"))
      assert.is_nil(hit(s, " Buy cheap watches now"))
      assert.is_nil(hit(s, "Buy cheap watches"))
    end)

    it("is case-sensitive", function()
      local s = set("Buy cheap watches now\n*VIAGRA*\nSubject: *Rolex*\n")
      assert.is_nil(hit(s, "buy cheap watches now"))
      assert.is_nil(hit(s, "cheap viagra here"))
      assert.truthy(hit(s, "cheap VIAGRA here"))
      assert.is_nil(hit(s, "subject: a Rolex"))
      assert.is_nil(hit(s, "Subject: a rolex"))
      assert.truthy(hit(s, "Subject: a Rolex"))
    end)

    it("'*' matches any run, including an empty one", function()
      local s = set("Subject: *viagra*\n*unsubscribe*here\nFrom: *@spam.example\n")
      assert.truthy(hit(s, "Subject: viagra"))
      assert.truthy(hit(s, "Subject: buy viagra now"))
      assert.truthy(hit(s, "click unsubscribe or here"))
      assert.truthy(hit(s, "unsubscribehere"))
      assert.is_nil(hit(s, "unsubscribe here!"))
      assert.truthy(hit(s, "From: <x@spam.example"))
      assert.truthy(hit(s, "From: x@spam.example"))
      assert.is_nil(hit(s, "From: x@spam.example>"))
      assert.is_nil(hit(s, "Subject:viagra"))
    end)

    it("treats every other character literally (no Lua pattern magic)", function()
      local s = set("%d+ (.*) [x]\n*$100.00*\n")
      assert.truthy(hit(s, "%d+ (.*) [x]"))
      assert.is_nil(hit(s, "12 (.*) [x]"))
      assert.truthy(hit(s, "only $100.00 today"))
      assert.is_nil(hit(s, "only $100x00 today"))
    end)

    it("handles short pieces (prefix, suffix and scan indexes)", function()
      local s = set("To: *\n*-- \nab*cd\n*xy*zw*\n")
      assert.truthy(hit(s, "To: anyone"))
      assert.is_nil(hit(s, "Cc: To: anyone"))
      assert.truthy(hit(s, "signature -- "))
      assert.is_nil(hit(s, "signature --"))
      assert.truthy(hit(s, "ab-cd"))
      assert.truthy(hit(s, "abcd"))
      assert.is_nil(hit(s, "abc"))
      assert.truthy(hit(s, "1xy2zw3"))
      assert.is_nil(hit(s, "1zw2xy3"))
      assert.equal(2, s.kinds.prefix)
      assert.equal(1, s.kinds.suffix)
      assert.equal(1, s.kinds.scan)
    end)

    it("finds a long piece at every alignment of the line", function()
      local s = set("*0123456789abcdef*\n")
      assert.equal(1, s.kinds.gram)
      for pad = 0, 9 do
        local line = ("."):rep(pad) .. "0123456789abcdef" .. ("."):rep(pad)
        assert.truthy(hit(s, line), "padding " .. pad)
        assert.is_nil(hit(s, ("."):rep(pad) .. "0123456789abcdeF"), "padding " .. pad)
      end
    end)

    it("finds pieces of exactly 7 bytes at every alignment", function()
      local s = set("*viagras*\n")
      assert.equal(1, s.kinds.gram)
      for pad = 0, 8 do
        assert.truthy(hit(s, ("x"):rep(pad) .. "viagras" .. ("y"):rep(pad)), "padding " .. pad)
        assert.truthy(hit(s, ("x"):rep(pad) .. "viagras"), "padding " .. pad)
        assert.is_nil(hit(s, ("x"):rep(pad) .. "viagra s"), "padding " .. pad)
      end
    end)

    it("confirms a gram hit with the whole pattern", function()
      local s = set("Received: from * by mx.spammer.example*\n")
      assert.truthy(hit(s, "Received: from a by mx.spammer.example; date"))
      assert.is_nil(hit(s, "X-Note: mx.spammer.example"))
      assert.is_nil(hit(s, "Received: from a by mx.spammer.exampl"))
    end)
  end)

  describe("wrapped header fields", function()
    local field = "Subject: Cheap meds\r\n\tfor you"

    it("a pattern with \\r\\n escapes matches the whole wrapped field", function()
      local s = set("Subject: Cheap meds\\r\\n\\tfor you\n", "header")
      assert.truthy(hit(s, field))
      assert.is_nil(hit(s, "Subject: Cheap meds"))
      assert.is_nil(hit(s, "Subject: Cheap meds\r\n for you"))
    end)

    it("wildcards reach across the line break", function()
      local s = set("Subject: *meds\\r\\n*you\n", "header")
      assert.truthy(hit(s, field))
      assert.truthy(hit(s, "Subject: meds\r\n you"))
      assert.is_nil(hit(s, "Subject: meds you"))
    end)

    it("a pattern without the break does not match the wrapped field", function()
      local s = set("Subject: Cheap meds for you\n", "header")
      assert.is_nil(hit(s, field))
    end)

    it("a star can cover the break", function()
      local s = set("Subject: Cheap*for you\n", "header")
      assert.truthy(hit(s, field))
    end)
  end)

  describe("agrees with moat.wildcard", function()
    it("on random patterns and lines", function()
      math.randomseed(42)
      local alphabet = { "a", "b", "ab", "ba", "aab", " ", "x" }
      local function rnd(n)
        local t = {}
        for i = 1, n do t[i] = alphabet[math.random(#alphabet)] end
        return table.concat(t)
      end
      local patterns, text = {}, {}
      for i = 1, 60 do
        local p = rnd(math.random(1, 3)) .. "*" .. rnd(math.random(0, 4))
        if i % 3 == 0 then p = "*" .. p end
        if i % 4 == 0 then p = p .. "*" .. rnd(2) end
        if i % 5 == 0 then p = rnd(4) end
        patterns[i] = p
        text[i] = p
      end
      local s = set(table.concat(text, "\n"))
      for _ = 1, 2000 do
        local line = rnd(math.random(0, 10))
        local want = false
        for _, p in ipairs(patterns) do
          if wildcard.match(p, line) then want = true break end
        end
        assert.equal(want, s:match(line) ~= nil, ("line %q"):format(line))
      end
    end)
  end)

  describe("speed (not timed)", function()
    it("indexes 1,000 patterns so that a line checks only a few of them", function()
      local lines = {}
      for i = 1, 500 do lines[#lines + 1] = ("Exact spam line number %d, act now"):format(i) end
      for i = 1, 300 do lines[#lines + 1] = ("*offer code Q%05dZ*"):format(i) end
      for i = 1, 150 do lines[#lines + 1] = ("Subject: *deal %d*"):format(i * 7919) end
      for i = 1, 50 do lines[#lines + 1] = ("X-Mailer: Bulk%d*"):format(i) end
      local s = set(table.concat(lines, "\n"), "header")
      assert.equal(1000, s.count)
      assert.equal(0, s.kinds.scan)
      local before = s:confirms()
      local sample = {
        "Subject: Meeting notes for the project review",
        "The quarterly report is attached; please read it before the meeting.",
        "Received: from mail.example.org (mail.example.org [192.0.2.1]) by mx.example.test",
        "X-Mailer: Microsoft Outlook 16.0",
        "Thanks, and see you tomorrow at the office.",
      }
      local n = 0
      for _ = 1, 200 do
        for _, l in ipairs(sample) do
          assert.is_nil(s:match(l))
          n = n + 1
        end
      end
      local tries = s:confirms() - before
      assert.is_true(tries < n, ("%d full matches for %d lines"):format(tries, n))
      assert.truthy(s:match("Subject: a deal " .. 7919 * 3 .. " for you"))
      assert.truthy(s:match("Use offer code Q00077Z today"))
      assert.truthy(s:match("Exact spam line number 321, act now"))
      assert.truthy(s:match("X-Mailer: Bulk17 v2"))
    end)

    it("stays linear on hostile input", function()
      local s = set("*aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab*\n*a*a*a*a*a*a*a*a*a*a*b\n")
      local line = ("a"):rep(20000)
      local t0 = os.clock()
      assert.is_nil(s:match(line))
      assert.is_true(os.clock() - t0 < 2)
    end)
  end)
end)
