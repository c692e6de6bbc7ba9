-- router: the Router table (DESIGN §4, seed 002 "Relaying Rerouted Messages")
-- applied to every Return-Path and recipient.
--
-- The table is tables.router; without one the Router only knows the main
-- domain (cut off: joe@example.test -> <joe>) and local_domains.  A malformed
-- line fails loading with "file:line: problem" (so `moat --check` and reload
-- report it and keep the old state).
--
-- MAIL FROM (the Return-Path; <> is never routed):
--   routed to error   -> 550 5.1.0 <addr>: sender address rejected
--   a routing loop    -> 451 4.4.6 (logged)
--   unparsable        -> 553 5.1.7 (the core accepts a few spellings the
--                        Router refuses, e.g. a trailing dot: never let one
--                        dodge a record)
--   otherwise the result is kept in s.vars.from_route = { raw, kind, address,
--   domain, host, known, can_relay, routed } for the return_path policy, which
--   accepts a local or Router-known Return-Path without any DNS query.
-- RCPT TO: rcpt.route = { kind, address, host, can_relay } from the Router
-- (the core stores it in the envelope), and
--   error             -> 550 5.1.1 <addr>: recipient address rejected
--   a routing loop    -> 451 4.4.6 (logged)
--   null              -> accepted and discarded (moat.discard())
--   spamtrap          -> accepted here; the spamtrap policy refuses the message
--   unparsable        -> 553 5.1.3
-- Put this policy before return_path and relay: relay decides on the route
-- set here (without the router the core's conservative default route applies,
-- and Relay: records cannot grant anything).
local moat = require "moat"
local router = require "moat.router"

local settings = moat.settings or {}

local R = router.configured(settings, moat.table_text("router"))

local P = {}

local function loop(s, raw, what)
  s:log(("router: routing loop for %s <%s> (more than %d rewrites)"):format(what, raw, router.MAX_REWRITES))
  return moat.tempfail("4.4.6 <" .. raw .. ">: routing loop")
end

function P.mail_from(s, addr)
  s.vars.from_route = nil
  if addr.raw == "" then return end
  local res, err = R:route(addr.raw)
  if not res then
    if err == "routing loop" then return loop(s, addr.raw, "sender") end
    return moat.reject(553, "5.1.7 <" .. addr.raw .. ">: bad sender address (" .. tostring(err) .. ")")
  end
  if res.kind == "error" then
    return moat.reject(550, "5.1.0 <" .. addr.raw .. ">: sender address rejected")
  end
  s.vars.from_route = {
    raw = addr.raw, kind = res.kind, address = res.address, domain = res.domain, host = res.host,
    known = res.known, can_relay = res.can_relay, routed = res.routed,
  }
end

function P.rcpt(s, rcpt)
  local raw = rcpt.addr.raw
  local res, err = R:route(raw)
  if not res then
    if err == "routing loop" then return loop(s, raw, "recipient") end
    return moat.reject(553, "5.1.3 <" .. raw .. ">: bad recipient address (" .. tostring(err) .. ")")
  end
  if res.kind == "error" then
    return moat.reject(550, "5.1.1 <" .. raw .. ">: recipient address rejected")
  end
  rcpt.route = {
    kind = res.kind, address = res.address,
    host = res.kind == "remote" and res.host or nil,
    can_relay = res.can_relay == true,
  }
  if res.kind == "null" then return moat.discard() end
end

return P
