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
-- Speed: the matching is in C (src/lineset.c, require "moat.lineset"): a
-- set never loops over all its patterns for a line.  Exact lines are hashed,
-- a wildcard pattern is indexed by a rare 7-byte window of its pieces
-- (probed every 4 bytes of a line), by its first or last piece, by a rare
-- 3-byte run, or (one- and two-byte pieces only) matched in full; every
-- candidate is confirmed by the full match.
local lineset = require "moat.lineset"

local M = {}

local Set = {}
Set.__index = Set

local ESCAPES = { r = "\r", n = "\n", t = "\t", ["\\"] = "\\" }

--- unescape(s) -> s with \r \n \t \\ replaced; other backslashes kept.
function M.unescape(s)
  return (s:gsub("\\(.)", function(c) return ESCAPES[c] or ("\\" .. c) end))
end

--- compile(text, name [, kind]) -> set  or  nil, "name:line: problem"
-- kind = "header" or "body" (only tunes the index).  name is used in error
-- messages (the table's path).
function M.compile(text, name, kind)
  name = name or "banned"
  local set = setmetatable({ name = name, count = 0, entries = {} }, Set)
  local patterns = {}
  local lineno = 0
  for raw in (text .. "\n"):gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    if raw:sub(-1) == "\r" then raw = raw:sub(1, -2) end
    if raw ~= "" then
      local pattern = M.unescape(raw)
      if pattern:find("*", 1, true) and not pattern:find("[^*]") then
        return nil, ("%s:%d: the pattern '%s' would match every line"):format(name, lineno, raw)
      end
      set.count = set.count + 1
      patterns[set.count] = pattern
      set.entries[set.count] = { text = raw, line = lineno }
    end
  end
  set.native = lineset.new(patterns, kind == "header" and "header" or "body")
  local exact, gram, prefix, suffix, scan = set.native:stats()
  set.kinds = { exact = exact, gram = gram, prefix = prefix, suffix = suffix, scan = scan }
  return set
end

--- set:match(line) -> entry { text = pattern as written, line = line number }  or  nil
function Set:match(line)
  if self.count == 0 then return nil end
  local i = self.native:match(line)
  return i and self.entries[i]
end

--- set:confirms() -> how many full matches candidates have needed so far (for tests).
function Set:confirms()
  return (select(6, self.native:stats()))
end

return M
