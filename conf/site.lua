-- site.lua: your own policy, run after the stock ones.  Return a table of hooks.
local moat = require "moat"
local P = {}

-- Example: refuse mail for addresses that look like role accounts nobody reads.
function P.rcpt(s, rcpt)
  if rcpt.addr.localpart and rcpt.addr.localpart:lower():match("^noreply") then
    return moat.reject(550, "5.1.1 This address does not accept mail")
  end
end

return P
