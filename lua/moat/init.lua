-- moat: the module policies and site scripts require.
--
-- Verdict constructors live here; the asynchronous calls (sleep, dns) and the
-- shared state (lists, temporary blocks) come from the C core ("moat.core")
-- and suspend only the calling session's coroutine.
local core = require "moat.core"

local M = {}

local Verdict = { __name = "moat.verdict" }
Verdict.__index = Verdict

local function verdict(action, code, text)
  return setmetatable({ action = action, code = code, text = text }, Verdict)
end

function M.is_verdict(v) return getmetatable(v) == Verdict end

local function check_code(code, lo, hi, what)
  if math.type(code) ~= "integer" or code < lo or code > hi then
    error(("%s: reply code must be an integer %d..%d, got %s"):format(what, lo, hi, tostring(code)), 3)
  end
end

local function check_text(text, what)
  if text ~= nil and type(text) ~= "string" then error(what .. ": text must be a string", 3) end
end

function M.accept() return verdict("accept") end

function M.reject(code, text)
  check_code(code, 400, 599, "moat.reject")
  check_text(text, "moat.reject")
  return verdict("reject", code, text)
end

function M.tempfail(text)
  check_text(text, "moat.tempfail")
  return verdict("tempfail", 451, text)
end

function M.drop(code, text)
  code = code or 421
  check_code(code, 400, 599, "moat.drop")
  check_text(text, "moat.drop")
  return verdict("drop", code, text)
end

function M.discard() return verdict("discard") end

-- redirect(address): in data_line/data_end, deliver the message to address
-- instead of its recipients (server-wide rules use it).
function M.redirect(address)
  if type(address) ~= "string" or not address:match("^[^%s<>]+@[^%s<>@]+$") then
    error("moat.redirect: expected an address like user@example.test", 2)
  end
  return setmetatable({ action = "redirect", address = address }, Verdict)
end

M.sleep = core.sleep
M.log = core.log
M.list = core.list
M.dns = { query = core.dns_query, query_all = core.dns_query_all, reverse = core.dns_reverse }
M.settings = core.settings

-- policy_enabled(name): is the stock policy `name` in the configured chain?
function M.policy_enabled(name)
  for _, p in ipairs((M.settings or {}).policies or {}) do
    if p == name then return true end
  end
  return false
end
M.tempblock = core.tempblock
M.table_text = core.table_text
M.is_local_address = core.is_local_address
M.spf_result = core.spf_result   -- count an SPF result for moatctl stats (the spf policy)
-- is_ours(s): a client, trusted, cluster or authenticated session: the
-- sender checks (SPF, Reverse Connect) are for strangers and skip these.
function M.is_ours(s)
  if s.status == "client" or s.status == "trusted" or s.user then return true end
  local ok, list = pcall(M.list, "cluster_ips")
  return ok and list and list:contains(s.ip) or false
end
-- moat.callout(address) -> { result = "ok"|"rejected"|"tempfail", reply = "…" }
-- (Reverse Connect; required late: moat.callout requires moat).
function M.callout(addr) return require("moat.callout").check(addr) end

return M
