-- spf: SPF (RFC 7208) at MAIL FROM (DESIGN §8), with lua/moat/spf.lua's
-- check_host() on moat's own resolver (only this session waits).
--
--   protection.spf = { mode = "off" | "header" | "reject", helo = false, permerror = "accept" }
--
-- Identities: the MAIL FROM domain; for <> postmaster@ the HELO name; with
-- helo = true the HELO name is checked first (RFC 7208 §2.3) and a HELO
-- "fail" decides.  Client, trusted, cluster and authenticated sessions are
-- ours: no check, no DNS query.
-- reject mode: fail -> 550 5.7.23 + explanation; temperror -> 451 4.7.24;
-- permerror -> accepted, or 550 5.7.24 with permerror = "reject"; every other
-- result is accepted.  header and reject mode: every stored message gets
-- Received-SPF: (RFC 7208 §9.1) and Authentication-Results: (RFC 8601).
-- Scripts see s.spf = { result, domain, explanation, identity } from the
-- mail_from hook on (the policies after this one in the chain).
local moat = require "moat"
local spf = require "moat.spf"

local settings = moat.settings or {}
local CONF = (settings.protection or {}).spf or {}
local MODE = CONF.mode or "off"
local SERVER = settings.server_name or "localhost"

local P = {}

local exempt = moat.is_ours

-- A HELO name worth checking: a dotted domain name (not an address literal).
local function helo_domain(h)
  return h and h:find(".", 1, true) and h:match("^[%w%-%.]+$") and h or nil
end

local function check(s, domain, sender, identity)
  local result, expl = spf.check_host(s.ip, domain, sender, s.helo or "", { receiver = SERVER })
  return { result = result, domain = domain, explanation = expl, identity = identity, sender = sender }
end

-- One header-safe token: CR/LF and quotes never reach a header.
local function clean(v) return (tostring(v or ""):gsub("[%c\"\\;]", "")) end

local COMMENT = {
  pass = "designates %s as permitted sender", fail = "does not designate %s as permitted sender",
  softfail = "does not designate %s as permitted sender (softfail)",
  neutral = "neither permits nor denies %s", none = "does not publish SPF (for %s)",
  permerror = "has an invalid SPF record (checking %s)", temperror = "could not be checked (DNS error, %s)",
}

function P.mail_from(s, addr)
  s.spf, s.vars.spf_header = nil, nil
  if MODE == "off" or exempt(s) then return end
  local raw = addr.raw or ""
  local helo = helo_domain(s.helo)
  local r
  if CONF.helo == true and helo then
    r = check(s, helo, "postmaster@" .. helo, "helo")
    if r.result ~= "fail" then r = nil end   -- only a HELO fail decides (§2.3)
  end
  if not r then
    if raw == "" then
      if not helo then return end   -- nothing to check a null sender against
      r = check(s, helo, "postmaster@" .. helo, "mailfrom")
    else
      local domain = addr.domain or raw:match("@([^@]*)$")
      if not domain or domain == "" or domain:sub(1, 1) == "[" then return end
      r = check(s, domain, raw, "mailfrom")
    end
  end
  if moat.spf_result then moat.spf_result(r.result) end
  s.spf = { result = r.result, domain = r.domain, explanation = r.explanation, identity = r.identity }
  s.vars.spf_header = r
  s:log(("spf: %s for %s (%s) from %s"):format(r.result, r.domain, r.identity, s.ip))
  if MODE ~= "reject" then return end
  if r.result == "fail" then
    return moat.reject(550, "5.7.23 " .. clean(r.explanation ~= "" and r.explanation or "SPF fail"))
  elseif r.result == "temperror" then
    return moat.tempfail("4.7.24 SPF check of " .. clean(r.domain) .. " failed temporarily, try again later")
  elseif r.result == "permerror" and CONF.permerror == "reject" then
    return moat.reject(550, "5.7.24 " .. clean(r.domain) .. " has an invalid SPF record")
  end
end

function P.data_end(s)
  local r = s.vars.spf_header
  if MODE == "off" or not r then return end
  local comment = ("%s: domain of %s %s"):format(SERVER, clean(r.sender), COMMENT[r.result]:format(s.ip))
  s:add_header("Received-SPF", ("%s (%s) client-ip=%s; envelope-from=\"%s\"; helo=%s; receiver=%s; identity=%s;")
    :format(r.result, comment, s.ip, clean(r.sender), clean(s.helo), SERVER, r.identity))
  local prop = r.identity == "helo" and ("smtp.helo=" .. clean(r.domain)) or ("smtp.mailfrom=" .. clean(r.sender))
  s:add_header("Authentication-Results", ("%s; spf=%s %s"):format(SERVER, r.result, prop))
end

return P
