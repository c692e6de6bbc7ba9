-- return_path: Return-Path (MAIL FROM) and HELO verification (seed 002
-- "Return-Path Address Verification", DESIGN §6 "Return-Path").
--
-- Always:
--   <>                                     accepted (bounces must get through)
--   no domain (<postmaster>)               550 5.1.7  (RFC 3463: bad sender's
--                                          mailbox address syntax; a Return-Path
--                                          must be an address others can reach)
--   unparsable by the Router's parser      553 5.1.7
--   routed to error by the Router          550 5.1.0  (the router policy says it
--                                          first when it runs before this one)
--   a routing loop                         451 4.4.6
-- With protection.verify_helo_and_return_path = true, also:
--   an address literal (u@[192.0.2.1]) not in client_ips        550 5.7.1
--   then, for connections from other than client or trusted addresses:
--   a Return-Path that is local, or known to the Router (a record rewrote it),
--   is accepted without any DNS query; otherwise the domain (after the Router
--   unwrapped any route addressed to us) is looked up, MX, A and AAAA in
--   parallel:
--     MX hosts, none of them with an A/AAAA record       550 5.1.8 (faked domain)
--     no MX and no A/AAAA (NXDOMAIN or no data)           550 5.1.8 (unregistered)
--     a "null MX" (RFC 7505: MX 0 .)                      550 5.7.27
--     a DNS failure (servfail, timeout, ...) that leaves
--     the answer open                                     451 4.4.3 (try later)
--   An MX answer wins over A/AAAA (an MX whose hosts are all fake makes the
--   domain fake even when it has an A record); without MX, an A or AAAA
--   record is enough (RFC 5321 implicit MX).  At most 8 MX hosts (lowest
--   preference first) are checked, their A and AAAA all in parallel; one host
--   with an address is enough.  Non-ASCII (SMTPUTF8) domains are looked up in
--   their punycode (xn--) form.
--   HELO/EHLO: the name must be a domain name or an address literal
--   (501 5.5.4 otherwise); an address literal must be the client's own address
--   unless the client is a client or trusted address (550 5.7.1).
--
-- Trusted addresses (a Relay-enabled user logged in from them recently) are
-- treated like client addresses: the DNS checks are for strangers.
local moat = require "moat"
local address = require "moat.address"
local router = require "moat.router"

local settings = moat.settings or {}
local VERIFY = (settings.protection or {}).verify_helo_and_return_path == true
local MAX_MX_HOSTS = 8        -- A + AAAA each: 16 queries, moat.dns.query_all's limit

-- Our own Router (same table, same settings) for when the router policy is not
-- configured, or did not run first for this Return-Path.
local R = router.configured(settings, moat.table_text("router"))

---------------------------------------------------------------------------
-- helpers
---------------------------------------------------------------------------

-- RFC 3492 punycode of one label (a string of code points).
local function punycode(label)
  local cps = {}
  for _, c in utf8.codes(label) do cps[#cps + 1] = c end
  local BASE, TMIN, TMAX, SKEW, DAMP = 36, 1, 26, 38, 700
  local out = {}
  for _, c in ipairs(cps) do
    if c < 128 then out[#out + 1] = string.char(c) end
  end
  local b = #out
  local h = b
  if b > 0 then out[#out + 1] = "-" end
  local function adapt(delta, numpoints, first)
    delta = first and delta // DAMP or delta // 2
    delta = delta + delta // numpoints
    local k = 0
    while delta > ((BASE - TMIN) * TMAX) // 2 do
      delta = delta // (BASE - TMIN)
      k = k + BASE
    end
    return k + ((BASE - TMIN + 1) * delta) // (delta + SKEW)
  end
  local function digit(d) return string.char(d < 26 and d + 97 or d + 22) end
  local n, delta, bias = 128, 0, 72
  while h < #cps do
    local m = math.maxinteger
    for _, c in ipairs(cps) do
      if c >= n and c < m then m = c end
    end
    delta = delta + (m - n) * (h + 1)
    n = m
    for _, c in ipairs(cps) do
      if c < n then delta = delta + 1 end
      if c == n then
        local q, k = delta, BASE
        while true do
          local t = k <= bias and TMIN or (k >= bias + TMAX and TMAX or k - bias)
          if q < t then break end
          out[#out + 1] = digit(t + (q - t) % (BASE - t))
          q = (q - t) // (BASE - t)
          k = k + BASE
        end
        out[#out + 1] = digit(q)
        bias = adapt(delta, h + 1, h == b)
        delta = 0
        h = h + 1
      end
    end
    delta = delta + 1
    n = n + 1
  end
  return "xn--" .. table.concat(out)
end

-- The name to ask DNS for: ASCII labels as they are, others in punycode.
local function dns_name(domain)
  if not domain:find("[\128-\255]") then return domain end
  local labels = {}
  for label in (domain .. "."):gmatch("(.-)%.") do
    labels[#labels + 1] = label:find("[\128-\255]") and punycode(label) or label
  end
  return table.concat(labels, ".")
end

-- Canonical text of an IP address, for comparing two spellings: IPv4 as is,
-- IPv6 expanded without leading zeros, IPv4-mapped IPv6 as IPv4.
local function canon_ip(ip)
  if type(ip) ~= "string" then return nil end
  ip = ip:lower()
  if ip:find("^%d+%.%d+%.%d+%.%d+$") then return ip end
  local function split(part)
    local g = {}
    if part == "" then return g end
    for x in (part .. ":"):gmatch("(.-):") do
      local a, b2, c, d = x:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
      if a then
        g[#g + 1] = ("%x"):format(tonumber(a) * 256 + tonumber(b2))
        g[#g + 1] = ("%x"):format(tonumber(c) * 256 + tonumber(d))
      else
        g[#g + 1] = x
      end
    end
    return g
  end
  local head, tail = ip:match("^(.-)::(.*)$")
  local groups
  if head then
    local hg, tg = split(head), split(tail)
    groups = hg
    for _ = 1, 8 - #hg - #tg do groups[#groups + 1] = "0" end
    for _, x in ipairs(tg) do groups[#groups + 1] = x end
  else
    groups = split(ip)
  end
  if #groups ~= 8 then return ip end
  for i, x in ipairs(groups) do
    local v = tonumber(x, 16)
    if not v then return ip end
    groups[i] = v
  end
  if groups[1] == 0 and groups[2] == 0 and groups[3] == 0 and groups[4] == 0 and groups[5] == 0
     and groups[6] == 0xffff then
    return ("%d.%d.%d.%d"):format(groups[7] >> 8, groups[7] & 255, groups[8] >> 8, groups[8] & 255)
  end
  for i, v in ipairs(groups) do groups[i] = ("%x"):format(v) end
  return table.concat(groups, ":")
end

-- "[192.0.2.1]" -> "192.0.2.1"; "[IPv6:2001:db8::1]" -> "2001:db8::1"
local function literal_ip(d)
  local inner = d:match("^%[(.*)%]$")
  if not inner then return nil end
  return inner:match("^[Ii][Pp][Vv]6:(.*)$") or inner
end

local function is_client(s) return s.status == "client" or s.status == "trusted" end

local HARD = { nxdomain = true, nodata = true }   -- "does not exist": an answer, not a failure

local function has_answers(r) return r and r.answers and #r.answers > 0 end
local function failed(r) return r and r.error and not HARD[r.error] and r.error or nil end

local function tempfail(raw, domain, err)
  return moat.tempfail(("4.4.3 <%s>: cannot verify the sender domain %s (%s), try again later")
    :format(raw, domain, err))
end

-- The DNS part for a domain that is neither local nor known.  Returns a verdict or nil.
local function verify_domain(raw, domain)
  local name = dns_name(domain)
  local r = moat.dns.query_all { { name, "MX" }, { name, "A" }, { name, "AAAA" } }
  local mx, a4, a6 = r[1], r[2], r[3]
  local err = failed(mx)
  if err then return tempfail(raw, domain, "MX " .. err) end
  if has_answers(mx) then
    local list = {}
    for _, m in ipairs(mx.answers) do
      list[#list + 1] = { host = (tostring(m.host or ""):gsub("%.$", "")), pref = tonumber(m.pref) or 0 }
    end
    table.sort(list, function(x, y) return x.pref < y.pref end)
    local qs = {}
    for _, m in ipairs(list) do
      if m.host ~= "" and #qs < 2 * MAX_MX_HOSTS then
        qs[#qs + 1] = { m.host, "A" }
        qs[#qs + 1] = { m.host, "AAAA" }
      end
    end
    if #qs == 0 then   -- only "MX 0 ." (RFC 7505)
      return moat.reject(550, ("5.7.27 <%s>: sender domain %s does not accept mail (null MX)"):format(raw, domain))
    end
    local hr = moat.dns.query_all(qs)
    local herr
    for i = 1, #qs do
      if has_answers(hr[i]) then return nil end
      herr = herr or failed(hr[i]) and (qs[i][2] .. " " .. qs[i][1] .. " " .. failed(hr[i]))
    end
    if herr then return tempfail(raw, domain, herr) end
    return moat.reject(550, ("5.1.8 <%s>: sender domain %s has no valid mail exchanger (faked domain)")
      :format(raw, domain))
  end
  if has_answers(a4) or has_answers(a6) then return nil end
  err = failed(a4) and ("A " .. failed(a4)) or failed(a6) and ("AAAA " .. failed(a6))
  if err then return tempfail(raw, domain, err) end
  return moat.reject(550, ("5.1.8 <%s>: sender domain %s is not registered (no MX or A record)")
    :format(raw, domain))
end

-- The Router result for this Return-Path: the router policy's when it
-- routed this very address, else our own.
local function route_of(s, a)
  local fr = s.vars and s.vars.from_route
  if fr and fr.raw == a.raw then return fr end
  return R:route(a)
end

---------------------------------------------------------------------------
-- hooks
---------------------------------------------------------------------------

local P = {}

function P.mail_from(s, addr)
  local raw = addr.raw
  if raw == "" then return end
  local a, perr = address.parse(raw)
  if not a then return moat.reject(553, "5.1.7 <" .. raw .. ">: bad sender address (" .. perr .. ")") end
  if a.null then return end
  if not a.domain then
    return moat.reject(550, "5.1.7 <" .. raw .. ">: sender address has no domain")
  end
  local res, rerr = route_of(s, a)
  if not res then
    if rerr == "routing loop" then
      s:log("return_path: routing loop for sender <" .. raw .. ">")
      return moat.tempfail("4.4.6 <" .. raw .. ">: routing loop")
    end
    return moat.reject(553, "5.1.7 <" .. raw .. ">: bad sender address (" .. tostring(rerr) .. ")")
  end
  if res.kind == "error" then
    return moat.reject(550, "5.1.0 <" .. raw .. ">: sender address rejected")
  end
  if not VERIFY then return end

  if a.literal then
    if not moat.list("client_ips"):contains(literal_ip(a.domain)) then
      return moat.reject(550, "5.7.1 <" .. raw .. ">: an address literal as the sender domain is not allowed")
    end
    return   -- a client's own address: nothing to look up
  end
  if is_client(s) then return end
  if res.kind ~= "remote" or res.known then return end   -- local, or known to the Router: no DNS
  local domain = res.domain or a.domain
  if domain:sub(1, 1) == "[" then   -- a route addressed to us that ends in a literal
    if not moat.list("client_ips"):contains(literal_ip(domain)) then
      return moat.reject(550, "5.7.1 <" .. raw .. ">: an address literal as the sender domain is not allowed")
    end
    return
  end
  -- A domain verified once is not asked again in the same session: a
  -- client sending many messages from one domain costs one lookup, not one
  -- a message.  Refusals and "try later" are not remembered.
  local key = domain:lower()
  local verified = s.vars.return_path_verified
  if verified and verified[key] then return end
  local v = verify_domain(raw, domain)
  if v == nil then
    verified = verified or {}
    verified[key] = true
    s.vars.return_path_verified = verified
  end
  return v
end

function P.helo(s, name)
  if not VERIFY then return end
  local kind, err = address.valid_domain(name)
  if not kind then
    return moat.reject(501, "5.5.4 " .. name .. ": invalid HELO name (" .. err .. ")")
  end
  if kind ~= "domain" and not is_client(s) and canon_ip(literal_ip(name)) ~= canon_ip(s.ip) then
    return moat.reject(550, "5.7.1 " .. name .. ": HELO address literal is not your address")
  end
end

return P
