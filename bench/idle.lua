-- bench/idle.lua: hold many idle SMTP connections open.
--
--   lua5.4 bench/idle.lua PORT COUNT STATE_FILE [MAX_HOLD_S]
--
-- Opens COUNT connections to 127.0.0.1:PORT, 100 at a time (the server
-- works on each batch concurrently; every new connection costs it an RBL
-- query, and a larger burst overflows the DNS server's receive buffer),
-- reading each one's 220 greeting, then writes "greeted N open_s=S" to
-- STATE_FILE and holds every connection open, silent,
-- until STATE_FILE.done exists (or MAX_HOLD_S seconds, default 120, pass).
-- Then it checks that each connection still answers ("NOOP" -> 250), appends
-- "opened=N greeted=N alive=N" to STATE_FILE, prints the same line, closes
-- everything and exits.  The caller must raise the fd limit (ulimit -n)
-- above COUNT for this process.
local socket = require "socket"

local port = assert(tonumber(arg[1]), "usage: idle.lua PORT COUNT STATE_FILE [MAX_HOLD_S]")
local count = assert(tonumber(arg[2]), "COUNT")
local state = assert(arg[3], "STATE_FILE")
local max_hold = tonumber(arg[4] or "120")
local BATCH = 100   -- connections opened before their greetings are read (bounds the DNS burst)

local function write(path, text, mode)
  local f = assert(io.open(path, mode or "w"))
  f:write(text)
  f:close()
end

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end

local t0 = socket.gettime()
local conns, first_err, greeted = {}, nil, 0
local i = 0
while i < count and not first_err do
  local batch = {}
  for _ = 1, math.min(BATCH, count - i) do
    local c = socket.tcp()
    if not c then first_err = "socket(): out of descriptors?" break end
    c:settimeout(10)
    local ok, err = c:connect("127.0.0.1", port)
    if not ok then
      first_err = err
      c:close()
      break
    end
    batch[#batch + 1] = c
  end
  for _, c in ipairs(batch) do
    c:settimeout(30)
    local line = c:receive("*l")
    if line and line:sub(1, 4) == "220 " then greeted = greeted + 1 end
    conns[#conns + 1] = c
  end
  i = i + #batch
end
local opened = #conns
local t1 = socket.gettime()
write(state, ("greeted %d open_s=%.2f\n"):format(greeted, t1 - t0))

local deadline = socket.gettime() + max_hold
while not exists(state .. ".done") and socket.gettime() < deadline do socket.sleep(0.1) end

-- Still there?  Every connection must answer a NOOP.
local alive = 0
for _, c in ipairs(conns) do c:send("NOOP\r\n") end
for _, c in ipairs(conns) do
  c:settimeout(10)
  local line = c:receive("*l")
  if line and line:sub(1, 4) == "250 " then alive = alive + 1 end
end
for _, c in ipairs(conns) do c:close() end
local result = ("opened=%d greeted=%d alive=%d%s"):format(opened, greeted, alive,
  first_err and (" first_error=" .. tostring(first_err):gsub("%s", "_")) or "")
write(state, result .. "\n", "a")
print(result)
