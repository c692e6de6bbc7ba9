local router = require "moat.router"
local address = require "moat.address"

local DESIGN_EXAMPLE = [[
<joe> = jsmith                       ; address record, local part in the main domain
<sales@corp.example.test> = joe      ; address record, any domain
<promo*@spam.example> = error        ; '*' matches any run; reject
spam.example = error                 ; domain record: every address in the domain
<*@old.example> = *@example.test     ; '*' in the target takes the matched text
<misterX> = spamtrap
<bounce-*> = null                    ; accept and discard
Relay:<joe> = joe@other.example      ; prefixes: Relay: NoRelay: RelayAll:
NoRelay:partner.example = partner.example@relay.isp.example
RelayAll:<report-*> = report-*@reports.example
]]

local OPTS = { main_domain = "example.test", local_domains = { "example.test", "corp.example.test" } }

local function load(text, opts)
  local r, tbl = router.load(text, "router", opts or OPTS)
  assert(r, tbl)
  return r, tbl
end

local function route(r, addr)
  local res, err = r:route(addr)
  assert(res, ("routing %s failed: %s"):format(addr, tostring(err)))
  return res
end

local function parse_error(text)
  local tbl, err = router.parse(text, "conf/router")
  assert(tbl == nil, "expected a parse error for: " .. text)
  return err
end

describe("moat.router", function()
  ---------------------------------------------------------------------------
  describe("parse", function()
    it("routes a target that expands to the null address to an error, not a crash (found by fuzzing)", function()
      local r = router.load("<*x> = *\n", "router", { main_domain = "example.test", local_domains = { "example.test" } })
      local res = route(r, "x@example.test")
      assert.equal("error", res.kind)
      assert.matches("null address", res.reason)
    end)

    it("reads every record form of DESIGN's example", function()
      local tbl = assert(router.parse(DESIGN_EXAMPLE, "router"))
      assert.equal(10, #tbl.records)
      local r1 = tbl.records[1]
      assert.equal("address", r1.kind)
      assert.equal("none", r1.prefix)
      assert.equal(1, r1.line)
      assert.equal("<joe> = jsmith", r1.text)
      assert.equal("domain", tbl.records[4].kind)
      assert.equal("relay", tbl.records[8].prefix)
      assert.equal("norelay", tbl.records[9].prefix)
      assert.equal("relayall", tbl.records[10].prefix)
      assert.equal("RelayAll:<report-*> = report-*@reports.example", tbl.records[10].text)
    end)

    it("skips blank lines and whole-line comments, keeping line numbers", function()
      local tbl = assert(router.parse("; a comment\n\n   ; indented comment\n<joe> = jsmith\n", "r"))
      assert.equal(1, #tbl.records)
      assert.equal(4, tbl.records[1].line)
    end)

    it("accepts CRLF line ends and a missing final newline", function()
      local tbl = assert(router.parse("<a> = b\r\n<c> = d", "r"))
      assert.equal(2, #tbl.records)
      assert.equal("<c> = d", tbl.records[2].text)
    end)

    it("does not treat ';' inside a quoted local part as a comment", function()
      local tbl = assert(router.parse('<"a;b"> = joe ; real comment', "r"))
      assert.equal('<"a;b"> = joe', tbl.records[1].text)
    end)

    it("accepts prefixes case-insensitively and spaces around '='", function()
      local tbl = assert(router.parse("relay:<a>=b\nNORELAY: x.example   =   y.example", "r"))
      assert.equal("relay", tbl.records[1].prefix)
      assert.equal("Relay:<a> = b", tbl.records[1].text)
      assert.equal("norelay", tbl.records[2].prefix)
    end)

    it("accepts an empty table", function()
      local tbl = assert(router.parse("", "r"))
      assert.same({}, tbl.records)
    end)

    describe("reports malformed lines as file:line errors", function()
      local cases = {
        { "<joe> jsmith", "conf/router:2: expected '='" },
        { "<joe = jsmith", "conf/router:2: missing '>'" },
        { "<joe> =", "conf/router:2: missing target" },
        { "<joe> = ", "conf/router:2: missing target" },
        { "= error", "conf/router:2: expected <address> or domain" },
        { "Foo:<joe> = x", "conf/router:2: unknown prefix 'Foo:'" },
        { "<> = spamtrap", "conf/router:2: empty address" },
        { "<jo e> = x", "conf/router:2: bad address <jo e>" },
        { "<joe@example.test.> = x", "conf/router:2: bad address" },
        { "<joe> = jsmith extra", "conf/router:2: bad target" },
        { "<joe> = a@b@c", "conf/router:2: bad target" },
        { "<joe> = <>", "conf/router:2: the null address cannot be a target" },
        { "<joe> = *@x.example", "conf/router:2: target uses '*' but the record key has none" },
        { "<@h:u@d> = x", "conf/router:2:" },
        { "spam..example = error", "conf/router:2: bad domain" },
        { "spam.example. = error", "conf/router:2: bad domain 'spam.example.': domain has a trailing dot" },
        { "*.spam.example = error", "conf/router:2: wildcards are only supported" },
        { "spam.example = bad..example", "conf/router:2: bad target domain" },
        { "spam.example = good.example@bad..host", "conf/router:2: bad target host" },
        { "spam.example = x@y@z", "conf/router:2: bad target host" },
        { "spam.example error", "conf/router:2: expected '='" },
      }
      for _, c in ipairs(cases) do
        it(c[1], function()
          local err = parse_error("; header\n" .. c[1] .. "\n<ok> = fine\n")
          assert(err:find(c[2], 1, true), ("got %q, expected %q"):format(err, c[2]))
        end)
      end
    end)

    it("uses a default file name", function()
      local _, err = router.parse("<joe>")
      assert.matches("^router:1: ", err)
    end)

    it("keeps the first of two records with the same key and warns", function()
      local tbl = assert(router.parse(DESIGN_EXAMPLE, "conf/router"))
      assert.equal(1, #tbl.warnings)
      assert.matches("^conf/router:8: Relay:<joe> = joe@other%.example repeats the key of line 1", tbl.warnings[1])
      local r = router.new(tbl, OPTS)
      assert.equal("jsmith@example.test", route(r, "joe@example.test").address)
    end)

    it("sees \"joe\" and joe as the same key", function()
      local tbl = assert(router.parse('<joe> = a\n<"joe"> = b', "r"))
      assert.equal(1, #tbl.warnings)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("DESIGN's router example", function()
    local r
    before_each(function() r = load(DESIGN_EXAMPLE) end)

    it("<joe> = jsmith rewrites a main-domain local part", function()
      local res = route(r, "joe@example.test")
      assert.equal("local", res.kind)
      assert.equal("jsmith@example.test", res.address)
      assert.equal("jsmith", res.localpart)
      assert.equal("example.test", res.domain)
      assert.is_nil(res.host)
      assert.is_true(res.known)
    end)

    it("routes a domain-less address like the main domain", function()
      assert.equal("jsmith@example.test", route(r, "joe").address)
    end)

    it("<sales@corp.example.test> = joe, then <joe> = jsmith", function()
      local res = route(r, "sales@corp.example.test")
      assert.equal("local", res.kind)
      assert.equal("jsmith@example.test", res.address)
      assert.equal(3, #res.steps)
      assert.equal("<sales@corp.example.test> = joe", res.steps[2].record)
      assert.equal("joe", res.steps[2].address)
      assert.equal("<joe> = jsmith", res.steps[3].record)
    end)

    it("<promo*@spam.example> = error", function()
      local res = route(r, "promo-summer@spam.example")
      assert.equal("error", res.kind)
      assert.equal("<promo*@spam.example> = error", res.steps[#res.steps].record)
    end)

    it("spam.example = error catches every other address of the domain", function()
      local res = route(r, "anyone@spam.example")
      assert.equal("error", res.kind)
      assert.equal("spam.example = error", res.steps[#res.steps].record)
      assert.is_string(res.reason)
    end)

    it("<*@old.example> = *@example.test substitutes the matched text", function()
      local res = route(r, "Fred.Smith@old.example")
      assert.equal("local", res.kind)
      assert.equal("Fred.Smith@example.test", res.address)
      assert.equal("Fred.Smith@example.test", res.steps[2].address)
      assert.equal("cut-off", res.steps[3].op)
      assert.equal("Fred.Smith", res.steps[3].address)
    end)

    it("wildcard substitution chains into further records", function()
      assert.equal("jsmith@example.test", route(r, "joe@old.example").address)
    end)

    it("<misterX> = spamtrap (case-insensitive local part)", function()
      local res = route(r, "misterx@example.test")
      assert.equal("spamtrap", res.kind)
      assert.equal("spamtrap", res.address)
      assert.equal("spamtrap", route(r, "MISTERX@EXAMPLE.TEST").kind)
    end)

    it("<bounce-*> = null", function()
      local res = route(r, "bounce-4711@example.test")
      assert.equal("null", res.kind)
      assert.equal("null", res.address)
    end)

    it("NoRelay:partner.example = partner.example@relay.isp.example delivers via the host", function()
      local res = route(r, "joe@partner.example")
      assert.equal("remote", res.kind)
      assert.equal("joe@partner.example", res.address)
      assert.equal("partner.example", res.domain)
      assert.equal("relay.isp.example", res.host)
      assert.is_false(res.can_relay)
    end)

    it("RelayAll:<report-*> = report-*@reports.example", function()
      local res = route(r, "report-weekly@example.test")
      assert.equal("remote", res.kind)
      assert.equal("report-weekly@reports.example", res.address)
      assert.equal("reports.example", res.host)
      assert.is_true(res.can_relay)
    end)

    it("an unknown local address is local, unknown to the Router", function()
      local res = route(r, "nobody@corp.example.test")
      assert.equal("local", res.kind)
      assert.equal("nobody@corp.example.test", res.address)
      assert.is_false(res.known)
      assert.is_false(res.can_relay)
    end)

    it("an unknown remote address is remote to its own domain", function()
      local res = route(r, "someone@elsewhere.example")
      assert.equal("remote", res.kind)
      assert.equal("elsewhere.example", res.host)
      assert.is_false(res.can_relay)
      assert.is_false(res.known)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("the relay marker table of DESIGN section 4", function()
    local r, res
    before_each(function()
      r = load([[
Relay:<joe> = joe@otherdomain.example
NoRelay:otherdomain.example = otherdomain.example@relay.isp.example
]], { main_domain = "mydomain.example", local_domains = { "mydomain.example" } })
      res = route(r, "joe@mydomain.example")
    end)

    it("has one step per row", function()
      assert.equal(4, #res.steps)
    end)

    it("row 1: received joe@mydomain.example, marker no", function()
      assert.same({ op = "received", address = "joe@mydomain.example", marker = false }, res.steps[1])
    end)

    it("row 2: main domain cut-off gives joe, marker no", function()
      local s = res.steps[2]
      assert.equal("cut-off", s.op)
      assert.equal("joe", s.address)
      assert.is_false(s.marker)
    end)

    it("row 3: Relay:<joe> = joe@otherdomain.example, marker yes", function()
      local s = res.steps[3]
      assert.equal("Relay:<joe> = joe@otherdomain.example", s.record)
      assert.equal("joe@otherdomain.example", s.address)
      assert.is_nil(s.host)
      assert.is_true(s.marker)
    end)

    it("row 4: NoRelay:otherdomain.example = ... gives joe@otherdomain.example via relay.isp.example, marker kept", function()
      local s = res.steps[4]
      assert.equal("NoRelay:otherdomain.example = otherdomain.example@relay.isp.example", s.record)
      assert.equal("joe@otherdomain.example", s.address)
      assert.equal("relay.isp.example", s.host)
      assert.is_true(s.marker)
    end)

    it("row 5: relay decision: accepted for relay.isp.example, from anyone", function()
      assert.equal("remote", res.kind)
      assert.equal("joe@otherdomain.example", res.address)
      assert.equal("relay.isp.example", res.host)
      assert.is_true(res.can_relay)
    end)

    it("without the Relay: record the NoRelay: record alone gives no marker", function()
      local res2 = route(r, "ann@otherdomain.example")
      assert.equal("relay.isp.example", res2.host)
      assert.is_false(res2.can_relay)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("relay markers", function()
    local function marker(text, addr)
      return route(load(text), addr).can_relay
    end

    it("a record without prefix sets the marker", function()
      assert.is_true(marker("<joe> = joe@other.example", "joe@example.test"))
    end)

    it("Relay: sets the marker", function()
      assert.is_true(marker("Relay:<joe> = joe@other.example", "joe@example.test"))
    end)

    it("NoRelay: does not set the marker", function()
      assert.is_false(marker("NoRelay:<joe> = joe@other.example", "joe@example.test"))
    end)

    it("RelayAll: sets the marker", function()
      assert.is_true(marker("RelayAll:<joe> = joe@other.example", "joe@example.test"))
    end)

    it("NoRelay: does not clear a marker set before", function()
      assert.is_true(marker("Relay:<joe> = bob\nNoRelay:<bob> = bob@other.example", "joe@example.test"))
    end)

    it("a marker stays set through later unprefixed and Relay: records", function()
      assert.is_true(marker("<a> = b\nNoRelay:<b> = c\nNoRelay:<c> = c@other.example", "a@example.test"))
    end)

    for _, target in ipairs({ "u%h1.example@h2.example", "<@h2.example:u@h1.example>", "h1.example!u@h2.example",
                              '"u@h1.example"@h2.example', "h1.example!u" }) do
      it("Relay: does not set it when the result carries a route: " .. target, function()
        assert.is_false(marker("Relay:<joe> = " .. target, "joe@example.test"))
        assert.is_false(marker("<joe> = " .. target, "joe@example.test"))
      end)

      it("RelayAll: sets it even then: " .. target, function()
        assert.is_true(marker("RelayAll:<joe> = " .. target, "joe@example.test"))
      end)
    end

    it("a routed result does not clear a marker set before", function()
      assert.is_true(marker("Relay:<joe> = bob\nRelay:<bob> = u%h1.example@h2.example", "joe@example.test"))
    end)

    it("a domain record rewriting a routed address does not set it", function()
      local r = load("Relay:backup.example = backup.example@mx.backup.example")
      local res = route(r, "victim%elsewhere.example@backup.example")
      assert.equal("remote", res.kind)
      assert.equal("mx.backup.example", res.host)
      assert.is_false(res.can_relay)
      assert.is_true(route(r, "joe@backup.example").can_relay)
    end)

    it("Relay:<*> style wildcards do not pass a route on with the marker", function()
      local r = load("Relay:<*@backup.example> = *@mx.backup.example")
      assert.is_true(route(r, "joe@backup.example").can_relay)
      local res = route(r, "victim%elsewhere.example@backup.example")
      assert.equal("victim%elsewhere.example@mx.backup.example", res.address)
      assert.is_false(res.can_relay)
    end)

    it("special targets end routing with the marker state recorded", function()
      local res = route(load("NoRelay:<x> = error"), "x@example.test")
      assert.equal("error", res.kind)
      assert.is_false(res.can_relay)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("lookup order", function()
    it("exact address beats a wildcard written before it", function()
      local r = load("<j*> = wild\n<joe> = exact")
      assert.equal("exact@example.test", route(r, "joe@example.test").address)
      assert.equal("wild@example.test", route(r, "jim@example.test").address)
    end)

    it("wildcards are tried in file order", function()
      local r = load("<jo*> = first\n<j*> = second")
      assert.equal("first@example.test", route(r, "joe@example.test").address)
      assert.equal("second@example.test", route(r, "jim@example.test").address)
    end)

    it("address records beat domain records", function()
      local r = load("other.example = error\n<ok@other.example> = ok@new.example\n<x*@other.example> = x@new.example")
      assert.equal("ok@new.example", route(r, "ok@other.example").address)
      assert.equal("x@new.example", route(r, "xy@other.example").address)
      assert.equal("error", route(r, "z@other.example").kind)
    end)

    it("domain records rename a domain and route again", function()
      local r = load("old.example = new.example\nnew.example = new.example@mx.new.example")
      local res = route(r, "joe@old.example")
      assert.equal("joe@new.example", res.address)
      assert.equal("mx.new.example", res.host)
    end)

    it("a domain record renaming into the main domain is cut off", function()
      local r = load("old.example = example.test")
      local res = route(r, "joe@old.example")
      assert.equal("local", res.kind)
      assert.equal("joe@example.test", res.address)
      assert.equal("cut-off", res.steps[#res.steps].op)
    end)

    it("'d@host' via a local domain stays local", function()
      local r = load("corp.example.test = corp.example.test@backend.internal")
      local res = route(r, "ann@corp.example.test")
      assert.equal("local", res.kind)
      assert.equal("backend.internal", res.host)
    end)

    it("domain records match case-insensitively", function()
      local r = load("Spam.Example = error")
      assert.equal("error", route(r, "x@SPAM.example").kind)
    end)

    it("address records with a domain match case-insensitively", function()
      local r = load("<Sales@Corp.Example.Test> = joe@other.example")
      assert.equal("joe@other.example", route(r, "SALES@corp.EXAMPLE.test").address)
    end)

    it("an explicit main-domain key is the same as the bare key", function()
      local r = load("<joe@EXAMPLE.test> = bob\n<x*@example.test> = wild")
      assert.equal("bob@example.test", route(r, "joe@example.test").address)
      assert.equal("bob@example.test", route(r, "joe").address)
      assert.equal("wild@example.test", route(r, "xy@example.test").address)
    end)

    it("bare keys apply to the main domain only", function()
      local r = load("<joe> = bob\n<z*> = wild")
      assert.equal("joe@corp.example.test", route(r, "joe@corp.example.test").address)
      assert.equal("joe@other.example", route(r, "joe@other.example").address)
      assert.equal("wild@example.test", route(r, "zed@example.test").address)
    end)

    it("a bare target lands in the main domain", function()
      local res = route(load("<a@other.example> = bob"), "a@other.example")
      assert.equal("local", res.kind)
      assert.equal("bob@example.test", res.address)
    end)

    it("a target may be quoted", function()
      local res = route(load('<joe> = "joe smith"@other.example'), "joe@example.test")
      assert.equal('"joe smith"@other.example', res.address)
      assert.equal("joe smith", res.localpart)
    end)

    it("wildcards with several stars substitute in order", function()
      local r = load("<*.*@names.example> = *_*@example.test")
      assert.equal("john_smith@example.test", route(r, "john.smith@names.example").address)
    end)

    it("a substitution that gives a bad address is an error result", function()
      local r = load("<*@old.example> = x.*@example.test")
      -- the capture is the quoted text ".a", which cannot follow "x."
      local res = route(r, '".a"@old.example')
      assert.equal("error", res.kind)
      assert.matches("line 1", res.reason)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("special addresses", function()
    it("spamtrap@main-domain is the spamtrap itself", function()
      local res = route(load(""), "spamtrap@example.test")
      assert.equal("spamtrap", res.kind)
      assert.equal("spamtrap", route(load(""), "SpamTrap").kind)
    end)

    it("error and null in the main domain too", function()
      assert.equal("error", route(load(""), "error@example.test").kind)
      assert.equal("null", route(load(""), "null@example.test").kind)
    end)

    it("only in the main domain", function()
      assert.equal("local", route(load(""), "spamtrap@corp.example.test").kind)
      assert.equal("remote", route(load(""), "spamtrap@other.example").kind)
    end)

    it("an address record may map the special name first", function()
      assert.equal("local", route(load("<null> = bob"), "null@example.test").kind)
    end)

    it("special targets are case-insensitive", function()
      assert.equal("spamtrap", route(load("<x> = SpamTrap"), "x@example.test").kind)
      assert.equal("error", route(load("x.example = ERROR"), "a@x.example").kind)
    end)

    it("a record can route to spamtrap indirectly", function()
      assert.equal("spamtrap", route(load("<a> = b\n<b> = spamtrap"), "a@example.test").kind)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("loops", function()
    it("a two-record loop is a routing loop", function()
      local r = load("<a> = b\n<b> = a")
      local res, err = r:route("a@example.test")
      assert.is_nil(res)
      assert.equal("routing loop", err)
    end)

    it("a self-loop is a routing loop", function()
      local res, err = load("<a> = a@example.test"):route("a@example.test")
      assert.is_nil(res)
      assert.equal("routing loop", err)
    end)

    it("a domain rename loop is a routing loop", function()
      local res, err = load("a.example = b.example\nb.example = a.example"):route("x@a.example")
      assert.is_nil(res)
      assert.equal("routing loop", err)
    end)

    local function chain(n)
      local lines = {}
      for i = 1, n do lines[i] = ("<a%d> = a%d"):format(i, i + 1) end
      return table.concat(lines, "\n")
    end

    it("allows exactly 10 rewrites", function()
      local res = route(load(chain(10)), "a1@example.test")
      assert.equal("local", res.kind)
      assert.equal("a11@example.test", res.address)
    end)

    it("refuses an 11th rewrite", function()
      local res, err = load(chain(11)):route("a1@example.test")
      assert.is_nil(res)
      assert.equal("routing loop", err)
    end)

    it("counts a terminal record as a rewrite", function()
      assert.equal("error", route(load(chain(9) .. "\n<a10> = error"), "a1@example.test").kind)
      local res, err = load(chain(10) .. "\n<a11> = error"):route("a1@example.test")
      assert.is_nil(res)
      assert.equal("routing loop", err)
    end)

    it("MAX_REWRITES is 10", function()
      assert.equal(10, router.MAX_REWRITES)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("relay tricks are routed remote, never with the marker", function()
    -- A router with records that would hand out the marker to simple addresses.
    local TEXT = [[
Relay:partner.example = partner.example@mx.partner.example
<joe> = joe@other.example
Relay:<*@old.example> = *@partner.example
]]
    local r
    before_each(function() r = load(TEXT) end)

    local function remote(addr, host)
      local res = route(r, addr)
      assert.equal("remote", res.kind, addr .. " should be remote")
      assert.equal(host, res.host, addr .. " host")
      assert.is_false(res.can_relay, addr .. " must not be relayable")
      assert.is_true(res.routed, addr .. " should be flagged as routed")
      return res
    end

    it("percent hack through the main domain", function()
      local res = remote("victim%evil.example@example.test", "evil.example")
      assert.equal("victim@evil.example", res.address)
      assert.equal("route", res.steps[#res.steps].op)
    end)

    it("percent hack through another local domain", function()
      remote("victim%evil.example@corp.example.test", "evil.example")
    end)

    it("percent hack with several hops goes to the next one", function()
      remote("victim%evil.example%relay2.example@example.test", "relay2.example")
    end)

    it("percent hack pointing at a partner with a Relay: record", function()
      remote("victim%partner.example@example.test", "mx.partner.example")
    end)

    it("percent hack through a non-local domain stays with that domain", function()
      remote("victim%evil.example@elsewhere.example", "elsewhere.example")
    end)

    it("percent hack upper-cased", function()
      remote("VICTIM%EVIL.EXAMPLE@EXAMPLE.TEST", "evil.example")
    end)

    it("source route through us", function()
      local res = remote("<@example.test:victim@evil.example>", "evil.example")
      assert.equal("victim@evil.example", res.address)
    end)

    it("source route through several of our domains", function()
      remote("<@example.test,@corp.example.test:victim@evil.example>", "evil.example")
    end)

    it("source route whose first hop is elsewhere", function()
      remote("<@evil.example:victim@example.test>", "evil.example")
    end)

    it("source route to a partner with a Relay: record", function()
      remote("<@example.test:victim@partner.example>", "mx.partner.example")
    end)

    it("bang path with a domain", function()
      remote("evil.example!victim@example.test", "evil.example")
    end)

    it("bang path without a domain", function()
      remote("evil.example!victim", "evil.example")
    end)

    it("bang path with several hops goes to the first", function()
      remote("evil.example!far.example!victim@example.test", "evil.example")
    end)

    it("quoted local part holding '@'", function()
      local res = remote('"victim@evil.example"@example.test', "evil.example")
      assert.equal("victim@evil.example", res.address)
    end)

    it("quoted local part holding '%'", function()
      remote('"victim%evil.example"@example.test', "evil.example")
    end)

    it("quoted local part holding '!'", function()
      remote('"evil.example!victim"@example.test', "evil.example")
    end)

    it("IP literal hop", function()
      remote('"victim%[192.0.2.66]"@example.test', "[192.0.2.66]")
      remote('"victim%[IPv6:2001:db8::66]"@example.test', "[IPv6:2001:db8::66]")
    end)

    it("IP literal domain is remote and has no marker", function()
      local res = route(r, "victim@[192.0.2.66]")
      assert.equal("remote", res.kind)
      assert.equal("[192.0.2.66]", res.host)
      assert.is_false(res.can_relay)
    end)

    it("IP literal listed in local_domains is local", function()
      local r2 = load("", { main_domain = "example.test", local_domains = { "[192.0.2.1]" } })
      assert.equal("local", route(r2, "joe@[192.0.2.1]").kind)
      assert.equal("remote", route(r2, "joe@[192.0.2.2]").kind)
    end)

    it("a wildcard record passes the route on without the marker", function()
      local res = remote("victim%evil.example@old.example", "mx.partner.example")
      assert.equal("victim%evil.example@partner.example", res.address)
    end)

    it("a route to our own domain ends local, still flagged and unmarked", function()
      local res = route(r, "bob%example.test@example.test")
      assert.equal("local", res.kind)
      assert.equal("bob@example.test", res.address)
      assert.is_true(res.routed)
      assert.is_false(res.can_relay)
    end)

    it("a route that unwraps onto a marker-giving record still gets no marker", function()
      -- <joe> = joe@other.example would set the marker for plain joe
      assert.is_true(route(r, "joe@example.test").can_relay)
      local res = route(r, "joe%example.test@example.test")
      assert.equal("joe@other.example", res.address)
      assert.is_false(res.can_relay)
    end)

    it("RelayAll: still sets the marker on a routed address (admin's choice)", function()
      local r2 = load("RelayAll:<report-*> = report-*@reports.example")
      local res = route(r2, "report-x%evil.example@example.test")
      assert.equal("remote", res.kind)
      assert.equal("reports.example", res.host)
      assert.is_true(res.can_relay)
      assert.is_true(res.routed)
    end)

    it("a route with an invalid hop is an error", function()
      for _, addr in ipairs({ "victim%-bad.example@example.test", "!victim@example.test",
                              "evil.example!@example.test", '"victim%evil.example."@example.test',
                              '"victim@"@example.test' }) do
        local res = route(r, addr)
        assert.equal("error", res.kind, addr)
        assert.is_false(res.can_relay, addr)
        assert.matches("invalid route", res.reason)
      end
    end)

    it("trailing dots never reach the Router", function()
      local res, err = r:route("joe@example.test.")
      assert.is_nil(res)
      assert.matches("trailing dot", err)
      res, err = r:route("joe@partner.example.")
      assert.is_nil(res)
      assert.matches("trailing dot", err)
    end)

    it("upper case cannot dodge local domains or records", function()
      local res = route(r, "JOE@EXAMPLE.TEST")
      assert.equal("joe@other.example", res.address)
      res = route(r, "Ann@Corp.Example.Test")
      assert.equal("local", res.kind)
      assert.equal("ann@corp.example.test", res.address:lower())
    end)

    it("needless quotes cannot dodge records", function()
      local r2 = load("<misterX> = spamtrap\n<promo*@spam.example> = error")
      assert.equal("spamtrap", route(r2, '"misterX"@example.test').kind)
      assert.equal("error", route(r2, '"promo1"@spam.example').kind)
    end)

    it("the null path is not routed", function()
      local res, err = r:route("<>")
      assert.is_nil(res)
      assert.matches("null", err)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("route() input", function()
    local r
    before_each(function() r = load(DESIGN_EXAMPLE) end)

    it("accepts angle brackets", function()
      assert.equal("jsmith@example.test", route(r, "<joe@example.test>").address)
    end)

    it("accepts a parsed address", function()
      local a = assert(address.parse("joe@example.test"))
      assert.equal("jsmith@example.test", route(r, a).address)
    end)

    it("re-parses a table that only has raw", function()
      assert.equal("jsmith@example.test", route(r, { raw = "joe@example.test" }).address)
    end)

    it("distrusts a hand-built table's simple flag", function()
      local res = route(r, { localpart = "v%evil.example", domain = "example.test", simple = true })
      assert.equal("remote", res.kind)
      assert.equal("evil.example", res.host)
      assert.is_false(res.can_relay)
    end)

    it("returns nil, err for an unparsable address", function()
      local res, err = r:route("not an address")
      assert.is_nil(res)
      assert.is_string(err)
      res, err = r:route(42)
      assert.is_nil(res)
      assert.is_string(err)
    end)

    it("works without a main domain", function()
      local r2 = load("<joe> = bob", { local_domains = { "example.test" } })
      assert.equal("local", route(r2, "joe@example.test").kind)
      assert.equal("joe@example.test", route(r2, "joe@example.test").address)
      assert.equal("bob", route(r2, "joe").address)
    end)

    it("normalizes configured domains", function()
      local r2 = load("", { main_domain = "Example.TEST.", local_domains = { "Corp.Example.Test" } })
      assert.equal("local", route(r2, "a@example.test").kind)
      assert.equal("local", route(r2, "a@corp.example.test").kind)
    end)
  end)
end)
