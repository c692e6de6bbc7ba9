-- Integration: the daemon's DNS cache (DESIGN §13, README "DNS cache"):
-- answers kept for their TTL (capped by dns.cache_max_ttl), NXDOMAIN kept
-- for the SOA's negative TTL (RFC 2308), failures never kept, one question
-- in flight shared by concurrent askers, LRU at dns.cache_size, `moatctl dns
-- flush`, and the counters in `moatctl stats`.  Each check counts the
-- questions that reached the real DNS server (its query log).
local socket = require "socket"
local H = require "helpers.moat"
local DNS = require "helpers.dns"

-- MAIL FROM:<a@NAME> asks NAME's A; MAIL FROM:<two@NAME> asks NAME's A
-- twice at once (query_all); the sender is refused with what came back.
local SITE = [[
local moat = require "moat"
return {
  mail_from = function(s, addr)
    if addr.localpart == "two" then
      local r = moat.dns.query_all { { addr.domain, "A" }, { addr.domain, "A" } }
      local t = {}
      for i, x in ipairs(r) do t[i] = x.answers and table.concat(x.answers, ",") or x.error end
      return moat.reject(550, "5.0.0 " .. table.concat(t, " "))
    end
    local ans, err = moat.dns.query(addr.domain, "A")
    return moat.reject(550, "5.0.0 " .. (ans and table.concat(ans, ",") or tostring(err)))
  end,
}
]]

local function ask(srv, what)
  local c = H.client(srv.port)
  assert.equal(220, c.greeting_code)
  assert.equal(250, (c:ehlo()))
  local code, text = c:cmd("MAIL FROM:<" .. what .. ">")
  c:cmd("QUIT")
  c:close()
  assert.equal(550, code, text)
  return text
end

local function start(server, extra)
  return H.start { tag = "dnscache", scripts = { ["site.lua"] = SITE },
                   extra = ('dns = { servers = { "%s" }, timeout_ms = 300, tries = 1%s }\n')
                     :format(server, extra and (", " .. extra) or "") }
end

local function stats(srv)
  local rc, out = srv:ctl("stats")
  assert.equal(0, rc, out)
  local t = {}
  for name, v in out:gmatch("([%w_]+) ([%d.e+-]+)\n") do t[name] = tonumber(v) end
  return t, out
end

describe("the DNS cache", function()
  after_each(function()
    H.stop_all()
    DNS.stop_all()
  end)

  it("a second session is answered from the cache: one question on the wire, one hit", function()
    local d = DNS.retry_start(DNS.start, { a = { ["mx1.good.example"] = "192.0.2.1" }, ttl = 60 })
    local srv = start(d.server)
    assert.equal("550 5.0.0 192.0.2.1", ask(srv, "a@mx1.good.example"))
    assert.equal("550 5.0.0 192.0.2.1", ask(srv, "a@MX1.Good.Example")) -- names are case-blind
    assert.equal(1, d:asked("mx1.good.example", "A"))
    local st, text = stats(srv)
    assert.equal(1, st.dns_cache_hits_total, text)
    assert.equal(1, st.dns_cache_misses_total, text)
    assert.equal(1, st.dns_cache_entries, text)
    assert.equal(1, st.dns_queries_total, text)
  end)

  it("an answer is asked again once its TTL has passed", function()
    local d = DNS.retry_start(DNS.start, { a = { ["mx1.good.example"] = "192.0.2.1" }, ttl = 1 })
    local srv = start(d.server)
    ask(srv, "a@mx1.good.example")
    ask(srv, "a@mx1.good.example")
    assert.equal(1, d:asked("mx1.good.example", "A"))
    socket.sleep(1.2)
    assert.equal("550 5.0.0 192.0.2.1", ask(srv, "a@mx1.good.example"))
    assert.equal(2, d:asked("mx1.good.example", "A"))
  end)

  it("TTL 0 is not cached, and dns.cache_max_ttl caps a long TTL", function()
    local d0 = DNS.retry_start(DNS.start, { a = { ["mx1.good.example"] = "192.0.2.1" } }) -- TTL 0
    local srv = start(d0.server)
    ask(srv, "a@mx1.good.example")
    ask(srv, "a@mx1.good.example")
    assert.equal(2, d0:asked("mx1.good.example", "A"))
    H.stop_all()
    local d = DNS.retry_start(DNS.start, { a = { ["mx1.good.example"] = "192.0.2.1" }, ttl = 3600 })
    srv = start(d.server, "cache_max_ttl = 1")
    ask(srv, "a@mx1.good.example")
    ask(srv, "a@mx1.good.example")
    assert.equal(1, d:asked("mx1.good.example", "A"))
    socket.sleep(1.2)
    ask(srv, "a@mx1.good.example")
    assert.equal(2, d:asked("mx1.good.example", "A"))
  end)

  it("NXDOMAIN is cached for the SOA's negative TTL (RFC 2308), and not at all without an SOA", function()
    -- rbldnsd puts the zone's SOA in the authority section of NXDOMAIN
    -- answers; its negative TTL is min(SOA TTL 60, minimum 1) = 1 s
    local bl = DNS.retry_start(DNS.start_rbldnsd, { zone = "bl.example.test", entries = {
      "$SOA 60 ns.bl.example.test. hostmaster.bl.example.test. 1 600 300 86400 1", "192.0.2.7" } })
    local srv = start(bl.server)
    local q = "a@9.2.0.192.bl.example.test"
    assert.equal("550 5.0.0 nxdomain", ask(srv, q))
    assert.equal("550 5.0.0 nxdomain", ask(srv, q))
    local function asked()
      local n = 0
      for _, e in ipairs(bl:queries()) do
        if (type(e) == "table" and e.name or e):lower() == "9.2.0.192.bl.example.test" then n = n + 1 end
      end
      return n
    end
    assert.equal(1, asked())
    socket.sleep(1.2)
    assert.equal("550 5.0.0 nxdomain", ask(srv, q))
    assert.equal(2, asked())
    -- dnsmasq's NXDOMAIN for its --local names carries no SOA: asked each time
    local d = DNS.retry_start(DNS.start, { a = { ["mx1.good.example"] = "192.0.2.1" }, ttl = 60 })
    H.stop_all()
    srv = start(d.server)
    assert.equal("550 5.0.0 nxdomain", ask(srv, "a@nothing.example"))
    assert.equal("550 5.0.0 nxdomain", ask(srv, "a@nothing.example"))
    assert.equal(2, d:asked("nothing.example", "A"))
  end)

  it("timeouts are not cached: the same question goes out again", function()
    local hole = DNS.black_hole()
    local srv = start(hole.server)
    assert.equal("550 5.0.0 timeout", ask(srv, "a@mx1.good.example"))
    assert.equal("550 5.0.0 timeout", ask(srv, "a@mx1.good.example"))
    assert.equal(2, hole:received())
    local st, text = stats(srv)
    assert.equal(0, st.dns_cache_entries, text)
  end)

  it("concurrent askers of one question share one query", function()
    -- a TTL of 0: nothing is cached, so only the sharing saves the second question
    local d = DNS.retry_start(DNS.start, { a = { ["mx1.good.example"] = "192.0.2.1" } })
    local srv = start(d.server)
    assert.equal("550 5.0.0 192.0.2.1 192.0.2.1", ask(srv, "two@mx1.good.example"))
    assert.equal(1, d:asked("mx1.good.example", "A"))
    local st, text = stats(srv)
    assert.equal(1, st.dns_cache_joined_total, text)
    assert.equal(1, st.dns_cache_misses_total, text)
  end)

  it("two sessions asking one question at once share one query (and its timeout)", function()
    local hole = DNS.black_hole()
    local srv = start(hole.server)
    local cs = {}
    for i = 1, 2 do
      cs[i] = H.client(srv.port)
      assert.equal(250, (cs[i]:ehlo()))
    end
    for i = 1, 2 do assert(cs[i]:send("MAIL FROM:<a@slow.example>\r\n")) end
    for i = 1, 2 do
      local code, text = cs[i]:read_reply()
      assert.equal(550, code, text)
      assert.equal("550 5.0.0 timeout", text)
      cs[i]:close()
    end
    assert.equal(1, hole:received())
    local st, text = stats(srv)
    assert.equal(1, st.dns_cache_joined_total, text)
    assert.equal(1, st.dns_timeouts_total, text)
  end)

  it("dns.cache_size = 0 turns caching and sharing off", function()
    local d = DNS.retry_start(DNS.start, { a = { ["mx1.good.example"] = "192.0.2.1" }, ttl = 60 })
    local srv = start(d.server, "cache_size = 0")
    ask(srv, "a@mx1.good.example")
    assert.equal("550 5.0.0 192.0.2.1 192.0.2.1", ask(srv, "two@mx1.good.example"))
    assert.equal(3, d:asked("mx1.good.example", "A"))
    local st, text = stats(srv)
    assert.equal(0, st.dns_cache_hits_total + st.dns_cache_misses_total + st.dns_cache_entries, text)
  end)

  it("is bounded by dns.cache_size: the least recently used answer goes", function()
    local d = DNS.retry_start(DNS.start, { a = { ["a.example"] = "192.0.2.1", ["b.example"] = "192.0.2.2",
                                                 ["c.example"] = "192.0.2.3" }, ttl = 60 })
    local srv = start(d.server, "cache_size = 2")
    ask(srv, "a@a.example")
    ask(srv, "a@b.example")
    ask(srv, "a@a.example")  -- a is now the most recent
    ask(srv, "a@c.example")  -- evicts b
    ask(srv, "a@a.example")
    ask(srv, "a@b.example")
    assert.equal(1, d:asked("a.example", "A"))
    assert.equal(2, d:asked("b.example", "A"))
    assert.equal(1, d:asked("c.example", "A"))
    local st, text = stats(srv)
    assert.equal(2, st.dns_cache_entries, text)
  end)

  it("moatctl dns flush empties it: the next session asks again", function()
    local d = DNS.retry_start(DNS.start, { a = { ["mx1.good.example"] = "192.0.2.1" }, ttl = 60 })
    local srv = start(d.server)
    ask(srv, "a@mx1.good.example")
    local rc, out = srv:ctl("dns flush")
    assert.equal(0, rc, out)
    assert.equal("flushed: 1 DNS cache entries\n", out)
    assert.equal(0, stats(srv).dns_cache_entries)
    ask(srv, "a@mx1.good.example")
    assert.equal(2, d:asked("mx1.good.example", "A"))
    rc, out = srv:ctl("dns")
    assert.are_not.equal(0, rc)
    assert.truthy(out:find("usage: dns flush", 1, true), out)
  end)
end)
