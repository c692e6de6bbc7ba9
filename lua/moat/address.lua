-- moat.address: parsing of the path inside MAIL FROM:<...> / RCPT TO:<...>
-- (RFC 5321 section 4.1.2, with the RFC 6531 SMTPUTF8 extensions), and the
-- "simple address" test the Router's relay markers depend on (seed 002,
-- "Relaying Rerouted Messages").
--
-- Choices (see also README):
--  * A trailing dot in a domain ("joe@example.test.") is REJECTED, not
--    normalized: RFC 5321 does not allow it, and accepting it would give two
--    spellings of every domain for the relay checks to get wrong.
--  * A mailbox without a domain ("postmaster", "h1!u") is accepted with
--    domain = nil; callers decide (Return-Path rejects it, the Router treats it
--    as the main domain).  The null path "<>" (or "") gives null = true.
--  * General address literals ("[tag:...]") are rejected; IPv4 literal octets
--    with leading zeros ("[010.0.0.1]") are rejected because resolvers disagree
--    on whether they are octal.
--  * localpart is the DECODED local part (quotes and backslashes removed);
--    local_text is its canonical spelling (quoted only when it must be), so
--    "\"joe\"@x" and "joe@x" compare equal and cannot dodge Router records.
--  * Non-ASCII bytes are allowed (SMTPUTF8) only when the whole string is valid
--    UTF-8; control characters are never allowed.
local M = {}

local MAX_LOCAL, MAX_DOMAIN, MAX_PATH, MAX_LABEL = 64, 255, 256, 63

-- RFC 5322 atext plus every byte >= 0x80 (RFC 6531 UTF8-non-ascii; UTF-8
-- validity of the whole string is checked first).
local ATEXT = "A-Za-z0-9!#$%%&'*+/=?^_`{|}~\128-\255%-"
local ATOM_RUN = "^[" .. ATEXT .. "%.]+"
local ATOM = "^[" .. ATEXT .. "]+$"
local LABEL = "^[A-Za-z0-9\128-\255%-]+$"

local function is_dot_string(s)
  if s == "" then return false end
  for atom in (s .. "."):gmatch("(.-)%.") do
    if not atom:find(ATOM) then return false end
  end
  return true
end
M.is_dot_string = is_dot_string

--- quote_local(decoded) -> canonical local-part text
-- Quotes only when the decoded text is not a valid Dot-string.
function M.quote_local(s)
  if is_dot_string(s) then return s end
  return '"' .. s:gsub('[\\"]', "\\%0") .. '"'
end

-- Dotted quad, each octet 0..255 without leading zeros.
local function is_ipv4(s)
  local parts = { s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$") }
  if #parts ~= 4 then return false end
  for _, p in ipairs(parts) do
    if #p > 3 or (#p > 1 and p:sub(1, 1) == "0") or tonumber(p) > 255 then return false end
  end
  return true
end

-- Counts the 16-bit groups of one side of "::", or nil when malformed.  An
-- embedded IPv4 address is allowed only as the last group of the address.
local function ipv6_groups(part, v4_allowed)
  if part == "" then return 0 end
  local pieces = {}
  for g in (part .. ":"):gmatch("(.-):") do pieces[#pieces + 1] = g end
  local n = 0
  for i, g in ipairs(pieces) do
    if v4_allowed and i == #pieces and g:find(".", 1, true) then
      if not is_ipv4(g) then return nil end
      n = n + 2
    elseif g:find("^%x%x?%x?%x?$") then
      n = n + 1
    else
      return nil
    end
  end
  return n
end

local function is_ipv6(s)
  local a, b = s:find("::", 1, true)
  if not a then return ipv6_groups(s, true) == 8 end
  local head, tail = s:sub(1, a - 1), s:sub(b + 1)
  if tail:find("::", 1, true) then return false end
  local h, t = ipv6_groups(head, false), ipv6_groups(tail, true)
  return h ~= nil and t ~= nil and h + t <= 7
end

local function check_literal(d)
  if d:sub(-1) ~= "]" then return nil, "unterminated address literal" end
  local inner = d:sub(2, -2)
  local tag, rest = inner:match("^([%w%-]*):(.*)$")
  if tag then
    if tag:lower() ~= "ipv6" then return nil, "unsupported address literal tag '" .. tag .. "'" end
    if not is_ipv6(rest) then return nil, "invalid IPv6 address literal" end
    return "ipv6"
  end
  if not is_ipv4(inner) then return nil, "invalid address literal" end
  return "ipv4"
end

--- valid_domain(d) -> "domain" | "ipv4" | "ipv6"  or  nil, err
-- Accepts a domain name (LDH labels, or UTF-8 U-labels) or an address literal.
function M.valid_domain(d)
  if type(d) ~= "string" or d == "" then return nil, "empty domain" end
  if #d > MAX_DOMAIN then return nil, "domain longer than 255 octets" end
  if d:sub(1, 1) == "[" then return check_literal(d) end
  if d:sub(-1) == "." then return nil, "domain has a trailing dot" end
  for label in (d .. "."):gmatch("(.-)%.") do
    if label == "" then return nil, "domain has an empty label" end
    if #label > MAX_LABEL then return nil, "domain label longer than 63 octets" end
    if not label:find(LABEL) then return nil, "invalid character in domain" end
    if label:sub(1, 1) == "-" or label:sub(-1) == "-" then
      return nil, "domain label starts or ends with '-'"
    end
  end
  return "domain"
end

-- Quoted-string at s[i] == '"'; returns decoded text and the index after it.
local function scan_quoted(s, i)
  local out, j = {}, i + 1
  while j <= #s do
    local c = s:byte(j)
    if c == 34 then return table.concat(out), j + 1 end
    if c == 92 then
      local q = s:byte(j + 1)
      if not q or q < 32 or q > 126 then return nil, "bad backslash escape in quoted local part" end
      out[#out + 1] = string.char(q)
      j = j + 2
    elseif c >= 32 then   -- qtextSMTP, or a UTF-8 byte (c >= 128)
      out[#out + 1] = string.char(c)
      j = j + 1
    else
      return nil, "control character in quoted local part"
    end
  end
  return nil, "unterminated quoted local part"
end

-- Local part at s[i]; returns decoded text, quoted flag, index after it.
local function scan_local(s, i)
  if s:sub(i, i) == '"' then
    local text, j = scan_quoted(s, i)
    if not text then return nil, j end
    if text == "" then return nil, "empty local part" end
    return text, true, j
  end
  local _, e = s:find(ATOM_RUN, i)
  if not e then return nil, "empty local part" end
  local text = s:sub(i, e)
  if not is_dot_string(text) then return nil, "local part has an empty atom (leading, trailing or double dot)" end
  return text, false, e + 1
end

-- A-d-l ":" at the start of s ("@h1,@h2:"); returns hosts and the index after ':'.
local function scan_route(s)
  local hosts, i = {}, 1
  while true do
    if s:sub(i, i) ~= "@" then return nil, "bad source route" end
    local host
    if s:sub(i + 1, i + 1) == "[" then
      local close = s:find("]", i + 1, true)
      if not close then return nil, "unterminated address literal in source route" end
      host = s:sub(i + 1, close)
    else
      host = s:match("^[^,:]*", i + 1)
    end
    local ok, err = M.valid_domain(host)
    if not ok then return nil, "source route: " .. err end
    hosts[#hosts + 1] = host
    i = i + 1 + #host
    local sep = s:sub(i, i)
    if sep == ":" then return hosts, i + 1 end
    if sep ~= "," then return nil, "bad source route" end
    i = i + 1
  end
end

-- Which route, if any, the address carries.  CommuniGate treats '%' and '!'
-- in a local part as routes, and a quoted local part hiding an '@' is one too
-- (a downstream system that unquotes it would relay to the hidden host).
local function route_kind_of(a)
  if a.null then return nil end
  if a.route then return "source" end
  local lp = a.localpart
  if lp:find("@", 1, true) then return "quoted" end
  if lp:find("%", 1, true) then return "percent" end
  if lp:find("!", 1, true) then return "bang" end
  return nil
end

local function null_address(raw)
  return { raw = raw, null = true, quoted = false, simple = true, mailbox = "" }
end

local function strip_brackets(raw)
  if raw:sub(1, 1) ~= "<" then return raw end
  if #raw < 2 or raw:sub(-1) ~= ">" then return nil, "unbalanced angle brackets" end
  return raw:sub(2, -2)
end

local function check_charset(s)
  if #s + 2 > MAX_PATH then return nil, "path longer than 256 octets" end
  if not utf8.len(s) then return nil, "invalid UTF-8 in address" end
  if s:find("[\0-\31\127]") then return nil, "control character in address" end
  return true
end

--- parse(raw) -> address  or  nil, err
-- raw is the path with or without its angle brackets.  The address:
--   { raw, null, localpart (decoded), local_text (canonical), quoted,
--     domain (as written, nil when absent), literal (nil|"ipv4"|"ipv6"),
--     route (list of source-route hosts or nil), route_kind
--     (nil|"source"|"quoted"|"percent"|"bang"), simple, mailbox
--     (canonical "local@domain", domain lower-cased) }
function M.parse(raw)
  if type(raw) ~= "string" then return nil, "address must be a string" end
  local s, err = strip_brackets(raw)
  if not s then return nil, err end
  if s == "" then return null_address(raw) end
  local ok, cerr = check_charset(s)
  if not ok then return nil, cerr end

  local route, i = nil, 1
  if s:sub(1, 1) == "@" then
    route, i = scan_route(s)
    if not route then return nil, i end
  end
  local lp, quoted, j = scan_local(s, i)
  if not lp then return nil, quoted end
  if j - i > MAX_LOCAL then return nil, "local part longer than 64 octets" end

  local domain, literal
  if j <= #s then
    if s:sub(j, j) ~= "@" then return nil, "unexpected character '" .. s:sub(j, j) .. "' after local part" end
    domain = s:sub(j + 1)
    local kind, derr = M.valid_domain(domain)
    if not kind then return nil, derr end
    if kind ~= "domain" then literal = kind end
  elseif route then
    return nil, "a source route needs a mailbox with a domain"
  end

  local a = { raw = raw, null = false, localpart = lp, quoted = quoted,
              domain = domain, literal = literal, route = route }
  a.local_text = M.quote_local(lp)
  a.route_kind = route_kind_of(a)
  a.simple = a.route_kind == nil
  a.mailbox = a.local_text .. (domain and ("@" .. M.canonical_domain(domain)) or "")
  return a
end

--- canonical_domain(d) -> d lower-cased ("[IPv6:...]" keeps its tag's usual spelling)
function M.canonical_domain(d)
  if d == nil then return nil end
  local v6 = d:match("^%[[Ii][Pp][Vv]6:(.*)%]$")
  if v6 then return "[IPv6:" .. v6:lower() .. "]" end
  return d:lower()
end

local function as_address(addr)
  if type(addr) == "table" then return addr end
  return M.parse(addr)
end

--- simple(addr) -> bool, route_kind
-- addr is a string or a parsed address.  A "simple address" carries no route
-- (seed 002): "u%h1@h2", "<@h2:u@h1>", "h1!u" and "\"u@h1\"@h2" are not
-- simple.  An unparsable address is not simple (route_kind "invalid").
function M.simple(addr)
  local a = as_address(addr)
  if not a then return false, "invalid" end
  return a.route_kind == nil, a.route_kind
end

--- route_kind(addr) -> nil | "source" | "quoted" | "percent" | "bang" | "invalid"
function M.route_kind(addr)
  local _, kind = M.simple(addr)
  return kind
end

--- format(addr) -> canonical path text without angle brackets
-- ("" for the null path, "@h1,@h2:u@d" when there is a source route).
function M.format(a)
  if a.null then return "" end
  local mailbox = a.mailbox or (M.quote_local(a.localpart) .. (a.domain and ("@" .. M.canonical_domain(a.domain)) or ""))
  if not a.route then return mailbox end
  local hops = {}
  for k, h in ipairs(a.route) do hops[k] = "@" .. M.canonical_domain(h) end
  return table.concat(hops, ",") .. ":" .. mailbox
end

return M
