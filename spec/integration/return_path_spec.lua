-- The return_path policy over real SMTP with a real DNS server (dnsmasq via
-- spec/helpers/dns.lua): every rule of DESIGN §6 "Return-Path" and the HELO
-- check, with the dnsmasq query log as proof of which lookups were made.
local H = require "helpers.moat"
local DNS = require "helpers.dns"

local STRANGER = "127.0.0.9"

local ROUTER = [[
<*@known.example> = *@example.test
spam.example = error
<promo*@ads.example> = error
]]

local RECORDS = {
  a = { ["mx1.good.example"] = "192.0.2.1", ["aonly.example"] = "192.0.2.5" },
  aaaa = { ["v6only.example"] = "2001:db8::5", ["mx.v6mx.example"] = "2001:db8::6" },
  mx = {
    ["good.example"] = "mx1.good.example",
    ["fake.example"] = { { "nohost.fake.example", 10 }, { "nohost2.fake.example", 20 } },
    ["v6mx.example"] = "mx.v6mx.example",
  },
}

local function config(dns_server, extra)
  return ('dns = { servers = { "%s" }, timeout_ms = 200, tries = 1 }\n'):format(dns_server)
    .. (extra or "protection = { verify_helo_and_return_path = true }\n")
end

local function mail_from(srv, from, opts)
  opts = opts or {}
  return H.mail_from(srv.port, from, { source = opts.source or STRANGER, helo = opts.helo })
end

describe("return_path policy (integration)", function()
  local dns, srv

  setup(function()
    dns = DNS.start(RECORDS)
    srv = H.start { tag = "return-path", tables = { router = ROUTER },
                    policies = { "router", "return_path", "relay" }, extra = config(dns.server) }
  end)
  teardown(function()
    H.stop_all()
    DNS.stop_all()
  end)
  before_each(function() dns:clear() end)

  it("accepts the null Return-Path <> without DNS", function()
    assert.equal(250, (mail_from(srv, "")))
    assert.same({}, dns:queries())
  end)

  it("rejects a Return-Path without a domain with 550 5.1.7", function()
    local code, text = mail_from(srv, "postmaster")
    assert.equal(550, code)
    assert.equal("550 5.1.7 <postmaster>: sender address has no domain", text)
  end)

  it("rejects a Return-Path routed to error with 550", function()
    local code, text = mail_from(srv, "x@spam.example")
    assert.equal(550, code)
    assert.equal("550 5.1.0 <x@spam.example>: sender address rejected", text)
    assert.equal(550, (mail_from(srv, "promo1@ads.example", { source = "127.0.0.1" })))
    assert.same({}, dns:queries())
  end)

  it("rejects an address-literal domain not in client_ips with 550 5.7.1", function()
    local code, text = mail_from(srv, "u@[192.0.2.1]")
    assert.equal(550, code)
    assert.matches("^550 5%.7%.1 <u@%[192%.0%.2%.1%]>", text)
    assert.equal(550, (mail_from(srv, "u@[192.0.2.1]", { source = "127.0.0.1" })))   -- from a client too
    assert.equal(250, (mail_from(srv, "u@[127.0.0.1]")))                             -- a client address
    assert.same({}, dns:queries())
  end)

  it("accepts a local or Router-known Return-Path from a stranger without any DNS query", function()
    assert.equal(250, (mail_from(srv, "joe@example.test")))
    assert.equal(250, (mail_from(srv, "Joe@Corp.Example.Test")))
    assert.equal(250, (mail_from(srv, "anyone@known.example")))
    assert.same({}, dns:queries())
    -- the log does record queries: a stranger's unknown domain is looked up
    assert.equal(250, (mail_from(srv, "u@good.example")))
    assert.equal(1, dns:asked("good.example", "MX"))
    assert.equal(0, dns:asked("known.example"))
    assert.equal(0, dns:asked("example.test"))
    assert.equal(0, dns:asked("corp.example.test"))
  end)

  it("accepts a domain whose MX host has an address (MX, A, AAAA asked in parallel)", function()
    assert.equal(250, (mail_from(srv, "u@good.example")))
    assert.equal(1, dns:asked("good.example", "MX"))
    assert.equal(1, dns:asked("good.example", "A"))
    assert.equal(1, dns:asked("good.example", "AAAA"))
    assert.equal(1, dns:asked("mx1.good.example", "A"))
    assert.equal(250, (mail_from(srv, "u@v6mx.example")))
  end)

  it("verifies a domain once per session: the next transactions from it ask no DNS; a new session asks again", function()
    local function session(froms)
      local c = H.client(srv.port, { source = STRANGER })
      assert.equal(250, (c:ehlo("host.example")))
      local codes = {}
      for _, f in ipairs(froms) do
        codes[#codes + 1] = (c:cmd("MAIL FROM:<" .. f .. ">"))
        c:cmd("RSET")
      end
      c:cmd("QUIT")
      c:close()
      return codes
    end
    assert.same({ 250, 250, 250, 550, 550 },
                session { "a@good.example", "b@GOOD.example", "c@good.example", "x@fake.example", "y@fake.example" })
    assert.equal(1, dns:asked("good.example", "MX"), "good.example verified once in the session")
    assert.equal(2, dns:asked("fake.example", "MX"), "a refusal is not remembered")
    assert.same({ 250 }, session { "d@good.example" })
    assert.equal(2, dns:asked("good.example", "MX"), "a new session verifies again")
  end)

  it("accepts a domain without MX that has an A or AAAA record", function()
    assert.equal(250, (mail_from(srv, "u@aonly.example")))
    assert.equal(250, (mail_from(srv, "u@v6only.example")))
  end)

  it("rejects a faked domain (MX hosts without A/AAAA) with 550 5.1.8", function()
    local code, text = mail_from(srv, "u@fake.example")
    assert.equal(550, code)
    assert.equal("550 5.1.8 <u@fake.example>: sender domain fake.example has no valid mail exchanger (faked domain)",
                 text)
    assert.equal(1, dns:asked("nohost.fake.example", "A"))
    assert.equal(1, dns:asked("nohost2.fake.example", "AAAA"))
  end)

  it("rejects an unregistered domain with 550 5.1.8", function()
    local code, text = mail_from(srv, "u@nowhere.example")
    assert.equal(550, code)
    assert.equal("550 5.1.8 <u@nowhere.example>: sender domain nowhere.example is not registered (no MX or A record)",
                 text)
  end)

  it("verifies the domain a route through us leads to", function()
    assert.equal(550, (mail_from(srv, "u%nowhere.example@example.test")))
    assert.equal(1, dns:asked("nowhere.example", "MX"))
  end)

  it("does no DNS check for a client address", function()
    assert.equal(250, (mail_from(srv, "u@nowhere.example", { source = "127.0.0.1" })))
    assert.equal(250, (mail_from(srv, "u@fake.example", { source = "127.0.0.1" })))
    assert.same({}, dns:queries())
  end)

  describe("HELO", function()
    local function ehlo(name, source)
      local c = H.client(srv.port, { source = source or STRANGER })
      local code, text = c:ehlo(name)
      c:close()
      return code, text
    end

    it("rejects a name that is neither a domain nor an address literal with 501 5.5.4", function()
      for _, n in ipairs { "bad_name", "a..example", "-x.example", "[300.1.1.1]", "[1.2.3]" } do
        local code, text = ehlo(n)
        assert.equal(501, code, n)
        assert.matches("^501 5%.5%.4 ", text)
      end
      assert.equal(250, (ehlo("mail.example.org")))
    end)

    it("accepts an address literal only of the client's own address", function()
      assert.equal(250, (ehlo("[127.0.0.9]")))
      local code, text = ehlo("[127.0.0.10]")
      assert.equal(550, code)
      assert.matches("^550 5%.7%.1 ", text)
      assert.equal(250, (ehlo("[192.0.2.99]", "127.0.0.1")))   -- a client may say anything
    end)
  end)
end)

describe("return_path without the router policy", function()
  local dns, srv
  setup(function()
    dns = DNS.start(RECORDS)
    srv = H.start { tag = "return-path-alone", tables = { router = ROUTER },
                    policies = { "return_path", "relay" }, extra = config(dns.server) }
  end)
  teardown(function()
    H.stop_all()
    DNS.stop_all()
  end)

  it("still rejects error routes and skips DNS for known addresses", function()
    local code, text = mail_from(srv, "x@spam.example")
    assert.equal(550, code)
    assert.equal("550 5.1.0 <x@spam.example>: sender address rejected", text)
    assert.equal(250, (mail_from(srv, "a@known.example")))
    assert.equal(550, (mail_from(srv, "u@fake.example")))
    assert.equal(0, dns:asked("known.example"))
    assert.equal(1, dns:asked("fake.example", "MX"))
  end)
end)

describe("return_path without verify_helo_and_return_path", function()
  local dns, srv
  setup(function()
    dns = DNS.start(RECORDS)
    srv = H.start { tag = "return-path-noverify", tables = { router = ROUTER },
                    policies = { "router", "return_path", "relay" }, extra = config(dns.server, "") }
  end)
  teardown(function()
    H.stop_all()
    DNS.stop_all()
  end)

  it("keeps the unconditional rules and makes no DNS query", function()
    assert.equal(550, (mail_from(srv, "postmaster")))
    assert.equal(550, (mail_from(srv, "x@spam.example")))
    assert.equal(250, (mail_from(srv, "u@nowhere.example")))
    assert.equal(250, (mail_from(srv, "u@fake.example")))
    assert.equal(250, (mail_from(srv, "u@[192.0.2.1]")))
    assert.equal(250, (H.client(srv.port, { source = STRANGER }):ehlo("bad_name")))
    assert.same({}, dns:queries())
  end)
end)

describe("return_path when DNS is down", function()
  after_each(function()
    H.stop_all()
    DNS.stop_all()
  end)

  it("answers 451 4.4.3 when the DNS server never answers", function()
    local hole = DNS.black_hole()
    local srv = H.start { tag = "return-path-hole", policies = { "router", "return_path", "relay" },
                          extra = config(hole.server) }
    local t0 = require("socket").gettime()
    local code, text = mail_from(srv, "u@good.example")
    assert.equal(451, code)
    assert.matches("^451 4%.4%.3 <u@good%.example>: cannot verify the sender domain good%.example", text)
    assert.is_true(require("socket").gettime() - t0 < 5)
    assert.is_true(hole:received() >= 1)
    -- local addresses need no DNS and still pass
    assert.equal(250, (mail_from(srv, "joe@example.test")))
  end)

  it("answers 451 4.4.3 when the DNS server's port is closed", function()
    local dead = DNS.free_udp_port()
    local srv = H.start { tag = "return-path-dead", policies = { "router", "return_path", "relay" },
                          extra = config("127.0.0.1:" .. dead) }
    local code, text = mail_from(srv, "u@good.example")
    assert.equal(451, code)
    assert.matches("^451 4%.4%.3 ", text)
  end)
end)
