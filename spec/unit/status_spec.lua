-- Unit: lua/moat/status.lua, the address status decision (seed 002
-- "Blacklisting Offenders" ... "Checking Network Address Status", DESIGN §6),
-- with a stubbed `moat` module: lists, DNS answers, temporary blocks and
-- settings are set per test, and every DNS query the module makes is recorded.
local ZONE1, ZONE2 = "bl.example.test", "bl2.example.test"

local PROTECTION = {
  rbl_servers = { ZONE1, ZONE2 },
  blacklist_by_dns_name = { "*.dynamic.example", "(host name is unknown)" },
  whitehole_by_dns_name = { "*.partner.example" },
}

local function reverse(ip, zone)
  local a, b, c, d = tostring(ip):match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then error("moat.dns.reverse: '" .. tostring(ip) .. "' is not an IP address") end
  return ("%s.%s.%s.%s.%s"):format(d, c, b, a, (zone and zone ~= "") and zone or "in-addr.arpa")
end

-- world = { lists = { client_ips = { ip = true } ... }, trusted = { ip = true },
--   blocked = { ip = seconds }, local_ips = { ip = true },
--   dns = { ["name TYPE"] = { "answer" ... } | "error name" },   -- unknown -> nxdomain
--   protection = {...}, policies = {...} }
-- Returns the freshly loaded module and a record of what it did.
local function load(world)
  world = world or {}
  local rec = { queries = {}, batches = 0, logs = {} }
  local function answer(name, qtype)
    rec.queries[#rec.queries + 1] = qtype .. " " .. name
    local v = (world.dns or {})[name .. " " .. qtype]
    if type(v) == "table" and v.sequence then   -- a different answer per try
      v.tries = (v.tries or 0) + 1
      v = v.sequence[v.tries]
    end
    if v == nil then return { error = "nxdomain" } end
    if type(v) == "string" then return { error = v } end
    return { answers = v }
  end
  local stub = {
    settings = { protection = world.protection or PROTECTION,
                 policies = world.policies or { "blacklist", "rbl", "relay" } },
    list = function(name)
      return { contains = function(_, ip) return ((world.lists or {})[name] or {})[ip] == true end }
    end,
    dns = {
      reverse = reverse,
      query = function(name, qtype)
        rec.batches = rec.batches + 1
        local r = answer(name, qtype)
        if r.answers then return r.answers end
        return nil, r.error
      end,
      query_all = function(qs)
        rec.batches = rec.batches + 1
        local out = {}
        for i, q in ipairs(qs) do
          out[i] = answer(q[1], q[2])
          rec.once = rec.once or {}
          rec.once[#rec.once + 1] = (q.once and "once " or "") .. q[2] .. " " .. q[1]
        end
        return out
      end,
    },
    tempblock = {
      trusted = function(ip) return (world.trusted or {})[ip] == true end,
      blocked = function(ip) return (world.blocked or {})[ip] end,
    },
    is_local_address = function(ip) return (world.local_ips or {})[ip] == true end,
    log = function(msg) rec.logs[#rec.logs + 1] = msg end,
    reject = function(code, text) return { action = "reject", code = code, text = text } end,
  }
  -- As the real moat.policy_enabled: is the policy in the configured chain?
  stub.policy_enabled = function(name)
    for _, p in ipairs(stub.settings.policies) do if p == name then return true end end
    return false
  end
  package.loaded["moat"] = nil
  package.loaded["moat.status"] = nil
  package.preload["moat"] = function() return stub end
  local status = require "moat.status"
  return status, rec
end

local function session(ip)
  local s = { ip = ip, status = "other", vars = {}, rcpts = {}, headers = {}, logged = {} }
  function s:log(msg) self.logged[#self.logged + 1] = msg end
  function s:add_header(name, value) self.headers[#self.headers + 1] = name .. ": " .. value end
  return s
end

local BOTH = { names = true, rbl = true }
local IP = "192.0.2.7"
local PTR = "7.2.0.192.in-addr.arpa PTR"
local Z1 = "7.2.0.192." .. ZONE1 .. " A"
local Z2 = "7.2.0.192." .. ZONE2 .. " A"

-- every kind of "listed" at once: the lists must win without asking
local function listed_everywhere(extra)
  local w = { dns = { [PTR] = { "x.dynamic.example" }, [Z1] = { "127.0.0.2" }, [Z2] = { "127.0.0.2" } },
              lists = {} }
  for k, v in pairs(extra or {}) do w[k] = v end
  return w
end

describe("moat.status", function()
  teardown(function()
    package.preload["moat"] = nil
    package.loaded["moat"] = nil
    package.loaded["moat.status"] = nil
  end)

  describe("decide: lists first, no DNS when a list decides", function()
    it("client_ips -> client, even if blacklisted_ips, RBL-listed and name-matched; no DNS", function()
      local st, rec = load(listed_everywhere { lists = { client_ips = { [IP] = true }, blacklisted_ips = { [IP] = true } } })
      local r = st.decide(IP, BOTH)
      assert.equal("client", r.status)
      assert.same({}, rec.queries)
      assert.equal(0, rec.batches)
    end)

    it("trusted (a recent relay login) -> trusted, never blacklisted; no DNS", function()
      local st, rec = load(listed_everywhere { trusted = { [IP] = true }, lists = { blacklisted_ips = { [IP] = true } } })
      assert.equal("trusted", st.decide(IP, BOTH).status)
      assert.same({}, rec.queries)
    end)

    it("client_ips wins over trusted", function()
      local st = load { trusted = { [IP] = true }, lists = { client_ips = { [IP] = true } } }
      assert.equal("client", st.decide(IP, BOTH).status)
    end)

    it("blacklisted_ips -> blacklisted with an empty zone; no DNS, so white-hole names cannot undo it", function()
      local st, rec = load(listed_everywhere {
        dns = { [PTR] = { "gw.partner.example" } }, lists = { blacklisted_ips = { [IP] = true } } })
      local r = st.decide(IP, BOTH)
      assert.equal("blacklisted", r.status)
      assert.equal("", r.zone)
      assert.equal("blacklisted_ips", r.reason)
      assert.same({}, rec.queries)
    end)

    it("blacklisted_ips wins over unblacklistable_ips", function()
      local st = load { lists = { blacklisted_ips = { [IP] = true }, unblacklistable_ips = { [IP] = true } } }
      assert.equal("blacklisted", st.decide(IP, BOTH).status)
    end)

    it("unblacklistable_ips (white hole) -> other, even though RBL-listed and name-matched; no DNS", function()
      local st, rec = load(listed_everywhere { lists = { unblacklistable_ips = { [IP] = true } } })
      local r = st.decide(IP, BOTH)
      assert.equal("other", r.status)
      assert.is_true(r.whitehole)
      assert.same({}, rec.queries)
    end)
  end)

  describe("decide: DNS", function()
    it("asks the PTR and every zone in one parallel batch", function()
      local st, rec = load { dns = { [PTR] = { "mail.neutral.example" } } }
      local r = st.decide(IP, BOTH)
      assert.equal("other", r.status)
      assert.equal(1, rec.batches)
      assert.same({ "PTR 7.2.0.192.in-addr.arpa", "A 7.2.0.192.bl.example.test", "A 7.2.0.192.bl2.example.test" },
                  rec.queries)
      assert.equal("mail.neutral.example", r.ptr)
    end)

    it("an RBL answer in 127.0.0.0/8 blacklists, naming the zone", function()
      local st = load { dns = { [PTR] = { "mail.neutral.example" }, [Z2] = { "127.0.0.4" } } }
      local r = st.decide(IP, BOTH)
      assert.equal("blacklisted", r.status)
      assert.equal(ZONE2, r.zone)
      assert.equal("rbl", r.reason)
    end)

    it("when several zones list the address, the first configured one is named", function()
      local st = load { dns = { [Z1] = { "127.0.0.2" }, [Z2] = { "127.0.0.3" } } }
      assert.equal(ZONE1, st.decide(IP, { rbl = true }).zone)
    end)

    it("an RBL answer outside 127.0.0.0/8 is ignored (and logged); one inside among others counts", function()
      local st = load { dns = { [Z1] = { "10.0.0.1" }, [Z2] = { "192.0.2.1" } } }
      local logs = {}
      local r = st.decide(IP, { rbl = true }, {}, function(m) logs[#logs + 1] = m end)
      assert.equal("other", r.status)
      assert.is_nil(r.zone)
      assert.equal(2, #logs)
      assert.matches("outside 127%.0%.0%.0/8", logs[1])
      st = load { dns = { [Z1] = { "10.0.0.1", "127.0.0.2" } } }
      assert.equal("blacklisted", st.decide(IP, { rbl = true }).status)
      -- "127.0.0.2" must be the whole answer, not a prefix of it
      st = load { dns = { [Z1] = { "127.0.0.2.evil" }, [Z2] = { "1127.0.0.2" } } }
      assert.equal("other", st.decide(IP, { rbl = true }).status)
    end)

    it("an RBL request is sent at most twice, each a single try (seed 002: 'the minimal time-out')", function()
      -- Z1 times out, then answers; Z2 times out twice; the PTR is not retried here
      local z1 = { sequence = { "timeout", { "127.0.0.2" } } }
      local z2 = { sequence = { "timeout", "timeout", { "127.0.0.2" } } }
      local st, rec = load { dns = { [Z1] = z1, [Z2] = z2, [PTR] = "timeout" } }
      local logs = {}
      local r = st.decide(IP, { rbl = true, names = true }, {}, function(m) logs[#logs + 1] = m end)
      assert.equal("blacklisted", r.status)
      assert.equal(ZONE1, r.zone)
      assert.same({ 2, 2 }, { z1.tries, z2.tries }, "two sends per zone, never a third")
      assert.equal(2, rec.batches, "the retries of all zones go out together")
      assert.same({ "PTR 7.2.0.192.in-addr.arpa", "once A 7.2.0.192.bl.example.test", "once A 7.2.0.192.bl2.example.test",
                    "once A 7.2.0.192.bl.example.test", "once A 7.2.0.192.bl2.example.test" }, rec.once)
      assert.same({ "rbl query failed: zone=bl2.example.test ip=192.0.2.7 error=timeout (not listed)" }, logs)
      -- no timeout, no second batch
      st, rec = load { dns = { [Z1] = "servfail" } }
      st.decide(IP, { rbl = true })
      assert.equal(1, rec.batches)
    end)

    it("an RBL timeout or failure is 'not listed' and logged; nxdomain and nodata are silent", function()
      local st = load { dns = { [Z1] = "timeout", [Z2] = "servfail" } }
      local logs = {}
      local r = st.decide(IP, { rbl = true }, {}, function(m) logs[#logs + 1] = m end)
      assert.equal("other", r.status)
      assert.same({
        "rbl query failed: zone=bl.example.test ip=192.0.2.7 error=timeout (not listed)",
        "rbl query failed: zone=bl2.example.test ip=192.0.2.7 error=servfail (not listed)",
      }, logs)
      st = load { dns = { [Z2] = "nodata" } }   -- Z1: nxdomain
      logs = {}
      assert.equal("other", st.decide(IP, { rbl = true }, {}, function(m) logs[#logs + 1] = m end).status)
      assert.same({}, logs)
    end)

    it("blacklist_by_dns_name matches the PTR name, case-insensitively", function()
      local st = load { dns = { [PTR] = { "Host7.DYNAMIC.Example" } } }
      local r = st.decide(IP, { names = true })
      assert.equal("blacklisted", r.status)
      assert.equal("", r.zone)
      assert.equal("blacklist_by_dns_name", r.reason)
      assert.equal("Host7.DYNAMIC.Example", r.ptr)
    end)

    it("'(host name is unknown)' matches an address without PTR (nxdomain or nodata)", function()
      for _, err in ipairs { "nxdomain", "nodata" } do
        local st = load { dns = { [PTR] = err } }
        local r = st.decide(IP, { names = true })
        assert.equal("(host name is unknown)", r.ptr)
        assert.equal("blacklisted", r.status, err)
      end
    end)

    it("other PTR failures give the error in parentheses, which the names can match", function()
      local st = load { dns = { [PTR] = "servfail" } }
      assert.same({ "other", "(server failure)" }, (function(r) return { r.status, r.ptr } end)(st.decide(IP, { names = true })))
      st = load { dns = { [PTR] = "timeout" } }
      assert.equal("(timeout)", st.decide(IP, { names = true }).ptr)
      st = load { dns = { [PTR] = "servfail" },
                  protection = { blacklist_by_dns_name = { "(server failure)" } } }
      assert.equal("blacklisted", st.decide(IP, { names = true }).status)
    end)

    it("whitehole_by_dns_name undoes an RBL listing", function()
      local st = load { dns = { [PTR] = { "gw.partner.example" }, [Z1] = { "127.0.0.2" } } }
      local r = st.decide(IP, { rbl = true })
      assert.equal("other", r.status)
      assert.is_true(r.whitehole)
      assert.is_nil(r.zone)
    end)

    it("whitehole_by_dns_name undoes a blacklist_by_dns_name match", function()
      local st = load { dns = { [PTR] = { "dsl.dynamic.partner.example" } },
                        protection = { blacklist_by_dns_name = { "*.dynamic.*" },
                                       whitehole_by_dns_name = { "*.partner.example" } } }
      local r = st.decide(IP, { names = true })
      assert.equal("other", r.status)
      assert.is_true(r.whitehole)
    end)

    it("an RBL listing outranks a DNS-name match: the zone is kept", function()
      local st = load { dns = { [PTR] = { "x.dynamic.example" }, [Z1] = { "127.0.0.2" } } }
      local r = st.decide(IP, BOTH)
      assert.equal("blacklisted", r.status)
      assert.equal(ZONE1, r.zone)
    end)

    it("no PTR query when no name list needs it", function()
      local st, rec = load { protection = { rbl_servers = { ZONE1 } } }
      st.decide(IP, BOTH)
      assert.same({ "A 7.2.0.192.bl.example.test" }, rec.queries)
      -- the rbl policy alone needs the PTR only for white-hole names
      st, rec = load { protection = { rbl_servers = { ZONE1 }, blacklist_by_dns_name = { "*.x" } } }
      st.decide(IP, { rbl = true })
      assert.same({ "A 7.2.0.192.bl.example.test" }, rec.queries)
      st, rec = load { protection = { rbl_servers = { ZONE1 }, whitehole_by_dns_name = { "*.x" } } }
      st.decide(IP, { rbl = true })
      assert.same({ "PTR 7.2.0.192.in-addr.arpa", "A 7.2.0.192.bl.example.test" }, rec.queries)
    end)

    it("no DNS at all with neither zones nor names configured", function()
      local st, rec = load { protection = {} }
      assert.equal("other", st.decide(IP, BOTH).status)
      assert.equal(0, rec.batches)
    end)

    it("names only: no RBL query; rbl only: no name blacklisting", function()
      local st, rec = load { dns = { [PTR] = { "x.dynamic.example" }, [Z1] = { "127.0.0.2" } } }
      assert.equal("blacklisted", st.decide(IP, { names = true }).status)
      assert.same({ "PTR 7.2.0.192.in-addr.arpa" }, rec.queries)
      st = load { dns = { [PTR] = { "x.dynamic.example" } } }
      assert.equal("other", st.decide(IP, { rbl = true }).status)
    end)

    it("a PTR already known (from the other policy) is not asked again", function()
      local st, rec = load { dns = { [Z1] = { "127.0.0.2" } } }
      local r = st.decide(IP, { rbl = true }, { ptr = "gw.partner.example" })
      assert.equal("other", r.status)
      assert.is_true(r.whitehole)
      assert.same({ "A 7.2.0.192.bl.example.test", "A 7.2.0.192.bl2.example.test" }, rec.queries)
    end)
  end)

  describe("apply (the policies' connect hooks)", function()
    it("sets s.status, s.ptr and logs the change", function()
      local st = load { dns = { [PTR] = { "mail.neutral.example" }, [Z1] = { "127.0.0.2" } } }
      local s = session(IP)
      st.apply(s, BOTH)
      assert.equal("blacklisted", s.status)
      assert.equal("mail.neutral.example", s.ptr)
      assert.equal(ZONE1, s.vars.address.zone)
      assert.same({ "address status: blacklisted (rbl, bl.example.test)" }, s.logged)
    end)

    it("the second policy does not ask again when a list decided", function()
      local st, rec = load { lists = { blacklisted_ips = { [IP] = true } } }
      local s = session(IP)
      st.apply(s, { names = true })
      st.apply(s, { rbl = true })
      assert.equal("blacklisted", s.status)
      assert.equal(0, rec.batches)
    end)

    it("blacklist then rbl: the PTR is asked once, the zones once", function()
      local st, rec = load { dns = { [PTR] = { "mail.neutral.example" } } }
      local s = session(IP)
      st.apply(s, { names = true })
      st.apply(s, { rbl = true })
      assert.equal("other", s.status)
      assert.same({ "PTR 7.2.0.192.in-addr.arpa", "A 7.2.0.192.bl.example.test", "A 7.2.0.192.bl2.example.test" },
                  rec.queries)
    end)

    it("blacklist then rbl (both loaded): the PTR and the zones go out in one parallel batch", function()
      -- README: "all zones and the PTR in parallel"; two batches cost two timeouts
      local st, rec = load { dns = { [PTR] = { "mail.neutral.example" } } }
      local s = session(IP)
      st.apply(s, { names = true })
      st.apply(s, { rbl = true })
      assert.equal(1, rec.batches)
    end)

    it("blacklist then rbl: a white-hole PTR name undoes the RBL listing; the PTR is asked once", function()
      local st, rec = load { dns = { [PTR] = { "gw.partner.example" }, [Z1] = { "127.0.0.2" } } }
      local s = session(IP)
      st.apply(s, { names = true })
      st.apply(s, { rbl = true })
      assert.equal("other", s.status)
      assert.is_true(s.vars.address.whitehole)
      local ptrs = 0
      for _, q in ipairs(rec.queries) do if q:find("^PTR ") then ptrs = ptrs + 1 end end
      assert.equal(1, ptrs)
    end)

    it("blacklist then rbl (the stock order): an address both name-matched and RBL-listed keeps its zone", function()
      -- decide() ranks an RBL listing above a name match, and test_address
      -- names the zone; the sessions must say the same (reply text, ^0)
      local st = load { dns = { [PTR] = { "x.dynamic.example" }, [Z1] = { "127.0.0.2" } } }
      assert.equal(ZONE1, st.decide(IP, BOTH).zone)
      local s = session(IP)
      st.apply(s, { names = true })
      st.apply(s, { rbl = true })
      assert.equal("blacklisted", s.status)
      assert.equal(ZONE1, s.vars.address.zone)
    end)

    it("rbl then blacklist: an RBL-listed address stays listed by its zone", function()
      local st = load { dns = { [PTR] = { "x.dynamic.example" }, [Z1] = { "127.0.0.2" } } }
      local s = session(IP)
      st.apply(s, { rbl = true })
      st.apply(s, { names = true })
      assert.equal("blacklisted", s.status)
      assert.equal(ZONE1, s.vars.address.zone)
    end)
  end)

  describe("blacklisted processing", function()
    it("reject mode: every RCPT of a blacklisted sender gets 550 5.7.1 naming the zone or the address", function()
      local st = load { dns = { [Z1] = { "127.0.0.2" } } }
      local s = session(IP)
      st.apply(s, { rbl = true })
      assert.same({ action = "reject", code = 550, text = "5.7.1 Mail from [192.0.2.7] refused: listed by bl.example.test" },
                  st.rcpt_verdict(s))
      st = load { lists = { blacklisted_ips = { [IP] = true } } }
      s = session(IP)
      st.apply(s, { names = true })
      assert.same({ action = "reject", code = 550, text = "5.7.1 Mail from [192.0.2.7] refused: address is blacklisted" },
                  st.rcpt_verdict(s))
      st.add_header(s)
      assert.same({}, s.headers)
    end)

    it("reject mode: nothing for a sender that is not blacklisted", function()
      local st = load { dns = { [PTR] = { "mail.neutral.example" } } }
      local s = session(IP)
      st.apply(s, BOTH)
      assert.is_nil(st.rcpt_verdict(s))
      local c = session("192.0.2.8")
      c.status = "client"
      assert.is_nil(st.rcpt_verdict(c))
    end)

    local function header_mode(world)
      world.protection = { rbl_servers = { ZONE1 }, blacklist_by_dns_name = { "*.dynamic.example" },
                           blacklisted_messages = { add_header = "X-Blacklisted: ^1 by ^0" } }
      return load(world)
    end

    it("add_header mode: no rejection; the header with ^1 = address, ^0 = zone, once per transaction", function()
      local st = header_mode { dns = { [Z1] = { "127.0.0.2" } } }
      local s = session(IP)
      st.apply(s, BOTH)
      assert.equal("blacklisted", s.status)
      assert.is_nil(st.rcpt_verdict(s))
      st.add_header(s)   -- the blacklist policy's data_end
      st.add_header(s)   -- the rbl policy's data_end
      assert.same({ "X-Blacklisted: 192.0.2.7 by bl.example.test" }, s.headers)
      s.rcpts = {}       -- the next transaction
      st.add_header(s)
      assert.same({ "X-Blacklisted: 192.0.2.7 by bl.example.test", "X-Blacklisted: 192.0.2.7 by bl.example.test" },
                  s.headers)
    end)

    it("add_header mode: ^0 is empty without an RBL", function()
      local st = header_mode { dns = { [PTR] = { "a.dynamic.example" } } }
      local s = session(IP)
      st.apply(s, BOTH)
      st.add_header(s)
      assert.same({ "X-Blacklisted: 192.0.2.7 by " }, s.headers)
    end)

    it("add_header mode: nothing for a sender that is not blacklisted", function()
      local st = header_mode {}
      local s = session(IP)
      st.apply(s, BOTH)
      st.add_header(s)
      assert.same({}, s.headers)
    end)

    it("a malformed add_header is an error when the module loads", function()
      assert.has_error(function()
        load { protection = { blacklisted_messages = { add_header = "no colon here" } } }
      end)
    end)
  end)

  describe("test_address", function()
    it("Local prefix for an own address, LAN prefix for lan_ips, Local first", function()
      local st = load { lists = { client_ips = { ["127.0.0.1"] = true }, lan_ips = { ["10.0.0.5"] = true,
                        ["127.0.0.1"] = true } }, local_ips = { ["127.0.0.1"] = true } }
      assert.equal("Local [127.0.0.1] is Client", st.test_address("127.0.0.1"))
      assert.equal("LAN [10.0.0.5](host name is unknown) is Blacklisted", st.test_address("10.0.0.5"))
    end)

    it("statuses: Client, Trusted, Blacklisted (zone), Other", function()
      local st, rec = load { trusted = { [IP] = true } }
      assert.equal("[192.0.2.7] is Trusted", st.test_address(IP))
      assert.equal(0, rec.batches)
      st = load { dns = { [PTR] = { "mail.neutral.example" }, [Z2] = { "127.0.0.2" } } }
      assert.equal("[192.0.2.7](mail.neutral.example) is Blacklisted (bl2.example.test)", st.test_address(IP))
      st = load { dns = { [PTR] = { "host.dynamic.example" } } }
      assert.equal("[192.0.2.7](host.dynamic.example) is Blacklisted", st.test_address(IP))
      st = load { dns = { [PTR] = { "mail.neutral.example" } } }
      assert.equal("[192.0.2.7](mail.neutral.example) is Other", st.test_address(IP))
      st = load { lists = { unblacklistable_ips = { [IP] = true } } }
      assert.equal("[192.0.2.7] is Other", st.test_address(IP))
    end)

    it("the name is shown only when a lookup was needed, failures in one pair of parentheses", function()
      local st = load { lists = { blacklisted_ips = { [IP] = true } } }
      assert.equal("[192.0.2.7] is Blacklisted", st.test_address(IP))
      st = load { dns = { [PTR] = "servfail" } }
      assert.equal("[192.0.2.7](server failure) is Other", st.test_address(IP))
    end)

    it("uses the loaded policies: without blacklist no name rules, without rbl no zones", function()
      local st, rec = load { policies = { "rbl" }, dns = { [PTR] = { "x.dynamic.example" } } }
      assert.equal("[192.0.2.7](x.dynamic.example) is Other", st.test_address(IP))
      st, rec = load { policies = { "blacklist" }, dns = { [Z1] = { "127.0.0.2" }, [PTR] = { "ok.example" } } }
      assert.equal("[192.0.2.7](ok.example) is Other", st.test_address(IP))
      assert.same({ "PTR 7.2.0.192.in-addr.arpa" }, rec.queries)
    end)

    it("a temporarily blocked address is Blocked with the time left", function()
      local st = load { blocked = { [IP] = 42 }, lists = { blacklisted_ips = { [IP] = true } } }
      assert.equal("[192.0.2.7] is Blocked (42s left)", st.test_address(IP))
    end)

    it("an unparsable address is an error:, with no DNS", function()
      local st, rec = load {}
      assert.equal("error: 'nonsense' is not an IP address", st.test_address("nonsense"))
      assert.equal(0, rec.batches)
    end)
  end)

  describe("client_by_dns_name: forward-confirmed (DESIGN §9)", function()
    local CORP = { rbl_servers = { ZONE1 }, blacklist_by_dns_name = { "*.corp.example" },
                   client_by_dns_name = { "*.corp.example" } }
    local FWD = "pc7.corp.example A"

    it("a PTR name that matches and resolves back to the address -> client, RBL and name rules ignored", function()
      local st, rec = load { protection = CORP,
        dns = { [PTR] = { "pc7.corp.example" }, [FWD] = { "198.51.100.1", IP }, [Z1] = { "127.0.0.2" } } }
      local r = st.decide(IP, BOTH)
      assert.equal("client", r.status)
      assert.equal("client_by_dns_name", r.reason)
      assert.is_nil(r.zone)
      assert.equal("pc7.corp.example", r.ptr)
      assert.same({ "PTR 7.2.0.192.in-addr.arpa", "A 7.2.0.192." .. ZONE1, "A pc7.corp.example" }, rec.queries)
      assert.equal("[192.0.2.7](pc7.corp.example) is Client", st.test_address(IP))
    end)

    it("a PTR name that resolves elsewhere or not at all never makes a client, and is logged", function()
      for _, fwd in ipairs { { "198.51.100.1" }, "nxdomain", "servfail" } do
        local st, rec = load { protection = CORP, dns = { [PTR] = { "pc7.corp.example" }, [FWD] = fwd } }
        local r = st.decide(IP, { names = false, rbl = false }, nil, function(m) rec.logs[#rec.logs + 1] = m end)
        assert.equal("other", r.status)
        assert.matches("client_by_dns_name: PTR name pc7.corp.example of 192.0.2.7 does not resolve back", rec.logs[1], 1, true)
      end
      -- unconfirmed, the other name rules still apply
      local st = load { protection = CORP, dns = { [PTR] = { "pc7.corp.example" } } }
      assert.equal("blacklisted", st.decide(IP, BOTH).status)
    end)

    it("is asked even without the blacklist and rbl policies (the relay policy's connect); no forward query for other names", function()
      local st, rec = load { protection = CORP, policies = { "relay" }, dns = { [PTR] = { "mail.other.example" } } }
      local s = session(IP)
      st.apply(s, {})
      assert.equal("other", s.status)
      assert.same({ "PTR 7.2.0.192.in-addr.arpa" }, rec.queries)
      st, rec = load { protection = CORP, policies = { "relay" },
                       dns = { [PTR] = { "pc7.corp.example" }, [FWD] = { IP } } }
      s = session(IP)
      st.apply(s, {})
      assert.equal("client", s.status)
      assert.equal("address status: client (client_by_dns_name)", s.logged[1])
    end)

    it("the lists still decide first: blacklisted_ips is not undone by a client name; no DNS", function()
      local st, rec = load { protection = CORP, lists = { blacklisted_ips = { [IP] = true } },
                             dns = { [PTR] = { "pc7.corp.example" }, [FWD] = { IP } } }
      assert.equal("blacklisted", st.decide(IP, BOTH).status)
      assert.same({}, rec.queries)
    end)
  end)
end)
