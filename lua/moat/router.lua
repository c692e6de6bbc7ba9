-- moat.router: the CommuniGate Pro Router table (DESIGN section 4) and the
-- relay markers of seed 002 ("Relaying Rerouted Messages").
--
--   local router = require "moat.router"
--   local tbl = assert(router.parse(text, "conf/router"))
--   local r = router.new(tbl, { main_domain = "example.test", local_domains = {...} })
--   local res = r:route("joe@example.test")
--
-- Choices (see also README):
--  * Domains and local parts are compared case-insensitively (ASCII only), as
--    CommuniGate does; rewritten addresses keep the case the target or the
--    captured text had.
--  * Source routes are handled in CommuniGate's percent form:
--    <@h1,@h2:u@d> is routed as u%d%h2@h1.
--  * An address carrying a route whose outer domain is local is unwrapped one
--    hop at a time (u%h@local -> u@h; h!u@local -> u@h; "u@h"@local -> u@h),
--    after address records but before domain records, so a domain record of a
--    local domain can never turn a routed address into a "local" one.  Each
--    unwrap counts as a rewrite.  '%' and '@' split at the last occurrence,
--    '!' at the first (so "a!u%h" is u%h routed via a after h).
--  * Once an address has carried a route (received that way, or produced by a
--    record), Relay: and unprefixed records no longer set "can relay"; only
--    RelayAll: does.  The relay policy relies on this to refuse open-relay
--    tricks.
--  * The bare names spamtrap, error and null in the main domain are the special
--    addresses themselves (seed: "spamtrap@yourhost") unless an address record
--    maps them first.
--  * A domain record's target "d@host" means "domain d, delivered via host"
--    even when d looks like a user name.
--  * A record repeating an earlier key is not an error: the first one wins and
--    the later one is listed in tbl.warnings ("file:line: ...").
local address = require "moat.address"
local wildcard = require "moat.wildcard"

local M = {}
M.MAX_REWRITES = 10

local SPECIAL = { error = true, spamtrap = true, null = true }
local PREFIX_NAME = { relay = "Relay:", norelay = "NoRelay:", relayall = "RelayAll:" }

---------------------------------------------------------------------------
-- Parsing the table text
---------------------------------------------------------------------------

-- ';' starts a comment, except inside a quoted local part.
local function strip_comment(line)
  local inq, esc = false, false
  for i = 1, #line do
    local c = line:sub(i, i)
    if esc then esc = false
    elseif inq and c == "\\" then esc = true
    elseif c == '"' then inq = not inq
    elseif c == ";" and not inq then return line:sub(1, i - 1)
    end
  end
  return line
end

local function trim(s) return s:match("^%s*(.-)%s*$") end

-- "Relay:<joe> = x" -> "relay", "<joe> = x".  A domain never holds ':' and a
-- '<' key never starts with a letter, so a leading word + ':' is a prefix.
local function split_prefix(s)
  local word, rest = s:match("^(%a+)%s*:%s*(.*)$")
  if not word then return "none", s end
  local p = word:lower()
  if not PREFIX_NAME[p] then return nil, "unknown prefix '" .. word .. ":'" end
  return p, rest
end

-- Index of the '>' closing a "<...>" key, skipping quoted text.
local function find_close(s)
  local inq, esc = false, false
  for i = 2, #s do
    local c = s:sub(i, i)
    if esc then esc = false
    elseif inq and c == "\\" then esc = true
    elseif c == '"' then inq = not inq
    elseif c == ">" and not inq then return i
    end
  end
end

-- "<key> = target" or "domain = target" -> kind, key, target
local function split_record(s)
  local key, rest, kind
  if s:sub(1, 1) == "<" then
    local close = find_close(s)
    if not close then return nil, "missing '>' after the address" end
    kind, key, rest = "address", s:sub(2, close - 1), s:sub(close + 1)
  else
    kind, key, rest = "domain", s:match("^([^%s=]*)(.*)$")
    if key == "" then return nil, "expected <address> or domain before '='" end
  end
  local target = rest:match("^%s*=%s*(.-)$")
  if not target then return nil, "expected '=' after " .. (kind == "address" and "<" .. key .. ">" or key) end
  if target == "" then return nil, "missing target after '='" end
  return kind, key, target
end

-- An address key: "<joe>", "<sales@corp.example>", "<promo*@spam.example>".
-- '*' is valid atext, but not valid in a domain: validate a copy with every
-- star replaced by a letter.
local function compile_address_key(key, rec)
  if key == "" then return nil, "empty address <> cannot be a record key" end
  local a, err = address.parse((key:gsub("%*", "a")))
  if not a then return nil, "bad address <" .. key .. ">: " .. err end
  if a.route then return nil, "a source route cannot be a record key" end
  rec.wild = wildcard.has_wildcard(key)
  if a.domain then
    rec.local_pat = key:sub(1, #key - #a.domain - 1)
    rec.domain_pat = key:sub(-#a.domain)
  else
    rec.local_pat = key
  end
  if not rec.wild then
    -- exact keys are stored in canonical form, so "\"joe\"" and "joe" agree
    rec.local_canon = a.local_text:lower()
    rec.domain = address.canonical_domain(a.domain)
  end
  return rec
end

local function compile_domain_key(key, rec)
  if wildcard.has_wildcard(key) then return nil, "wildcards are only supported in <address> records" end
  local ok, err = address.valid_domain(key)
  if not ok then return nil, "bad domain '" .. key .. "': " .. err end
  rec.domain = address.canonical_domain(key)
  return rec
end

local function compile_domain_target(target)
  local d, host = target, nil
  local at = target:find("@", 1, true)
  if at then d, host = target:sub(1, at - 1), target:sub(at + 1) end
  local ok, err = address.valid_domain(d)
  if not ok then return nil, "bad target domain '" .. d .. "': " .. err end
  if host then
    ok, err = address.valid_domain(host)
    if not ok then return nil, "bad target host '" .. host .. "': " .. err end
  end
  return { domain = address.canonical_domain(d), host = address.canonical_domain(host) }
end

local function compile_address_target(target, wild)
  if wildcard.has_wildcard(target) and not wild then
    return nil, "target uses '*' but the record key has none"
  end
  local a, err = address.parse((target:gsub("%*", "a")))
  if not a then return nil, "bad target '" .. target .. "': " .. err end
  if a.null then return nil, "the null address cannot be a target" end
  return { text = target }
end

local function compile_target(rec, target)
  local special = target:lower()
  if SPECIAL[special] then return { special = special } end
  if rec.kind == "domain" then return compile_domain_target(target) end
  return compile_address_target(target, rec.wild)
end

-- One non-empty, comment-free line -> record or nil, problem.
local function parse_record(s, lineno)
  local prefix, rest = split_prefix(s)
  if not prefix then return nil, rest end
  local kind, key, target = split_record(rest)
  if not kind then return nil, key end
  local rec = { line = lineno, prefix = prefix, kind = kind, key = key }
  local ok, err
  if kind == "address" then ok, err = compile_address_key(key, rec)
  else ok, err = compile_domain_key(key, rec) end
  if not ok then return nil, err end
  rec.target, err = compile_target(rec, target)
  if not rec.target then return nil, err end
  local shown = kind == "address" and ("<" .. key .. ">") or key
  rec.text = (PREFIX_NAME[prefix] or "") .. shown .. " = " .. target
  return rec
end

-- Identity of a record's key for duplicate detection (main domain unknown yet).
local function key_id(rec)
  if rec.kind == "domain" then return "domain " .. rec.domain end
  if rec.wild then return "wild <" .. rec.key:lower() .. ">" end
  return "exact <" .. rec.local_canon .. (rec.domain and ("@" .. rec.domain) or "") .. ">"
end

--- parse(text, filename) -> tbl  or  nil, "filename:line: problem"
-- tbl = { filename, records = { rec... } (file order), warnings = { "file:line: ..." } }
-- A malformed line is always an error; nothing is skipped silently.
function M.parse(text, filename)
  filename = filename or "router"
  if type(text) ~= "string" then return nil, filename .. ": router table must be a string" end
  local tbl = { filename = filename, records = {}, warnings = {} }
  local seen, lineno = {}, 0
  for raw in (text:sub(-1) == "\n" and text or text .. "\n"):gmatch("(.-)\n") do
    lineno = lineno + 1
    local s = trim(strip_comment((raw:gsub("\r$", ""))))
    if s ~= "" then
      local rec, err = parse_record(s, lineno)
      if not rec then return nil, ("%s:%d: %s"):format(filename, lineno, err) end
      local id = key_id(rec)
      if seen[id] then
        tbl.warnings[#tbl.warnings + 1] = ("%s:%d: %s repeats the key of line %d and is never used")
          :format(filename, lineno, rec.text, seen[id])
      else
        seen[id] = lineno
      end
      tbl.records[#tbl.records + 1] = rec
    end
  end
  return tbl
end

---------------------------------------------------------------------------
-- Building the router
---------------------------------------------------------------------------

local Router = {}
Router.__index = Router

local function norm_domain(d)
  return address.canonical_domain((d:gsub("%.$", "")))
end

-- First record wins for a key; file order is kept for wildcard lists.
function Router:index(rec)
  if rec.kind == "domain" then
    if not self.domains[rec.domain] then self.domains[rec.domain] = rec end
    return
  end
  local in_main = rec.domain_pat and not wildcard.has_wildcard(rec.domain_pat)
    and self.main and norm_domain(rec.domain_pat) == self.main
  local bare = rec.domain_pat == nil or in_main
  if rec.wild then
    local pat = bare and rec.local_pat or (rec.local_pat .. "@" .. rec.domain_pat)
    local list = bare and self.wild_bare or self.wild_full
    list[#list + 1] = { rec = rec, matcher = wildcard.compile(pat, { nocase = true }) }
    return
  end
  local key = bare and rec.local_canon or (rec.local_canon .. "@" .. rec.domain)
  local map = bare and self.exact_bare or self.exact_full
  if not map[key] then map[key] = rec end
end

--- new(tbl, opts) -> router
-- opts.main_domain: addresses in it are cut to their local part ("<joe>");
-- opts.local_domains: mail for these is "local" (main_domain always is).
function M.new(tbl, opts)
  opts = opts or {}
  local r = setmetatable({
    main = opts.main_domain and norm_domain(opts.main_domain),
    locals = {}, exact_bare = {}, exact_full = {}, wild_bare = {}, wild_full = {},
    domains = {}, tbl = tbl,
  }, Router)
  for _, d in ipairs(opts.local_domains or {}) do r.locals[norm_domain(d)] = true end
  if r.main then r.locals[r.main] = true end
  for _, rec in ipairs(tbl and tbl.records or {}) do r:index(rec) end
  return r
end

--- load(text, filename, opts) -> router, tbl  or  nil, err
function M.load(text, filename, opts)
  local tbl, err = M.parse(text, filename)
  if not tbl then return nil, err end
  return M.new(tbl, opts), tbl
end

--- configured(settings, text, path) -> router
-- The site's Router: the table (text and path from moat.table_text("router"),
-- nil when none is configured) with main_domain and local_domains from the
-- settings.  A malformed table raises "file:line: problem", so the policy
-- that loads it fails to load and `moat --check` reports the line.
function M.configured(settings, text, path)
  local tbl
  if text then
    local err
    tbl, err = M.parse(text, path)
    if not tbl then error(err, 0) end
  end
  return M.new(tbl, { main_domain = settings.main_domain, local_domains = settings.local_domains })
end

---------------------------------------------------------------------------
-- Routing
---------------------------------------------------------------------------
-- The routing state: localpart (decoded), domain (canonical, nil = main
-- domain after the cut-off), host (set by "via host"), marker, tainted
-- (has carried a route), known (a record applied), steps.

local function is_routed(lp)
  return lp:find("[%%@!]") ~= nil
end

function Router:is_local(domain)
  return domain == nil or self.locals[domain] == true
end

function Router:text(st, with_main)
  local lp = address.quote_local(st.localpart)
  local d = st.domain or (with_main and self.main)
  return d and (lp .. "@" .. d) or lp
end

function Router:step(st, op, extra)
  local s = { op = op, address = self:text(st), host = st.host, marker = st.marker }
  for k, v in pairs(extra or {}) do s[k] = v end
  st.steps[#st.steps + 1] = s
end

-- Main-domain cut-off: joe@example.test -> joe.
function Router:cut(st)
  if st.domain and st.domain == self.main then
    st.domain = nil
    self:step(st, "cut-off")
  end
end

-- Source route <@h1,@h2:u@d> -> u%d%h2 @ h1 (CommuniGate's percent form).
local function percent_form(a)
  if not a.route then return a.localpart, address.canonical_domain(a.domain) end
  local lp = a.localpart .. "%" .. a.domain
  for k = #a.route, 2, -1 do lp = lp .. "%" .. a.route[k] end
  return lp, address.canonical_domain(a.route[1])
end

-- Taint is decided from the text itself, not a.simple, so a hand-built
-- address table cannot smuggle a route past the relay markers.
local function set_address(st, a)
  st.localpart, st.domain = percent_form(a)
  if a.route or is_routed(st.localpart) then st.tainted = true end
end

-- Relay markers (DESIGN section 4): RelayAll: always sets; Relay: and no
-- prefix set only for a simple result of an address that never had a route;
-- NoRelay: leaves the marker alone.  A set marker is never cleared.
local function mark(st, rec)
  if rec.prefix == "relayall" then st.marker = true
  elseif rec.prefix ~= "norelay" and not st.tainted then st.marker = true
  end
end

function Router:result(st, kind, extra)
  local res = {
    kind = kind, localpart = st.localpart, domain = st.domain or self.main,
    address = self:text(st, true), host = st.host, can_relay = st.marker,
    routed = st.tainted, known = st.known, steps = st.steps,
  }
  for k, v in pairs(extra or {}) do res[k] = v end
  return res
end

-- error / spamtrap / null are addresses of their own, in no domain.
function Router:special_result(st, name)
  local res = self:result(st, name)
  res.address, res.localpart, res.domain, res.host = name, name, nil, nil
  if name == "error" then res.reason = "routed to error" end
  return res
end

-- No more rewrites: local if the domain is local, else remote to the "via"
-- host or the domain itself.
function Router:finish(st)
  if self:is_local(st.domain) then return self:result(st, "local") end
  return self:result(st, "remote", { host = st.host or st.domain })
end

-- Address records: exact key first, then wildcards in file order.  Main-domain
-- addresses are cut before lookup, so they only meet bare keys ("<joe>",
-- "<joe@main>", "<*>"); a wildcard in a key's domain never matches the main
-- domain.
function Router:find_address_record(st)
  local lt = address.quote_local(st.localpart)
  local bare = st.domain == nil
  local key = bare and lt:lower() or (lt:lower() .. "@" .. st.domain)
  local rec = (bare and self.exact_bare or self.exact_full)[key]
  if rec then return rec, {} end
  local subject = bare and lt or (lt .. "@" .. st.domain)
  for _, w in ipairs(bare and self.wild_bare or self.wild_full) do
    local ok, caps = w.matcher:match(subject)
    if ok then return w.rec, caps end
  end
end

-- What happens next: { rec, caps } | { special } | { unwrap } | nil (done).
function Router:next_action(st)
  local rec, caps = self:find_address_record(st)
  if rec then return { rec = rec, caps = caps } end
  if st.domain == nil and SPECIAL[st.localpart:lower()] then
    return { special = st.localpart:lower() }
  end
  if is_routed(st.localpart) and self:is_local(st.domain) then return { unwrap = true } end
  local d = st.domain or self.main
  rec = d and self.domains[d]
  if rec then return { rec = rec, caps = {} } end
end

-- One hop of a route addressed to us: u%h -> u@h, "u@h" -> u@h, h!u -> u@h.
function Router:unwrap(st)
  local lp, user, hop = st.localpart, nil, nil
  local at = lp:match(".*()[%%@]")
  if at then
    user, hop = lp:sub(1, at - 1), lp:sub(at + 1)
  else
    local bang = lp:find("!", 1, true)
    hop, user = lp:sub(1, bang - 1), lp:sub(bang + 1)
  end
  st.tainted = true
  if user == "" or not address.valid_domain(hop) then
    return self:result(st, "error", { reason = "invalid route in " .. self:text(st, true) })
  end
  st.localpart, st.domain = user, address.canonical_domain(hop)
  self:step(st, "route")
end

function Router:apply_domain(st, rec)
  local t = rec.target
  st.domain = t.domain
  mark(st, rec)
  if t.host then
    st.host = t.host
    self:step(st, "record", { record = rec.text, line = rec.line })
    return self:finish(st)
  end
  self:step(st, "record", { record = rec.text, line = rec.line })
end

function Router:apply_address(st, rec, caps)
  local text = wildcard.expand(rec.target.text, caps)
  local a, err = address.parse(text)
  if a and a.null then a, err = nil, "the null address" end   -- e.g. <*x> = * matching "x"
  if not a then
    return self:result(st, "error", { reason = "record on line " .. rec.line .. " gives a bad address: " .. err })
  end
  set_address(st, a)
  mark(st, rec)
  self:step(st, "record", { record = rec.text, line = rec.line })
end

-- Applies one record; returns a final result or nil to keep routing.
function Router:apply(st, rec, caps)
  st.known = true
  local special = rec.target.special
  if special then
    mark(st, rec)
    st.steps[#st.steps + 1] = { op = "record", record = rec.text, line = rec.line,
                                address = special, marker = st.marker }
    return self:special_result(st, special)
  end
  if rec.kind == "domain" then return self:apply_domain(st, rec) end
  return self:apply_address(st, rec, caps)
end

-- A table without a local part (e.g. only { raw = ... }) is parsed again.
local function input_address(input)
  if type(input) == "table" then
    if input.null or input.localpart then return input end
    input = input.raw
  end
  if type(input) ~= "string" then return nil, "address must be a string or a parsed address" end
  return address.parse(input)
end

--- router:route(addr) -> result  or  nil, err
-- addr: a string (with or without <>) or a table from moat.address.parse.
-- result = { kind = "local"|"remote"|"error"|"spamtrap"|"null",
--            address (final, main domain restored), localpart, domain,
--            host (remote/"via" host or nil), can_relay, routed (carried a
--            route at some point), known (a record applied), reason (errors),
--            steps = { { op = "received"|"cut-off"|"record"|"route"|"special",
--                        address, host, marker, record, line }, ... } }
-- Returns nil, "routing loop" when an 11th rewrite would be needed.
function Router:route(input)
  local a, err = input_address(input)
  if not a then return nil, err end
  if a.null then return nil, "the null address cannot be routed" end
  local st = { marker = false, tainted = false, known = false, steps = {} }
  set_address(st, a)
  st.steps[1] = { op = "received", address = address.format(a), marker = false }
  self:cut(st)
  local rewrites = 0
  while true do
    local act = self:next_action(st)
    if not act then return self:finish(st) end
    if act.special then
      self:step(st, "special")
      return self:special_result(st, act.special)
    end
    if rewrites == M.MAX_REWRITES then return nil, "routing loop" end
    rewrites = rewrites + 1
    local res
    if act.unwrap then res = self:unwrap(st) else res = self:apply(st, act.rec, act.caps) end
    if res then return res end
    self:cut(st)
  end
end

return M
