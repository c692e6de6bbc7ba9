-- moat.wildcard: '*' wildcards as CommuniGate uses them (Router keys, DNS-name
-- lists, banned lines).
--
-- '*' matches any run of characters, possibly empty; every other character is
-- literal.  Lua patterns are never built from user text: the literal pieces
-- between the stars are located with plain string.find, so no character of a
-- pattern has a special meaning except '*'.
--
-- Matching is linear-ish and never backtracks: the first piece must be a prefix,
-- the last piece a suffix, and each middle piece is placed at its leftmost
-- occurrence after the previous one.  Leftmost placement is optimal (if any
-- placement works, the leftmost one does), so hostile inputs such as
-- "*a*a*a*a*a*b" against "aaaa...a" cost O(#s * #pattern), not exponential time.
--
-- Captures: star i captures the text between piece i and piece i+1.  Because
-- middle pieces are placed leftmost, every star except the last one is "lazy"
-- (shortest) and the last star takes what remains before the suffix:
-- "*-*" against "a-b-c" captures "a" and "b-c".
local M = {}

local Matcher = {}
Matcher.__index = Matcher

-- Split on '*' keeping empty pieces, so n stars always give n + 1 pieces.
local function split_stars(s)
  local pieces, start = {}, 1
  while true do
    local star = s:find("*", start, true)
    if not star then
      pieces[#pieces + 1] = s:sub(start)
      return pieces
    end
    pieces[#pieces + 1] = s:sub(start, star - 1)
    start = star + 1
  end
end

--- compile(pattern [, opts]) -> matcher
-- opts.nocase: compare ASCII letters case-insensitively (captures keep the
-- subject's original case, since string.lower preserves byte positions).
function M.compile(pattern, opts)
  assert(type(pattern) == "string", "wildcard pattern must be a string")
  local nocase = opts and opts.nocase or false
  local pieces = split_stars(nocase and pattern:lower() or pattern)
  return setmetatable({
    pattern = pattern, nocase = nocase, pieces = pieces, stars = #pieces - 1,
  }, Matcher)
end

--- matcher:match(s) -> true, captures | false
-- captures is a list with one string per '*' in the pattern (empty list when
-- the pattern has no star).
function Matcher:match(s)
  local t = self.nocase and s:lower() or s
  local pieces = self.pieces
  local n = #pieces
  if n == 1 then
    if t == pieces[1] then return true, {} end
    return false
  end
  local first, last = pieces[1], pieces[n]
  if #t < #first + #last then return false end
  if t:sub(1, #first) ~= first then return false end
  if last ~= "" and t:sub(-#last) ~= last then return false end
  -- Middle pieces must fit strictly between the prefix and the suffix.
  local pos, limit, caps = #first + 1, #t - #last, {}
  for i = 2, n - 1 do
    local piece = pieces[i]
    local a, b = pos, pos - 1
    if piece ~= "" then a, b = t:find(piece, pos, true) end
    if not a or b > limit then return false end
    caps[#caps + 1] = s:sub(pos, a - 1)
    pos = b + 1
  end
  caps[#caps + 1] = s:sub(pos, limit)
  return true, caps
end

--- match(pattern, s [, opts]) -> true, captures | false  (one-shot helper)
function M.match(pattern, s, opts)
  return M.compile(pattern, opts):match(s)
end

--- has_wildcard(s) -> bool
function M.has_wildcard(s)
  return s:find("*", 1, true) ~= nil
end

--- expand(target, captures) -> string
-- Replaces the i-th '*' of target with captures[i].  When the target has more
-- stars than there are captures, the extra stars reuse the last capture (or
-- the empty string when there is none): "<a*> = *-*@x" gives "joe-joe@x" for
-- "ajoe".  Captured text is inserted verbatim and never rescanned, so a '*' or
-- '%' inside a capture stays literal.
function M.expand(target, captures)
  captures = captures or {}
  local i = 0
  return (target:gsub("%*", function()
    i = i + 1
    return captures[i] or captures[#captures] or ""
  end))
end

return M
