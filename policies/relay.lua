-- relay: the Relay rules of seed 002 ("Relaying Rerouted Messages",
-- "Restrictions for Roaming Users"; DESIGN §6 "Relay").
--
-- A recipient whose route leaves the local domains is accepted only when
--   * the sending address is a client (client_ips) or trusted address, or
--   * the session authenticated a user whose account may relay
--     (s.user and s.relay_allowed, set by the AUTH code), or
--   * the Router gave the address the "can relay" marker (Relay:/RelayAll:
--     records, see lua/moat/router.lua; never for an address that carried a
--     route such as u%h@d, <@h:u@d>, h!u@d or "u@h"@d, unless RelayAll:).
-- Everything else gets "550 5.7.1 <addr>: relaying denied": moat is never an
-- open relay.
--
-- Which routes count as "outside": every kind but local, null and spamtrap
-- (so an unknown kind a script invents is refused, not relayed).  The policy
-- only reads rcpt.route, so it is safe with or without the router policy in
-- front of it: without it, the core's default route is local only for a plain
-- address in a local domain, and anything carrying a route is remote.
--
-- Roaming: a user whose account has Roaming disabled may authenticate only
-- from a client address (s.roaming_allowed == false, set by the AUTH code,
-- gives 535 5.7.8 elsewhere).
local moat = require "moat"
local status = require "moat.status"
local P = {}

-- protection.client_by_dns_name makes clients only at connect (it needs the
-- PTR and its forward lookup); the blacklist and rbl policies settle it too,
-- and whichever runs first asks everything in one batch (moat.status.apply).
function P.connect(s) status.apply(s, {}) end

local INSIDE = { ["local"] = true, null = true, spamtrap = true }

local function may_relay(s, route)
  if s.status == "client" or s.status == "trusted" then return true end
  if s.user and s.relay_allowed then return true end
  return route.can_relay == true
end

function P.rcpt(s, rcpt)
  local route = rcpt.route or {}
  if route.kind == "error" then   -- only when no router policy refused it first
    return moat.reject(550, "5.1.1 <" .. rcpt.addr.raw .. ">: recipient address rejected")
  end
  if INSIDE[route.kind] then return end
  if may_relay(s, route) then return end
  return moat.reject(550, "5.7.1 <" .. rcpt.addr.raw .. ">: relaying denied")
end

function P.auth(s, user, ok)
  if ok and s.roaming_allowed == false and s.status ~= "client" then
    s:log("relay: roaming disabled for " .. tostring(user) .. ", login from a non-client address refused")
    return moat.reject(535, "5.7.8 Authentication not allowed from this address")
  end
end

return P
