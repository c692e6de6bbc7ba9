-- moat.test: drive policies and site scripts offline, without the daemon.
--
-- For a site's own busted specs (README "Session replay and offline policy
-- tests").  The real `moat` module (verdicts, moat.dns, moat.list, ...) runs
-- over a stand-in for the C core with canned settings, tables, address lists
-- and DNS answers, and the hooks of a chain run in the daemon's order
-- (policies, then scripts; the first verdict ends it).
--
--   local T = require "moat.test"
--   local chain = T.load { scripts = { "conf/site.lua" } }
--   local s = chain:session { ip = "192.0.2.1" }
--   local v, by = chain:rcpt(s, "noreply@example.test")
--   assert.equal(550, v.code); assert.equal("site.lua", by)
--
-- T.load(opts), opts (all optional):
--   policies  = { "router", "relay" }      stock policies, from <root>/policies/NAME.lua
--   scripts   = { "conf/site.lua" }        your files, run after them
--   root      = "."                        where policies/ is (default: $MOAT_ROOT or ".")
--   settings  = { ... }                    moat.settings (default: example.test as main and
--                                          local domain, plus policies/scripts above)
--   tables    = { router = "text" }        what moat.table_text(name) returns (its file
--                                          name is table_dir/NAME, table_dir default "tables")
--   lists     = { client_ips = { "127.0.0.1" } }  moat.list(name):contains(ip)
--   dns       = { ["example.org MX"] = { { host = "mx.example.org", pref = 10 } },
--                 ["9.2.0.192.bl.example A"] = { "127.0.0.2" },
--                 ["x.example A"] = "servfail" }   anything else is "nxdomain"
-- Returns the chain, or nil and the load error (file:line: ...).
--
-- The chain: chain.logs (every moat.log / s:log line), chain.queries ("TYPE
-- name" of every DNS question), chain.blocked (moat.tempblock.add calls),
-- chain:session(fields), and one method per hook returning verdict, policy:
--   connect(s), helo(s, name), auth(s, user, ok), mail_from(s, "a@b" | ""),
--   rcpt(s, "a@b" [, route]), data(s), data_line(s, line, part),
--   data_end(s, size), disconnect(s), and message(s, text): every header
--   field and body line of text through data_line, then data_end (a
--   data_line verdict is the message's verdict, as in the daemon).
-- mail_from and rcpt keep the session as the core does: s.from is set, an
-- accepted recipient is added to s.rcpts with the route the hooks left.
-- T.addr(raw), T.rcpt(raw [, route]) and T.route(raw, settings) build the
-- tables the hooks receive.  A verdict is { action =, code =, text = }.
local M = {}

local function basename(p) return p:match("([^/]+)$") or p end

local function list_set(v)
  local set = {}
  for k, x in pairs(v or {}) do
    if type(k) == "number" then set[x] = true else set[k] = x and true or nil end
  end
  return set
end

function M.addr(raw)
  local lp, d = raw:match("^(.*)@([^@]*)$")
  return { raw = raw, localpart = raw ~= "" and (lp or raw) or nil, domain = d ~= "" and d or nil }
end

local function is_local_domain(settings, d)
  d = d:lower()
  if (settings.main_domain or ""):lower() == d then return true end
  for _, x in ipairs(settings.local_domains or {}) do
    if x:lower() == d then return true end
  end
  return false
end

-- The route the core gives a recipient before any policy (src/smtp.c
-- default_route): local for a plain address in a local domain, else remote.
function M.route(raw, settings)
  settings = settings or {}
  local lp, d = raw:match("^(.*)@([^@]*)$")
  if not d then return { kind = "local", address = raw, can_relay = false } end
  local plain = not raw:find("^@") and not lp:find('[%%!@"]')
  local loc = plain and is_local_domain(settings, d)
  return { kind = loc and "local" or "remote", address = raw, host = not loc and d or nil, can_relay = false }
end

function M.rcpt(raw, route, settings)
  return { addr = M.addr(raw), route = route or M.route(raw, settings) }
end

local function is_verdict(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__name == "moat.verdict"
end

local Chain = {}
Chain.__index = Chain

-- A stand-in for moat.core over the chain's canned data.
local function fake_core(self, opts)
  local lists = {}
  for name, v in pairs(opts.lists or { client_ips = { "127.0.0.1" } }) do lists[name] = list_set(v) end
  local function answer(name, qtype)
    self.queries[#self.queries + 1] = qtype .. " " .. name
    local r = (opts.dns or {})[name .. " " .. qtype]
    if r == nil then return { error = "nxdomain" } end
    if type(r) == "string" then return { error = r } end
    return { answers = r }
  end
  local blocked = {}
  return {
    settings = self.settings,
    log = function(...)
      local parts = {}
      for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
      self.logs[#self.logs + 1] = table.concat(parts, " ")
    end,
    sleep = function() end,
    list = function(name)
      return { contains = function(_, ip) return (lists[name] or {})[ip] == true end }
    end,
    dns_query = function(name, qtype)
      local r = answer(name, qtype)
      if r.answers then return r.answers end
      return nil, r.error
    end,
    dns_query_all = function(qs)
      local out = {}
      for i, q in ipairs(qs) do out[i] = answer(q[1], q[2]) end
      return out
    end,
    dns_reverse = function(ip, zone)
      local a, b, c, d = ip:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
      if not a then return nil end
      local n = d .. "." .. c .. "." .. b .. "." .. a
      return zone and (n .. "." .. zone) or (n .. ".in-addr.arpa")
    end,
    table_text = function(name)
      local text = (opts.tables or {})[name]
      if text then return text, (opts.table_dir or "tables") .. "/" .. name end
    end,
    is_local_address = function(a) return is_local_domain(self.settings, (a:match("@([^@]*)$") or "")) end,
    tempblock = {
      add = function(ip, reason)
        blocked[ip] = true
        self.blocked[#self.blocked + 1] = { ip = ip, reason = reason }
      end,
      blocked = function(ip) return blocked[ip] == true end,
      trusted = function() return false end,
    },
  }
end

function M.load(opts)
  opts = opts or {}
  local root = opts.root or os.getenv("MOAT_ROOT") or "."
  local self = setmetatable({ logs = {}, queries = {}, blocked = {}, hooks = {} }, Chain)
  local settings = { main_domain = "example.test", local_domains = { "example.test" },
                     policies = opts.policies or {}, scripts = opts.scripts or {} }
  for k, v in pairs(opts.settings or {}) do settings[k] = v end
  self.settings = settings
  local core = fake_core(self, opts)
  -- A fresh moat module (and the moat.* modules built on it) bound to this
  -- core while the files load; the caller's modules are put back afterwards,
  -- so specs that stub moat.core themselves are not disturbed.
  local saved = {}
  for name, mod in pairs(package.loaded) do
    if (name == "moat" or name:match("^moat%.")) and name ~= "moat.test" and name ~= "moat.lineset" then
      saved[name] = mod
    end
  end
  for name in pairs(saved) do package.loaded[name] = nil end
  package.loaded["moat.core"] = core
  local function restore()
    for name in pairs(package.loaded) do
      if (name == "moat" or name:match("^moat%.")) and name ~= "moat.test" and name ~= "moat.lineset" then
        package.loaded[name] = nil
      end
    end
    for name, mod in pairs(saved) do package.loaded[name] = mod end
  end
  local files = {}
  for _, p in ipairs(opts.policies or {}) do files[#files + 1] = { root .. "/policies/" .. p .. ".lua", p } end
  for _, p in ipairs(opts.scripts or {}) do files[#files + 1] = { p, basename(p) } end
  for _, f in ipairs(files) do
    local env = setmetatable({}, { __index = _G })
    local chunk, err = loadfile(f[1], "t", env)
    local ok, hooks = chunk ~= nil, err
    if chunk then ok, hooks = pcall(chunk) end
    if ok and type(hooks) ~= "table" then
      ok, hooks = false, f[1] .. ": a policy must return a table of hook functions"
    end
    if not ok then
      restore()
      return nil, hooks
    end
    self.hooks[#self.hooks + 1] = { name = f[2], hooks = hooks }
  end
  restore()
  return self
end

-- Run one phase: the first verdict and the name of the policy that gave it.
function Chain:run(phase, s, ...)
  for _, h in ipairs(self.hooks) do
    local fn = h.hooks[phase]
    if fn then
      local v = fn(s, ...)                -- a function, or a callable moat.lineset filter
      if v ~= nil then
        if not is_verdict(v) then
          error(("%s: %s hook returned a %s, not a verdict"):format(h.name, phase, type(v)), 2)
        end
        return v, h.name
      end
    end
  end
  return nil
end

function Chain:session(fields)
  local s = { id = "test.1", ip = "192.0.2.10", port = 40000, local_ip = "127.0.0.1", local_port = 25,
              tls = "off", secure = false, status = "other", lan = false, vars = {}, rcpts = {}, headers = {} }
  for k, v in pairs(fields or {}) do s[k] = v end
  local logs = self.logs
  function s.log(_, ...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    logs[#logs + 1] = table.concat(parts, " ")
  end
  function s.add_header(me, name, value) me.headers[#me.headers + 1] = name .. ": " .. value end
  return s
end

local function refused(v) return v and (v.action == "reject" or v.action == "tempfail" or v.action == "drop") end

function Chain:connect(s) return self:run("connect", s) end
function Chain:helo(s, name)
  s.helo = name
  return self:run("helo", s, name)
end
function Chain:auth(s, user, ok) return self:run("auth", s, user, ok) end

function Chain:mail_from(s, raw)
  local a = M.addr(raw)
  s.from = a
  s.rcpts = {}
  local v, by = self:run("mail_from", s, a)
  if refused(v) then s.from = nil end
  return v, by
end

function Chain:rcpt(s, raw, route)
  local r = M.rcpt(raw, route, self.settings)
  local v, by = self:run("rcpt", s, r)
  if not refused(v) then s.rcpts[#s.rcpts + 1] = { addr = raw, route = r.route } end
  return v, by, r.route
end

function Chain:data(s) return self:run("data", s) end
function Chain:data_line(s, line, part) return self:run("data_line", s, line, part) end
function Chain:data_end(s, size) return self:run("data_end", s, { size = size or 0 }) end
function Chain:disconnect(s) return self:run("disconnect", s) end

-- The message text (LF or CRLF lines) as the core feeds it: header fields
-- whole (continuation lines joined with CRLF), then body lines.
function Chain:message(s, text)
  local lines = {}
  for l in (text:gsub("\r\n", "\n") .. (text:sub(-1) == "\n" and "" or "\n")):gmatch("([^\n]*)\n") do
    lines[#lines + 1] = l
  end
  local kept, kept_by
  local function feed(line, part)
    if kept then return end
    local v, by = self:run("data_line", s, line, part)
    if v then kept, kept_by = v, by end
  end
  local i, field = 1, nil
  while i <= #lines and lines[i] ~= "" do
    local l = lines[i]
    if field and l:match("^[ \t]") then
      field = field .. "\r\n" .. l
    else
      if field then feed(field, "header") end
      field = l
    end
    i = i + 1
  end
  if field then feed(field, "header") end
  for j = i + 1, #lines do feed(lines[j], "body") end
  if kept then return kept, kept_by end
  local size = 0                          -- bytes as on the wire: CRLF line ends
  for _, l in ipairs(lines) do size = size + #l + 2 end
  return self:data_end(s, size)
end

return M
