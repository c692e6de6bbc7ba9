-- moat.rules: Server-Wide Rules (seed 002 "Filtering Mail"), a small
-- declarative rules file (tables.rules).  The format is documented in
-- docs/rules.md; in short:
--
--   ; comment to the end of the line (outside strings)
--   if header "To" missing then reject 550 "5.7.1 No To: header"
--   if header "Subject" matches "*viagra*" then discard
--   if from matches "*@partner.example" then add_header "X-Partner: yes"
--   if rcpt matches "sales@*" and not ip matches "10.*" then redirect "sales-archive@example.test"
--
-- Grammar (keywords are case-insensitive; line breaks are just blanks, so a
-- rule may span lines):
--
--   rule      = "if" condition { "and" condition } "then" action { "and" action }
--   condition = [ "not" ] ( envelope "matches" STRING
--                         | "header" STRING ( "present" | "missing" | "matches" STRING ) )
--   envelope  = "from" | "rcpt" | "ip" | "helo"
--   action    = "reject" [ CODE ] [ STRING ] | "discard" | "redirect" STRING
--             | "add_header" STRING
--   STRING    = '"' ... '"' on one line; \" and \\ are the only escapes
--
-- Matching is case-insensitive with '*' wildcards (moat.wildcard).  `rcpt`
-- holds when any recipient matches; `header` when any field of that name
-- does (the value unfolded and trimmed).  reject, discard and redirect end the
-- message and must be a rule's last action; add_header adds the header and
-- evaluation goes on.  Rules run in file order; the first final action wins.
local wildcard = require "moat.wildcard"

local M = {}

local ENVELOPE = { from = true, rcpt = true, ip = true, helo = true }
local FINAL = { reject = true, discard = true, redirect = true }
local DEFAULT_REJECT = "5.7.1 Message rejected by server rules"

-- ---- tokens ---------------------------------------------------------------

-- Returns a list of { kind = "word"|"string"|"number", value, line } or nil, err.
local function tokenize(text, name)
  local tokens = {}
  local lineno = 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    local pos, n = 1, #line
    while pos <= n do
      local c = line:sub(pos, pos)
      if c:match("%s") then
        pos = pos + 1
      elseif c == ";" then
        break
      elseif c == '"' then
        local buf, i = {}, pos + 1
        while true do
          if i > n then return nil, ("%s:%d: unterminated string"):format(name, lineno) end
          local ch = line:sub(i, i)
          if ch == '"' then break end
          if ch == "\\" then
            local nx = line:sub(i + 1, i + 1)
            if nx ~= '"' and nx ~= "\\" then
              return nil, ("%s:%d: bad escape '\\%s' in a string (only \\\" and \\\\)"):format(name, lineno, nx)
            end
            ch, i = nx, i + 1
          end
          buf[#buf + 1] = ch
          i = i + 1
        end
        tokens[#tokens + 1] = { kind = "string", value = table.concat(buf), line = lineno }
        pos = i + 1
      else
        local word = line:match("^[^%s;\"]+", pos)
        local kind = word:match("^%d+$") and "number" or "word"
        tokens[#tokens + 1] = { kind = kind, value = kind == "word" and word:lower() or word, text = word, line = lineno }
        pos = pos + #word
      end
    end
  end
  return tokens, lineno
end

-- ---- parser ----------------------------------------------------------------

local function describe(tok)
  if not tok then return "the end of the file" end
  if tok.kind == "string" then return ('"%s"'):format(tok.value) end
  return "'" .. (tok.text or tok.value) .. "'"
end

local function valid_header_name(n)
  return #n > 0 and #n <= 76 and not n:find("[%z\1-\32:\127-\255]")
end

local function valid_address(a)
  return a:match("^[^%s<>]+@[^%s<>@]+$") ~= nil
end

--- compile(text, name) -> ruleset  or  nil, "name:line: problem"
function M.compile(text, name)
  name = name or "rules"
  local tokens, last_line = tokenize(text, name)
  if not tokens then return nil, last_line end
  local i = 1
  local function peek() return tokens[i] end
  local function fail(msg, tok)
    tok = tok or tokens[i]
    local line = tok and tok.line or (tokens[#tokens] and tokens[#tokens].line) or last_line
    error({ msg = ("%s:%d: %s"):format(name, line, msg) }, 0)
  end
  local function word(w)
    local t = tokens[i]
    if t and t.kind == "word" and t.value == w then i = i + 1 return t end
  end
  local function expect_word(w, context)
    if not word(w) then fail(("expected '%s'%s, got %s"):format(w, context or "", describe(tokens[i]))) end
  end
  local function expect_string(what)
    local t = tokens[i]
    if not t or t.kind ~= "string" then fail(("expected %s in double quotes, got %s"):format(what, describe(t))) end
    i = i + 1
    return t.value, t
  end
  local function pattern(s) return wildcard.compile(s, { nocase = true }) end

  local function condition()
    local cond = { negate = false }
    if word("not") then cond.negate = true end
    local t = tokens[i]
    if not t or t.kind ~= "word" then
      fail("expected a condition (from, rcpt, ip, helo, header), got " .. describe(t))
    end
    cond.line = t.line
    if ENVELOPE[t.value] then
      i = i + 1
      cond.kind = t.value
      expect_word("matches", " after '" .. t.value .. "'")
      local p = expect_string("a pattern")
      cond.pattern_text, cond.pattern = p, pattern(p)
    elseif t.value == "header" then
      i = i + 1
      cond.kind = "header"
      local hname, ht = expect_string("a header name")
      if not valid_header_name(hname) then fail(("bad header name \"%s\""):format(hname), ht) end
      cond.header = hname:lower()
      local op = tokens[i]
      if word("present") then cond.op = "present"
      elseif word("missing") then cond.op = "missing"
      elseif word("matches") then
        cond.op = "matches"
        local p = expect_string("a pattern")
        cond.pattern_text, cond.pattern = p, pattern(p)
      else
        fail("expected 'present', 'missing' or 'matches' after header \"" .. hname .. "\", got " .. describe(op))
      end
    else
      fail("unknown condition " .. describe(t) .. " (from, rcpt, ip, helo, header)")
    end
    return cond
  end

  local function action()
    local t = tokens[i]
    if not t or t.kind ~= "word" then
      fail("expected an action (reject, discard, redirect, add_header), got " .. describe(t))
    end
    i = i + 1
    local a = { kind = t.value, line = t.line }
    if t.value == "reject" then
      a.code, a.text = 550, DEFAULT_REJECT
      local c = tokens[i]
      if c and c.kind == "number" then
        local code = tonumber(c.value)
        if code < 400 or code > 599 then fail(("reject code %s is not 400..599"):format(c.value), c) end
        a.code = math.tointeger(code)
        i = i + 1
      end
      local s = tokens[i]
      if s and s.kind == "string" then
        a.text = s.value
        i = i + 1
      end
    elseif t.value == "discard" then
      -- nothing more
    elseif t.value == "redirect" then
      local addr, at = expect_string("an address")
      if not valid_address(addr) then fail(("redirect: \"%s\" is not an address like user@example.test"):format(addr), at) end
      a.address = addr
    elseif t.value == "add_header" then
      local h, ht = expect_string("a header like \"X-Name: value\"")
      local hn, hv = h:match("^([^:]*):[ \t]*(.-)$")
      if not hn or not valid_header_name(hn) then
        fail(("add_header: \"%s\" is not a header like \"X-Name: value\""):format(h), ht)
      end
      if #hn + #hv + 2 > 998 then fail("add_header: the header is longer than 998 characters", ht) end
      if hv:find("[%z\r\n]") then fail("add_header: the value may not contain CR, LF or NUL", ht) end
      a.name, a.value = hn, hv
    else
      fail("unknown action " .. describe(t) .. " (reject, discard, redirect, add_header)", t)
    end
    return a
  end

  local function rule()
    local t = tokens[i]
    if not word("if") then fail("expected 'if' to start a rule, got " .. describe(t)) end
    local r = { line = t.line, conditions = {}, actions = {} }
    repeat r.conditions[#r.conditions + 1] = condition() until not word("and")
    expect_word("then", " after the conditions")
    repeat
      local a = action()
      if r.final then
        fail(("nothing may follow '%s' (it ends the message)"):format(r.final.kind), tokens[i - 1])
      end
      r.actions[#r.actions + 1] = a
      if FINAL[a.kind] then r.final = a end
    until not word("and")
    return r
  end

  local set = setmetatable({ name = name, rules = {}, headers = {}, needs_headers = false }, M.Ruleset)
  local ok, err = pcall(function()
    while i <= #tokens do set.rules[#set.rules + 1] = rule() end
  end)
  if not ok then
    if type(err) == "table" then return nil, err.msg end
    error(err, 0)
  end
  for _, r in ipairs(set.rules) do
    for _, c in ipairs(r.conditions) do
      if c.kind == "header" then
        set.headers[c.header] = true
        set.needs_headers = true
      end
    end
  end
  return set
end

-- ---- evaluation --------------------------------------------------------------

--- split_header(field) -> lowercased name, value (unfolded, trimmed)  or  nil
function M.split_header(field)
  local n, v = field:match("^([^:%s]+)[ \t]*:(.*)$")
  if not n then return nil end
  v = v:gsub("\r?\n([ \t])", "%1"):match("^[ \t]*(.-)[ \t]*$")
  return n:lower(), v
end

local Ruleset = {}
Ruleset.__index = Ruleset
M.Ruleset = Ruleset

local function any_match(pattern, list)
  for _, v in ipairs(list or {}) do
    if pattern:match(v) then return true end
  end
  return false
end

local function holds(c, ctx)
  local r
  if c.kind == "from" then r = c.pattern:match(ctx.from or "") and true or false
  elseif c.kind == "ip" then r = c.pattern:match(ctx.ip or "") and true or false
  elseif c.kind == "helo" then r = c.pattern:match(ctx.helo or "") and true or false
  elseif c.kind == "rcpt" then r = any_match(c.pattern, ctx.rcpts)
  else
    local values = ctx.headers and ctx.headers[c.header]
    local present = values ~= nil and #values > 0
    if c.op == "present" then r = present
    elseif c.op == "missing" then r = not present
    else r = present and any_match(c.pattern, values) end
  end
  if c.negate then return not r end
  return r
end

--- ruleset:evaluate(ctx) -> { add_headers = { {name, value, rule}... }, final = action or nil }
-- ctx = { from = "addr" ("" for <>), rcpts = { "addr", ... }, ip, helo,
--         headers = { [lowercased name] = { value, ... } } }
function Ruleset:evaluate(ctx)
  local out = { add_headers = {}, matched = {} }
  for _, r in ipairs(self.rules) do
    local ok = true
    for _, c in ipairs(r.conditions) do
      if not holds(c, ctx) then ok = false break end
    end
    if ok then
      out.matched[#out.matched + 1] = r.line
      for _, a in ipairs(r.actions) do
        if a.kind == "add_header" then
          out.add_headers[#out.add_headers + 1] = { name = a.name, value = a.value, line = r.line }
        else
          out.final = a
          out.final_line = r.line
          return out
        end
      end
    end
  end
  return out
end

return M
