-- spamtrap: Spam Traps (seed 002 "Spam Traps", DESIGN §6).
--
-- When at least one accepted recipient is a spam trap, the whole message is
-- refused at the DATA command with "554 5.7.1", and the sending address is
-- put on the Temporarily Blocked Addresses list (its next connections get
-- "421 4.7.0" until the block expires) unless it is a client address
-- (client_ips) or a White Hole (unblacklistable_ips).
--
-- A recipient is a spam trap when the Router routed it to `spamtrap`
-- (`<misterX> = spamtrap`, or spamtrap@ a local domain).  Without the router
-- policy, a recipient whose local part is `spamtrap` (any case) in a local
-- domain, or with no domain, is one too.  With the router policy its answer
-- is final, so `<spamtrap> = joe` makes spamtrap@ an ordinary address again.
local moat = require "moat"
local P = {}

local settings = moat.settings or {}

local policy_enabled = moat.policy_enabled

local router_enabled = policy_enabled("router")

local local_domains = {}
for _, d in ipairs(settings.local_domains or {}) do local_domains[d:lower()] = true end
if settings.main_domain then local_domains[settings.main_domain:lower()] = true end

local function is_spamtrap(r)
  if r.route and r.route.kind == "spamtrap" then return true end
  if router_enabled then return false end
  local addr = type(r.addr) == "table" and r.addr.raw or r.addr
  if type(addr) ~= "string" then return false end
  local localpart, domain = addr:match("^(.*)@([^@]*)$")
  if not localpart then localpart = addr end
  if localpart:lower() ~= "spamtrap" then return false end
  return domain == nil or local_domains[domain:lower()] == true
end

local function block(s)
  if s.status == "client" then return "client" end
  if moat.list("unblacklistable_ips"):contains(s.ip) then return "white hole" end
  local tb = moat.tempblock
  if not (tb and tb.add) then return "no temporary blocking in this core" end
  local ok, why = tb.add(s.ip, "spamtrap")
  if ok then return "blocked" end
  return why or "refused"
end

function P.data(s)
  for _, r in ipairs(s.rcpts or {}) do
    if is_spamtrap(r) then
      local addr = type(r.addr) == "table" and r.addr.raw or tostring(r.addr)
      local result = block(s)
      s:log(("spamtrap: recipient <%s> is a spam trap; message refused; %s: %s"):format(addr, s.ip, result))
      return moat.reject(554, "5.7.1 Message refused")
    end
  end
end

return P
