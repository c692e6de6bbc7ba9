-- Unit specs for the stock policies router, relay and return_path, run
-- without the daemon: the real moat module (lua/moat/init.lua) over a stub
-- "moat.core" with canned settings, tables, address lists and DNS answers.

-- dns: { ["name TYPE"] = { "answer", ... } | "nxdomain" | "nodata" | "servfail" | "timeout" }
-- (anything not listed is nxdomain).  moat.test does the stub core; the
-- hooks table and the chain (env.logs, env.queries) are returned.
local T = require "moat.test"

local function load_policy(name, opts)
  opts = opts or {}
  local env, err = T.load {
    root = ".", policies = { name }, tables = opts.tables, table_dir = "/etc/moat", dns = opts.dns,
    lists = opts.lists or { client_ips = { "127.0.0.1" } },
    settings = opts.settings or { main_domain = "example.test", local_domains = { "example.test", "corp.example.test" } },
  }
  if not env then return nil, err end
  return env.hooks[1].hooks, env
end

local function session(env, fields)
  local s = { id = "t1", ip = "192.0.2.50", status = "other", vars = {}, rcpts = {} }
  for k, v in pairs(fields or {}) do s[k] = v end
  function s.log(_, ...) env.logs[#env.logs + 1] = table.concat({ ... }, " ") end
  return s
end

-- A parsed-by-the-core address table, as the hooks receive it.
local function addr(raw)
  local lp, d = raw:match("^(.*)@([^@]*)$")
  return { raw = raw, localpart = raw ~= "" and (lp or raw) or nil, domain = d }
end

-- The core's default route (src/smtp.c default_route), for specs without the router.
local function default_route(raw)
  local lp, d = raw:match("^(.*)@([^@]*)$")
  local plain = not raw:find("^@") and lp and not lp:find('[%%!@"]')
  if not d then return { kind = "local", address = raw, can_relay = false } end
  local loc = plain and (d:lower() == "example.test" or d:lower() == "corp.example.test")
  return { kind = loc and "local" or "remote", address = raw, host = not loc and d or nil, can_relay = false }
end

local function rcpt(raw) return { addr = addr(raw), route = default_route(raw) } end

local ROUTER = [[
<joe> = jsmith
<sales@corp.example.test> = joe
<promo*@spam.example> = error
spam.example = error
<*@old.example> = *@example.test
<misterX> = spamtrap
<bounce-*> = null
Relay:<fwd> = fwd@other.example
NoRelay:<norelay> = norelay@other.example
<loop1> = loop2
<loop2> = loop1
Relay:<joe2> = joe2@otherdomain.example
NoRelay:otherdomain.example = otherdomain.example@relay.isp.example
RelayAll:<report-*> = report-*%x.example@reports.example
Relay:<tricky> = tricky%x.example@reports.example
partner.example = partner.example@mx.partner.example
]]

describe("policies/router", function()
  local P, env
  before_each(function() P, env = assert(load_policy("router", { tables = { router = ROUTER } })) end)

  it("fails loading with file:line when the table is broken", function()
    local hooks, err = load_policy("router", { tables = { router = "<joe> = jsmith\n<bad = x\n" } })
    assert.is_nil(hooks)
    assert.matches("^/etc/moat/router:2: ", err)
  end)

  it("without a router table is the identity router over main_domain/local_domains", function()
    local Q, e = assert(load_policy("router", {}))
    local r = rcpt("joe@example.test")
    assert.is_nil(Q.rcpt(session(e), r))
    assert.same({ kind = "local", address = "joe@example.test", can_relay = false }, r.route)
    r = rcpt("u@other.example")
    assert.is_nil(Q.rcpt(session(e), r))
    assert.same({ kind = "remote", address = "u@other.example", host = "other.example", can_relay = false }, r.route)
  end)

  it("routes an alias and sets the route the core stores", function()
    local r = rcpt("joe@example.test")
    assert.is_nil(P.rcpt(session(env), r))
    assert.same({ kind = "local", address = "jsmith@example.test", can_relay = true }, r.route)
  end)

  it("substitutes wildcards", function()
    local r = rcpt("Anna@old.example")
    assert.is_nil(P.rcpt(session(env), r))
    assert.equal("local", r.route.kind)
    assert.equal("Anna@example.test", r.route.address)
  end)

  it("rejects error routes at RCPT with 550 5.1.1", function()
    for _, a in ipairs { "promo1@spam.example", "anyone@spam.example", "error@example.test" } do
      local v = P.rcpt(session(env), rcpt(a))
      assert.equal("reject", v.action, a)
      assert.equal(550, v.code)
      assert.equal("5.1.1 <" .. a .. ">: recipient address rejected", v.text)
    end
  end)

  it("rejects error routes at MAIL FROM with 550 5.1.0 and keeps no route", function()
    local s = session(env)
    s.vars.from_route = { raw = "stale" }
    local v = P.mail_from(s, addr("promo7@spam.example"))
    assert.equal(550, v.code)
    assert.equal("5.1.0 <promo7@spam.example>: sender address rejected", v.text)
    assert.is_nil(s.vars.from_route)
  end)

  it("skips <> and stores the Return-Path route for return_path", function()
    local s = session(env)
    assert.is_nil(P.mail_from(s, addr("")))
    assert.is_nil(s.vars.from_route)
    assert.is_nil(P.mail_from(s, addr("sales@corp.example.test")))
    assert.same({ raw = "sales@corp.example.test", kind = "local", address = "jsmith@example.test",
                  domain = "example.test", known = true, can_relay = true, routed = false },
                s.vars.from_route)
    assert.is_nil(P.mail_from(s, addr("x@unknown.example")))
    assert.equal("remote", s.vars.from_route.kind)
    assert.is_false(s.vars.from_route.known)
  end)

  it("discards null routes and keeps spamtrap routes going", function()
    local r = rcpt("bounce-42@example.test")
    local v = P.rcpt(session(env), r)
    assert.equal("discard", v.action)
    assert.equal("null", r.route.kind)
    r = rcpt("misterX@example.test")
    assert.is_nil(P.rcpt(session(env), r))
    assert.equal("spamtrap", r.route.kind)
  end)

  it("answers a loop with 451 4.4.6 and logs it", function()
    local v = P.rcpt(session(env), rcpt("loop1@example.test"))
    assert.equal("tempfail", v.action)
    assert.equal(451, v.code)
    assert.equal("4.4.6 <loop1@example.test>: routing loop", v.text)
    assert.matches("routing loop", env.logs[#env.logs])
    v = P.mail_from(session(env), addr("loop2@example.test"))
    assert.equal(451, v.code)
  end)

  it("records the via-host of a domain record", function()
    local r = rcpt("bob@partner.example")
    assert.is_nil(P.rcpt(session(env), r))
    assert.same({ kind = "remote", address = "bob@partner.example", host = "mx.partner.example", can_relay = true },
                r.route)
  end)

  it("follows the seed's relay-marker table", function()
    local r = rcpt("joe2@example.test")
    P.rcpt(session(env), r)
    assert.same({ kind = "remote", address = "joe2@otherdomain.example", host = "relay.isp.example",
                  can_relay = true }, r.route)
    r = rcpt("norelay@example.test")
    P.rcpt(session(env), r)
    assert.is_false(r.route.can_relay)
    r = rcpt("tricky@example.test")
    P.rcpt(session(env), r)
    assert.is_false(r.route.can_relay)      -- Relay: with a routed result
    r = rcpt("report-7@example.test")
    P.rcpt(session(env), r)
    assert.is_true(r.route.can_relay)       -- RelayAll: even then
    assert.equal("remote", r.route.kind)
  end)

  it("unwraps routes addressed to us and never marks them", function()
    for _, a in ipairs { "u%other.example@example.test", "@example.test:u@other.example",
                         "other.example!u@example.test", '"u@other.example"@example.test',
                         "u%other.example%example.test@example.test" } do
      local r = rcpt(a)
      assert.is_nil(P.rcpt(session(env), r), a)
      assert.equal("remote", r.route.kind, a)
      assert.is_false(r.route.can_relay, a)
    end
  end)

  it("refuses addresses its parser refuses (553), so nothing dodges a record", function()
    local v = P.rcpt(session(env), rcpt("promo1@spam.example."))
    assert.equal(553, v.code)
    assert.matches("^5%.1%.3 ", v.text)
    v = P.mail_from(session(env), addr("promo1@spam.example."))
    assert.equal(553, v.code)
    assert.matches("^5%.1%.7 ", v.text)
  end)
end)

describe("policies/relay", function()
  local P, env
  before_each(function() P, env = assert(load_policy("relay")) end)

  it("lets local, null and spamtrap routes through for anyone", function()
    for _, kind in ipairs { "local", "null", "spamtrap" } do
      assert.is_nil(P.rcpt(session(env), { addr = addr("x@example.test"), route = { kind = kind } }))
    end
  end)

  it("refuses a remote route from a stranger", function()
    local v = P.rcpt(session(env), rcpt("u@other.example"))
    assert.equal("reject", v.action)
    assert.equal(550, v.code)
    assert.equal("5.7.1 <u@other.example>: relaying denied", v.text)
  end)

  it("refuses unknown route kinds and error routes", function()
    assert.equal(550, P.rcpt(session(env), { addr = addr("a@b.example"), route = { kind = "weird" } }).code)
    assert.equal(550, P.rcpt(session(env), { addr = addr("a@b.example"), route = {} }).code)
    local v = P.rcpt(session(env, { status = "client" }), { addr = addr("a@b.example"), route = { kind = "error" } })
    assert.equal("5.1.1 <a@b.example>: recipient address rejected", v.text)
  end)

  it("accepts clients, trusted addresses, relay users and marked addresses", function()
    assert.is_nil(P.rcpt(session(env, { status = "client" }), rcpt("u@other.example")))
    assert.is_nil(P.rcpt(session(env, { status = "trusted" }), rcpt("u@other.example")))
    assert.is_nil(P.rcpt(session(env, { user = "joe", relay_allowed = true }), rcpt("u@other.example")))
    local r = rcpt("u@other.example")
    r.route.can_relay = true
    assert.is_nil(P.rcpt(session(env), r))
  end)

  it("does not relay for a user without relay, a blacklisted client-less address, or a truthy non-true marker", function()
    assert.equal(550, P.rcpt(session(env, { user = "joe", relay_allowed = false }), rcpt("u@other.example")).code)
    assert.equal(550, P.rcpt(session(env, { relay_allowed = true }), rcpt("u@other.example")).code)
    assert.equal(550, P.rcpt(session(env, { status = "blacklisted" }), rcpt("u@other.example")).code)
    local r = rcpt("u@other.example")
    r.route.can_relay = "yes"
    assert.equal(550, P.rcpt(session(env), r).code)
  end)

  it("is safe on the core's default routes (no router policy)", function()
    for _, a in ipairs { "u%other.example@example.test", "@example.test:u@other.example",
                         "other.example!u@example.test", '"u@other.example"@example.test',
                         "u@[192.0.2.1]", "u@other.example." } do
      local v = P.rcpt(session(env), rcpt(a))
      assert.equal(550, v and v.code, a)
    end
    assert.is_nil(P.rcpt(session(env), rcpt("joe@EXAMPLE.test")))
  end)

  it("refuses a roaming-disabled login from a non-client address", function()
    assert.is_nil(P.auth(session(env, { status = "client", roaming_allowed = false }), "joe", true))
    assert.is_nil(P.auth(session(env), "joe", true))
    assert.is_nil(P.auth(session(env, { roaming_allowed = false }), "joe", false))
    local v = P.auth(session(env, { roaming_allowed = false }), "joe", true)
    assert.equal(535, v.code)
  end)
end)

describe("policies/return_path", function()
  local VERIFY = { main_domain = "example.test", local_domains = { "example.test", "corp.example.test" },
                   protection = { verify_helo_and_return_path = true } }
  local DNS = {
    ["good.example MX"] = { { host = "mx1.good.example", pref = 10 } },
    ["mx1.good.example A"] = { "192.0.2.1" },
    ["mx1.good.example AAAA"] = "nodata",
    ["fake.example MX"] = { { host = "nohost.fake.example", pref = 10 }, { host = "nohost2.fake.example", pref = 20 } },
    ["fake.example A"] = { "192.0.2.9" },
    ["aonly.example MX"] = "nodata",
    ["aonly.example A"] = { "192.0.2.5" },
    ["aonly.example AAAA"] = "nodata",
    ["v6only.example MX"] = "nodata",
    ["v6only.example A"] = "nodata",
    ["v6only.example AAAA"] = { "2001:db8::5" },
    ["v6mx.example MX"] = { { host = "mx.v6mx.example", pref = 5 } },
    ["mx.v6mx.example A"] = "nodata",
    ["mx.v6mx.example AAAA"] = { "2001:db8::6" },
    ["broken.example MX"] = "servfail",
    ["slow.example MX"] = "timeout",
    ["halfmx.example MX"] = { { host = "mx.halfmx.example", pref = 10 } },
    ["mx.halfmx.example A"] = "timeout",
    ["mx.halfmx.example AAAA"] = "nodata",
    ["halfa.example MX"] = "nodata",
    ["halfa.example A"] = "servfail",
    ["halfa.example AAAA"] = "nodata",
    ["nullmx.example MX"] = { { host = "", pref = 0 } },
    ["xn--bcher-kva.example MX"] = { { host = "mx1.good.example", pref = 10 } },
  }
  local function rp(opts)
    opts = opts or {}
    return assert(load_policy("return_path", {
      settings = opts.settings or VERIFY, dns = DNS,
      tables = { router = opts.router or "<*@known.example> = *@example.test\nspam.example = error\n" },
      lists = { client_ips = { ["127.0.0.1"] = true, ["192.0.2.1"] = true, ["2001:db8::1"] = true } },
    }))
  end

  local function verdict(P, env, raw, fields)
    return P.mail_from(session(env, fields), addr(raw))
  end

  it("accepts <>", function()
    local P, env = rp()
    assert.is_nil(verdict(P, env, ""))
    assert.same({}, env.queries)
  end)

  it("rejects a Return-Path without a domain with 550 5.1.7", function()
    local P, env = rp({ settings = { main_domain = "example.test" } })
    local v = verdict(P, env, "postmaster")
    assert.equal(550, v.code)
    assert.equal("5.1.7 <postmaster>: sender address has no domain", v.text)
  end)

  it("rejects a Return-Path routed to error, even without the verify option", function()
    local P, env = rp({ settings = { main_domain = "example.test" } })
    local v = verdict(P, env, "x@spam.example")
    assert.equal(550, v.code)
    assert.equal("5.1.0 <x@spam.example>: sender address rejected", v.text)
  end)

  it("makes no DNS query without the verify option", function()
    local P, env = rp({ settings = { main_domain = "example.test" } })
    assert.is_nil(verdict(P, env, "x@nowhere.example"))
    assert.is_nil(verdict(P, env, "x@[203.0.113.1]"))
    assert.same({}, env.queries)
  end)

  it("rejects an address literal not in client_ips, accepts one that is", function()
    local P, env = rp()
    local v = verdict(P, env, "u@[203.0.113.1]", { status = "client" })
    assert.equal(550, v.code)
    assert.matches("^5%.7%.1 ", v.text)
    assert.is_nil(verdict(P, env, "u@[192.0.2.1]"))
    assert.is_nil(verdict(P, env, "u@[IPv6:2001:db8::1]"))
    assert.equal(550, verdict(P, env, "u@[IPv6:2001:db8::2]").code)
    assert.same({}, env.queries)
  end)

  it("accepts local and Router-known Return-Paths without DNS", function()
    local P, env = rp()
    assert.is_nil(verdict(P, env, "anyone@example.test"))
    assert.is_nil(verdict(P, env, "anyone@corp.example.test"))
    assert.is_nil(verdict(P, env, "someone@known.example"))
    assert.same({}, env.queries)
  end)

  it("uses the router policy's route for this very address", function()
    local P, env = rp()
    local s = session(env)
    s.vars.from_route = { raw = "x@nowhere.example", kind = "remote", known = true, domain = "nowhere.example" }
    assert.is_nil(P.mail_from(s, addr("x@nowhere.example")))
    assert.same({}, env.queries)
    s.vars.from_route.raw = "other@nowhere.example"    -- stale: not used
    assert.equal(550, P.mail_from(s, addr("x@nowhere.example")).code)
  end)

  it("skips the DNS checks for client and trusted addresses", function()
    local P, env = rp()
    assert.is_nil(verdict(P, env, "x@nowhere.example", { status = "client" }))
    assert.is_nil(verdict(P, env, "x@nowhere.example", { status = "trusted" }))
    assert.same({}, env.queries)
  end)

  it("accepts a domain whose MX has an address, asking MX, A and AAAA together", function()
    local P, env = rp()
    assert.is_nil(verdict(P, env, "u@good.example"))
    assert.same({ "MX good.example", "A good.example", "AAAA good.example",
                  "A mx1.good.example", "AAAA mx1.good.example" }, env.queries)
    assert.is_nil(verdict(P, env, "u@v6mx.example"))
  end)

  it("accepts a domain without MX but with A or AAAA", function()
    local P, env = rp()
    assert.is_nil(verdict(P, env, "u@aonly.example"))
    assert.is_nil(verdict(P, env, "u@v6only.example"))
  end)

  it("rejects a faked domain (MX hosts without addresses) with 550 5.1.8", function()
    local P, env = rp()
    local v = verdict(P, env, "u@fake.example")
    assert.equal(550, v.code)
    assert.equal("5.1.8 <u@fake.example>: sender domain fake.example has no valid mail exchanger (faked domain)", v.text)
  end)

  it("rejects an unregistered domain with 550 5.1.8", function()
    local P, env = rp()
    local v = verdict(P, env, "u@nowhere.example")
    assert.equal(550, v.code)
    assert.equal("5.1.8 <u@nowhere.example>: sender domain nowhere.example is not registered (no MX or A record)", v.text)
  end)

  it("rejects a null MX with 550 5.7.27", function()
    local P, env = rp()
    local v = verdict(P, env, "u@nullmx.example")
    assert.equal(550, v.code)
    assert.matches("^5%.7%.27 ", v.text)
  end)

  it("answers 451 4.4.3 when DNS fails", function()
    local P, env = rp()
    for _, d in ipairs { "broken.example", "slow.example", "halfmx.example", "halfa.example" } do
      local v = verdict(P, env, "u@" .. d)
      assert.equal("tempfail", v.action, d)
      assert.equal(451, v.code, d)
      assert.matches("^4%.4%.3 <u@" .. d:gsub("%p", "%%%0") .. ">: cannot verify", v.text)
    end
  end)

  it("verifies the domain a route addressed to us leads to", function()
    local P, env = rp()
    assert.equal(550, verdict(P, env, "u%nowhere.example@example.test").code)
    assert.is_nil(verdict(P, env, "u%good.example@example.test"))
  end)

  it("looks up non-ASCII domains in punycode", function()
    local P, env = rp()
    assert.is_nil(verdict(P, env, "u@bücher.example"))
    assert.equal("MX xn--bcher-kva.example", env.queries[1])
  end)

  describe("HELO", function()
    it("checks nothing without the option", function()
      local P, env = rp({ settings = { main_domain = "example.test" } })
      assert.is_nil(P.helo(session(env), "bad_name!"))
      assert.is_nil(P.helo(session(env), "[203.0.113.5]"))
    end)

    it("rejects bad syntax with 501 5.5.4", function()
      local P, env = rp()
      for _, n in ipairs { "bad_name", "a..b", "-x.example", "[300.1.1.1]", "[192.0.2.1", "host.example." } do
        local v = P.helo(session(env), n)
        assert.equal(501, v and v.code, n)
        assert.matches("^5%.5%.4 ", v.text)
      end
      assert.is_nil(P.helo(session(env), "mail.example.org"))
      assert.is_nil(P.helo(session(env), "localhost"))
    end)

    it("accepts an address literal only of the client's own address", function()
      local P, env = rp()
      assert.is_nil(P.helo(session(env, { ip = "192.0.2.50" }), "[192.0.2.50]"))
      assert.is_nil(P.helo(session(env, { ip = "::ffff:192.0.2.50" }), "[192.0.2.50]"))
      assert.is_nil(P.helo(session(env, { ip = "2001:db8::50" }), "[IPv6:2001:DB8:0:0:0:0:0:50]"))
      local v = P.helo(session(env, { ip = "192.0.2.50" }), "[192.0.2.51]")
      assert.equal(550, v.code)
      assert.matches("^5%.7%.1 ", v.text)
      assert.equal(550, P.helo(session(env, { ip = "2001:db8::50" }), "[IPv6:2001:db8::51]").code)
      assert.is_nil(P.helo(session(env, { ip = "127.0.0.1", status = "client" }), "[192.0.2.51]"))
    end)
  end)
end)
