-- spec/helpers/loadgen.lua: one SMTP load generator process (for the soak spec).
--
--   lua5.4 spec/helpers/loadgen.lua PORT OUTFILE STOPFILE NAME [MAX_SECONDS] [SEED]
--
-- Loops until STOPFILE exists (or MAX_SECONDS, default 120, have passed):
-- connect, EHLO, 1-3 transactions (each message with its own Message-ID),
-- QUIT.  Writes one line per transaction to OUTFILE, flushed at once:
--
--   OK <message-id> <queue-id>
--   FAIL <stage> <message-id or -> <reply or error>      (stage: connect, greeting,
--                                                        ehlo, mail, rcpt, data, dot, quit)
--   DONE <transactions> <connections> <failures>        (last line, on a clean exit)
--
-- Every failure ends that connection; the loop goes on with a new one.
-- LuaSocket is blocking, so concurrency comes from running several of these.
local src = debug.getinfo(1, "S").source:sub(2)
local root = src:match("^(.*)/spec/helpers/[^/]*$") or "."
package.path = root .. "/spec/?.lua;" .. root .. "/spec/?/init.lua;" .. package.path

local socket = require "socket"
local moat = require "helpers.moat"

local port = assert(tonumber(arg[1]), "usage: loadgen.lua PORT OUTFILE STOPFILE NAME [MAX_SECONDS] [SEED]")
local outfile, stopfile, name = assert(arg[2]), assert(arg[3]), assert(arg[4])
local max_seconds = tonumber(arg[5]) or 120
math.randomseed(tonumber(arg[6]) or os.time())

local out = assert(io.open(outfile, "w"))
out:setvbuf("line")

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end

local function oneline(s) return (tostring(s or "-"):gsub("[\r\n]+", " | ")) end

local ntx, nconn, nfail, seq = 0, 0, 0, 0
local deadline = socket.gettime() + max_seconds

local function fail(stage, mid, code, text)
  nfail = nfail + 1
  out:write(("FAIL %s %s %s %s\n"):format(stage, mid or "-", tostring(code), oneline(text)))
end

local function message(mid, n)
  local body = {}
  for i = 1, 8 + (n % 24) do
    body[#body + 1] = ("line %d of %s: the quick brown fox jumps over the lazy dog"):format(i, mid)
  end
  return ("From: <load@remote.example>\r\nTo: <joe@example.test>\r\nSubject: soak %s\r\n" ..
          "Message-ID: %s\r\n\r\n%s\r\n"):format(mid, mid, table.concat(body, "\r\n"))
end

-- One connection; returns false when it ended on a failure.
local function session()
  nconn = nconn + 1
  local ok, c = pcall(moat.client, port, { timeout = 15 })
  if not ok then fail("connect", nil, "-", c) return false end
  if c.greeting_code ~= 220 then fail("greeting", nil, c.greeting_code, c.greeting) c:close() return false end
  local code, text = c:ehlo("loadgen-" .. name)
  if code ~= 250 then fail("ehlo", nil, code, text) c:close() return false end
  for _ = 1, math.random(1, 3) do
    seq = seq + 1
    local mid = ("<soak.%s.%d.%d@loadgen.example>"):format(name, seq, math.random(0, 1e9))
    ntx = ntx + 1
    code, text = c:cmd("MAIL FROM:<load@remote.example>")
    if code ~= 250 then fail("mail", mid, code, text) c:close() return false end
    code, text = c:cmd("RCPT TO:<joe@example.test>")
    if code ~= 250 then fail("rcpt", mid, code, text) c:close() return false end
    code, text = c:cmd("DATA")
    if code ~= 354 then fail("data", mid, code, text) c:close() return false end
    local sent, err = c:send(moat.dot_stuff(message(mid, seq)))
    if not sent then fail("dot", mid, "-", err) c:close() return false end
    code, text = c:read_reply()
    local qid = code == 250 and text and text:match("queued as (%S+)")
    if not qid then fail("dot", mid, code, text) c:close() return false end
    out:write(("OK %s %s\n"):format(mid, qid))
  end
  code, text = c:cmd("QUIT")
  if code ~= 221 then fail("quit", nil, code, text) c:close() return false end
  c:close()
  return true
end

while not exists(stopfile) and socket.gettime() < deadline do
  if not session() then socket.sleep(0.05) end
end
out:write(("DONE %d %d %d\n"):format(ntx, nconn, nfail))
out:close()
