-- rbl: DNS-based blacklists (seed 002 "Using DNS-based Blacklisting").
-- Each zone of protection.rbl_servers is asked, all in parallel, for the
-- reversed address (IPv6: nibbles); an answer in 127.0.0.0/8 blacklists the
-- sender, anything else is ignored.  A timeout or DNS failure is "not
-- listed" and logged.  Skipped when a list already decided the status.
-- Blacklisted processing is shared with the blacklist policy (whichever runs
-- first answers; the header is added once).
local status = require "moat.status"
local P = {}

function P.connect(s) status.apply(s, { rbl = true }) end
function P.rcpt(s) return status.rcpt_verdict(s) end
function P.data_end(s) status.add_header(s) end

return P
