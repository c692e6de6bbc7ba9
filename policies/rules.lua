-- rules: Server-Wide Rules (seed 002 "Filtering Mail").
--
-- tables.rules names a small rules file (format: docs/rules.md, parser:
-- lua/moat/rules.lua), read when the policy loads; a mistake stops the load
-- with "file:line: problem" (so `moat --check` and reload report it).  The
-- rules are applied at the end of DATA, in file order: add_header adds a
-- header and goes on; the first reject, discard or redirect decides.
--
-- Header conditions need the header fields: the data_line hook keeps the
-- fields the rules name, in s.vars, for the current transaction only (keyed
-- on s.rcpts, a fresh table in every transaction).  Without header
-- conditions there is no data_line hook; without rules no hooks at all.
local moat = require "moat"
local rules = require "moat.rules"

local P = {}

local text, path = moat.table_text("rules")
if not text then return P end
local set, err = rules.compile(text, path)
if not set then error(err, 0) end
if #set.rules == 0 then return P end

local MAX_VALUES = 100   -- fields kept per header name

-- The header fields of the current transaction.
local function headers_of(s, create)
  local st = s.vars.rules_headers
  if st and st.tx == s.rcpts then return st.fields end
  if not create then return {} end
  st = { tx = s.rcpts, fields = {} }
  s.vars.rules_headers = st
  return st.fields
end

if set.needs_headers then
  local wanted = set.headers
  function P.data_line(s, line, part)
    if part ~= "header" then return end
    local name, value = rules.split_header(line)
    if not name or not wanted[name] then return end
    local fields = headers_of(s, true)
    local list = fields[name]
    if not list then
      list = {}
      fields[name] = list
    end
    if #list < MAX_VALUES then list[#list + 1] = value end
  end
end

local function raw_of(a)
  if type(a) == "table" then return a.raw or "" end
  return a or ""
end

function P.data_end(s)
  local rcpts = {}
  for i, r in ipairs(s.rcpts or {}) do rcpts[i] = raw_of(r.addr) end
  local res = set:evaluate {
    from = raw_of(s.from), rcpts = rcpts, ip = s.ip or "", helo = s.helo or "",
    headers = set.needs_headers and headers_of(s, false) or {},
  }
  if s.vars.rules_headers then s.vars.rules_headers = nil end
  for _, h in ipairs(res.add_headers) do s:add_header(h.name, h.value) end
  local a = res.final
  if not a then return end
  s:log(("rules: %s:%d: %s"):format(path, res.final_line, a.kind))
  if a.kind == "reject" then return moat.reject(a.code, a.text)
  elseif a.kind == "discard" then return moat.discard()
  elseif a.kind == "redirect" then return moat.redirect(a.address) end
end

return P
