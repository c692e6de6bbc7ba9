-- moat.callout: Reverse Connect (sender callout, DESIGN §8).
--
--   local r = require("moat.callout").check("user@example.org")
--   r.result: "ok" | "rejected" | "tempfail"; r.reply: the remote reply's
--   text (or why the probe gave no verdict).  moat.callout(address) is the
--   same for site scripts.
--
-- The domain's MX hosts (lowest preference first; the domain itself when it
-- has no MX) are resolved with moat.dns, moat's own addresses are dropped,
-- and src/callout.c runs the probe (EHLO, MAIL FROM:<>, RCPT TO:<address>,
-- QUIT) on the event loop: only the asking session waits, and sessions asking
-- about the same address at the same time share one probe.  Definite answers
-- are cached per address (cache_positive / cache_negative seconds) in this
-- Lua state (a reload starts afresh); temporary outcomes are not cached.
local moat = require "moat"
local core = require "moat.core"

local M = {}

local settings = moat.settings or {}
local CONF = (settings.protection or {}).reverse_connect or {}
local PORT = CONF.port or 25
local TIMEOUT = CONF.timeout or 30
local CACHE_POS = CONF.cache_positive or 86400
local CACHE_NEG = CONF.cache_negative or 3600
local MAX_PROBES = CONF.max_probes or 50
local HELO = settings.server_name or "localhost"
local MAX_HOSTS = 8             -- A + AAAA each: 16 queries, moat.dns.query_all's limit

local cache = {}                -- lower-cased address -> { result, reply, expires }
local ncache, MAX_CACHE = 0, 100000

-- "550-5.1.1 a\n550 5.1.1 b" -> "5.1.1 a 5.1.1 b": the text without codes,
-- one line, nothing that could break our own reply.
local function reply_text(t)
  local parts = {}
  for line in tostring(t or ""):gmatch("[^\n]+") do
    parts[#parts + 1] = (line:gsub("^%d%d%d[ %-]?", ""))
  end
  return (table.concat(parts, " "):gsub("[%c]", " "):sub(1, 400))
end

-- The addresses to probe, in MX order; nil, why when there are none.
local function hosts(domain)
  local mx, err = moat.dns.query(domain, "MX")
  local names = {}
  if mx and #mx > 0 then
    table.sort(mx, function(a, b) return (tonumber(a.pref) or 0) < (tonumber(b.pref) or 0) end)
    for _, m in ipairs(mx) do
      local h = tostring(m.host or ""):gsub("%.$", "")
      if h ~= "" and #names < MAX_HOSTS then names[#names + 1] = h end
    end
    if #names == 0 then return nil, "null MX" end
  elseif err and err ~= "nxdomain" and err ~= "nodata" then
    return nil, "MX lookup failed (" .. tostring(err) .. ")"
  else
    names[1] = domain           -- RFC 5321 §5.1: the implicit MX
  end
  local qs = {}
  for _, n in ipairs(names) do
    qs[#qs + 1] = { n, "A" }
    qs[#qs + 1] = { n, "AAAA" }
  end
  local r = moat.dns.query_all(qs)
  local ips, seen = {}, {}
  for i = 1, #qs do
    for _, ip in ipairs(r[i] and r[i].answers or {}) do
      -- Never probe ourselves: that would ask our own policy about itself.
      if not seen[ip] and not moat.is_local_address(ip) then
        seen[ip] = true
        ips[#ips + 1] = ip
      end
    end
  end
  if #ips == 0 then return nil, "no mail exchanger address to probe" end
  return ips
end

local function remember(key, r, ttl)
  if ttl <= 0 then return end
  if not cache[key] then
    if ncache >= MAX_CACHE then cache, ncache = {}, 0 end   -- crude, but bounded
    ncache = ncache + 1
  end
  cache[key] = { result = r.result, reply = r.reply, expires = os.time() + ttl }
end

local function check(address)
  address = tostring(address or "")
  local domain = address:match("@([^@]+)$")
  if not domain or domain:sub(1, 1) == "[" or #address > 500 or address:find("[%c<> ]") then
    return { result = "tempfail", reply = "address cannot be probed" }
  end
  local key = address:lower()
  local c = cache[key]
  if c and c.expires > os.time() then return { result = c.result, reply = c.reply, cached = true } end
  local ips, why = hosts(domain)
  if not ips then return { result = "tempfail", reply = why } end
  local code, text = core.callout(address, ips, PORT, HELO, TIMEOUT, MAX_PROBES)
  local r
  if not code then
    r = { result = "tempfail", reply = "too many probes running" }
  elseif code >= 200 and code < 300 then
    r = { result = "ok", reply = reply_text(text) }
    remember(key, r, CACHE_POS)
  elseif code >= 500 and code < 600 then
    r = { result = "rejected", reply = reply_text(text) }
    remember(key, r, CACHE_NEG)
  else
    r = { result = "tempfail", reply = reply_text(text) }
  end
  return r
end

function M.check(address)
  local r = check(address)
  core.callout_result(r.result, r.cached)   -- moatctl stats: callout_*_total
  return r
end

return M
