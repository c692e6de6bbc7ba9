-- blacklist: Blacklisted IP Addresses, White Holes and blacklisting by DNS
-- name (seed 002 "Blacklisting Offenders", DESIGN §6), plus the processing of
-- blacklisted senders: their session goes on, but with
-- protection.blacklisted_messages = "reject" every RCPT gets 550 5.7.1, and
-- with { add_header = "X-Blacklisted: ^1 by ^0" } messages are accepted and
-- marked (^0 = RBL zone or empty, ^1 = the address).
local status = require "moat.status"
local P = {}

function P.connect(s) status.apply(s, { names = true }) end
function P.rcpt(s) return status.rcpt_verdict(s) end
function P.data_end(s) status.add_header(s) end

return P
