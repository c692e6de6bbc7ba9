-- reverse_connect: Reverse Connect (sender callout) at MAIL FROM (DESIGN §8).
--
--   protection.reverse_connect = { mode = "off" | "reject", timeout = 30, port = 25,
--                                  cache_positive = 86400, cache_negative = 3600, max_probes = 50 }
--
-- List it after return_path and spf in `policies`: the chain stops at the
-- first verdict, so a probe only runs once those checks have passed.
-- Not probed: <>, client, trusted, cluster and authenticated sessions, and
-- senders in a domain that is not remote (local, or known to the Router).
--   RCPT 5xx                          550 5.1.7 Sender address rejected: <remote text>
--   anything temporary (4xx, no host,
--   timeout, too many probes)         451 4.1.7
-- Scripts see s.callout = { result = "ok"|"rejected"|"tempfail", reply = "…" }.
local moat = require "moat"
local router = require "moat.router"
local address = require "moat.address"
local callout = require "moat.callout"

local settings = moat.settings or {}
local MODE = ((settings.protection or {}).reverse_connect or {}).mode or "off"
local R = router.configured(settings, moat.table_text("router"))

local P = {}

local exempt = moat.is_ours

function P.mail_from(s, addr)
  s.callout = nil
  if MODE ~= "reject" or exempt(s) then return end
  local raw = addr.raw or ""
  if raw == "" then return end
  local a = address.parse(raw)
  if not a or a.null or not a.domain or a.literal then return end
  local fr = s.vars and s.vars.from_route
  local res = (fr and fr.raw == a.raw) and fr or R:route(a)
  if not res or res.kind ~= "remote" or res.known then return end
  local r = callout.check(raw)
  s.callout = { result = r.result, reply = r.reply }
  s:log(("reverse_connect: %s for <%s>%s: %s"):format(r.result, raw, r.cached and " (cached)" or "", r.reply))
  if r.result == "rejected" then
    return moat.reject(550, "5.1.7 Sender address rejected: " .. r.reply)
  elseif r.result == "tempfail" then
    return moat.tempfail("4.1.7 <" .. raw .. ">: cannot verify the sender address, try again later")
  end
end

return P
