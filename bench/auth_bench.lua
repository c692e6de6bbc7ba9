-- bench/auth_bench.lua: does password hashing stall the event loop?
--
--   lua5.4 bench/auth_bench.lua              (from the repo root, after make)
--
-- Starts the real moat (./moat, or $MOAT_BIN) with one account whose hash is
-- a deliberately slow "$6$rounds=N$" SHA-512 crypt (N = AUTH_BENCH_ROUNDS,
-- default 500000: hundreds of ms per check), on a tls = "ext" socket (AUTH in
-- clear text).  It measures NOOP round trips on one session while idle, then
-- again while AUTH_BENCH_CLIENTS (default 20) other processes log in over and
-- over (connect, EHLO, AUTH PLAIN, QUIT) for AUTH_BENCH_SECONDS (default 8).
-- If crypt(3) ran on the event loop, every NOOP would wait behind a queue of
-- password checks (seconds); off-loop it stays in the sub-millisecond range.
-- Prints one line:
--   auth: rounds=N clients=C seconds=S logins=L logins_per_s=X idle_p50_ms=.. idle_p99_ms=..
--         noop_p50_ms=.. noop_p99_ms=.. noop_max_ms=.. noops=K
-- The hash is made with crypt(3) through perl (libxcrypt understands
-- "$6$rounds=N$salt$"); `mkpasswd -m sha-512 -R N` (Debian whois) makes the
-- same kind of hash.  A benchmark prints numbers; it never fails.
local dir = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
package.path = dir .. "/spec/?.lua;" .. dir .. "/lua/?.lua;" .. dir .. "/lua/?/init.lua;" .. package.path
local socket = require "socket"
local mime = require "mime"

local PASSWORD = "bench-Password-1"
local USER = "bench@example.test"

local function b64(s) return (mime.b64(s)) end

-- ---- worker mode: log in over and over until the deadline ---------------------
if arg[1] == "--worker" then
  local port, deadline, source = tonumber(arg[2]), tonumber(arg[3]), arg[4]
  local ok, fail = 0, 0
  local blob = "AUTH PLAIN " .. b64("\0" .. USER .. "\0" .. PASSWORD) .. "\r\n"
  local function reply(s)
    while true do
      local line = s:receive("*l")
      if not line then return nil end
      if not line:match("^%d%d%d%-") then return tonumber(line:sub(1, 3)) end
    end
  end
  while socket.gettime() < deadline do
    local s = socket.tcp()
    s:settimeout(60)
    s:bind(source, 0)
    if s:connect("127.0.0.1", port) and reply(s) == 220 then
      s:send("EHLO bench.example\r\n")
      reply(s)
      s:send(blob)
      local code = reply(s)
      if code == 235 then ok = ok + 1 else fail = fail + 1 end
      s:send("QUIT\r\n")
      reply(s)
    else
      fail = fail + 1
      socket.sleep(0.05)
    end
    s:close()
  end
  io.write(("logins %d %d\n"):format(ok, fail))
  os.exit(0)
end

-- ---- main ----------------------------------------------------------------
local moat = require "helpers.moat"

local ROUNDS = tonumber(os.getenv("AUTH_BENCH_ROUNDS") or "500000")
local CLIENTS = tonumber(os.getenv("AUTH_BENCH_CLIENTS") or "20")
local SECONDS = tonumber(os.getenv("AUTH_BENCH_SECONDS") or "8")

local function shquote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function make_hash()
  local salt = ("%08x%08x"):format(math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
  local p = io.popen(("perl -e 'print crypt($ARGV[0], $ARGV[1])' %s %s 2>/dev/null"):format(
    shquote(PASSWORD), shquote(("$6$rounds=%d$%s$"):format(ROUNDS, salt))))
  local h = p and p:read("a") or ""
  if p then p:close() end
  if h:match("^%$6%$rounds=") then return h, "perl crypt(3)" end
  p = io.popen(("mkpasswd -m sha-512 -R %d %s 2>/dev/null"):format(ROUNDS, shquote(PASSWORD)))
  h = p and p:read("a"):gsub("%s+$", "") or ""
  if p then p:close() end
  if h:match("^%$6%$") then return h, "mkpasswd" end
  -- last resort: default rounds (5000): the numbers then say little
  p = io.popen("openssl passwd -6 " .. shquote(PASSWORD))
  h = p and p:read("a"):gsub("%s+$", "") or ""
  if p then p:close() end
  ROUNDS = 5000
  return h, "openssl passwd -6 (rounds fixed at 5000)"
end

local function percentile(sorted, q)
  if #sorted == 0 then return 0 end
  local i = math.max(1, math.min(#sorted, math.ceil(q * #sorted)))
  return sorted[i]
end

local function noop_loop(c, seconds)
  local lat = {}
  local stop = socket.gettime() + seconds
  while socket.gettime() < stop do
    local t0 = socket.gettime()
    local code = c:cmd("NOOP")
    if code ~= 250 then break end
    lat[#lat + 1] = (socket.gettime() - t0) * 1000
    socket.sleep(0.01)
  end
  table.sort(lat)
  return lat
end

math.randomseed(os.time())
local hash, how = make_hash()
local ok, err = pcall(function()
  local t0 = socket.gettime()
  local p = io.popen(("perl -e 'print crypt($ARGV[0], $ARGV[1]) eq $ARGV[1] ? 1 : 0' %s %s"):format(
    shquote(PASSWORD), shquote(hash)))
  if p then p:read("a"); p:close() end
  local one_check_ms = (socket.gettime() - t0) * 1000

  local srv = moat.start {
    listener = '{ { port = %PORT%, address = "127.0.0.1", tls = "ext" } }',
    tables = { accounts = USER .. " " .. hash .. "\n" },
    smtp = { timeout = 120 },
  }
  local c = moat.client(srv.port, { source = "127.0.0.1", timeout = 60 })
  c:ehlo("probe.example")
  local idle = noop_loop(c, 1)

  local deadline = socket.gettime() + SECONDS
  local workers = {}
  for i = 1, CLIENTS do
    workers[i] = io.popen(("%s %s --worker %d %.3f 127.0.4.%d"):format(
      shquote(arg[-1] or "lua5.4"), shquote(arg[0]), srv.port, deadline, i))
  end
  socket.sleep(0.2)   -- let the workers get going
  local busy = noop_loop(c, math.max(0.5, deadline - socket.gettime() - 0.2))
  local logins, failed = 0, 0
  for _, w in ipairs(workers) do
    local out = w:read("a") or ""
    w:close()
    local a, b = out:match("logins (%d+) (%d+)")
    logins, failed = logins + (tonumber(a) or 0), failed + (tonumber(b) or 0)
  end
  c:close()
  srv:stop()
  print(("auth: rounds=%d (%s, one check ~%.0f ms incl. perl start) clients=%d seconds=%d logins=%d failed=%d " ..
         "logins_per_s=%.1f idle_p50_ms=%.3f idle_p99_ms=%.3f noop_p50_ms=%.3f noop_p99_ms=%.3f noop_max_ms=%.3f noops=%d")
    :format(ROUNDS, how, one_check_ms, CLIENTS, SECONDS, logins, failed, logins / SECONDS,
            percentile(idle, 0.5), percentile(idle, 0.99),
            percentile(busy, 0.5), percentile(busy, 0.99), busy[#busy] or 0, #busy))
end)
if not ok then
  print("auth: benchmark could not run: " .. tostring(err))
  pcall(moat.stop_all)
end
