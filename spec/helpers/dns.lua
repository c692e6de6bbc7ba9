-- spec/helpers/dns.lua: real DNS servers for integration specs.
--
--   local dns = require "helpers.dns"
--
--   -- dnsmasq with exactly these records; every other name is NXDOMAIN
--   local d = dns.start {
--     a    = { ["mx1.good.example"] = "192.0.2.1", ["multi.example"] = { "192.0.2.2", "192.0.2.3" } },
--     aaaa = { ["v6.example"] = "2001:db8::1" },
--     mx   = { ["good.example"] = "mx1.good.example",                     -- preference 10
--              ["two.example"] = { { "mx1.good.example", 10 }, { "mx2.two.example", 20 } },
--              ["pref.example"] = { "mx1.good.example", 30 } },                  -- one host, preference 30
--     ptr  = { ["192.0.2.1"] = "mx1.good.example" },                    -- an IP or a full in-addr/ip6 name
--     txt  = { ["t.example"] = "v=spf1 -all" },                        -- or a list of strings
--     wildcard_a = { ["dyn.example"] = "192.0.2.9" },  -- A (or AAAA) for the name AND every name under it
--     ttl = 60,                                        -- TTL of every answer (default 0: never cached)
--   }
--   Caveats (dnsmasq): a/aaaa names are exact and dnsmasq also answers the PTR
--   of each of their addresses with that name (use wildcard_a, which makes no
--   PTR, when an address must have none); a name that has some record answers
--   NOERROR/no data for the other types, every other name is NXDOMAIN; a TXT
--   string must not contain a comma (dnsmasq splits strings there).
--   d.port, d.address ("127.0.0.1"), d.server ("127.0.0.1:PORT", for moat's dns.servers)
--   d:queries()          -> list of { type = "MX", name = "good.example" } asked so far, in order
--   d:asked(name [,type])-> how many queries for that name (case-insensitive), optionally of that type
--   d:clear()            -> forget the queries so far (d:queries() only shows later ones)
--   (queries/asked/clear first wait until the log shows every query answered so far)
--   d:stop()             -> kill it (also dns.stop_all(), for after_each / teardown)
--
--   -- rbldnsd serving a DNSBL zone (ip4set): listed addresses answer 127.0.0.2
--   local bl = dns.start_rbldnsd { zone = "bl.example.test",
--                                  entries = { "192.0.2.7", "198.51.100.0/24", "203.0.113.9 :127.0.0.4:" } }
--   bl.port, bl.server, bl:queries() (names asked, from its -l log), bl:stop()
--   Each entry is an ip4set line (rbldnsd(8)): an address, range or CIDR
--   block, optionally followed by ":A-value:TXT" (default 127.0.0.2, "listed");
--   lines are written verbatim, so "!192.0.2.8" (exclusion) works too.
--
--   -- a "black hole": a bound UDP port that never answers (timeout cases)
--   local hole = dns.black_hole()   -- hole.port, hole.server, hole:received() (packets so far), hole:stop()
--
--   -- a closed port (nothing listens: queries get ICMP "port unreachable")
--   local dead = dns.free_udp_port()      -- then dns = { servers = { "127.0.0.1:" .. dead } }
--
--   dns.ptr_name("192.0.2.1") -> "1.2.0.192.in-addr.arpa" (IPv6: nibbles under ip6.arpa)
--   dns.stop_all()            -> stop every server still running (use in teardown/after_each)
--
--   -- a DNS client for specs (and used to wait until a server answers)
--   dns.query(port, name, type [, timeout]) -> { rcode = "noerror"|"nxdomain"|"servfail"|"refused"|..,
--                                               answers = { "192.0.2.1" | { host=, pref= } | "text" } }
--                                               or nil, "timeout"
--
-- Every server binds 127.0.0.1 on a free port, is started in the foreground
-- (so the helper owns its pid) and is only returned once it answers a query.
-- Its files live in a fresh directory under spec/tmp/ (removed on stop unless
-- MOAT_KEEP_TMP is set).  Types: A, AAAA, MX, PTR, TXT.
local socket = require "socket"
local lfs = require "lfs"

local M = {}

-- ---- small utilities (shared with helpers.moat) ----------------------------

local H = require "helpers.moat"
local shquote, read_file, write_file, alive, poll = H.shquote, H.read_file, H.write_file, H.alive, H.poll
local tmpdir, is_root, spawn = H.tmpdir, H.is_root, H.spawn
M.root = H.root

-- A port that is free right now on 127.0.0.1 for UDP and for TCP (dnsmasq
-- listens on both; a port free for UDP alone made its start fail now and then).
-- One registry with helpers.moat's free_port: a port given to a DNS server
-- (which listens on TCP too) is never given to a moat as well.
local claim_port = H.claim_port
function M.free_udp_port()
  for _ = 1, 50 do
    local u = assert(socket.udp())
    assert(u:setsockname("127.0.0.1", 0))
    local _, port = u:getsockname()
    local t = socket.tcp()
    local ok = t:bind("127.0.0.1", tonumber(port))
    t:close()
    u:close()
    if ok and claim_port(tonumber(port)) then return tonumber(port) end
  end
  error("no port free for both UDP and TCP")
end



-- ---- a minimal DNS client ---------------------------------------------------

local TYPES = { A = 1, NS = 2, CNAME = 5, PTR = 12, MX = 15, TXT = 16, AAAA = 28 }
local TYPE_NAMES = {}
for k, v in pairs(TYPES) do TYPE_NAMES[v] = k end
local RCODES = { [0] = "noerror", "formerr", "servfail", "nxdomain", "notimp", "refused" }

local function encode_name(name)
  local out = {}
  for label in (name:gsub("%.$", "") .. "."):gmatch("([^.]*)%.") do
    if label ~= "" then out[#out + 1] = string.char(#label) .. label end
  end
  return table.concat(out) .. "\0"
end

-- Name at offset i (1-based) of msg, following compression pointers.
local function decode_name(msg, i)
  local labels, jumped, after = {}, false, nil
  for _ = 1, 128 do
    local len = msg:byte(i)
    if not len then return nil end
    if len == 0 then
      if not jumped then after = i + 1 end
      return table.concat(labels, "."), after
    elseif len >= 192 then
      local ptr = ((len - 192) << 8) + msg:byte(i + 1)
      if not jumped then after = i + 2 end
      jumped = true
      i = ptr + 1
    else
      labels[#labels + 1] = msg:sub(i + 1, i + len)
      i = i + 1 + len
    end
  end
  return nil
end

local function decode_rdata(msg, typ, i, len)
  if typ == TYPES.A and len == 4 then
    return ("%d.%d.%d.%d"):format(msg:byte(i, i + 3))
  elseif typ == TYPES.AAAA and len == 16 then
    local g = {}
    for k = 0, 7 do g[#g + 1] = ("%x"):format((msg:byte(i + 2 * k) << 8) + msg:byte(i + 2 * k + 1)) end
    return table.concat(g, ":")
  elseif typ == TYPES.MX then
    return { pref = (msg:byte(i) << 8) + msg:byte(i + 1), host = (decode_name(msg, i + 2)) }
  elseif typ == TYPES.PTR or typ == TYPES.CNAME or typ == TYPES.NS then
    return (decode_name(msg, i))
  elseif typ == TYPES.TXT then
    local parts, j = {}, i
    while j < i + len do
      local n = msg:byte(j)
      parts[#parts + 1] = msg:sub(j + 1, j + n)
      j = j + 1 + n
    end
    return table.concat(parts)
  end
  return msg:sub(i, i + len - 1)
end

--- query(port, name, type [, timeout]) -> { rcode, answers }  or  nil, "timeout"
function M.query(port, name, qtype, timeout)
  qtype = (qtype or "A"):upper()
  local u = assert(socket.udp())
  u:settimeout(timeout or 1)
  assert(u:setpeername("127.0.0.1", port))
  local id = math.random(0, 65535)
  local q = string.pack(">I2I2I2I2I2I2", id, 0x0100, 1, 0, 0, 0) .. encode_name(name)
    .. string.pack(">I2I2", assert(TYPES[qtype], "unknown type " .. qtype), 1)
  u:send(q)
  local deadline = socket.gettime() + (timeout or 1)
  while socket.gettime() < deadline do
    local msg = u:receive()
    if not msg then break end
    if #msg >= 12 and string.unpack(">I2", msg) == id then
      u:close()
      local _, flags, qd, an = string.unpack(">I2I2I2I2", msg)
      local res = { rcode = RCODES[flags & 15] or tostring(flags & 15), answers = {} }
      local i = 13
      for _ = 1, qd do
        local _, after = decode_name(msg, i)
        i = after + 4
      end
      for _ = 1, an do
        local _, after = decode_name(msg, i)
        local typ, _, _, len = string.unpack(">I2I2I4I2", msg, after)
        local rd = after + 10
        if TYPE_NAMES[typ] == qtype then res.answers[#res.answers + 1] = decode_rdata(msg, typ, rd, len) end
        i = rd + len
      end
      return res
    end
  end
  u:close()
  return nil, "timeout"
end

-- Wait until something answers on port (any reply, NXDOMAIN included).
local function wait_ready(port, pid, what, log)
  local ok = poll(function()
    if pid and not alive(pid) then return "dead" end
    return M.query(port, "moat-readiness-probe.invalid", "A", 0.2) and true
  end, 10, 0.05)
  if ok ~= true then
    error(("%s did not %s on 127.0.0.1:%d; log:\n%s"):format(
      what, ok == "dead" and "start (exited)" or "answer", port, log and log() or ""), 3)
  end
end

-- ---- servers --------------------------------------------------------------

local running = {}

local Server = {}
Server.__index = Server

local function register(srv)
  srv.address = "127.0.0.1"
  srv.server = "127.0.0.1:" .. srv.port
  running[#running + 1] = srv
  return srv
end

function Server:stop()
  if self.stopped then return end
  self.stopped = true
  for i, s in ipairs(running) do
    if s == self then table.remove(running, i) break end
  end
  if self.sock then self.sock:close() end
  if self.pid then
    os.execute(("kill -TERM %d 2>/dev/null"):format(self.pid))
    if not poll(function() return not alive(self.pid) end, 5) then
      os.execute(("kill -KILL %d 2>/dev/null"):format(self.pid))
      poll(function() return not alive(self.pid) end, 5)
    end
  end
  if self.dir and not os.getenv("MOAT_KEEP_TMP") then os.execute("rm -rf " .. shquote(self.dir)) end
end

-- A server still running when the Lua state closes (busted exits) is killed.
Server.__gc = function(self) pcall(self.stop, self) end

function Server:log() return self.logfile and read_file(self.logfile) or "" end

-- Names the helper itself asks (readiness probes, sync markers) are not listed.
local function own_name(name)
  name = name:lower()
  return name:find("^moat%-readiness%-probe%.invalid%.?$") or name:find("^moat%-sync%-%d+%.invalid%.?$")
end

local function parse_queries(self)
  local out = {}
  for line in self:log():gmatch("[^\n]+") do
    local typ, name = self.parse_line(line)
    if typ then out[#out + 1] = { type = typ, name = (name:gsub("%.$", "")) } end
  end
  return out
end

-- Make sure every query answered so far is in the log: ask a marker name and
-- wait for it to show up (the servers log queries in the order they get them).
local sync_serial = 0
function Server:sync()
  if not self.parse_line then return end
  sync_serial = sync_serial + 1
  local marker = ("moat-sync-%d.invalid"):format(sync_serial)
  M.query(self.port, marker, "A", 1)
  local ok = poll(function()
    for _, q in ipairs(parse_queries(self)) do
      if q.name:lower() == marker then return true end
    end
  end, 5)
  if not ok then error(self.kind .. ": the query log does not show the marker query " .. marker, 2) end
end

function Server:queries()
  self:sync()
  local out, n = {}, 0
  for _, q in ipairs(parse_queries(self)) do
    if not own_name(q.name) then
      n = n + 1
      if n > (self.skip or 0) then out[#out + 1] = q end
    end
  end
  return out
end

function Server:clear()
  self.skip = 0
  self.skip = #self:queries()
end

function Server:asked(name, qtype)
  local n = 0
  name = name:lower():gsub("%.$", "")
  for _, q in ipairs(self:queries()) do
    if q.name:lower() == name and (not qtype or q.type == qtype:upper()) then n = n + 1 end
  end
  return n
end

function Server:query(name, qtype, timeout) return M.query(self.port, name, qtype, timeout) end

-- IP -> reverse name ("192.0.2.1" -> "1.2.0.192.in-addr.arpa"); other text unchanged.
local function ptr_name(ip)
  local a, b, c, d = ip:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if a then return ("%s.%s.%s.%s.in-addr.arpa"):format(d, c, b, a) end
  if ip:find(":", 1, true) then
    local head, tail = ip:match("^(.-)::(.*)$")
    local groups = {}
    local function add(part, list)
      for g in part:gmatch("[^:]+") do list[#list + 1] = g end
    end
    if head then
      local h, t = {}, {}
      add(head, h)
      add(tail, t)
      for _, g in ipairs(h) do groups[#groups + 1] = g end
      for _ = 1, 8 - #h - #t do groups[#groups + 1] = "0" end
      for _, g in ipairs(t) do groups[#groups + 1] = g end
    else
      add(ip, groups)
    end
    local hex = {}
    for _, g in ipairs(groups) do hex[#hex + 1] = ("%04x"):format(tonumber(g, 16)) end
    local nib = table.concat(hex):reverse()
    return nib:gsub(".", "%0."):sub(1, -2) .. ".ip6.arpa"
  end
  return ip
end
M.ptr_name = ptr_name

local function as_list(v) return type(v) == "table" and v or { v } end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t or {}) do ks[#ks + 1] = k end
  table.sort(ks)
  return ks
end

-- dnsmasq log lines: "... dnsmasq[123]: query[MX] good.example from 127.0.0.1"
local function dnsmasq_line(line)
  return line:match("query%[(%w+)%] (%S+) from ")
end

--- start{ a=, aaaa=, mx=, ptr=, txt= } -> dnsmasq server object (see the top of this file)
function M.start(records)
  records = records or {}
  local dir = tmpdir("dns")
  local port = M.free_udp_port()
  local args = {
    "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll", "--conf-file=/dev/null",
    "--bind-interfaces", "--listen-address=127.0.0.1", "--port=" .. port,
    "--log-queries", "--log-facility=" .. dir .. "/queries.log", "--pid-file=",
    "--cache-size=0", "--no-negcache",
    -- answer only from the records below: everything else is NXDOMAIN, never forwarded
    "--local=/#/",
    -- TTL of every answer (dnsmasq's default is 0, which nothing caches)
    "--local-ttl=" .. math.tointeger(records.ttl or 0),
  }
  if is_root() then args[#args + 1] = "--user=root"; args[#args + 1] = "--group=root" end
  -- A and AAAA: a host-record per name, carrying all of its addresses
  local hosts = {}
  for _, kind in ipairs { "a", "aaaa" } do
    for _, name in ipairs(sorted_keys(records[kind])) do
      hosts[name] = hosts[name] or {}
      for _, ip in ipairs(as_list(records[kind][name])) do table.insert(hosts[name], ip) end
    end
  end
  for _, name in ipairs(sorted_keys(hosts)) do
    args[#args + 1] = "--host-record=" .. name .. "," .. table.concat(hosts[name], ",")
  end
  -- wildcard_a: the name and every name under it, no PTR
  for _, name in ipairs(sorted_keys(records.wildcard_a)) do
    for _, ip in ipairs(as_list(records.wildcard_a[name])) do
      args[#args + 1] = ("--address=/%s/%s"):format(name, ip)
    end
  end
  for _, name in ipairs(sorted_keys(records.mx)) do
    local v = records.mx[name]
    if type(v) == "string" then v = { { v, 10 } } end
    if type(v[1]) == "string" and type(v[2]) == "number" then v = { v } end   -- one { host, pref }
    for _, e in ipairs(v) do
      if type(e) == "string" then e = { e, 10 } end
      args[#args + 1] = ("--mx-host=%s,%s,%d"):format(name, e[1], e[2] or 10)
    end
  end
  for _, ip in ipairs(sorted_keys(records.ptr)) do
    args[#args + 1] = ("--ptr-record=%s,%s"):format(ptr_name(ip), records.ptr[ip])
  end
  for _, name in ipairs(sorted_keys(records.txt)) do
    -- dnsmasq makes one character-string per comma-separated piece
    args[#args + 1] = ("--txt-record=%s,%s"):format(name, table.concat(as_list(records.txt[name]), ","))
  end
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = shquote(a) end
  local srv = setmetatable({ port = port, dir = dir, logfile = dir .. "/queries.log",
                             parse_line = dnsmasq_line, kind = "dnsmasq" }, Server)
  srv.pid = spawn(("exec /usr/sbin/dnsmasq %s </dev/null >%s 2>&1"):format(
    table.concat(quoted, " "), shquote(dir .. "/stderr.log")))
  register(srv)
  local ok, err = pcall(wait_ready, port, srv.pid, "dnsmasq",
                        function() return (read_file(dir .. "/stderr.log") or "") .. srv:log() end)
  if not ok then srv:stop() error(err, 2) end
  return srv
end

-- rbldnsd -l log lines: "1700000000 127.0.0.1 2.0.0.127.bl.example.test A IN: NOERROR/1/..."
local function rbldnsd_line(line)
  local name, typ = line:match("^%d+ %S+ (%S+) (%u+) IN")
  if name then return typ, name end
end

--- start_rbldnsd{ zone = "bl.example.test", entries = { "192.0.2.7", ... } } -> server object
function M.start_rbldnsd(opts)
  assert(opts and opts.zone, "start_rbldnsd: zone is required")
  local dir = tmpdir("rbl")
  local port = M.free_udp_port()
  local lines = { ":127.0.0.2:listed" }
  for _, e in ipairs(opts.entries or {}) do lines[#lines + 1] = e end
  write_file(dir .. "/zone", table.concat(lines, "\n") .. "\n")
  local args = { "-n", "-b", "127.0.0.1/" .. port, "-w", dir, "-l", "+" .. dir .. "/queries.log",
                 "-c", "1", "-e" }
  if is_root() then
    -- rbldnsd refuses to run as root: drop to its own user (or nobody), which
    -- must be able to read the zone and append to the query log
    local p = io.popen("getent passwd rbldns >/dev/null && echo rbldns || echo nobody")
    local user = p:read("l")
    p:close()
    args[#args + 1] = "-u"
    args[#args + 1] = user
    write_file(dir .. "/queries.log", "")
    os.execute("chmod 755 " .. shquote(dir) .. " && chmod 644 " .. shquote(dir .. "/zone")
               .. " && chmod 666 " .. shquote(dir .. "/queries.log"))
  end
  args[#args + 1] = opts.zone .. ":ip4set:zone"
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = shquote(a) end
  local srv = setmetatable({ port = port, dir = dir, logfile = dir .. "/queries.log", zone = opts.zone,
                             parse_line = rbldnsd_line, kind = "rbldnsd" }, Server)
  srv.pid = spawn(("exec /usr/sbin/rbldnsd %s </dev/null >%s 2>&1"):format(
    table.concat(quoted, " "), shquote(dir .. "/stderr.log")))
  register(srv)
  local ok, err = pcall(wait_ready, port, srv.pid, "rbldnsd",
                        function() return read_file(dir .. "/stderr.log") or "" end)
  if not ok then srv:stop() error(err, 2) end
  return srv
end

--- retry_start(fn, arg) -> fn(arg) (DNS.start or DNS.start_rbldnsd), tried again
-- on a fresh port when the server found its port taken meanwhile (a port
-- free when picked can be taken before the server binds it).
function M.retry_start(fn, arg)
  local last
  for _ = 1, 5 do
    local ok, srv = pcall(fn, arg)
    if ok then return srv end
    last = srv
    if not tostring(srv):find("Address already in use", 1, true) then break end
  end
  error(last, 2)
end

--- black_hole() -> a bound UDP socket on 127.0.0.1 that never answers
-- hole:received() drains and counts the packets that arrived so far.
function M.black_hole()
  local u = assert(socket.udp())
  assert(u:setsockname("127.0.0.1", 0))
  u:settimeout(0)
  local _, port = u:getsockname()
  local srv = setmetatable({ port = tonumber(port), sock = u, count = 0 }, Server)
  function srv.received(self)
    while true do
      local d = self.sock:receive()
      if not d then break end
      self.count = self.count + 1
    end
    return self.count
  end
  function srv.queries() return {} end
  return register(srv)
end

--- stop_all(): stop every server this helper started and that is still running.
function M.stop_all()
  while #running > 0 do running[#running]:stop() end
end

return M
