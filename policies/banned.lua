-- banned: Banned Header Lines and Banned Body Lines (seed 002 "Banning Mail
-- by Header and Body Lines", DESIGN §4 and §6).
--
-- tables.banned_headers and tables.banned_body name the pattern files (format
-- and escapes: lua/moat/banned.lua).  Every header field (whole, a wrapped
-- field with its inner CR LF) is compared with the header patterns, every
-- body line with the body patterns; a match rejects the message after the
-- final dot with "554 5.7.1 Message content rejected (banned line)".  The
-- files are read when the policy loads (start and reload); a bad line stops
-- the load with "file:line: problem".  With no patterns at all the policy has
-- no data_line hook, so it costs nothing.  A set whose patterns all fail to
-- match a line costs a few hash probes in C (src/lineset.c), no Lua.
local moat = require "moat"
local banned = require "moat.banned"
local lineset = require "moat.lineset"

local function load(name, kind)
  local text, path = moat.table_text(name)
  if not text then return nil end
  local set, err = banned.compile(text, path, kind)
  if not set then error(err, 0) end
  if set.count == 0 then return nil end
  set.path = path
  return set
end

local headers = load("banned_headers", "header")
local body = load("banned_body", "body")

local P = {}

-- The hook is a line filter: the core matches every header field and body
-- line against the sets in C, and gives the verdict (after the log line of
-- the pattern that matched) without entering Lua for the lines that pass.
local function labels(set, part)
  if not set then return nil end
  local out = {}
  for i, e in ipairs(set.entries) do out[i] = ("banned %s line: matched %s:%d"):format(part, set.path, e.line) end
  return out
end

if headers or body then
  P.data_line = lineset.filter {
    header = headers and headers.native, body = body and body.native,
    verdict = moat.reject(554, "5.7.1 Message content rejected (banned line)"),
    header_labels = labels(headers, "header"), body_labels = labels(body, "body"),
  }
end

return P
