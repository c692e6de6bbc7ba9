-- Integration: the figures of `moatctl stats` and of the Prometheus endpoint
-- (README "Logs and metrics", DESIGN: moatctl stats).  Every test does things
-- a user does (connects, gets refused, sends, gets rejected, makes a script
-- ask DNS) and asserts the exact change of every counter it touched, and that
-- the counters it did not touch stayed put.  Every figure is read both ways:
-- `moatctl stats` and GET /metrics must agree, sample for sample.
local socket = require "socket"
local moat = require "helpers.moat"
local DNS = require "helpers.dns"

local open = {}   -- every client of the current test, closed in after_each

local function connect(port, source)
  local c = moat.client(port, { source = source })
  open[#open + 1] = c
  return c
end

-- The counters (not the gauges) of stats.c, for the "nothing else moved" checks.
local COUNTERS = {
  "connections_total", "refused_denied_total", "refused_restrict_total", "refused_limit_total",
  "refused_blocked_total", "refused_proxy_total", "transactions_total", "messages_accepted_total", "messages_rejected_total",
  "messages_discarded_total", "rcpts_accepted_total", "rcpts_rejected_total", "hook_errors_total",
  "dns_queries_total", "dns_timeouts_total", "dns_failures_total",
  "dns_cache_hits_total", "dns_cache_misses_total", "dns_cache_joined_total", "spool_commits_total",
  "refused_disk_full_total",
  "reloads_ok_total", "reloads_failed_total",
  "spf_pass_total", "spf_fail_total", "spf_softfail_total", "spf_neutral_total", "spf_none_total",
  "spf_permerror_total", "spf_temperror_total",
  "shadow_hooks_total", "shadow_skipped_total", "shadow_errors_total",
  "callout_ok_total", "callout_rejected_total", "callout_tempfail_total", "callout_cached_total",
  "callout_probes_total", "callout_joined_total",
}

local function verdict_key(policy, phase, action, code)
  return ("%s|%s|%s|%s"):format(policy, phase, action, code)
end

-- `moatctl stats`: { name = number }, { "policy|phase|action|code" = n }, text.
local function ctl_stats(srv)
  local rc, out = srv:ctl("stats")
  assert.equals(0, rc, out)
  local t, verdicts = {}, {}
  for line in out:gmatch("[^\n]+") do
    local name, v = line:match("^([%w_]+) ([%d.e+-]+)$")
    if name then
      t[name] = tonumber(v)
    else
      local p, ph, a, code, n = line:match("^verdict policy=(.-) phase=(%S+) action=(%S+) code=(%-?%d+) (%d+)$")
      local sph, live, shadow, sn = line:match("^shadow_diff phase=(%S+) live=(%S+) shadow=(%S+) (%d+)$")
      assert.truthy(p or sph, "unparsable moatctl stats line: " .. line)
      if p then verdicts[verdict_key(p, ph, a, code)] = tonumber(n)
      else verdicts["shadow|" .. sph .. "|" .. live .. "|" .. shadow] = tonumber(sn) end
    end
  end
  return t, verdicts, out
end

-- Label set of a Prometheus sample, per the text exposition format: values
-- are double-quoted with \\, \" and \n escaped.  Fails on anything else.
local function parse_labels(s, line)
  local labels, i = {}, 1
  while i <= #s do
    local name, eq = s:match("^([%a_][%w_]*)()=\"", i)
    assert.truthy(name, "bad label set in: " .. line)
    i = eq + 2
    local val = {}
    while true do
      local ch = s:sub(i, i)
      assert.truthy(ch ~= "", "unterminated label value in: " .. line)
      if ch == "\\" then
        local nx = s:sub(i + 1, i + 1)
        local un = ({ ["\\"] = "\\", ['"'] = '"', n = "\n" })[nx]
        assert.truthy(un, "bad escape \\" .. nx .. " in: " .. line)
        val[#val + 1] = un
        i = i + 2
      elseif ch == '"' then
        i = i + 1
        break
      else
        val[#val + 1] = ch
        i = i + 1
      end
    end
    labels[name] = table.concat(val)
    if s:sub(i, i) == "," then i = i + 1 end
  end
  return labels
end

-- GET /metrics: { name = number } (without the moat_ prefix), verdicts, body.
-- Every sample must have its # TYPE line and parse.
local function prom_stats(mport)
  local http = require "socket.http"
  local ltn12 = require "ltn12"
  local chunks = {}
  local ok, code = http.request {
    url = ("http://127.0.0.1:%d/metrics"):format(mport), sink = ltn12.sink.table(chunks),
  }
  assert.truthy(ok, tostring(code))
  assert.equals(200, code)
  local body = table.concat(chunks)
  local t, verdicts, typed = {}, {}, {}
  for line in body:gmatch("[^\n]+") do
    local tname = line:match("^# TYPE (moat_[%w_]+) %a+$")
    if tname then typed[tname] = true
    elseif not line:match("^# HELP moat_[%w_]+ ") then
      local name, labels, v = line:match("^(moat_[%w_]+)(%b{}) (%S+)$")
      if not name then
        name, v = line:match("^(moat_[%w_]+) (%S+)$")
      end
      assert.truthy(name and tonumber(v), "unparsable sample: " .. line)
      assert.truthy(typed[name], "sample without a # TYPE line before it: " .. line)
      if labels and name == "moat_shadow_diffs_total" then
        local l = parse_labels(labels:sub(2, -2), line)
        verdicts["shadow|" .. l.phase .. "|" .. l.live .. "|" .. l.shadow] = tonumber(v)
      elseif labels then
        assert.equals("moat_verdicts_total", name, line)
        local l = parse_labels(labels:sub(2, -2), line)
        verdicts[verdict_key(l.policy, l.phase, l.action, l.code)] = tonumber(v)
      else
        t[name:sub(6)] = tonumber(v)
      end
    end
  end
  return t, verdicts, body
end

-- Both renderings, which must agree exactly (the server is idle while they are read).
local function stats(srv)
  local t, v, text = ctl_stats(srv)
  if srv.mport then
    local pt, pv, body = prom_stats(srv.mport)
    assert.same(t, pt, "moatctl stats and /metrics disagree:\n" .. text .. "\n" .. body)
    assert.same(v, pv, "moatctl stats and /metrics disagree on verdicts:\n" .. text .. "\n" .. body)
  end
  return t, v, text
end

-- moat.start with the Prometheus endpoint on a port of its own.
local function start(opts)
  local mport = moat.free_port()
  local extra = ('metrics = { address = "127.0.0.1", port = %d }'):format(mport)
  opts.extra = opts.extra and (opts.extra .. "\n" .. extra) or extra
  local srv = moat.start(opts)
  srv:wait_log("event=metrics address=127%.0%.0%.1 port=" .. mport)
  srv.mport = mport
  return srv
end

-- after - before for every counter; `want` lists the ones that must have
-- moved (by exactly that much), all the others must not have moved.
local function assert_deltas(before, after, want, text)
  local got, expect = {}, {}
  for _, name in ipairs(COUNTERS) do
    assert.truthy(before[name] and after[name], "no counter " .. name .. " in:\n" .. (text or ""))
    got[name] = after[name] - before[name]
    expect[name] = want[name] or 0
  end
  assert.same(expect, got, text)
end

-- Poll until connections_current is n; returns the last stats.
local function wait_current(srv, n)
  local st
  moat.poll(function()
    st = ctl_stats(srv)
    return st.connections_current == n
  end, 5)
  return stats(srv)
end

-- A message through an open, EHLOed client: MAIL, RCPT..., DATA, the dot.
-- Returns the reply codes { mail, rcpt..., data, final } and the seconds the
-- client waited between sending the message and its final reply.
local function send(c, from, rcpts, msg)
  local codes = { (c:cmd("MAIL FROM:<" .. from .. ">")) }
  for _, r in ipairs(rcpts) do codes[#codes + 1] = (c:cmd("RCPT TO:<" .. r .. ">")) end
  local code = c:cmd("DATA")
  codes[#codes + 1] = code
  if code ~= 354 then return codes end
  local t0 = socket.gettime()
  assert(c:send(moat.dot_stuff(msg or moat.message())))
  codes[#codes + 1] = (c:read_reply())
  return codes, socket.gettime() - t0
end

-- RCPT localpart picks the verdict; MAIL localpart picks what happens at DATA
-- and after the dot; <blockme@...> temporarily blocks 127.0.0.9.
local SITE = [[
local moat = require "moat"
return {
  mail_from = function(s, addr) s.vars.from = addr and addr.localpart or "" end,
  rcpt = function(s, rcpt)
    local lp = rcpt.addr.localpart
    if lp == "bad" then return moat.reject(550, "5.7.1 bad recipient") end
    if lp == "later" then return moat.tempfail("4.7.1 later") end
    if lp == "ok" then return moat.accept() end
    if lp == "boom" then error("boom") end
    if lp == "blockme" then
      moat.tempblock.add("127.0.0.9", "stats test")
      return moat.reject(550, "5.7.1 blocked")
    end
  end,
  data = function(s)
    if s.vars.from == "nodata" then return moat.reject(554, "5.7.1 no data from you") end
  end,
  data_end = function(s, msg)
    if s.vars.from == "spammer" then return moat.reject(550, "5.7.1 spam") end
    if s.vars.from == "bin" then return moat.discard() end
  end,
}
]]

describe("moat stats and metrics", function()
  after_each(function()
    for _, c in ipairs(open) do pcall(c.close, c) end
    open = {}
    moat.stop_all()
    DNS.stop_all()
  end)

  it("a fresh server: every counter 0, one generation, and both renderings list the same figures", function()
    local srv = start { scripts = { ["site.lua"] = SITE } }
    local st, verdicts, text = stats(srv)
    for _, name in ipairs(COUNTERS) do assert.equals(0, st[name], name .. "\n" .. text) end
    assert.equals(0, st.connections_current, text)
    assert.equals(0, st.spool_commit_seconds_sum, text)
    assert.equals(0, st.spool_commit_seconds_max, text)
    assert.equals(1, st.generation, text)
    assert.equals(1, st.runtimes_live, text)
    assert.truthy(st.lua_memory_bytes > 10000 and st.lua_memory_bytes < 64 * 1024 * 1024, text)
    assert.same({}, verdicts)
    -- every figure is one of COUNTERS (so the "nothing else moved" checks
    -- below see every counter) or one of the seven gauges / latency figures
    local names, want = {}, {}
    for name in pairs(st) do names[#names + 1] = name end
    for _, name in ipairs(COUNTERS) do want[#want + 1] = name end
    for _, name in ipairs { "connections_current", "spool_commit_seconds_sum", "spool_commit_seconds_max",
                            "generation", "runtimes_live", "lua_memory_bytes", "dns_cache_entries", "callout_running" } do want[#want + 1] = name end
    table.sort(names)
    table.sort(want)
    assert.same(want, names, text)
  end)

  it("connections_current follows the open sessions; connections_total counts each one once", function()
    local srv = start { scripts = { ["site.lua"] = SITE } }
    local before = stats(srv)
    local cs = {}
    for i = 1, 5 do
      cs[i] = connect(srv.port)
      assert.equals(220, cs[i].greeting_code, tostring(cs[i].greeting))
    end
    local st, _, text = wait_current(srv, 5)
    assert.equals(5, st.connections_current, text)
    assert_deltas(before, st, { connections_total = 5 }, text)
    -- two leave (one politely, one by hanging up)
    assert.equals(221, (cs[1]:cmd("QUIT")))
    cs[1]:close()
    cs[2]:close()
    st, _, text = wait_current(srv, 3)
    assert.equals(3, st.connections_current, text)
    assert_deltas(before, st, { connections_total = 5 }, text)
    -- one more comes, the rest leave
    local late = connect(srv.port)
    assert.equals(220, late.greeting_code)
    st, _, text = wait_current(srv, 4)
    assert.equals(4, st.connections_current, text)
    for i = 3, 5 do cs[i]:close() end
    late:close()
    st, _, text = wait_current(srv, 0)
    assert.equals(0, st.connections_current, text)
    assert_deltas(before, st, { connections_total = 6 }, text)
  end)

  it("refused connections are counted by reason, and not as connections", function()
    local srv = start {
      ports = 1,
      scripts = { ["site.lua"] = SITE },
      tables = { denied_ips = "127.0.0.40\n" },
      listener = '{ { port = %PORT%, address = "127.0.0.1" }, ' ..
                 '{ port = %PORT1%, address = "127.0.0.1", restrict = "grant", remote = "127.0.0.1" }, ' ..
                 'limit_per_address = 2 }',
    }
    local P, P1 = srv.port, srv.vars.PORT1
    local st0 = stats(srv)

    -- denied_ips: closed without a greeting, twice (on either socket)
    local d1 = connect(P, "127.0.0.40")
    assert.is_nil(d1.greeting_code, tostring(d1.greeting))
    local d2 = connect(P1, "127.0.0.40")
    assert.is_nil(d2.greeting_code, tostring(d2.greeting))
    local st1, _, text = stats(srv)
    assert_deltas(st0, st1, { refused_denied_total = 2 }, text)

    -- the socket's grant list: 127.0.0.1 is granted, 127.0.0.20 is not (3 tries)
    local g = connect(P1)
    assert.equals(220, g.greeting_code)
    for _ = 1, 3 do
      local r = connect(P1, "127.0.0.20")
      assert.is_nil(r.greeting_code, tostring(r.greeting))
    end
    -- and 127.0.0.20 on the unrestricted socket is fine
    local ok20 = connect(P, "127.0.0.20")
    assert.equals(220, ok20.greeting_code)
    local st2
    st2, _, text = stats(srv)
    assert_deltas(st1, st2, { refused_restrict_total = 3, connections_total = 2 }, text)

    -- limit_per_address = 2: the third and fourth from 127.0.0.5 get 421
    local k1, k2 = connect(P, "127.0.0.5"), connect(P, "127.0.0.5")
    assert.equals(220, k1.greeting_code)
    assert.equals(220, k2.greeting_code)
    local k3, k4 = connect(P, "127.0.0.5"), connect(P1, "127.0.0.5")
    assert.equals(421, k3.greeting_code, tostring(k3.greeting))
    -- (on P1, 127.0.0.5 is not granted: the grant list is checked first)
    assert.is_nil(k4.greeting_code, tostring(k4.greeting))
    local st3
    st3, _, text = stats(srv)
    assert_deltas(st2, st3, { refused_limit_total = 1, refused_restrict_total = 1, connections_total = 2 }, text)

    -- a temporarily blocked address: 421, counted as blocked (a script blocks 127.0.0.9)
    local c = connect(P)
    c:ehlo()
    assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example>")))
    assert.equals(550, (c:cmd("RCPT TO:<blockme@example.test>")))
    c:close()
    local st4
    st4, _, text = stats(srv)
    for _ = 1, 2 do
      local b = connect(P, "127.0.0.9")
      assert.equals(421, b.greeting_code, tostring(b.greeting))
    end
    local st5
    st5, _, text = stats(srv)
    assert_deltas(st4, st5, { refused_blocked_total = 2 }, text)

    -- the log agrees with the counters
    assert.equals(2, #srv:events("refused", { reason = "denied_ips" }))
    assert.equals(4, #srv:events("refused", { reason = "not_granted" }))
    assert.equals(1, #srv:events("refused", { reason = "limit_per_address" }))
    assert.equals(2, #srv:events("refused", { reason = "temporarily_blocked" }))
    assert.equals(st5.connections_total, #srv:events("connect"))
  end)

  it("transactions, messages accepted / rejected / discarded and recipients", function()
    local srv = start { scripts = { ["site.lua"] = SITE } }
    local c = connect(srv.port)
    assert.equals(250, (c:ehlo()))
    local before = stats(srv)

    -- accepted, with 2 of 3 recipients
    assert.same({ 250, 250, 550, 250, 354, 250 },
                (send(c, "a@remote.example", { "joe@example.test", "bad@example.test", "ok@example.test" })))
    local st, _, text = stats(srv)
    assert_deltas(before, st, { transactions_total = 1, messages_accepted_total = 1, rcpts_accepted_total = 2,
                                rcpts_rejected_total = 1, spool_commits_total = 1 }, text)
    -- rejected after the dot
    local st1 = st
    assert.same({ 250, 250, 354, 550 }, (send(c, "spammer@remote.example", { "joe@example.test" })))
    st, _, text = stats(srv)
    assert_deltas(st1, st, { transactions_total = 1, messages_rejected_total = 1, rcpts_accepted_total = 1 }, text)
    -- rejected at DATA
    local st2 = st
    assert.same({ 250, 250, 554 }, (send(c, "nodata@remote.example", { "joe@example.test" })))
    st, _, text = stats(srv)
    assert_deltas(st2, st, { transactions_total = 1, messages_rejected_total = 1, rcpts_accepted_total = 1 }, text)
    -- accepted and discarded: the client sees 250, nothing is spooled
    local st3 = st
    assert.same({ 250, 250, 354, 250 }, (send(c, "bin@remote.example", { "joe@example.test" })))
    st, _, text = stats(srv)
    assert_deltas(st3, st, { transactions_total = 1, messages_discarded_total = 1, rcpts_accepted_total = 1 }, text)
    -- a transaction given up with RSET, one whose only recipient is refused,
    -- and a MAIL refused for its syntax (no transaction)
    local st4 = st
    assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example>")))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    assert.equals(250, (c:cmd("RSET")))
    assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example>")))
    assert.equals(451, (c:cmd("RCPT TO:<later@example.test>")))
    assert.equals(554, (c:cmd("DATA")))
    assert.equals(250, (c:cmd("RSET")))
    assert.equals(501, (c:cmd("MAIL FROM:<not an address>")))
    st, _, text = stats(srv)
    assert_deltas(st4, st, { transactions_total = 2, rcpts_accepted_total = 1, rcpts_rejected_total = 1 }, text)
    assert.equals(1, #srv:spool_files())
    assert.equals(1, st.messages_accepted_total)
  end)

  it("messages refused by the core after the dot (too big, a line too long) count as rejected", function()
    local srv = start { smtp = { max_message_size = 4096, max_line_length = 1000 } }
    local c = connect(srv.port)
    assert.equals(250, (c:ehlo()))
    local before = stats(srv)
    local big = "Subject: big\r\n\r\n" .. ("x"):rep(70) .. "\r\n"
    big = big:rep(80)
    assert.same({ 250, 250, 354, 552 }, (send(c, "a@remote.example", { "joe@example.test" }, big)))
    local long = "Subject: long\r\n\r\n" .. ("y"):rep(1200) .. "\r\n"
    assert.same({ 250, 250, 354, 500 }, (send(c, "a@remote.example", { "joe@example.test" }, long)))
    local st, _, text = stats(srv)
    assert_deltas(before, st, { transactions_total = 2, messages_rejected_total = 2, rcpts_accepted_total = 2 }, text)
    c:close()
  end)

  it("verdicts are counted by policy, phase, action and code; script errors as hook errors", function()
    local srv = start { scripts = { ["site.lua"] = SITE } }
    local c = connect(srv.port)
    c:ehlo()
    assert.equals(250, (c:cmd("MAIL FROM:<spammer@remote.example>")))
    assert.equals(550, (c:cmd("RCPT TO:<bad@example.test>")))
    assert.equals(550, (c:cmd("RCPT TO:<bad@example.test>")))
    assert.equals(451, (c:cmd("RCPT TO:<later@example.test>")))
    assert.equals(250, (c:cmd("RCPT TO:<ok@example.test>")))
    assert.equals(451, (c:cmd("RCPT TO:<boom@example.test>")))
    assert.equals(354, (c:cmd("DATA")))
    assert(c:send(moat.dot_stuff(moat.message())))
    assert.equals(550, (c:read_reply()))
    assert.equals(250, (c:cmd("MAIL FROM:<nodata@remote.example>")))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    assert.equals(554, (c:cmd("DATA")))
    c:close()
    -- the stock relay policy refuses relaying for a non-client
    local r = connect(srv.port, "127.0.0.7")
    r:ehlo()
    assert.equals(250, (r:cmd("MAIL FROM:<a@remote.example>")))
    assert.equals(550, (r:cmd("RCPT TO:<x@elsewhere.example>")))
    assert.equals(550, (r:cmd("RCPT TO:<y@elsewhere.example>")))
    r:close()
    local st, verdicts, text = stats(srv)
    assert.same({
      [verdict_key("site.lua", "rcpt", "reject", 550)] = 2,
      [verdict_key("site.lua", "rcpt", "tempfail", 451)] = 1,
      [verdict_key("site.lua", "rcpt", "accept", 0)] = 1,
      [verdict_key("error", "rcpt", "error", 451)] = 1,
      [verdict_key("site.lua", "data_end", "reject", 550)] = 1,
      [verdict_key("site.lua", "data", "reject", 554)] = 1,
      [verdict_key("relay", "rcpt", "reject", 550)] = 2,
    }, verdicts, text)
    assert.equals(1, st.hook_errors_total, text)
    assert.equals(1, #srv:events("hook_error"))
    assert.equals(6, st.rcpts_rejected_total, text)
    assert.equals(2, st.rcpts_accepted_total, text)
    assert.equals(2, st.messages_rejected_total, text)
  end)

  it("a policy name with a quote or a backslash stays a valid Prometheus label", function()
    local srv = start { scripts = { { 'we"ird\\name.lua', SITE } } }
    local c = connect(srv.port)
    c:ehlo()
    assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example>")))
    assert.equals(550, (c:cmd("RCPT TO:<bad@example.test>")))
    c:close()
    -- stats() parses /metrics by the exposition format and compares it with moatctl stats
    local _, verdicts, text = stats(srv)
    assert.same({ [verdict_key('we"ird\\name.lua', "rcpt", "reject", 550)] = 1 }, verdicts, text)
    local _, _, body = prom_stats(srv.mport)
    assert.truthy(body:find('\nmoat_verdicts_total{policy="we\\"ird\\\\name.lua",phase="rcpt",action="reject",code="550"} 1\n',
                            1, true), body)
  end)

  it("spool commits and their latency: one commit per stored message, latency within what the client waited", function()
    local srv = start { scripts = { ["site.lua"] = SITE } }
    local c = connect(srv.port)
    c:ehlo()
    local before = stats(srv)
    local waited, longest = 0, 0
    for i = 1, 4 do
      local codes, w = send(c, "a@remote.example", { "joe@example.test" }, moat.message("commit " .. i))
      assert.same({ 250, 250, 354, 250 }, codes)
      waited = waited + w
      longest = math.max(longest, w)
    end
    -- a refused and a discarded message commit nothing
    assert.equals(550, (send(c, "spammer@remote.example", { "joe@example.test" }))[4])
    assert.equals(250, (send(c, "bin@remote.example", { "joe@example.test" }))[4])
    local st, _, text = stats(srv)
    assert_deltas(before, st, { transactions_total = 6, messages_accepted_total = 4, messages_rejected_total = 1,
                                messages_discarded_total = 1, rcpts_accepted_total = 6, spool_commits_total = 4 }, text)
    assert.equals(4, #srv:spool_files())
    -- the latency is measured from submit to durable: more than nothing, and
    -- never more than the client waited from its message to the 250 (the commit
    -- happens in between); the slowest commit is between the mean and the sum.
    local sum, max = st.spool_commit_seconds_sum, st.spool_commit_seconds_max
    assert.truthy(sum > 0, text)
    assert.truthy(max > 0, text)
    assert.truthy(sum <= waited, ("commit time %.6f s > the %.6f s the client waited\n%s"):format(sum, waited, text))
    assert.truthy(max <= longest, ("slowest commit %.6f s > the client's longest wait %.6f s"):format(max, longest))
    assert.truthy(max <= sum and max >= sum / 4, text)
    -- a fifth message: the sum grows, max never goes down
    assert.same({ 250, 250, 354, 250 }, (send(c, "a@remote.example", { "joe@example.test" })))
    local st2
    st2, _, text = stats(srv)
    assert.equals(5, st2.spool_commits_total - before.spool_commits_total, text)
    assert.truthy(st2.spool_commit_seconds_sum > sum, text)
    assert.truthy(st2.spool_commit_seconds_max >= max, text)
  end)

  describe("DNS", function()
    -- MAIL FROM:<kind@name>: "a" asks one A query, "two" asks two at once
    -- (query_all); the sender is refused with the outcome.
    local DNS_SITE = [[
local moat = require "moat"
return {
  mail_from = function(s, addr)
    if addr.localpart == "two" then
      local r = moat.dns.query_all { { "one." .. addr.domain, "A" }, { "two." .. addr.domain, "A" } }
      return moat.reject(550, "5.0.0 " .. tostring(r[1].error) .. " " .. tostring(r[2].error))
    end
    local ans, err = moat.dns.query(addr.domain, "A")
    return moat.reject(550, "5.0.0 " .. (ans and table.concat(ans, ",") or tostring(err)))
  end,
}
]]
    local function ask(srv, what)
      local c = connect(srv.port)
      c:ehlo()
      local code, text = c:cmd("MAIL FROM:<" .. what .. ">")
      c:close()
      assert.equals(550, code, text)
      return text
    end
    local function dns_conf(server, timeout_ms)
      return ('dns = { servers = { "%s" }, timeout_ms = %d, tries = 1 }'):format(server, timeout_ms)
    end

    it("a server that never answers: every query counted, and counted as a timeout", function()
      local hole = DNS.black_hole()
      local srv = start { scripts = { ["site.lua"] = DNS_SITE }, extra = dns_conf(hole.server, 200) }
      local before = stats(srv)
      assert.equals("550 5.0.0 timeout", ask(srv, "a@mx1.good.example"))
      assert.equals("550 5.0.0 timeout", ask(srv, "a@mx2.good.example"))
      assert.equals("550 5.0.0 timeout timeout", ask(srv, "two@good.example"))
      local st, _, text = stats(srv)
      assert_deltas(before, st, { dns_queries_total = 4, dns_timeouts_total = 4, dns_cache_misses_total = 4,
                                  transactions_total = 3,
                                  connections_total = 3 }, text)
      assert.equals(4, hole:received())
    end)

    it("a closed port (ICMP unreachable): queries counted as failures, not timeouts", function()
      local dead = DNS.free_udp_port()
      local srv = start { scripts = { ["site.lua"] = DNS_SITE }, extra = dns_conf("127.0.0.1:" .. dead, 500) }
      local before = stats(srv)
      -- (one query at a time: of two asked at once with query_all, one is
      -- refused and the other times out, every time, so that split would be
      -- c-ares' behaviour, not a count)
      assert.equals("550 5.0.0 servfail", ask(srv, "a@mx1.good.example"))
      assert.equals("550 5.0.0 servfail", ask(srv, "a@mx2.good.example"))
      local st, _, text = stats(srv)
      assert_deltas(before, st, { dns_queries_total = 2, dns_failures_total = 2, dns_cache_misses_total = 2,
                                  transactions_total = 2,
                                  connections_total = 2 }, text)
    end)

    it("answered queries (an address, NXDOMAIN) are neither timeouts nor failures", function()
      local d = DNS.retry_start(DNS.start, { a = { ["mx1.good.example"] = "192.0.2.1" } })
      local srv = start { scripts = { ["site.lua"] = DNS_SITE }, extra = dns_conf(d.server, 500) }
      local before = stats(srv)
      assert.equals("550 5.0.0 192.0.2.1", ask(srv, "a@mx1.good.example"))
      assert.equals("550 5.0.0 nxdomain", ask(srv, "a@nothing.example"))
      local st, _, text = stats(srv)
      assert_deltas(before, st, { dns_queries_total = 2, dns_cache_misses_total = 2, transactions_total = 2,
                                  connections_total = 2 }, text)
      assert.equals(1, d:asked("mx1.good.example", "A"))
    end)
  end)
end)
