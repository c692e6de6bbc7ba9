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

local sub, find, unpack = string.sub, string.find, string.unpack

local GRAM = 4                 -- gram length
local STEP = 4                 -- probe every STEP-th line position
local WINDOW = GRAM + STEP - 1 -- a piece must be at least this long to be gram-indexed

local ESCAPES = { r = "\r", n = "\n", t = "\t", ["\\"] = "\\" }

--- unescape(s) -> s with \r \n \t \\ replaced; other backslashes kept.
function M.unescape(s)
  return (s:gsub("\\(.)", function(c) return ESCAPES[c] or ("\\" .. c) end))
end

-- How common a character is in mail text (lower is rarer); a gram's
-- commonness is the sum over its bytes.
local COMMON = {}
for c in ("etaoinshrdlu"):gmatch(".") do COMMON[c:byte()] = 2 end
for c in ("bcfgkmpvwxyzjq"):gmatch(".") do COMMON[c:byte()] = 1 end
COMMON[32] = 3; COMMON[9] = 3; COMMON[13] = 3; COMMON[10] = 3

local MAX_WINDOWS = 48   -- windows looked at per piece (keeps loading linear)

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

-- Pick the cheapest gram window for an entry: returns the list of its STEP
-- gram keys, or nil when no piece is long enough.  A window costs the
-- commonness of its grams, how often other patterns already use them, and
-- (in header sets) being part of the first piece: "Received: from " starts
-- many header fields, and a field name ("Subject:") is almost free to hit.
local function best_window(set, entry, header)
  local best, best_score
  local pieces = entry.pieces
  local name_len = 0
  if header and pieces[1] ~= "" then
    local colon = pieces[1]:find(":", 1, true)
    if colon then name_len = colon + 1 end
  end
  local uses = set.gram_uses
  for pi, piece in ipairs(pieces) do
    local n = #piece
    if n >= WINDOW then
      local key, cost = {}, {}
      for k = 1, n - GRAM + 1 do
        key[k] = unpack("<I4", piece, k)
        local c = 0
        for q = k, k + GRAM - 1 do c = c + (COMMON[piece:byte(q)] or 0) end
        if pi == 1 and header then c = c + (k + GRAM - 1 <= name_len and 1000 or 15) end
        cost[k] = c
      end
      local last = n - WINDOW + 1
      local step = last > MAX_WINDOWS and last // MAX_WINDOWS or 1
      for o = 1, last, step do
        local score = 0
        for j = o, o + STEP - 1 do score = score + cost[j] + 20 * (uses[key[j]] or 0) end
        if not best_score or score < best_score then
          best, best_score = { key[o], key[o + 1], key[o + 2], key[o + 3] }, score
        end
      end
    end
  end
  return best
end

local function index_entry(set, entry, header)
  local pieces = entry.pieces
  local grams = best_window(set, entry, header)
  if grams then
    for _, g in ipairs(grams) do
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
        entry.pieces = entry.matcher.pieces
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

-- The wildcard match without captures (moat.wildcard semantics: the first
-- piece is a prefix, the last a suffix, middle pieces leftmost in order).
local function pieces_match(pieces, s)
  local n = #pieces
  local first, last = pieces[1], pieces[n]
  local len = #s
  if len < #first + #last then return false end
  if first ~= "" and sub(s, 1, #first) ~= first then return false end
  if last ~= "" and sub(s, -#last) ~= last then return false end
  local pos, limit = #first + 1, len - #last
  for i = 2, n - 1 do
    local piece = pieces[i]
    if piece ~= "" then
      local _, b = find(s, piece, pos, true)
      if not b or b > limit then return false end
      pos = b + 1
    end
  end
  return true
end
M.pieces_match = pieces_match

-- Confirm the candidates of one bucket (each entry at most once a line).
local confirms = 0
--- confirms() -> how many full matches candidates have needed (for tests).
function M.confirms() return confirms end

local function confirm(bucket, line, gen)
  for i = 1, #bucket do
    local e = bucket[i]
    if e.gen ~= gen then
      e.gen = gen
      confirms = confirms + 1
      if pieces_match(e.pieces, line) then return e end
    end
  end
end

local F8 = ("<I4"):rep(8)

-- Probe the grams at line positions 1, 5, 9, ... (8 at a time: one unpack).
local function probe(grams, line, gen)
  local n = #line
  local p = 1
  while p + 31 <= n do
    local a, b, c, d, e, f, g, h = unpack(F8, line, p)
    if grams[a] or grams[b] or grams[c] or grams[d] or grams[e] or grams[f] or grams[g] or grams[h] then
      for q = p, p + 28, 4 do
        local bucket = grams[unpack("<I4", line, q)]
        if bucket then
          local hit = confirm(bucket, line, gen)
          if hit then return hit end
        end
      end
    end
    p = p + 32
  end
  while p + 3 <= n do
    local bucket = grams[unpack("<I4", line, p)]
    if bucket then
      local hit = confirm(bucket, line, gen)
      if hit then return hit end
    end
    p = p + 4
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
    e = probe(self.grams, line, gen)
    if e then return e end
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
    if find(line, e.key, 1, true) and pieces_match(e.pieces, line) then return e end
  end
  return nil
end

return M
