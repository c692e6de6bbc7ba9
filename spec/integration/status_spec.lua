-- Integration: the status of a remote address (seed 002 "Blacklisting
-- Offenders", "Using DNS-based Blacklisting", "Blacklisting Domains by Name",
-- "White Hole", "Processing Messages from Blacklisted Addresses", "Checking
-- Network Address Status"; DESIGN §6) with a real moat, two real rbldnsd
-- zones and a real dnsmasq serving PTR records.  Senders are played by client
-- sockets bound to different 127.0.0.x addresses; the DNS servers' query logs
-- prove which lookups were (not) made.
local socket = require "socket"
local H = require "helpers.moat"
local DNS = require "helpers.dns"

local retry_start = DNS.retry_start

local ZONE1, ZONE2 = "bl.example.test", "bl2.example.test"

-- Who plays what.  Every address below 127.0.0.20 appears in the DNS data.
local IP = {
  client    = "127.0.0.1",   -- client_ips (and a local address); RBL-listed anyway
  explicit  = "127.0.0.3",   -- blacklisted_ips; RBL-listed; PTR matches the white-hole names
  whitehole = "127.0.0.4",   -- unblacklistable_ips; RBL-listed
  dynamic   = "127.0.0.5",   -- PTR host5.dynamic.example (blacklist_by_dns_name)
  listed    = "127.0.0.6",   -- in both zones (127.0.0.2), neutral PTR
  outside   = "127.0.0.7",   -- RBL answer 10.0.0.1 (outside 127.0.0.0/8), neutral PTR
  partner   = "127.0.0.8",   -- RBL-listed, PTR gw.partner.example (whitehole_by_dns_name)
  second    = "127.0.0.9",   -- only in the second zone, neutral PTR
  lan       = "127.0.0.10",  -- lan_ips, neutral PTR
  noptr     = "127.0.0.11",  -- no PTR record: "(host name is unknown)"
  dynlisted = "127.0.0.12",  -- PTR host12.dynamic.example AND RBL-listed
  neutral   = "127.0.0.13",  -- neutral PTR, not listed
  blockme   = "127.0.0.14",  -- the site script blocks it temporarily
}

local PTRS = {
  [IP.explicit] = "mail3.partner.example",
  [IP.dynamic] = "host5.dynamic.example",
  [IP.listed] = "mail6.neutral.example",
  [IP.outside] = "mail7.neutral.example",
  [IP.partner] = "gw.partner.example",
  [IP.second] = "mail9.neutral.example",
  [IP.lan] = "mail10.neutral.example",
  [IP.dynlisted] = "host12.dynamic.example",
  [IP.neutral] = "mail13.neutral.example",
  [IP.blockme] = "mail14.neutral.example",
  ["::1"] = "v6.neutral.example",
}

local ZONE1_ENTRIES = { IP.client, IP.explicit, IP.whitehole, IP.listed, IP.outside .. " :10.0.0.1:",
                        IP.partner, IP.dynlisted }
local ZONE2_ENTRIES = { IP.listed, IP.second }

local SITE = [[
local moat = require "moat"
return { connect = function(s)
  if s.ip == "127.0.0.14" then moat.tempblock.add(s.ip, "test") end
end }
]]

local function protection(extra)
  return ([[protection = { rbl_servers = { "%s", "%s" },
  blacklist_by_dns_name = { "*.dynamic.example", "(host name is unknown)" },
  whitehole_by_dns_name = { "*.partner.example" }%s }
]]):format(ZONE1, ZONE2, extra or "")
end

local function dns_conf(servers, timeout_ms, tries)
  local q = {}
  for i, s in ipairs(servers) do q[i] = ("%q"):format(s) end
  return ("dns = { servers = { %s }, timeout_ms = %d, tries = %d }\n"):format(table.concat(q, ", "), timeout_ms, tries)
end

local function start_moat(dns_servers, extra_protection, tag)
  return H.start {
    tag = tag or "status",
    listener = '{ { port = %PORT%, address = "127.0.0.1" }, { port = %PORT1%, address = "::1" } }',
    ports = 1,
    tables = { blacklisted_ips = IP.explicit .. "\n", unblacklistable_ips = IP.whitehole .. "\n",
               lan_ips = IP.lan .. "\n" },
    policies = { "blacklist", "rbl", "relay" },
    scripts = { ["site.lua"] = SITE },
    extra = dns_conf(dns_servers, 300, 2) .. protection(extra_protection),
  }
end

-- "127.0.0.6" -> "6.0.0.127."
local function rev_prefix(ip)
  local a, b, c, d = ip:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  return ("%s.%s.%s.%s."):format(d, c, b, a)
end

-- Queries (any type, any zone) about ip that reached the given servers.
local function queries_about(servers, ip)
  local out = {}
  for _, srv in ipairs(servers) do
    for _, q in ipairs(srv:queries()) do
      if q.name:lower():sub(1, #rev_prefix(ip)) == rev_prefix(ip) then
        out[#out + 1] = srv.kind .. " " .. q.type .. " " .. q.name
      end
    end
  end
  return out
end

-- A session from `ip`: EHLO, MAIL FROM, one RCPT; returns the client (open)
-- and the RCPT reply.
local function rcpt_from(srv, ip, rcpt)
  local c = H.client(srv.port, { source = ip })
  assert.equal(220, c.greeting_code)
  assert.equal(250, (c:ehlo("sender.example")))
  assert.equal(250, (c:cmd("MAIL FROM:<sender@remote.example>")))
  local code, text = c:cmd("RCPT TO:<" .. (rcpt or "joe@example.test") .. ">")
  return c, code, text
end

local function rcpt_reply(srv, ip)
  local c, code, text = rcpt_from(srv, ip)
  c:cmd("QUIT")
  c:close()
  return code, text
end

-- moatctl with stdout and stderr apart: rc, stdout, stderr.
local function ctl(srv, ...)
  local bin = os.getenv("MOATCTL_BIN") or (H.root .. "/moatctl")
  local out, err = os.tmpname(), os.tmpname()
  local args = {}
  for i, a in ipairs { ... } do args[i] = "'" .. a:gsub("'", "'\\''") .. "'" end
  local p = assert(io.popen(("'%s' -s '%s' %s >'%s' 2>'%s'; echo $?"):format(
    bin, srv.dir .. "/moat.sock", table.concat(args, " "), out, err)))
  local rc = tonumber(p:read("l"))
  p:close()
  local o, e = H.read_file(out) or "", H.read_file(err) or ""
  os.remove(out)
  os.remove(err)
  return rc, o, e
end

local function test_address(srv, ip)
  local rc, out, err = ctl(srv, "test-address", ip)
  assert.equal(0, rc, "moatctl test-address " .. ip .. " failed: " .. err)
  assert.equal("", err)
  return (out:gsub("\n$", ""))
end

describe("address status (integration)", function()
  local dnsmasq, rbl1, rbl2, srv

  setup(function()
    dnsmasq = retry_start(DNS.start, { ptr = PTRS })
    rbl1 = retry_start(DNS.start_rbldnsd, { zone = ZONE1, entries = ZONE1_ENTRIES })
    rbl2 = retry_start(DNS.start_rbldnsd, { zone = ZONE2, entries = ZONE2_ENTRIES })
  end)
  teardown(function()
    H.stop_all()
    DNS.stop_all()
  end)

  -- rbldnsd answers REFUSED outside its zone, so c-ares moves on down the
  -- list: zone 1 names end at rbl1, zone 2 names at rbl2, PTRs at dnsmasq.
  local function servers() return { rbl1.server, rbl2.server, dnsmasq.server } end
  local function all_dns() return { rbl1, rbl2, dnsmasq } end

  describe("with blacklisted_messages = \"reject\"", function()
    setup(function() srv = start_moat(servers()) end)
    teardown(function() H.stop_all() end)
    before_each(function()
      for _, d in ipairs(all_dns()) do d:clear() end
    end)

    it("the DNS test setup answers what the specs below rely on", function()
      assert.same({ "127.0.0.2" }, rbl1:query(rev_prefix(IP.listed) .. ZONE1, "A").answers)
      assert.same({ "127.0.0.2" }, rbl2:query(rev_prefix(IP.listed) .. ZONE2, "A").answers)
      assert.same({ "10.0.0.1" }, rbl1:query(rev_prefix(IP.outside) .. ZONE1, "A").answers)
      assert.equal("nxdomain", rbl1:query(rev_prefix(IP.neutral) .. ZONE1, "A").rcode)
      assert.same({ "host5.dynamic.example" }, dnsmasq:query(rev_prefix(IP.dynamic) .. "in-addr.arpa", "PTR").answers)
      assert.equal("nxdomain", dnsmasq:query(rev_prefix(IP.noptr) .. "in-addr.arpa", "PTR").rcode)
    end)

    it("explicit blacklisted_ips: every RCPT gets 550 5.7.1 naming the address, the session goes on, no DNS", function()
      local c, code, text = rcpt_from(srv, IP.explicit)
      assert.equal(550, code)
      assert.equal("550 5.7.1 Mail from [127.0.0.3] refused: address is blacklisted", text)
      local code2, text2 = c:cmd("RCPT TO:<postmaster@example.test>")
      assert.equal(550, code2)
      assert.matches("^550 5%.7%.1 .*%[127%.0%.0%.3%]", text2)
      assert.equal(250, (c:cmd("RSET")))
      assert.equal(250, (c:cmd("NOOP")))
      assert.equal(250, (c:cmd("MAIL FROM:<other@remote.example>")))
      assert.equal(550, (c:cmd("RCPT TO:<joe@example.test>")))
      assert.equal(221, (c:cmd("QUIT")))
      c:close()
      -- listed by the RBL and PTR-named *.partner.example, yet nobody was asked
      assert.same({}, queries_about(all_dns(), IP.explicit))
    end)

    it("client_ips: never blacklisted, even when RBL-listed, and no DNS query", function()
      local c, code, text = rcpt_from(srv, IP.client, "someone@elsewhere.example")   -- relaying: a client may
      assert.same({ 250, "250 2.1.5 Ok" }, { code, text })
      assert.equal(250, (c:cmd("RSET")))
      local r = c:transaction { from = "sender@example.test", rcpts = { "joe@example.test" } }
      c:close()
      assert.equal(250, r.final[1])
      assert.same({}, queries_about(all_dns(), IP.client))
    end)

    it("an RBL hit (127.0.0.2) gives 550 5.7.1 naming the zone; the first configured listing zone is named", function()
      local code, text = rcpt_reply(srv, IP.listed)
      assert.equal(550, code)
      assert.equal("550 5.7.1 Mail from [127.0.0.6] refused: listed by bl.example.test", text)
      assert.equal(1, rbl1:asked(rev_prefix(IP.listed) .. ZONE1, "A"))
      assert.equal(1, rbl2:asked(rev_prefix(IP.listed) .. ZONE2, "A"))
    end)

    it("asks every configured zone: an address only in the second zone is blacklisted by it", function()
      local code, text = rcpt_reply(srv, IP.second)
      assert.equal(550, code)
      assert.equal("550 5.7.1 Mail from [127.0.0.9] refused: listed by bl2.example.test", text)
    end)

    it("an RBL answer outside 127.0.0.0/8 does not list the address (and is logged)", function()
      assert.same({ 250, "250 2.1.5 Ok" }, { rcpt_reply(srv, IP.outside) })
      assert.equal(1, rbl1:asked(rev_prefix(IP.outside) .. ZONE1, "A"))
      srv:wait_log("rbl answer outside 127%.0%.0%.0/8 ignored: zone=bl%.example%.test ip=127%.0%.0%.7")
    end)

    it("an address neither listed nor name-matched is accepted", function()
      assert.same({ 250, "250 2.1.5 Ok" }, { rcpt_reply(srv, IP.neutral) })
      assert.equal(1, rbl1:asked(rev_prefix(IP.neutral) .. ZONE1, "A"))
      assert.equal(1, dnsmasq:asked(rev_prefix(IP.neutral) .. "in-addr.arpa", "PTR"))
      assert.is_true(#queries_about(all_dns(), IP.neutral) >= 3)   -- (what the "no query" checks count)
    end)

    it("an IPv6 sender: the RBL is asked the 32 reversed nibbles + zone, the PTR under ip6.arpa", function()
      local nibbles = ("0."):rep(31):gsub("^", "1.")   -- ::1
      local c = H.client(srv.vars.PORT1, { host = "::1" })
      assert.equal(220, c.greeting_code)
      c:cmd("QUIT")
      c:close()
      assert.equal(1, rbl1:asked(nibbles .. ZONE1, "A"))
      assert.equal(1, rbl2:asked(nibbles .. ZONE2, "A"))
      assert.equal(1, dnsmasq:asked(nibbles .. "ip6.arpa", "PTR"))
      assert.equal("Local [::1](v6.neutral.example) is Other", test_address(srv, "::1"))
    end)

    it("unblacklistable_ips (white hole): not blacklisted though RBL-listed, and no DNS query", function()
      assert.same({ 250, "250 2.1.5 Ok" }, { rcpt_reply(srv, IP.whitehole) })
      assert.same({}, queries_about(all_dns(), IP.whitehole))
    end)

    it("blacklist_by_dns_name '*.dynamic.example' matching the PTR name blacklists", function()
      local code, text = rcpt_reply(srv, IP.dynamic)
      assert.equal(550, code)
      assert.equal("550 5.7.1 Mail from [127.0.0.5] refused: address is blacklisted", text)
      assert.equal(1, dnsmasq:asked(rev_prefix(IP.dynamic) .. "in-addr.arpa", "PTR"))
    end)

    it("'(host name is unknown)' in blacklist_by_dns_name blacklists an address without PTR", function()
      local code, text = rcpt_reply(srv, IP.noptr)
      assert.equal(550, code)
      assert.equal("550 5.7.1 Mail from [127.0.0.11] refused: address is blacklisted", text)
      assert.equal(1, dnsmasq:asked(rev_prefix(IP.noptr) .. "in-addr.arpa", "PTR"))
    end)

    it("an address both RBL-listed and name-blacklisted is refused naming the RBL zone (as test-address says)", function()
      local code, text = rcpt_reply(srv, IP.dynlisted)
      assert.equal(550, code)
      assert.equal("[127.0.0.12](host12.dynamic.example) is Blacklisted (bl.example.test)",
                   test_address(srv, IP.dynlisted))
      assert.equal("550 5.7.1 Mail from [127.0.0.12] refused: listed by bl.example.test", text)
    end)

    it("whitehole_by_dns_name matching the PTR name undoes an RBL listing", function()
      assert.same({ 250, "250 2.1.5 Ok" }, { rcpt_reply(srv, IP.partner) })
      assert.equal(1, dnsmasq:asked(rev_prefix(IP.partner) .. "in-addr.arpa", "PTR"))
      assert.equal("[127.0.0.8](gw.partner.example) is Other", test_address(srv, IP.partner))
    end)

    it("whitehole_by_dns_name cannot undo explicit blacklisted_ips", function()
      -- 127.0.0.3's PTR is mail3.partner.example, which the white-hole names match
      assert.same({ "mail3.partner.example" },
                  dnsmasq:query(rev_prefix(IP.explicit) .. "in-addr.arpa", "PTR").answers)
      dnsmasq:clear()
      assert.equal(550, (rcpt_reply(srv, IP.explicit)))
      assert.equal("[127.0.0.3] is Blacklisted", test_address(srv, IP.explicit))
      assert.same({}, queries_about(all_dns(), IP.explicit))
    end)

    describe("moatctl test-address", function()
      it("a client that is also a local address: Local [127.0.0.1] is Client", function()
        assert.equal("Local [127.0.0.1] is Client", test_address(srv, IP.client))
      end)

      it("a lan_ips address gets the LAN prefix", function()
        assert.equal("LAN [127.0.0.10](mail10.neutral.example) is Other", test_address(srv, IP.lan))
      end)

      it("blacklisted by an RBL: the name looked up and the zone", function()
        assert.equal("[127.0.0.6](mail6.neutral.example) is Blacklisted (bl.example.test)",
                     test_address(srv, IP.listed))
        assert.equal("[127.0.0.9](mail9.neutral.example) is Blacklisted (bl2.example.test)",
                     test_address(srv, IP.second))
      end)

      it("blacklisted by DNS name: the name is shown, no zone", function()
        assert.equal("[127.0.0.5](host5.dynamic.example) is Blacklisted", test_address(srv, IP.dynamic))
        assert.equal("[127.0.0.11](host name is unknown) is Blacklisted", test_address(srv, IP.noptr))
      end)

      it("a white hole (unblacklistable_ips) is Other, with no name since no lookup was needed", function()
        assert.equal("[127.0.0.4] is Other", test_address(srv, IP.whitehole))
        assert.same({}, queries_about(all_dns(), IP.whitehole))
      end)

      it("an RBL answer outside 127.0.0.0/8 and a plain address are Other", function()
        assert.equal("[127.0.0.7](mail7.neutral.example) is Other", test_address(srv, IP.outside))
        assert.equal("[127.0.0.13](mail13.neutral.example) is Other", test_address(srv, IP.neutral))
      end)

      it("an unparsable argument: exit code 1 and error: on stderr, nothing on stdout", function()
        local rc, out, err = ctl(srv, "test-address", "not-an-ip")
        assert.equal(1, rc)
        assert.equal("", out)
        assert.matches("^error: .*not%-an%-ip", err)
        rc, out, err = ctl(srv, "test-address", "127.0.0.300")
        assert.equal(1, rc)
        assert.equal("", out)
        assert.matches("^error:", err)
      end)

      it("a temporarily blocked address is Blocked", function()
        assert.equal("[127.0.0.14](mail14.neutral.example) is Other", test_address(srv, IP.blockme))
        local c = H.client(srv.port, { source = IP.blockme })   -- the site script blocks it
        c:close()
        assert.matches("^%[127%.0%.0%.14%].* is Blocked", H.poll(function()
          local line = test_address(srv, IP.blockme)
          return line:find(" is Blocked", 1, true) and line
        end, 3) or test_address(srv, IP.blockme))
        -- and the block is real: the next connection is refused
        local c2 = H.client(srv.port, { source = IP.blockme })
        assert.equal(421, c2.greeting_code)
        c2:close()
      end)
    end)
  end)

  describe("with blacklisted_messages = { add_header = ... }", function()
    setup(function()
      srv = start_moat(servers(), ', blacklisted_messages = { add_header = "X-Blacklisted: ^1 by ^0" }', "status-hdr")
    end)
    teardown(function() H.stop_all() end)

    local function send(ip, n)
      local c = H.client(srv.port, { source = ip })
      assert.equal(220, c.greeting_code)
      assert.equal(250, (c:ehlo("sender.example")))
      local ids = {}
      for i = 1, n or 1 do
        local r = c:transaction { from = "sender@remote.example", rcpts = { "joe@example.test", "ann@example.test" },
                                  data = H.message("message " .. i) }
        assert.equal(250, r.rcpts[1][1])
        assert.equal(250, r.rcpts[2][1])
        assert.equal(250, r.final[1], r.final[2])
        ids[i] = r.id
      end
      c:cmd("QUIT")
      c:close()
      return ids
    end

    local function eml(id)
      for _, f in ipairs(srv:spool_files()) do
        if f.id == id then return f.eml end
      end
      error("no spooled message " .. tostring(id))
    end

    local function headers_of(text, name)
      local out = {}
      local head = text:match("^(.-\r\n)\r\n") or text
      for line in head:gmatch("([^\r\n]*)\r\n") do
        if line:lower():sub(1, #name + 1) == name:lower() .. ":" then out[#out + 1] = line end
      end
      return out
    end

    it("an RBL-listed sender's message is accepted with X-Blacklisted naming address and zone, exactly once", function()
      local ids = send(IP.listed, 2)   -- two transactions in one session: each gets it once
      for _, id in ipairs(ids) do
        assert.same({ "X-Blacklisted: 127.0.0.6 by bl.example.test" }, headers_of(eml(id), "X-Blacklisted"))
      end
      assert.same({ "X-Blacklisted: 127.0.0.9 by bl2.example.test" }, headers_of(eml(send(IP.second)[1]), "X-Blacklisted"))
    end)

    it("without an RBL (explicit list, DNS name) ^0 is empty", function()
      assert.same({ "X-Blacklisted: 127.0.0.3 by " }, headers_of(eml(send(IP.explicit)[1]), "X-Blacklisted"))
      assert.same({ "X-Blacklisted: 127.0.0.5 by " }, headers_of(eml(send(IP.dynamic)[1]), "X-Blacklisted"))
    end)

    it("a sender both RBL-listed and name-blacklisted: ^0 still names the RBL zone", function()
      assert.same({ "X-Blacklisted: 127.0.0.12 by bl.example.test" },
                  headers_of(eml(send(IP.dynlisted)[1]), "X-Blacklisted"))
    end)

    it("a sender that is not blacklisted gets no X-Blacklisted header", function()
      assert.same({}, headers_of(eml(send(IP.neutral)[1]), "X-Blacklisted"))
      assert.same({}, headers_of(eml(send(IP.partner)[1]), "X-Blacklisted"))
    end)
  end)

  describe("with the DNS server down", function()
    local hole
    setup(function()
      hole = DNS.black_hole()
      srv = H.start {
        tag = "status-down",
        tables = { blacklisted_ips = IP.explicit .. "\n" },
        policies = { "blacklist", "rbl", "relay" },
        extra = dns_conf({ hole.server }, 300, 1) .. protection(),
      }
    end)
    teardown(function()
      H.stop_all()
      hole:stop()
    end)

    it("an RBL timeout is 'not listed': mail for a local recipient is accepted, the failure logged", function()
      local c = H.client(srv.port, { source = "127.0.0.20" })
      assert.equal(220, c.greeting_code)
      assert.equal(250, (c:ehlo("sender.example")))
      local r = c:transaction { from = "sender@remote.example", rcpts = { "joe@example.test" } }
      c:close()
      assert.same({ 250, "250 2.1.5 Ok" }, r.rcpts[1])
      assert.equal(250, r.final[1])
      srv:wait_log("rbl query failed: zone=bl%.example%.test ip=127%.0%.0%.20 error=timeout %(not listed%)")
      srv:wait_log("rbl query failed: zone=bl2%.example%.test ip=127%.0%.0%.20 error=timeout %(not listed%)")
      assert.is_true(hole:received() >= 5)   -- the PTR, and both zones twice
    end)

    it("asks the PTR and both zones at the same time: the greeting waits two RBL tries, not five lookups", function()
      -- each RBL zone is asked twice with the 300 ms timeout (seed 002), the
      -- PTR once (tries = 1), all in parallel: 600 ms, not 300 + 4 x 300
      local t0 = socket.gettime()
      local c = H.client(srv.port, { source = "127.0.0.21" })
      local waited = socket.gettime() - t0
      assert.equal(220, c.greeting_code)
      c:close()
      assert.is_true(waited >= 0.55, ("greeting after %.3f s: the RBL zones were not asked twice"):format(waited))
      assert.is_true(waited < 0.95,
        ("greeting after %.3f s with timeout_ms = 300: the PTR and the RBL zones were asked one after the other"):format(waited))
    end)

    it("explicit lists still decide without DNS: blacklisted at once", function()
      local t0 = socket.gettime()
      local code, text = rcpt_reply(srv, IP.explicit)
      assert.is_true(socket.gettime() - t0 < 0.25)
      assert.equal(550, code)
      assert.equal("550 5.7.1 Mail from [127.0.0.3] refused: address is blacklisted", text)
    end)
  end)

  describe("an RBL server that never answers, with dns.tries = 4", function()
    local hole2, srv2
    setup(function()
      hole2 = DNS.black_hole()
      srv2 = H.start {
        tag = "status-rbl-tries",
        policies = { "rbl", "relay" },
        extra = dns_conf({ hole2.server }, 200, 4) ..
          'protection = { rbl_servers = { "bl.example.test" }, blacklisted_messages = "reject" }\n',
      }
    end)
    teardown(function()
      H.stop_all()
      hole2:stop()
    end)

    it("is asked exactly twice, each with the first timeout (seed 002), not with c-ares's four doubling tries", function()
      local t0 = socket.gettime()
      local c = H.client(srv2.port, { source = "127.0.0.22" })
      local waited = socket.gettime() - t0
      assert.equal(220, c.greeting_code)
      c:close()
      srv2:wait_log("rbl query failed: zone=bl%.example%.test ip=127%.0%.0%.22 error=timeout %(not listed%)")
      socket.sleep(0.3)
      assert.equal(2, hole2:received(), "RBL requests sent")
      -- 2 x 200 ms; four c-ares tries would be 200 + 400 + 800 + 1600 ms
      assert.is_true(waited >= 0.38 and waited < 0.9, ("greeting after %.3f s"):format(waited))
    end)
  end)
end)
