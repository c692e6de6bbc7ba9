-- relay: the Relay rules of seed 002 ("Relaying Rerouted Messages", DESIGN §6).
--
-- A recipient routed outside the local domains is accepted only for a client
-- or trusted address, an authenticated user whose account may relay, or an
-- address the Router gave the "can relay" marker.  Everything else is
-- "550 5.7.1 relaying denied": moat is never an open relay.
local moat = require "moat"
local P = {}

function P.rcpt(s, rcpt)
  local route = rcpt.route
  if route.kind ~= "remote" then return end
  if s.status == "client" or s.status == "trusted" then return end
  if s.user and s.relay_allowed then return end
  if route.can_relay then return end
  return moat.reject(550, "5.7.1 <" .. rcpt.addr.raw .. ">: relaying denied")
end

return P
