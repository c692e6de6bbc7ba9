-- spec/helpers/moat.lua: start a real moat and talk SMTP to it.
--
--   local moat = require "helpers.moat"
--   local srv = moat.start { scripts = { ["site.lua"] = "return {}" }, smtp = { timeout = 1 } }
--   local c = moat.client(srv.port)          -- reads the greeting into c.greeting_code / c.greeting
--   c:ehlo()
--   local r = c:transaction { from = "a@x.example", rcpts = { "joe@example.test" }, data = msg }
--   srv:stop()                               -- or moat.stop_all() in after_each
--
-- The binary is ./moat, or $MOAT_BIN (e.g. build/moat-asan).  Every server
-- lives in a fresh directory under spec/tmp/ (removed on a clean stop unless
-- MOAT_KEEP_TMP is set).
local socket = require "socket"
local lfs = require "lfs"
local json = require "dkjson"

local M = {}

-- ---- paths ----------------------------------------------------------------

local function abspath(p)
  if p:sub(1, 1) == "/" then return p end
  return lfs.currentdir() .. "/" .. p
end

local function repo_root()
  local src = debug.getinfo(1, "S").source:sub(2)   -- "@spec/helpers/moat.lua"
  local dir = abspath(src):match("^(.*)/spec/helpers/[^/]*$")
  return dir or lfs.currentdir()
end

M.root = repo_root()

local function shquote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.shquote = shquote

local root_cached
function M.is_root()
  if root_cached == nil then
    local p = io.popen("id -u")
    local uid = p and p:read("l")
    if p then p:close() end
    root_cached = uid == "0"
  end
  return root_cached
end

-- Start `cmd` (a shell command line starting with exec) in the background; returns its pid.
function M.spawn(cmd)
  local p = assert(io.popen(cmd .. " & echo $!", "r"))
  local pid = tonumber(p:read("l"))
  p:close()
  assert(pid, "could not start: " .. cmd)
  return pid
end

function M.bin()
  local b = os.getenv("MOAT_BIN")
  if not b or b == "" then b = "moat" end
  if b:sub(1, 1) ~= "/" then b = M.root .. "/" .. b:gsub("^%./", "") end
  return b
end

function M.is_asan() return M.bin():find("asan", 1, true) ~= nil end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local d = f:read("a")
  f:close()
  return d
end
M.read_file = read_file

local function write_file(path, data)
  local dir = path:match("^(.*)/[^/]*$")
  if dir then os.execute("mkdir -p " .. shquote(dir)) end
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end
M.write_file = write_file

local counter = 0
-- A fresh, unique directory under spec/tmp/.
function M.tmpdir(tag)
  local base = M.root .. "/spec/tmp"
  lfs.mkdir(base)
  while true do
    counter = counter + 1
    local name = ("%s/%s-%d-%d-%04d"):format(base, tag or "t", os.time(), counter, math.random(0, 9999))
    if lfs.mkdir(name) then return name end
  end
end

-- ---- ports and processes ---------------------------------------------------

-- A TCP port free on 127.0.0.1 right now, and never one this process handed
-- out before: two picks in a row can get the same ephemeral port back from
-- the kernel, and a config with two sockets on it would not start.
local handed_out = {}

-- Claim a port for this process (TCP and UDP alike); false if it was taken before.
function M.claim_port(port)
  if handed_out[port] then return false end
  handed_out[port] = true
  return true
end

-- all: the port must be free on every address, IPv4 and IPv6 (for an
-- address = "all" socket: a client bound to 127.0.0.5:P already blocks it).
function M.free_port(all)
  for _ = 1, 100 do
    local s = assert(socket.tcp())
    s:setoption("reuseaddr", true)
    assert(s:bind(all and "0.0.0.0" or "127.0.0.1", 0))
    local _, port = s:getsockname()
    port = tonumber(port)
    local free = true
    if all then
      local s6 = socket.tcp6()
      if s6 then
        s6:setoption("ipv6-v6only", true)
        free = s6:bind("::", port) ~= nil
        s6:close()
      end
    end
    s:close()
    if free and M.claim_port(port) then return port end
  end
  error("no fresh free TCP port after 100 tries")
end

local function alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  if not stat then return false end
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= "Z" and state ~= "X"
end
M.alive = alive

-- Gone for good: not just the main thread a zombie, every thread out (a
-- writer thread inside fsync exits last, and until then the process still
-- holds its files, the spool lock included: a restart before that fails).
function M.gone(pid)
  if alive(pid) then return false end
  local n = 0
  if lfs.attributes("/proc/" .. pid .. "/task", "mode") == "directory" then
    for t in lfs.dir("/proc/" .. pid .. "/task") do
      if t ~= "." and t ~= ".." then n = n + 1 end
    end
  end
  return n <= 1
end

-- Wait until f() returns a true value, polling; returns that value or nil.
function M.poll(f, timeout, step)
  local deadline = socket.gettime() + (timeout or 5)
  repeat
    local v = f()
    if v then return v end
    socket.sleep(step or 0.02)
  until socket.gettime() > deadline
  return f()
end

-- ---- configuration -----------------------------------------------------------

-- Serialize a Lua value as config source (tables of strings/numbers/booleans).
local function lua_value(v)
  local t = type(v)
  if t == "string" then return ("%q"):format(v) end
  if t == "number" or t == "boolean" then return tostring(v) end
  assert(t == "table", "cannot serialize a " .. t)
  local parts, seen = {}, {}
  for i, x in ipairs(v) do parts[#parts + 1] = lua_value(x); seen[i] = true end
  local keys = {}
  for k in pairs(v) do if not seen[k] then keys[#keys + 1] = k end end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do
    local key = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or ("[" .. lua_value(k) .. "]")
    parts[#parts + 1] = key .. " = " .. lua_value(v[k])
  end
  return "{ " .. table.concat(parts, ", ") .. " }"
end
M.lua_value = lua_value

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t or {}) do ks[#ks + 1] = k end
  table.sort(ks)
  return ks
end

--[[ Default config.  Options:
  listener = raw listener body (socket list etc.), default { { port = %PORT%, address = "127.0.0.1" } }
  tables   = { client_ips = "127.0.0.1\n", denied_ips = "...", ... }  (content; false drops a table)
  policies = { "relay" }
  scripts  = { ["site.lua"] = "source" } or a list { { "a.lua", "source" }, ... } (keeps order)
  smtp, lua = tables serialized as settings
  extra    = raw config lines appended
]]
local function default_config(opts)
  local L = {
    'server_name = "mx.example.test"',
    'main_domain = "example.test"',
    'local_domains = { "example.test", "corp.example.test" }',
    'spool_dir = "spool"',
    'control_socket = "moat.sock"',
    'listener "smtp" ' .. (opts.listener or '{ { port = %PORT%, address = "127.0.0.1" } }'),
  }
  local tables = { client_ips = "127.0.0.1\n" }
  for k, v in pairs(opts.tables or {}) do tables[k] = v end
  local tl = {}
  for _, name in ipairs(sorted_keys(tables)) do
    if tables[name] then
      local file = name:gsub("_ips$", ".ips")
      opts.files = opts.files or {}
      opts.files[file] = tables[name]
      tl[#tl + 1] = ("%s = %q"):format(name, file)
    end
  end
  if #tl > 0 then L[#L + 1] = "tables = { " .. table.concat(tl, ", ") .. " }" end
  if opts.smtp then L[#L + 1] = "smtp = " .. lua_value(opts.smtp) end
  if opts.lua then L[#L + 1] = "lua = " .. lua_value(opts.lua) end
  L[#L + 1] = "policies = " .. lua_value(opts.policies or { "relay" })
  local names = {}
  if opts.scripts then
    if opts.scripts[1] then
      for _, e in ipairs(opts.scripts) do
        names[#names + 1] = e[1]
        opts.files = opts.files or {}
        opts.files[e[1]] = e[2]
      end
    else
      for _, name in ipairs(sorted_keys(opts.scripts)) do
        names[#names + 1] = name
        opts.files = opts.files or {}
        opts.files[name] = opts.scripts[name]
      end
    end
  end
  if #names > 0 then L[#L + 1] = "scripts = " .. lua_value(names) end
  if opts.extra then L[#L + 1] = opts.extra end
  return table.concat(L, "\n") .. "\n"
end

local function expand(text, vars)
  return (text:gsub("%%(%u[%u%d]*)%%", function(k)
    local v = vars[k]
    if v == nil then return nil end
    return tostring(v)
  end))
end

-- Write a config directory; returns dir, conf path, vars.
function M.prepare(opts)
  opts = opts or {}
  local dir = M.tmpdir(opts.tag or "moat")
  local vars = { DIR = dir }
  vars.PORT = opts.port or M.free_port(opts.any_address)
  for i = 1, (opts.ports or 0) do vars["PORT" .. i] = M.free_port() end
  local conf = opts.config or default_config(opts)
  -- Started as root, moat drops to `user` (default "moat"); the specs run as
  -- root in CI and want the daemon they always had, so they stay root unless
  -- the config names a user itself (privileges_spec does).
  if M.is_root() and not (("\n" .. conf):find("\nuser%s*=")) then
    conf = conf .. (conf:sub(-1) == "\n" and "" or "\n") .. 'user = "root"\n'
  end
  -- stop() waits 15 s for the exit; a spec that leaves a client in DATA must
  -- not make SIGTERM wait the default 30.
  if not (("\n" .. conf):find("\nshutdown_timeout%s*=")) then
    conf = conf .. (conf:sub(-1) == "\n" and "" or "\n") .. 'shutdown_timeout = 3\n'
  end
  local path = dir .. "/" .. (opts.config_name or "moat.conf")
  write_file(path, expand(conf, vars))
  for _, name in ipairs(sorted_keys(opts.files)) do
    write_file(dir .. "/" .. name, expand(opts.files[name], vars))
  end
  return dir, path, vars
end

-- ---- the server ----------------------------------------------------------------

local Server = {}
Server.__index = Server
local running = {}

function Server:log() return read_file(self.logfile) or "" end

local function count(text, pattern, plain)
  local n, pos = 0, 1
  while true do
    local s, e = text:find(pattern, pos, plain)
    if not s then return n end
    n = n + 1
    pos = e + 1
  end
end
M.count = count

-- Wait until the log matches the Lua pattern `pattern` (n times, default 1).
-- Returns the first matching line, or fails with the log.
function Server:wait_log(pattern, timeout, n)
  n = n or 1
  local ok = M.poll(function() return count(self:log(), pattern) >= n end, timeout or 5)
  if not ok then
    error(("timed out waiting for log pattern %q (x%d); log:\n%s"):format(pattern, n, self:log()), 2)
  end
  for line in self:log():gmatch("[^\n]+") do
    if line:find(pattern) then return line end
  end
  return true
end

-- Log lines with event=NAME (and all the given key=value pairs, plain match).
function Server:events(name, match)
  local out = {}
  for line in self:log():gmatch("[^\n]+") do
    if line:find(" event=" .. name .. " ", 1, true) or line:sub(-#(" event=" .. name)) == " event=" .. name then
      local ok = true
      for k, v in pairs(match or {}) do
        if not line:find(" " .. k .. "=" .. v, 1, true) then ok = false end
      end
      if ok then out[#out + 1] = line end
    end
  end
  return out
end

-- Messages in spool_dir/new: list of { id, eml, env (text), envelope (decoded) }, by id.
function Server:spool_files()
  local new = self.dir .. "/spool/new"
  local ids = {}
  if lfs.attributes(new, "mode") == "directory" then
    for f in lfs.dir(new) do
      local id = f:match("^(.+)%.eml$")
      if id then ids[#ids + 1] = id end
    end
  end
  table.sort(ids)
  local out = {}
  for _, id in ipairs(ids) do
    local env = read_file(new .. "/" .. id .. ".env")
    out[#out + 1] = { id = id, eml = read_file(new .. "/" .. id .. ".eml"), env = env,
                      envelope = env and json.decode(env) or nil }
  end
  return out
end

-- Names of every file under spool_dir/new (for "nothing stored" checks).
function Server:spool_names()
  local new = self.dir .. "/spool/new"
  local names = {}
  if lfs.attributes(new, "mode") == "directory" then
    for f in lfs.dir(new) do
      if f ~= "." and f ~= ".." then names[#names + 1] = f end
    end
  end
  table.sort(names)
  return names
end

local SAN_PATTERNS = { "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:" }

function Server:sanitizer_report()
  local log = self:log()
  for _, p in ipairs(SAN_PATTERNS) do
    if log:find(p, 1, true) then return p end
  end
  return nil
end

function Server:signal(sig)
  os.execute(("kill -%s %d 2>/dev/null"):format(sig, self.pid))
end

function Server:alive() return alive(self.pid) end

-- moatctl -s DIR/moat.sock ARGS: returns exit code, stdout .. stderr.
function Server:ctl(args)
  local ctl = os.getenv("MOATCTL_BIN") or (M.root .. "/moatctl")
  local p = assert(io.popen(("%s -s %s %s 2>&1; echo \"rc=$?\""):format(
    shquote(ctl), shquote(self.dir .. "/moat.sock"), args)))
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)\n?$"))
  return rc, (out:gsub("rc=%d+\n?$", ""))
end

-- Replace a file in the server's directory (for reload tests).
function Server:write(name, content) write_file(self.dir .. "/" .. name, content) end

-- SIGTERM, wait for the exit; fails when moat does not stop or a sanitizer
-- reported anything.  Safe to call twice.
function Server:stop()
  if self.stopped then return end
  self.stopped = true
  for i, s in ipairs(running) do
    if s == self then table.remove(running, i) break end
  end
  self:signal("TERM")
  local gone = M.poll(function() return not alive(self.pid) end, 15)
  if not gone then
    self:signal("KILL")
    M.poll(function() return not alive(self.pid) end, 5)
    error("moat (pid " .. self.pid .. ") did not stop on SIGTERM; log:\n" .. self:log(), 2)
  end
  -- stderr is written by the process itself: once it is gone the log is complete.
  local san = self:sanitizer_report()
  if san then
    error(("%s in the moat log (%s):\n%s"):format(san, self.dir, self:log()), 2)
  end
  if not os.getenv("MOAT_KEEP_TMP") then os.execute("rm -rf " .. shquote(self.dir)) end
end

-- Start moat; see default_config for opts.  opts.config may be a full config
-- text with %PORT% and %DIR%; opts.files = { [relative name] = content }.
function M.start(opts)
  opts = opts or {}
  local dir, conf, vars = M.prepare(opts)
  local logfile = dir .. "/moat.log"
  -- opts.env = { NAME = value }: extra environment (e.g. NOTIFY_SOCKET)
  local env = ""
  for _, k in ipairs(sorted_keys(opts.env)) do env = env .. k .. "=" .. shquote(opts.env[k]) .. " " end
  local cmd = ("MOAT_ROOT=%s %sexec %s -c %s </dev/null >%s 2>%s & echo $!"):format(
    shquote(M.root), env, shquote(M.bin()), shquote(conf), shquote(dir .. "/stdout.log"), shquote(logfile))
  local p = assert(io.popen(cmd, "r"))
  local pid = tonumber(p:read("l"))
  p:close()
  assert(pid, "could not start moat")
  local srv = setmetatable({ pid = pid, dir = dir, conf = conf, logfile = logfile, port = vars.PORT,
                             vars = vars, opts = opts }, Server)
  running[#running + 1] = srv
  local started = M.poll(function()
    if srv:log():find("event=started", 1, true) then return true end
    if not alive(pid) then return "dead" end
  end, 10)
  if started ~= true then
    local log = srv:log()
    pcall(srv.stop, srv)
    error(("moat did not start (%s): %s -c %s\nlog:\n%s"):format(
      started == "dead" and "exited" or "timeout", M.bin(), conf, log), 2)
  end
  return srv
end

-- Stop every server still running (for after_each); raises the first failure.
function M.stop_all()
  local first
  while #running > 0 do
    local ok, err = pcall(running[#running].stop, running[#running])
    if not ok and not first then first = err end
  end
  if first then error(first, 0) end
end

-- moat -c CONF --check: returns exit code, stdout, stderr.
function M.check(conf_path)
  local out, err = os.tmpname(), os.tmpname()
  local cmd = ("MOAT_ROOT=%s %s -c %s --check >%s 2>%s; echo $?"):format(
    shquote(M.root), shquote(M.bin()), shquote(conf_path), shquote(out), shquote(err))
  local p = assert(io.popen(cmd, "r"))
  local rc = tonumber(p:read("l"))
  p:close()
  local o, e = read_file(out) or "", read_file(err) or ""
  os.remove(out)
  os.remove(err)
  return rc, o, e
end

-- Start moat under a shell that records its exit code (srv.rc() once it has
-- exited); opts as for prepare, opts.shell = commands run first (ulimit ...).
function M.launch(opts)
  opts = opts or {}
  local dir, conf, vars = M.prepare(opts)
  local sh = ("%s MOAT_ROOT=%s %s -c %s </dev/null >/dev/null 2>%s/moat.log & echo $! >%s/pid; wait $!; echo $? >%s/rc"):format(
    opts.shell and (opts.shell .. ";") or "", shquote(M.root), shquote(M.bin()), shquote(conf), dir, dir, dir)
  -- stdout/stderr away from busted's: a stray child must not hold its pipe open
  M.spawn("exec sh -c " .. shquote(sh) .. " >/dev/null 2>&1")
  local srv = { dir = dir, port = vars.PORT }
  -- the file may exist before the shell has written the number into it
  srv.pid = tonumber(M.poll(function() return (read_file(dir .. "/pid") or ""):match("^(%d+)\n") end, 5))
  assert(srv.pid, "no pid")
  assert(M.poll(function() return (read_file(dir .. "/moat.log") or ""):find("event=started", 1, true) end, 10),
    "moat did not start: " .. tostring(read_file(dir .. "/moat.log")))
  function srv.rc() return tonumber(read_file(dir .. "/rc") or "") end
  function srv.log() return read_file(dir .. "/moat.log") or "" end
  return srv
end

-- ---- the SMTP client -----------------------------------------------------------

local Client = {}
Client.__index = Client

-- Connect; opts.source binds a 127.x.y.z source address, opts.timeout (s, default 5),
-- opts.greeting = false skips reading the greeting.  The greeting lands in
-- c.greeting_code / c.greeting (nil, "closed" when the server closed first).
function M.client(port, opts)
  opts = opts or {}
  local sock = assert(socket.tcp())
  if opts.source then assert(sock:bind(opts.source, 0)) end
  sock:settimeout(opts.timeout or 5)
  local ok, err = sock:connect(opts.host or "127.0.0.1", port)
  if not ok then error("connect to port " .. tostring(port) .. ": " .. tostring(err), 2) end
  local c = setmetatable({ sock = sock, port = port }, Client)
  if opts.greeting ~= false then c.greeting_code, c.greeting = c:read_reply() end
  return c
end

function Client:settimeout(t) self.sock:settimeout(t) end

-- One reply: code (number), text (every line, "\n"-joined, CRLF stripped).
-- On a closed connection or a timeout: nil, "closed" | "timeout" | error.
function Client:read_reply()
  local lines = {}
  while true do
    local line, err, partial = self.sock:receive("*l")
    if not line then
      if partial and partial ~= "" then lines[#lines + 1] = partial end
      if #lines > 0 then return nil, err, table.concat(lines, "\n") end
      return nil, err
    end
    line = line:gsub("\r$", "")
    lines[#lines + 1] = line
    local code, sep = line:match("^(%d%d%d)([ -]?)")
    if not code then return nil, "bad reply line: " .. line, table.concat(lines, "\n") end
    if sep ~= "-" then return tonumber(code), table.concat(lines, "\n") end
  end
end

-- Read n replies; returns a list of { code, text }.
function Client:read_replies(n)
  local out = {}
  for i = 1, n do
    local code, text = self:read_reply()
    out[i] = { code, text }
  end
  return out
end

function Client:send(raw)
  local i = 1
  while i <= #raw do
    local n, err, last = self.sock:send(raw, i)
    if not n then
      if last and last >= i then i = last + 1 end
      return nil, err
    end
    i = n + 1
  end
  return true
end

function Client:cmd(line)
  local ok, err = self:send(line .. "\r\n")
  if not ok then return nil, err end
  return self:read_reply()
end

function Client:ehlo(name) return self:cmd("EHLO " .. (name or "client.example")) end

-- One short session: connect from opts.source, EHLO opts.helo (default
-- host.example), MAIL FROM:<from>, QUIT; returns the MAIL reply's code, text.
function M.mail_from(port, from, opts)
  opts = opts or {}
  local c = M.client(port, { source = opts.source })
  assert(c.greeting_code == 220, "no greeting: " .. tostring(c.greeting))
  local ecode, etext = c:ehlo(opts.helo or "host.example")
  assert(ecode == 250, "EHLO: " .. tostring(ecode) .. " " .. tostring(etext))
  local code, text = c:cmd("MAIL FROM:<" .. from .. ">")
  c:cmd("QUIT")
  c:close()
  return code, text
end

-- True when the server has closed the connection (EOF or reset) within timeout.
function Client:closed(timeout)
  self.sock:settimeout(timeout or 3)
  local data, err, partial = self.sock:receive(1)
  if data then return false, "got data: " .. data end
  if err == "timeout" then return false, "timeout" end
  return true, err, partial
end

function Client:close()
  if self.sock then self.sock:close() end
  self.sock = nil
end

-- Dot-stuff a message (RFC 5321 4.5.2) and add the terminator; the message
-- should end with CRLF (one is added otherwise).
function M.dot_stuff(data)
  local s = data:gsub("\n%.", "\n..")
  if s:sub(1, 1) == "." then s = "." .. s end
  if s:sub(-2) ~= "\r\n" then s = s .. "\r\n" end
  return s .. ".\r\n"
end

-- MAIL, RCPT..., DATA, message.  t = { from, rcpts, data, params (MAIL params),
-- pipeline = true (MAIL+RCPTs+DATA in one write) }.  Returns
-- { mail = {code,text}, rcpts = {{code,text}...}, data = {code,text}, final = {code,text}, id }.
function Client:transaction(t)
  local r = { rcpts = {} }
  local cmds = { "MAIL FROM:<" .. (t.from or "") .. ">" .. (t.params and (" " .. t.params) or "") }
  for _, a in ipairs(t.rcpts or {}) do cmds[#cmds + 1] = "RCPT TO:<" .. a .. ">" end
  cmds[#cmds + 1] = "DATA"
  local replies = {}
  if t.pipeline then
    assert(self:send(table.concat(cmds, "\r\n") .. "\r\n"))
    for i = 1, #cmds do replies[i] = { self:read_reply() } end
  else
    for i, c in ipairs(cmds) do
      replies[i] = { self:cmd(c) }
      if i == 1 and replies[1][1] ~= 250 then r.mail = replies[1]; return r end
    end
  end
  r.mail = replies[1]
  for i = 2, #cmds - 1 do r.rcpts[#r.rcpts + 1] = replies[i] end
  r.data = replies[#cmds]
  if r.data[1] ~= 354 then return r end
  assert(self:send(M.dot_stuff(t.data or "Subject: test\r\n\r\nhello\r\n")))
  r.final = { self:read_reply() }
  r.id = r.final[2] and r.final[2]:match("queued as (%S+)")
  return r
end

-- A small message with the given headers/body.
function M.message(subject, body)
  return ("From: <sender@remote.example>\r\nTo: <joe@example.test>\r\nSubject: %s\r\n\r\n%s"):format(
    subject or "test", body or "hello\r\n")
end

M.json = json
return M
