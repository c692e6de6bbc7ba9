-- bench/slowdns.lua: a DNS server whose RBL zone answers only after a delay.
--
--   lua5.4 bench/slowdns.lua PORT DELAY_MS ZONE [READY_FILE]
--
-- Listens on 127.0.0.1:PORT (UDP).  Every query for a name in ZONE (the RBL
-- zone) is answered NXDOMAIN ("not listed") DELAY_MS milliseconds after it
-- arrived; everything else is answered at once from the small table below
-- (the Return-Path domain of the benchmark: MX and the MX host's A record),
-- NXDOMAIN for unknown names, NOERROR without records for other types.
--
-- Delayed answers do not serialize: each one is parked in a queue with its
-- due time (the delay is constant, so the queue is in due order) and the
-- loop waits only until the next due time or the next packet, whichever
-- comes first.  200 queries arriving together are all answered 200 ms later.
-- READY_FILE, when given, is written once the socket is bound, and
-- READY_FILE.stats ("queries=N delayed=N") about once a second.
local socket = require "socket"

local port = assert(tonumber(arg[1]), "usage: slowdns.lua PORT DELAY_MS ZONE [READY_FILE]")
local delay = assert(tonumber(arg[2]), "DELAY_MS") / 1000
local zone = assert(arg[3], "ZONE"):lower():gsub("%.$", "")
local ready = arg[4]

local TYPE = { A = 1, MX = 15, AAAA = 28 }
local RECORDS = {
  ["sender.example"] = { [TYPE.MX] = { { 10, "mx.sender.example" } } },
  ["mx.sender.example"] = { [TYPE.A] = { "192.0.2.25" } },
}

local function encode_name(name)
  local out = {}
  for label in name:gmatch("[^.]+") do out[#out + 1] = string.char(#label) .. label end
  return table.concat(out) .. "\0"
end

local function rdata(qtype, v)
  if qtype == TYPE.A then
    local a, b, c, d = v:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
    return string.char(tonumber(a), tonumber(b), tonumber(c), tonumber(d))
  elseif qtype == TYPE.MX then
    return string.pack(">I2", v[1]) .. encode_name(v[2])
  end
end

-- Question name (lowercase, no final dot), type, and the end of the question.
local function parse(msg)
  if #msg < 17 then return nil end
  local labels, i = {}, 13
  while true do
    local len = msg:byte(i)
    if not len then return nil end
    if len == 0 then i = i + 1 break end
    if len >= 64 then return nil end      -- no compression in a question
    labels[#labels + 1] = msg:sub(i + 1, i + len)
    i = i + 1 + len
  end
  if i + 3 > #msg then return nil end
  local qtype = string.unpack(">I2", msg, i)
  return table.concat(labels, "."):lower(), qtype, i + 4   -- just past QTYPE and QCLASS
end

-- Build the reply to msg: rcode and answer records of qtype.
local function reply(msg, qend, rcode, qtype, answers)
  local id, flags = string.unpack(">I2I2", msg)
  flags = 0x8000 | (flags & 0x7900) | 0x0400 | rcode     -- QR, opcode+RD kept, AA
  local out = { string.pack(">I2I2I2I2I2I2", id, flags, 1, #answers, 0, 0), msg:sub(13, qend - 1) }
  for _, v in ipairs(answers) do
    local rd = rdata(qtype, v)
    out[#out + 1] = string.pack(">I2I2I2I4I2", 0xC00C, qtype, 1, 60, #rd) .. rd
  end
  return table.concat(out)
end

local function in_zone(name)
  return name == zone or name:sub(-(#zone + 1)) == "." .. zone
end

local u = assert(socket.udp())
assert(u:setsockname("127.0.0.1", port))
-- Room for bursts (200 sessions open at once: their RBL and Return-Path
-- queries arrive together); a dropped query would be a 2 s timeout in moat.
u:setoption("recv-buffer-size", 4 * 1024 * 1024)
if ready then
  local f = assert(io.open(ready, "w"))
  f:write("ready\n")
  f:close()
end

local queue, head, tail = {}, 1, 0
local nq, ndelayed = 0, 0
local now = socket.gettime
local next_stats = now() + 1

local function handle(msg, ip, rport)
  nq = nq + 1
  local name, qtype, qend = parse(msg)
  if not name then return end
  if in_zone(name) then
    ndelayed = ndelayed + 1
    tail = tail + 1
    queue[tail] = { due = now() + delay, pkt = reply(msg, qend, 3, qtype, {}), ip = ip, port = rport }
    return
  end
  local rec = RECORDS[name]
  if not rec then
    u:sendto(reply(msg, qend, 3, qtype, {}), ip, rport)
  else
    u:sendto(reply(msg, qend, 0, qtype, rec[qtype] or {}), ip, rport)
  end
end

while true do
  local t = now()
  while head <= tail and queue[head].due <= t do
    local q = queue[head]
    queue[head] = nil
    head = head + 1
    u:sendto(q.pkt, q.ip, q.port)
  end
  if ready and t >= next_stats then
    next_stats = t + 1
    local f = io.open(ready .. ".stats", "w")
    if f then
      f:write(("queries=%d delayed=%d\n"):format(nq, ndelayed))
      f:close()
    end
  end
  local wait = head <= tail and math.max(0, queue[head].due - t) or 1
  u:settimeout(math.min(wait, 1))
  local msg, ip, rport = u:receivefrom()
  if msg then
    handle(msg, ip, rport)
    -- drain whatever else is waiting before looking at the clock again
    u:settimeout(0)
    for _ = 1, 256 do
      msg, ip, rport = u:receivefrom()
      if not msg then break end
      handle(msg, ip, rport)
    end
  end
end
