local address = require "moat.address"

local function ok(raw)
  local a, err = address.parse(raw)
  assert(a, ("expected %q to parse, got: %s"):format(raw, tostring(err)))
  return a
end

local function bad(raw, fragment)
  local a, err = address.parse(raw)
  assert(a == nil, ("expected %q to be rejected"):format(raw))
  assert.is_string(err)
  if fragment then
    assert(err:find(fragment, 1, true), ("error for %q was %q, expected %q"):format(raw, err, fragment))
  end
end

describe("moat.address", function()
  describe("plain mailboxes", function()
    it("parses local part and domain", function()
      local a = ok("joe@example.test")
      assert.equal("joe", a.localpart)
      assert.equal("example.test", a.domain)
      assert.equal("joe", a.local_text)
      assert.equal("joe@example.test", a.mailbox)
      assert.is_false(a.null)
      assert.is_false(a.quoted)
      assert.is_nil(a.route)
      assert.is_true(a.simple)
      assert.is_nil(a.route_kind)
      assert.equal("joe@example.test", a.raw)
    end)

    it("accepts the path with its angle brackets", function()
      local a = ok("<joe@example.test>")
      assert.equal("joe", a.localpart)
      assert.equal("<joe@example.test>", a.raw)
    end)

    it("rejects unbalanced angle brackets", function()
      bad("<joe@example.test", "angle")
      bad("<", "angle")
    end)

    it("accepts dot-atoms and every atext character", function()
      local a = ok("first.last+tag@example.test")
      assert.equal("first.last+tag", a.localpart)
      a = ok("!#$%&'*+-/=?^_`{|}~@example.test")
      assert.equal("!#$%&'*+-/=?^_`{|}~", a.localpart)
    end)

    it("keeps the domain as written but canonicalizes mailbox", function()
      local a = ok("Joe@Example.TEST")
      assert.equal("Example.TEST", a.domain)
      assert.equal("Joe", a.localpart)
      assert.equal("Joe@example.test", a.mailbox)
    end)

    it("rejects bad dot-strings", function()
      bad(".joe@example.test", "empty atom")
      bad("joe.@example.test", "empty atom")
      bad("jo..e@example.test", "empty atom")
    end)

    it("rejects whitespace and stray characters", function()
      bad("jo e@example.test", "unexpected character")
      bad("joe @example.test")
      bad("joe@example.test ")
      bad("joe(comment)@example.test")
      bad("a@b@example.test")
      bad("joe@exa mple.test")
    end)

    it("rejects control characters", function()
      bad("jo\0e@example.test", "control")
      bad("joe@example.test\r\n", "control")
      bad("jo\te@example.test", "control")
    end)

    it("rejects an empty local part", function()
      bad('""@example.test', "empty local part")
    end)

    it("accepts a mailbox without a domain (domain = nil)", function()
      local a = ok("postmaster")
      assert.equal("postmaster", a.localpart)
      assert.is_nil(a.domain)
      assert.is_false(a.null)
      assert.equal("postmaster", a.mailbox)
    end)

    it("rejects an empty domain after '@'", function()
      bad("joe@", "empty domain")
    end)
  end)

  describe("the null path", function()
    it("accepts <>", function()
      local a = ok("<>")
      assert.is_true(a.null)
      assert.is_nil(a.localpart)
      assert.is_nil(a.domain)
      assert.is_true(a.simple)
    end)

    it("accepts the empty string as the null path", function()
      assert.is_true(ok("").null)
    end)

    it("formats as the empty string", function()
      assert.equal("", address.format(ok("<>")))
    end)
  end)

  describe("domains", function()
    it("rejects a trailing dot (never normalized)", function()
      bad("joe@example.test.", "trailing dot")
      bad("<joe@example.test.>", "trailing dot")
    end)

    it("rejects empty labels", function()
      bad("joe@.example.test", "empty label")
      bad("joe@example..test", "empty label")
    end)

    it("rejects labels starting or ending with '-'", function()
      bad("joe@-example.test", "'-'")
      bad("joe@example-.test", "'-'")
    end)

    it("rejects characters outside letters, digits and '-'", function()
      bad("joe@exa_mple.test", "invalid character")
      bad("joe@exa%mple.test", "invalid character")
      bad("joe@example.test!", "invalid character")
    end)

    it("accepts single-label and numeric-label domains", function()
      assert.equal("localhost", ok("joe@localhost").domain)
      assert.equal("123.example", ok("joe@123.example").domain)
    end)

    it("limits labels to 63 octets", function()
      ok("joe@" .. ("a"):rep(63) .. ".test")
      bad("joe@" .. ("a"):rep(64) .. ".test", "63")
    end)

    it("limits the domain to 255 octets", function()
      local label = ("a"):rep(63)
      local d255 = table.concat({ label, label, label, ("b"):rep(63) }, ".")
      assert.equal(255, #d255)
      assert.equal("domain", address.valid_domain(d255))
      local d256 = d255 .. "b"
      local ok2, err = address.valid_domain(d256)
      assert.is_nil(ok2)
      assert.matches("255", err)
    end)

    it("valid_domain reports the kind", function()
      assert.equal("domain", address.valid_domain("example.test"))
      assert.equal("ipv4", address.valid_domain("[192.0.2.1]"))
      assert.equal("ipv6", address.valid_domain("[IPv6:2001:db8::1]"))
      assert.is_nil(address.valid_domain(""))
      assert.is_nil(address.valid_domain("example.test."))
    end)

    it("canonical_domain lower-cases but keeps the IPv6 tag", function()
      assert.equal("example.test", address.canonical_domain("ExAmple.Test"))
      assert.equal("[IPv6:2001:db8::a]", address.canonical_domain("[ipv6:2001:DB8::A]"))
      assert.is_nil(address.canonical_domain(nil))
    end)
  end)

  describe("address literals", function()
    it("accepts IPv4 literals", function()
      local a = ok("joe@[192.0.2.1]")
      assert.equal("[192.0.2.1]", a.domain)
      assert.equal("ipv4", a.literal)
      assert.is_true(a.simple)
    end)

    it("rejects bad IPv4 literals", function()
      bad("joe@[192.0.2.256]", "literal")
      bad("joe@[192.0.2]", "literal")
      bad("joe@[192.0.2.1.5]", "literal")
      bad("joe@[192.0.2.1", "literal")
      bad("joe@[]", "literal")
    end)

    it("rejects IPv4 octets with leading zeros (octal ambiguity)", function()
      bad("joe@[010.0.0.1]", "literal")
      ok("joe@[10.0.0.1]")
      ok("joe@[0.0.0.0]")
    end)

    it("accepts IPv6 literals in all their forms", function()
      for _, lit in ipairs({
        "IPv6:2001:db8::1", "IPv6:2001:db8:0:0:0:0:0:1", "IPv6:::1", "IPv6:::",
        "IPv6:fe80::", "IPv6:::ffff:192.0.2.1", "IPv6:1:2:3:4:5:6:192.0.2.1", "ipv6:2001:DB8::A",
      }) do
        local a = ok("joe@[" .. lit .. "]")
        assert.equal("ipv6", a.literal)
      end
    end)

    it("rejects bad IPv6 literals", function()
      for _, lit in ipairs({
        "IPv6:2001:db8::1::2", "IPv6:1:2:3:4:5:6:7", "IPv6:1:2:3:4:5:6:7:8:9",
        "IPv6:12345::1", "IPv6:g::1", "IPv6:1:2:3:4:5:6:7::8:9", "IPv6:192.0.2.1::",
        "IPv6:::ffff:192.0.2.256", "IPv6:", "2001:db8::1",
      }) do
        bad("joe@[" .. lit .. "]")
      end
    end)

    it("rejects general address literals", function()
      bad("joe@[x400:abc]", "unsupported")
    end)

    it("canonicalizes the IPv6 tag in mailbox", function()
      assert.equal("joe@[IPv6:2001:db8::a]", ok("joe@[ipv6:2001:DB8::A]").mailbox)
    end)
  end)

  describe("quoted local parts", function()
    it("decodes the quoted string", function()
      local a = ok('"john smith"@example.test')
      assert.equal("john smith", a.localpart)
      assert.is_true(a.quoted)
      assert.equal('"john smith"', a.local_text)
      assert.equal('"john smith"@example.test', a.mailbox)
      assert.is_true(a.simple)
    end)

    it("handles quoted-pairs", function()
      local a = ok([["a\"b\\c"@example.test]])
      assert.equal([[a"b\c]], a.localpart)
      assert.equal([["a\"b\\c"]], a.local_text)
    end)

    it("canonicalizes needless quotes away", function()
      local a = ok('"joe"@example.test')
      assert.equal("joe", a.localpart)
      assert.equal("joe", a.local_text)
      assert.is_true(a.quoted)
      assert.equal("joe@example.test", a.mailbox)
      assert.equal("joe", ok([["\j\o\e"@example.test]]).local_text)
    end)

    it("rejects unterminated quotes and bad escapes", function()
      bad('"joe@example.test', "unterminated")
      bad('"jo"e@example.test', "unexpected character")
      bad('"a\\', "backslash")
    end)

    it('treats "a@b"@domain as routed (kind quoted)', function()
      local a = ok('"a@b"@example.test')
      assert.equal("a@b", a.localpart)
      assert.is_false(a.simple)
      assert.equal("quoted", a.route_kind)
    end)

    it('treats "x%y"@domain as routed (kind percent)', function()
      local a = ok('"x%y"@example.test')
      assert.equal("x%y", a.localpart)
      assert.is_false(a.simple)
      assert.equal("percent", a.route_kind)
    end)

    it('treats "h!u"@domain as routed (kind bang)', function()
      assert.equal("bang", ok('"h!u"@example.test').route_kind)
    end)
  end)

  describe("source routes", function()
    it("parses <@h1,@h2:u@d>", function()
      local a = ok("<@h1.example,@h2.example:u@d.example>")
      assert.same({ "h1.example", "h2.example" }, a.route)
      assert.equal("u", a.localpart)
      assert.equal("d.example", a.domain)
      assert.is_false(a.simple)
      assert.equal("source", a.route_kind)
      assert.equal("@h1.example,@h2.example:u@d.example", address.format(a))
    end)

    it("parses a single hop and literal hops", function()
      local a = ok("<@[192.0.2.1]:u@d.example>")
      assert.same({ "[192.0.2.1]" }, a.route)
      a = ok("<@[IPv6:2001:db8::1],@h.example:u@d.example>")
      assert.same({ "[IPv6:2001:db8::1]", "h.example" }, a.route)
    end)

    it("rejects malformed routes", function()
      bad("<@h1.example u@d.example>", "source route")
      bad("<@:u@d.example>", "source route")
      bad("<@h1.example,:u@d.example>", "source route")
      bad("<@h1.example.:u@d.example>", "trailing dot")
      bad("<@h1.example:u>", "domain")
      bad("@d.example", "source route")
    end)
  end)

  describe("routes in the local part", function()
    it("percent hack u%h1@h2", function()
      local a = ok("u%h1.example@h2.example")
      assert.equal("u%h1.example", a.localpart)
      assert.is_false(a.simple)
      assert.equal("percent", a.route_kind)
    end)

    it("bang path h1!u", function()
      local a = ok("h1!u")
      assert.is_nil(a.domain)
      assert.equal("bang", a.route_kind)
      assert.equal("bang", ok("h1!u@h2.example").route_kind)
    end)
  end)

  describe("simple()", function()
    local cases = {
      { "joe@example.test", true, nil },
      { "<joe@example.test>", true, nil },
      { "<>", true, nil },
      { "u%h1@h2", false, "percent" },
      { "<@h2:u@h1>", false, "source" },
      { "h1!u", false, "bang" },
      { '"u@h1"@h2', false, "quoted" },
      { '"u%h1"@h2', false, "percent" },
      { "joe@[192.0.2.1]", true, nil },
    }
    for _, c in ipairs(cases) do
      it(c[1] .. " -> " .. tostring(c[2]), function()
        local simple, kind = address.simple(c[1])
        assert.equal(c[2], simple)
        assert.equal(c[3], kind)
        assert.equal(c[3], address.route_kind(c[1]))
      end)
    end

    it("accepts a parsed address", function()
      assert.is_false((address.simple(ok("u%h@d"))))
    end)

    it("calls an unparsable address not simple", function()
      local simple, kind = address.simple("joe@example.test.")
      assert.is_false(simple)
      assert.equal("invalid", kind)
    end)
  end)

  describe("SMTPUTF8", function()
    it("accepts UTF-8 local parts and domains", function()
      local a = ok("jöe@exämple.test")
      assert.equal("jöe", a.localpart)
      assert.equal("exämple.test", a.domain)
      a = ok("用户@例子.测试")
      assert.equal("用户", a.localpart)
      a = ok('"jö e"@example.test')
      assert.equal("jö e", a.localpart)
    end)

    it("rejects invalid UTF-8", function()
      bad("j\xffe@example.test", "UTF-8")
      bad("joe@ex\xc3ample.test", "UTF-8")
      bad("\xc0\xafjoe@example.test", "UTF-8")          -- overlong '/'
      bad("\xed\xa0\x80@example.test", "UTF-8")         -- surrogate
      bad('"\xff"@example.test', "UTF-8")
    end)
  end)

  describe("length limits", function()
    it("local part up to 64 octets", function()
      ok(("a"):rep(64) .. "@example.test")
      bad(("a"):rep(65) .. "@example.test", "64")
    end)

    it("counts the quotes of a quoted local part", function()
      ok('"' .. ("a"):rep(61) .. ' "@example.test')
      bad('"' .. ("a"):rep(62) .. ' "@example.test', "64")
    end)

    it("counts octets, not characters", function()
      ok(("ö"):rep(32) .. "@example.test")
      bad(("ö"):rep(33) .. "@example.test", "64")
    end)

    it("path up to 256 octets including the angle brackets", function()
      local lp = ("a"):rep(64)
      local label = ("b"):rep(63)
      -- "<" + 64 + "@" + domain + ">" = 256  ->  domain of 189 octets
      local domain = label .. "." .. label .. "." .. ("c"):rep(61)
      assert.equal(189, #domain)
      ok("<" .. lp .. "@" .. domain .. ">")
      bad("<" .. lp .. "@" .. domain .. "c>", "256")
      bad(lp .. "@" .. domain .. "c", "256")
    end)
  end)

  describe("format and quote_local", function()
    it("quotes only when needed", function()
      assert.equal("joe", address.quote_local("joe"))
      assert.equal('"jo e"', address.quote_local("jo e"))
      assert.equal('"a@b"', address.quote_local("a@b"))
      assert.equal([["a\"b"]], address.quote_local('a"b'))
      assert.equal('".joe"', address.quote_local(".joe"))
      assert.equal("u%h", address.quote_local("u%h"))
    end)

    it("round-trips through parse", function()
      for _, s in ipairs({ "joe@example.test", '"jo e"@example.test', "@h1,@h2:u@d", "u%h@d", "postmaster" }) do
        assert.equal(s, address.format(ok(s)))
      end
    end)

    it("rejects a non-string", function()
      local a, err = address.parse(nil)
      assert.is_nil(a)
      assert.is_string(err)
    end)
  end)
end)
