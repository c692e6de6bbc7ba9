-- moat.status: the status of a remote address (seed 002 "Blacklisting
-- Offenders", DESIGN §6), shared by the blacklist and rbl policies and by
-- `moatctl test-address`.
--
-- Precedence, first match wins:
--   client_ips                      -> client      (never blacklisted)
--   trusted (recent relay login)    -> trusted     (never blacklisted)
--   blacklisted_ips                 -> blacklisted (DNS names cannot undo it)
--   unblacklistable_ips             -> other, white hole
--   client_by_dns_name (PTR whose name resolves back to the address)
--                                   -> client      (never blacklisted)
--   whitehole_by_dns_name (PTR)     -> other, white hole (undoes RBL and names)
--   an RBL listing (127.0.0.0/8)    -> blacklisted, zone kept for ^0
--   blacklist_by_dns_name (PTR)     -> blacklisted
--   otherwise                       -> other
-- No DNS query is made when a list decides; the PTR and every RBL zone are
-- queried in parallel; a DNS failure never blacklists (it is logged).
local moat = require "moat"
local wildcard = require "moat.wildcard"

local M = {}

local settings = moat.settings or {}
local prot = settings.protection or {}

local function compile_all(list)
  local out = {}
  for i, p in ipairs(list or {}) do out[i] = wildcard.compile(p, { nocase = true }) end
  return out
end

local blacklist_names = compile_all(prot.blacklist_by_dns_name)
local whitehole_names = compile_all(prot.whitehole_by_dns_name)
local client_names = compile_all(prot.client_by_dns_name)
local zones = prot.rbl_servers or {}

local function any_match(matchers, name)
  for _, m in ipairs(matchers) do
    if m:match(name) then return true end
  end
  return false
end

-- What a failed PTR lookup leaves in place of the name (seed 002: the
-- error in parentheses; "(host name is unknown)" for no PTR record).
local ptr_error_names = {
  nxdomain = "host name is unknown", nodata = "host name is unknown",
  servfail = "server failure", timeout = "timeout", error = "error",
}

local function listing(answers)
  for _, a in ipairs(answers or {}) do
    if a:match("^127%.%d+%.%d+%.%d+$") then return a end
  end
  return nil
end

local policy_enabled = moat.policy_enabled

-- Forward confirmation (DESIGN §9): the owner of an address sets its PTR, so
-- a PTR name alone must never make a client; the name's own A (IPv4) or AAAA
-- (IPv6) records must include the address.  One query, after the PTR.
local function forward_confirmed(ip, name, log)
  local qtype = ip:find(":", 1, true) and "AAAA" or "A"
  local res = moat.dns.query_all({ { name, qtype } })[1] or {}
  for _, a in ipairs(res.answers or {}) do
    if a:lower() == ip:lower() then return true end
  end
  log("client_by_dns_name: PTR name " .. name .. " of " .. ip .. " does not resolve back to it (" ..
      qtype .. ": " .. (res.answers and table.concat(res.answers, ",") or res.error or "none") ..
      "); not a client")
  return false
end

local function trusted(ip)
  local tb = moat.tempblock
  return tb and tb.trusted and tb.trusted(ip) or false
end

-- Decide by the lists alone; returns a result table or nil when DNS must decide.
local function by_lists(ip)
  if moat.list("client_ips"):contains(ip) then return { status = "client" } end
  if trusted(ip) then return { status = "trusted" } end
  if moat.list("blacklisted_ips"):contains(ip) then
    return { status = "blacklisted", reason = "blacklisted_ips", zone = "" }
  end
  if moat.list("unblacklistable_ips"):contains(ip) then
    return { status = "other", whitehole = true, reason = "unblacklistable_ips" }
  end
  return nil
end

-- The DNS part: opts.names (PTR rules), opts.rbl (RBL zones).  known.ptr
-- carries a PTR result already looked up by the other policy.
local function by_dns(ip, opts, known, log)
  local need_ptr = known.ptr == nil and (#client_names > 0 or
    (opts.names and (#blacklist_names > 0 or #whitehole_names > 0)) or
    (opts.rbl and #zones > 0 and #whitehole_names > 0))
  local queries, zone_of = {}, {}
  if need_ptr then queries[1] = { moat.dns.reverse(ip), "PTR" } end
  if opts.rbl then
    for _, z in ipairs(zones) do
      queries[#queries + 1] = { moat.dns.reverse(ip, z), "A", once = true }
      zone_of[#queries] = z
    end
  end
  local r = { status = "other", ptr = known.ptr }
  if #queries > 0 then
    local results = moat.dns.query_all(queries)
    -- Seed 002: an RBL request is sent "not more than twice, each time with
    -- the minimal time-out" (once = one try at dns.timeout_ms, no doubling).
    local again, slot = {}, {}
    for i in pairs(zone_of) do
      if results[i].error == "timeout" then
        again[#again + 1] = queries[i]
        slot[#again] = i
      end
    end
    if #again > 0 then
      local second = moat.dns.query_all(again)
      for k, i in ipairs(slot) do results[i] = second[k] end
    end
    if need_ptr then
      local p = results[1]
      r.ptr = p.answers and p.answers[1] or "(" .. (ptr_error_names[p.error] or p.error) .. ")"
    end
    for i, z in pairs(zone_of) do
      local res = results[i]
      if res.error and res.error ~= "nxdomain" and res.error ~= "nodata" then
        log("rbl query failed: zone=" .. z .. " ip=" .. ip .. " error=" .. res.error .. " (not listed)")
      elseif res.answers and not r.zone then
        if listing(res.answers) then r.zone = z
        else log("rbl answer outside 127.0.0.0/8 ignored: zone=" .. z .. " ip=" .. ip) end
      end
    end
  end
  -- A confirmed client is never blacklisted: it wins over RBLs and names.
  -- "(host name is unknown)" and the like are lookup failures, not names.
  if r.ptr and r.ptr:sub(1, 1) ~= "(" and any_match(client_names, r.ptr) and
     forward_confirmed(ip, r.ptr, log) then
    r.status, r.reason, r.zone = "client", "client_by_dns_name", nil
    return r
  end
  if r.ptr and any_match(whitehole_names, r.ptr) then
    r.whitehole, r.reason, r.zone = true, "whitehole_by_dns_name", nil
    return r
  end
  if r.zone then
    r.status, r.reason = "blacklisted", "rbl"
  elseif opts.names and r.ptr and any_match(blacklist_names, r.ptr) then
    r.status, r.reason, r.zone = "blacklisted", "blacklist_by_dns_name", ""
  end
  return r
end

-- decide(ip, opts, known) -> { status, reason, zone, ptr, whitehole }
function M.decide(ip, opts, known, log)
  return by_lists(ip) or by_dns(ip, opts, known or {}, log or function() end)
end

-- Used by the policies' connect hooks: settle s.status, remember the details
-- in s.vars.address for the other policy and for blacklisted processing.
-- The first of the two policies to run asks everything both need (PTR and
-- every zone) in one parallel batch, so an address matched by a DNS name and
-- listed by an RBL keeps its zone, and a dead DNS server costs one timeout.
function M.apply(s, opts)
  if s.vars.address then return end
  opts = { names = opts.names or policy_enabled("blacklist"), rbl = opts.rbl or policy_enabled("rbl") }
  local r = M.decide(s.ip, opts, {}, function(msg) s:log(msg) end)
  s.vars.address = r
  if r.ptr then s.ptr = r.ptr end
  if r.status ~= s.status then
    s.status = r.status
    s:log("address status: " .. r.status .. " (" .. (r.reason or "?") .. (r.zone and r.zone ~= "" and ", " .. r.zone or "") .. ")")
  end
end

-- Blacklisted processing (seed 002 "Processing Messages from Blacklisted
-- Addresses"): "reject" refuses every recipient; { add_header = "..." }
-- accepts and marks the message.
local mode = prot.blacklisted_messages or "reject"
local header_name, header_value
if type(mode) == "table" then
  header_name, header_value = mode.add_header:match("^([!-9;-~]+):%s*(.*)$")
  if not header_name then
    error("protection.blacklisted_messages.add_header: expected \"Name: value\", got '" .. mode.add_header .. "'", 0)
  end
end

local function zone_of(s)
  local info = s.vars.address
  return info and info.zone or ""
end

function M.rcpt_verdict(s)
  if s.status ~= "blacklisted" or header_name then return nil end
  local zone = zone_of(s)
  local why = zone ~= "" and ("listed by " .. zone) or "address is blacklisted"
  return moat.reject(550, "5.7.1 Mail from [" .. s.ip .. "] refused: " .. why)
end

function M.add_header(s)
  if s.status ~= "blacklisted" or not header_name then return end
  if s.vars.blacklist_header_for == s.rcpts then return end   -- once per transaction
  s.vars.blacklist_header_for = s.rcpts
  local function expand(t) return (t:gsub("%^([01])", { ["0"] = zone_of(s), ["1"] = s.ip })) end
  s:add_header(header_name, expand(header_value))
end

-- `moatctl test-address IP`: "[ip](name) is Status (zone)", seed 002.
function M.test_address(ip)
  local ok, rev = pcall(moat.dns.reverse, ip)
  if not ok or not rev then return "error: '" .. tostring(ip) .. "' is not an IP address" end
  local opts = { names = policy_enabled("blacklist"), rbl = policy_enabled("rbl") }
  local r = M.decide(ip, opts, {}, function(msg) moat.log(msg) end)
  local prefix = ""
  if moat.is_local_address and moat.is_local_address(ip) then prefix = "Local "
  elseif moat.list("lan_ips"):contains(ip) then prefix = "LAN " end
  local name = r.ptr and ("(" .. r.ptr:gsub("^%((.*)%)$", "%1") .. ")") or ""
  local word = ({ client = "Client", trusted = "Trusted", blacklisted = "Blacklisted" })[r.status] or "Other"
  local tb = moat.tempblock
  local left = tb and tb.blocked and tb.blocked(ip)
  if left then word = "Blocked (" .. left .. "s left)"
  elseif r.status == "blacklisted" and r.zone and r.zone ~= "" then word = word .. " (" .. r.zone .. ")" end
  return prefix .. "[" .. ip .. "]" .. name .. " is " .. word
end

return M
