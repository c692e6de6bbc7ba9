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
-- no data_line hook, so it costs nothing.
local moat = require "moat"
local banned = require "moat.banned"

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

if headers or body then
  local REJECT = moat.reject(554, "5.7.1 Message content rejected (banned line)")
  function P.data_line(s, line, part)
    local set
    if part == "header" then set = headers else set = body end
    if not set then return end
    local hit = set:match(line)
    if hit then
      s:log(("banned %s line: matched %s:%d"):format(part, set.path, hit.line))
      return REJECT
    end
  end
end

return P
