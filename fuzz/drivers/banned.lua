-- Driver for fuzz_banned: moat.banned (Banned Header / Body Lines).
--
-- Input: PATTERNS [ NUL LINE { NUL LINE } ].  The patterns are compiled as a
-- header set and as a body set; every LINE, and every pattern with its stars
-- replaced, is matched.  Any Lua error is a bug.  The index (exact hash, gram
-- index, prefix/suffix buckets, scan list) must give exactly the answer of
-- matching each pattern one by one with moat.wildcard: a missed line is a
-- banned line let through.
local banned = require "moat.banned"
local wildcard = require "moat.wildcard"

-- The patterns as compile() reads them (same splitting and unescaping).
local function patterns_of(text)
  local list = {}
  for raw in (text .. "\n"):gmatch("([^\n]*)\n") do
    if raw:sub(-1) == "\r" then raw = raw:sub(1, -2) end
    if raw ~= "" then list[#list + 1] = banned.unescape(raw) end
  end
  return list
end

local function brute(pats, matchers, line)
  for i, p in ipairs(pats) do
    if matchers[i] then
      if matchers[i]:match(line) then return true end
    elseif p == line then
      return true
    end
  end
  return false
end

local MAX_LINES = 64

return function(data)
  local text, rest = data:match("^(.-)%z(.*)$")
  if not text then text = data end
  local pats = patterns_of(text)
  local matchers = {}
  for i, p in ipairs(pats) do
    if p:find("*", 1, true) then matchers[i] = wildcard.compile(p) end
  end
  local lines = {}
  if rest then
    for l in (rest .. "\0"):gmatch("(.-)%z") do
      if #lines < MAX_LINES then lines[#lines + 1] = l end
    end
  end
  for i, p in ipairs(pats) do
    if #lines >= MAX_LINES then break end
    lines[#lines + 1] = (p:gsub("%*", ""))
    lines[#lines + 1] = (p:gsub("%*", "Xyz*"))
    if i > 16 then break end
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Subject: hello"
  for _, kind in ipairs({ "header", "body" }) do
    local set, err = banned.compile(text, "fuzz", kind)
    if not set then
      assert(type(err) == "string" and err:find("^fuzz:%d+: "), "compile error without 'fuzz:LINE: ': " .. tostring(err))
      return
    end
    assert(set.count == #pats, ("count %d but %d patterns"):format(set.count, #pats))
    for _, line in ipairs(lines) do
      local hit = set:match(line)
      local want = brute(pats, matchers, line)
      if want and not hit then
        error(("%s set missed line %q (some pattern matches it)"):format(kind, line))
      elseif hit and not want then
        error(("%s set matched line %q with pattern %q that does not match it"):format(kind, line, tostring(hit.text)))
      end
      if hit then
        local p = banned.unescape(hit.text)
        local m = p:find("*", 1, true) and wildcard.compile(p):match(line) or p == line
        assert(m, ("reported pattern %q does not match %q"):format(hit.text, line))
      end
    end
  end
end
