-- moat.banned: Banned Header Lines and Banned Body Lines (seed 002 "Banning
-- Mail by Header and Body Lines", DESIGN §4).
--
-- File format (tables.banned_headers, tables.banned_body):
--
--   * One pattern a line.  Lines may end in LF or CR LF; the line end is not
--     part of the pattern.  Empty lines are ignored.
--   * There are NO comments: banned lines are copied from spam, and a spam
--     line may well start with ';' or '#', so every non-empty line is a
--     pattern, compared with the raw line byte for byte.  Leading and trailing
--     blanks are part of the pattern.
--   * '*' matches any run of characters, possibly empty (moat.wildcard).
--     There is no way to write a literal '*': a line copied verbatim from a
--     message still matches that line, because '*' also matches itself.
--     A pattern made of stars only would match every line: it is an error.
--   * The comparison is case-sensitive and the message line is not decoded
--     (no MIME, no UU, no unfolding).
--   * Escapes (two characters in the file):
--       \r  carriage return (CR)       \n  line feed (LF)
--       \t  horizontal tab             \\  one backslash
--     A backslash before any other character is kept as it is (so "C:\temp"
--     only needs care for its "\t").  A wrapped header field is one "line"
--     with its line breaks inside, e.g.
--       Subject: Cheap meds\r\n\tfor you
--       X-Mailer: *\r\n *Bulk*
--
-- Header patterns are compared with whole header fields (a wrapped field keeps
-- its inner CR LF and the leading blanks of its continuation lines, without the
-- final CR LF); body patterns with one body line without its CR LF.
--
-- Speed: a set never loops over all its patterns for a line.
--   * Patterns without '*' live in a hash set: one lookup a line.
--   * A wildcard pattern with a literal piece of 7 or more characters is
--     indexed by the four consecutive 4-byte substrings ("grams") of a 7-byte
--     window of that piece.  Any occurrence of the window covers a gram that
--     starts at a line position p with p % 4 == 1, so the line is probed only
--     at p = 1, 5, 9, ...: #line / 4 lookups, whatever the number of patterns.
--     The window is chosen to be rare (few spaces and common lowercase
--     letters, not shared with other patterns, not the name of a header).
--   * Otherwise a pattern whose first (last) piece is not empty is found by a
--     lookup of the line's first (last) #piece bytes.
--   * Only patterns like "*ab*cd*" with every piece shorter than 7 are left;
--     each costs one plain string.find of its longest piece a line.
--   Every candidate is confirmed with the full wildcard match, once a line.
local wildcard = require "moat.wildcard"

local M = {}

local GRAM = 4                 -- gram length
local STEP = 4                 -- probe every STEP-th line position
local WINDOW = GRAM + STEP - 1 -- a piece must be at least this long to be gram-indexed

local ESCAPES = { r = "\r", n = "\n", t = "\t", ["\\"] = "\\" }

--- unescape(s) -> s with \r \n \t \\ replaced; other backslashes kept.
function M.unescape(s)
  return (s:gsub("\\(.)", function(c) return ESCAPES[c] or ("\\" .. c) end))
end

-- How common a gram is likely to be in mail text (lower is rarer).
local COMMON = {}
for c in ("etaoinshrdlu"):gmatch(".") do COMMON[c:byte()] = 2 end
for c in ("bcfgkmpvwxyzjq"):gmatch(".") do COMMON[c:byte()] = 1 end
COMMON[32] = 3; COMMON[9] = 3; COMMON[13] = 3; COMMON[10] = 3

local function commonness(gram)
  local n = 0
  for i = 1, #gram do n = n + (COMMON[gram:byte(i)] or 0) end
  return n
end

local Set = {}
Set.__index = Set

local function add_to(index, key, entry)
  local bucket = index[key]
  if not bucket then
    bucket = {}
    index[key] = bucket
  end
  bucket[#bucket + 1] = entry
end

-- Pick the cheapest gram window for an entry; nil when no piece is long enough.
local function best_window(set, entry, header)
  local best, best_score
  local pieces = entry.matcher.pieces
  -- In header mode the field name ("Subject:") starts most header lines.
  local name_len = 0
  if header and pieces[1] ~= "" then
    local colon = pieces[1]:find(":", 1, true)
    if colon then name_len = colon + 1 end
  end
  for pi, piece in ipairs(pieces) do
    for o = 1, #piece - WINDOW + 1 do
      local score = 0
      for j = 0, STEP - 1 do
        local g = piece:sub(o + j, o + j + GRAM - 1)
        score = score + commonness(g) + 20 * (set.gram_uses[g] or 0)
        if pi == 1 and o + j + GRAM - 1 <= name_len then score = score + 1000 end
      end
      if not best_score or score < best_score then best, best_score = piece:sub(o, o + WINDOW - 1), score end
    end
  end
  return best
end

local function index_entry(set, entry, header)
  local pieces = entry.matcher.pieces
  local window = best_window(set, entry, header)
  if window then
    for j = 0, STEP - 1 do
      local g = window:sub(j + 1, j + GRAM)
      set.gram_uses[g] = (set.gram_uses[g] or 0) + 1
      add_to(set.grams, g, entry)
    end
    set.has_grams = true
    return "gram"
  end
  local first, last = pieces[1], pieces[#pieces]
  if first ~= "" and #first >= #last then
    set.prefix[#first] = set.prefix[#first] or {}
    add_to(set.prefix[#first], first, entry)
    return "prefix"
  elseif last ~= "" then
    set.suffix[#last] = set.suffix[#last] or {}
    add_to(set.suffix[#last], last, entry)
    return "suffix"
  end
  local key = ""
  for _, p in ipairs(pieces) do if #p > #key then key = p end end
  entry.key = key
  set.scan[#set.scan + 1] = entry
  return "scan"
end

local function sorted_lengths(t)
  local out = {}
  for len in pairs(t) do out[#out + 1] = len end
  table.sort(out)
  return out
end

--- compile(text, name [, kind]) -> set  or  nil, "name:line: problem"
-- kind = "header" or "body" (only tunes the index).  name is used in error
-- messages (the table's path).
function M.compile(text, name, kind)
  name = name or "banned"
  local set = setmetatable({
    name = name, count = 0, exact = {}, grams = {}, gram_uses = {}, prefix = {}, suffix = {},
    scan = {}, has_grams = false, gen = 0, kinds = { exact = 0, gram = 0, prefix = 0, suffix = 0, scan = 0 },
  }, Set)
  local header = kind == "header"
  local lineno = 0
  for raw in (text .. "\n"):gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    if raw:sub(-1) == "\r" then raw = raw:sub(1, -2) end
    if raw ~= "" then
      local pattern = M.unescape(raw)
      local entry = { text = raw, line = lineno }
      if not pattern:find("*", 1, true) then
        if not set.exact[pattern] then set.exact[pattern] = entry end
        set.kinds.exact = set.kinds.exact + 1
      elseif not pattern:find("[^*]") then
        return nil, ("%s:%d: the pattern '%s' would match every line"):format(name, lineno, raw)
      else
        entry.matcher = wildcard.compile(pattern)
        local how = index_entry(set, entry, header)
        set.kinds[how] = set.kinds[how] + 1
      end
      set.count = set.count + 1
    end
  end
  set.gram_uses = nil
  set.prefix_lens = sorted_lengths(set.prefix)
  set.suffix_lens = sorted_lengths(set.suffix)
  return set
end

local sub, find = string.sub, string.find

-- Confirm the candidates of one bucket (each entry at most once a line).
local function confirm(bucket, line, gen)
  for i = 1, #bucket do
    local e = bucket[i]
    if e.gen ~= gen then
      e.gen = gen
      if e.matcher:match(line) then return e end
    end
  end
end

--- set:match(line) -> entry { text = pattern as written, line = line number }  or  nil
function Set:match(line)
  if self.count == 0 then return nil end
  local e = self.exact[line]
  if e then return e end
  local gen = self.gen + 1
  self.gen = gen
  local n = #line
  if self.has_grams then
    local grams = self.grams
    for p = 1, n - GRAM + 1, STEP do
      local bucket = grams[sub(line, p, p + GRAM - 1)]
      if bucket then
        e = confirm(bucket, line, gen)
        if e then return e end
      end
    end
  end
  local lens = self.prefix_lens
  for i = 1, #lens do
    local len = lens[i]
    if len > n then break end
    local bucket = self.prefix[len][sub(line, 1, len)]
    if bucket then
      e = confirm(bucket, line, gen)
      if e then return e end
    end
  end
  lens = self.suffix_lens
  for i = 1, #lens do
    local len = lens[i]
    if len > n then break end
    local bucket = self.suffix[len][sub(line, -len)]
    if bucket then
      e = confirm(bucket, line, gen)
      if e then return e end
    end
  end
  local scan = self.scan
  for i = 1, #scan do
    e = scan[i]
    if find(line, e.key, 1, true) and e.matcher:match(line) then return e end
  end
  return nil
end

return M
