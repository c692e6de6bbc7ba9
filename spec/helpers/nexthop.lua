-- spec/helpers/nexthop.lua: next-hop servers for the delivery and proxy specs.
--
--   local H  = require "helpers.moat"
--   local NH = require "helpers.nexthop"
--
--   -- a second moat that spools what it accepts; its rcpt hook answers by
--   -- local part: "bad" -> 550 5.1.1 no such user, "later" -> 451 4.2.0 try
--   -- later, "slow" -> moat.sleep(opts.slow or 1) then accepts; others accept.
--   local hop = NH.moat { slow = 1, port = P, listener = "{ ... }", extra = "..." }
--   hop.port, hop.address ("127.0.0.1"), hop.hop ("127.0.0.1:PORT", for next_hop)
--   NH.messages(hop)            -> hop:spool_files() (id, eml, env, envelope)
--   NH.wait_messages(hop, n, t) -> the list once it holds >= n messages (fails otherwise)
--
--   -- a tiny scriptable SMTP/LMTP server (a lua5.4 child process)
--   local f = NH.fake { lmtp = true, data_reply = "554 5.6.0 no thanks", port = P }
--     RCPT by local part as above ("bad", "later"); with LMTP the final
--     replies are one per accepted recipient: local part "dbad" -> 550 5.2.2,
--     "dlater" -> 452 4.2.2, others 250.
--   f:lines()       -> its log lines: "connect", "ehlo"|"lhlo"|"helo", "mail <from>", "rcpt <addr> CODE",
--                      "message N from=<f> rcpts=<a>,<b>", "rset", "quit"
--   f:messages()    -> { { n, from, rcpts = {..}, data = text }, ... }
--   f:stop()
--
--   -- Postfix's smtp-sink (nil, reason when not installed)
--   local s = NH.sink { hard = "RCPT", soft = "MAIL", lmtp = true }   -- -f / -r / -L
--   s:messages() -> { { from = "<a@b>", rcpts = { "<c@d>" }, text = dump }, ... }
--   s:stop()
--
--   NH.relaunch(srv)   -> start moat again on srv's directory and config (after
--                         a SIGKILL); srv.pid is updated, the log is appended to.
--   NH.stop_all()      -> stop every fake/sink still running (after_each)
local socket = require "socket"
local lfs = require "lfs"
local H = require "helpers.moat"

local M = {}

local shquote, spawn, is_root = H.shquote, H.spawn, H.is_root



-- Wait until something accepts TCP connections on address:port.
local function wait_listening(address, port, pid, what)
  local ok = H.poll(function()
    if pid and not H.alive(pid) then return "dead" end
    local s = socket.tcp()
    s:settimeout(0.2)
    local c = s:connect(address, port)
    s:close()
    return c and true or nil
  end, 10)
  assert(ok == true, what .. " did not start listening on " .. address .. ":" .. port)
end

local children = {}

-- ---- a second moat ------------------------------------------------------------

local function hop_script(slow)
  return ([[
local moat = require "moat"
return { rcpt = function(s, rcpt)
  local lp = rcpt.addr.localpart
  if lp == "bad" then return moat.reject(550, "5.1.1 no such user") end
  if lp == "later" then return moat.tempfail("4.2.0 try later") end
  if lp == "slow" then moat.sleep(%s) end
end }
]]):format(tostring(slow or 1))
end

function M.moat(opts)
  opts = opts or {}
  local srv = H.start {
    tag = opts.tag or "nexthop",
    port = opts.port,
    listener = opts.listener,
    tables = { client_ips = "127.0.0.0/8\n::1\n" },
    scripts = { ["nexthop.lua"] = hop_script(opts.slow) },
    smtp = opts.smtp,
    extra = opts.extra,
    files = opts.files,
  }
  srv.address = opts.address or "127.0.0.1"
  srv.hop = srv.address .. ":" .. srv.port
  return srv
end

function M.messages(srv) return srv:spool_files() end

function M.wait_messages(srv, n, timeout)
  local list
  local ok = H.poll(function()
    list = srv:spool_files()
    return #list >= n
  end, timeout or 10)
  if not ok then
    error(("next hop holds %d message(s), expected %d; its log:\n%s"):format(#list, n, srv:log()), 2)
  end
  return list
end

-- Start moat again on srv's config and directory (same log file, appended).
function M.relaunch(srv)
  local before = H.count(srv:log(), "event=started", true)
  local cmd = ("MOAT_ROOT=%s exec %s -c %s </dev/null >>%s 2>>%s"):format(
    shquote(H.root), shquote(H.bin()), shquote(srv.conf), shquote(srv.dir .. "/stdout.log"), shquote(srv.logfile))
  local pid = spawn(cmd)
  srv.pid = pid
  srv.stopped = nil
  local ok = H.poll(function()
    if H.count(srv:log(), "event=started", true) > before then return true end
    if not H.alive(pid) then return "dead" end
  end, 10)
  assert(ok == true, "moat did not restart:\n" .. srv:log())
  return srv
end

-- ---- a fake SMTP/LMTP server ----------------------------------------------------

local FAKE = [=[
local socket = require "socket"
local port, dir, lmtp, data_reply, bind = tonumber(arg[1]), arg[2], arg[3] == "lmtp", arg[4], arg[5]
if data_reply == "" then data_reply = nil end
local log = assert(io.open(dir .. "/fake.log", "a"))
local function say(line) log:write(line, "\n") log:flush() end
local srv = assert(socket.bind(bind or "127.0.0.1", port))
srv:settimeout(0)
local conns, n = {}, 0

local function lp(addr) return (addr:match("^([^@]*)") or ""):lower() end

local function send(c, text) c.sock:settimeout(5) c.sock:send(text) c.sock:settimeout(0) end

local function reset(c) c.from, c.rcpts, c.data = nil, {}, nil end

local function line_in(c, line)
  if c.data then
    if line == "." then
      n = n + 1
      local text = table.concat(c.data, "\r\n") .. "\r\n"
      local f = assert(io.open(("%s/msg-%04d.eml"):format(dir, n), "wb"))
      f:write(text)
      f:close()
      say(("message %d from=<%s> rcpts=%s"):format(n, c.from or "", table.concat(c.rcpts, ",")))
      if lmtp then
        for _, r in ipairs(c.rcpts) do
          local l = lp(r)
          if l == "dbad" then send(c, "550 5.2.2 <" .. r .. "> mailbox full\r\n")
          elseif l == "dlater" then send(c, "452 4.2.2 <" .. r .. "> over quota\r\n")
          else send(c, "250 2.1.5 <" .. r .. "> delivered\r\n") end
        end
      else
        -- a header "X-Fake-Reply: 554 ..." chooses the reply to the final dot
        local chosen = text:match("\nX%-Fake%-Reply: ([^\r\n]*)")
        send(c, (chosen or ("250 2.0.0 Ok: queued as F%04d"):format(n)) .. "\r\n")
      end
      reset(c)
    else
      if line:sub(1, 1) == "." then line = line:sub(2) end
      c.data[#c.data + 1] = line
    end
    return
  end
  local verb = (line:match("^(%a+)") or ""):upper()
  if verb == "EHLO" or verb == "HELO" or verb == "LHLO" then
    say(verb:lower())
    if lmtp ~= (verb == "LHLO") then send(c, "500 5.5.1 wrong greeting for this protocol\r\n") return end
    send(c, "250-fake.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
  elseif verb == "MAIL" then
    reset(c)
    c.from = line:match("<(.-)>") or ""
    say("mail <" .. c.from .. ">")
    send(c, "250 2.1.0 Ok\r\n")
  elseif verb == "RCPT" then
    local a = line:match("<(.-)>") or ""
    local l, reply = lp(a), "250 2.1.5 Ok"
    if l == "bad" then reply = "550 5.1.1 no such user"
    elseif l == "later" then reply = "451 4.2.0 try later"
    elseif l == "hang" then say("rcpt <" .. a .. "> none") return   -- never answers
    elseif l == "huge" then reply = "250 " .. ("x"):rep(1024 * 1024) end   -- a 1 MB line
    if reply:sub(1, 1) == "2" then c.rcpts[#c.rcpts + 1] = a end
    say("rcpt <" .. a .. "> " .. reply:sub(1, 3))
    pcall(send, c, reply .. "\r\n")
  elseif verb == "DATA" then
    say("data")
    if data_reply then send(c, data_reply .. "\r\n") reset(c)
    elseif #c.rcpts == 0 then send(c, "554 5.5.1 no valid recipients\r\n")
    else c.data = {} send(c, "354 go ahead\r\n") end
  elseif verb == "RSET" then reset(c) say("rset") send(c, "250 2.0.0 Ok\r\n")
  elseif verb == "NOOP" then send(c, "250 2.0.0 Ok\r\n")
  elseif verb == "QUIT" then say("quit") send(c, "221 2.0.0 Bye\r\n") c.closed = true
  else send(c, "502 5.5.2 not implemented\r\n") end
end

while true do
  local socks = { srv }
  for _, c in ipairs(conns) do socks[#socks + 1] = c.sock end
  local ready = socket.select(socks, nil, 1)
  for _, s in ipairs(ready) do
    if s == srv then
      local cs = srv:accept()
      if cs then
        cs:settimeout(0)
        local c = { sock = cs, buf = "" }
        reset(c)
        conns[#conns + 1] = c
        say("connect")
        send(c, lmtp and "220 fake.example LMTP\r\n" or "220 fake.example ESMTP\r\n")
      end
    else
      for _, c in ipairs(conns) do
        if c.sock == s then
          local data, err, partial = s:receive(65536)
          data = data or partial
          if data and #data > 0 then c.buf = c.buf .. data end
          while not c.closed do
            local i = c.buf:find("\r?\n")
            if not i then break end
            local line = c.buf:sub(1, i - 1):gsub("\r$", "")
            c.buf = c.buf:sub(c.buf:find("\n", i, true) + 1)
            line_in(c, line)
          end
          if err == "closed" or c.closed then c.closed = true end
        end
      end
    end
  end
  for i = #conns, 1, -1 do
    if conns[i].closed then conns[i].sock:close() table.remove(conns, i) end
  end
end
]=]

local Fake = {}
Fake.__index = Fake

function M.fake(opts)
  opts = opts or {}
  local dir = H.tmpdir("fakehop")
  H.write_file(dir .. "/fake.lua", FAKE)
  local port = opts.port or H.free_port()
  local addr = opts.address or "127.0.0.1"
  local f = setmetatable({ dir = dir, port = port, address = addr, hop = addr .. ":" .. port }, Fake)
  f.pid = spawn(("exec lua5.4 %s %d %s %s %s %s </dev/null >%s 2>&1"):format(shquote(dir .. "/fake.lua"), port,
    shquote(dir), opts.lmtp and "lmtp" or "smtp", shquote(opts.data_reply or ""), shquote(addr),
    shquote(dir .. "/stderr.log")))
  children[#children + 1] = f
  wait_listening(addr, port, f.pid, "the fake next hop")
  H.poll(function() return #f:lines() >= 1 end, 2)   -- the probe's "connect"
  f.skip = #f:lines()
  return f
end

function Fake:lines()
  local out = {}
  local i = 0
  for l in (H.read_file(self.dir .. "/fake.log") or ""):gmatch("[^\n]+") do
    i = i + 1
    if i > (self.skip or 0) then out[#out + 1] = l end   -- not the start-up probe
  end
  return out
end

-- Log lines matching a Lua pattern.
function Fake:grep(pattern)
  local out = {}
  for _, l in ipairs(self:lines()) do if l:find(pattern) then out[#out + 1] = l end end
  return out
end

function Fake:messages()
  local out = {}
  for _, l in ipairs(self:lines()) do
    local n, from, rcpts = l:match("^message (%d+) from=<(.-)> rcpts=(.*)$")
    if n then
      local rl = {}
      for a in rcpts:gmatch("[^,]+") do rl[#rl + 1] = a end
      out[#out + 1] = { n = tonumber(n), from = from, rcpts = rl,
                        data = H.read_file(("%s/msg-%04d.eml"):format(self.dir, tonumber(n))) }
    end
  end
  return out
end

local function stop_child(self)
  if self.stopped then return end
  self.stopped = true
  os.execute("kill -TERM " .. self.pid .. " 2>/dev/null")
  if not H.poll(function() return not H.alive(self.pid) end, 5) then
    os.execute("kill -KILL " .. self.pid .. " 2>/dev/null")
  end
  for i, c in ipairs(children) do if c == self then table.remove(children, i) break end end
  if not os.getenv("MOAT_KEEP_TMP") then os.execute("rm -rf " .. shquote(self.dir)) end
end
Fake.stop = stop_child

-- ---- Postfix smtp-sink -----------------------------------------------------------

local SINK_BIN
for _, p in ipairs { "/usr/sbin/smtp-sink", "/usr/bin/smtp-sink" } do
  if lfs.attributes(p, "mode") == "file" then SINK_BIN = p break end
end
M.sink_bin = SINK_BIN

local Sink = {}
Sink.__index = Sink

function M.sink(opts)
  opts = opts or {}
  if not SINK_BIN then return nil, "smtp-sink is not installed (Debian package postfix)" end
  local dir = H.tmpdir("sink")
  local port = opts.port or H.free_port()
  local args = { "-d", dir .. "/dump/%H%M%S." }
  if is_root() then args[#args + 1] = "-u"; args[#args + 1] = "root" end
  if opts.lmtp then args[#args + 1] = "-L" end
  if opts.hard then args[#args + 1] = "-f"; args[#args + 1] = opts.hard end
  if opts.soft then args[#args + 1] = "-r"; args[#args + 1] = opts.soft end
  if opts.quit then args[#args + 1] = "-q"; args[#args + 1] = opts.quit end
  args[#args + 1] = "127.0.0.1:" .. port
  args[#args + 1] = "100"
  local q = {}
  for i, a in ipairs(args) do q[i] = shquote(a) end
  local s = setmetatable({ dir = dir, port = port, address = "127.0.0.1", hop = "127.0.0.1:" .. port }, Sink)
  s.pid = spawn(("exec %s %s </dev/null >%s 2>&1"):format(SINK_BIN, table.concat(q, " "), shquote(dir .. "/stderr.log")))
  children[#children + 1] = s
  wait_listening("127.0.0.1", port, s.pid, "smtp-sink")
  return s
end

-- Captured transactions (each dump file: X-Mail-Args, X-Rcpt-Args..., then the message).
function Sink:messages()
  local out = {}
  local d = self.dir .. "/dump"
  if lfs.attributes(d, "mode") ~= "directory" then return out end
  local names = {}
  for f in lfs.dir(d) do if f ~= "." and f ~= ".." then names[#names + 1] = f end end
  table.sort(names)
  for _, f in ipairs(names) do
    local text = H.read_file(d .. "/" .. f) or ""
    local m = { file = f, text = text, rcpts = {} }
    m.from = text:match("X%-Mail%-Args: (%S*)")
    for r in text:gmatch("X%-Rcpt%-Args: (%S*)") do m.rcpts[#m.rcpts + 1] = r end
    out[#out + 1] = m
  end
  return out
end

Sink.stop = stop_child

function M.stop_all()
  while #children > 0 do stop_child(children[#children]) end
end

return M
