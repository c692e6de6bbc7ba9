-- Integration: crash safety of the spool (issue #8 item 5; README "The spool").
--
-- A few load generators (separate processes) send messages with unique
-- Message-IDs and record every "250 ... queued as ID" they see.  moat is
-- killed with SIGKILL at random moments, over and over, and restarted on the
-- same spool directory and port.  The promises checked:
--   * every message a client saw 250 for is in new/ as ID.eml + ID.env,
--     complete (Message-ID, body hash, size) with the right envelope;
--   * new/ never holds a partial file: after every kill, each .eml there is
--     complete and each .env parses;
--   * ".env renamed last": an ID.env never exists without its ID.eml.  An
--     ID.eml without its .env can only be a message that was never
--     acknowledged (killed between the two renames); it is complete too;
--   * files left in tmp/ by a kill are removed at the next start.
local socket = require "socket"
local lfs = require "lfs"
local moat = require "helpers.moat"

local json = moat.json
local ROUNDS = 22
local GENERATORS = 4

local function shquote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- FNV-1a, 32 bits (the load generators use the same function).
local HASH_SRC = [[
local function fnv(s)
  local h = 2166136261
  for i = 1, #s, 64 do
    local t = { s:byte(i, math.min(i + 63, #s)) }
    for k = 1, #t do h = ((h ~ t[k]) * 16777619) & 0xffffffff end
  end
  return ("%08x"):format(h)
end
]]
local fnv = load(HASH_SRC .. "return fnv")()

-- One load generator: connects (retrying while moat is down), sends
-- messages until the stop file exists, appends "ACK id mid hash len rcpts"
-- to its record file after each 250.
local LOADGEN = [[
package.path = ROOT .. "/spec/?.lua;" .. ROOT .. "/spec/?/init.lua;" .. package.path
local socket = require "socket"
local moat = require "helpers.moat"
]] .. HASH_SRC .. [[
local port, gen, dir = tonumber(arg[1]), arg[2], arg[3]
math.randomseed(os.time() + tonumber(gen) * 7919)
local rec = assert(io.open(dir .. "/acks-" .. gen .. ".txt", "a"))
rec:setvbuf("line")
local function stopped() local f = io.open(dir .. "/stop") if f then f:close() return true end end
local RCPTS = { "joe@example.test", "ann@example.test", "bob@corp.example.test", "eve@example.test" }
local n, acks, fails = 0, 0, 0
local function body(len)
  local t, size = {}, 0
  while size < len do
    local l = ("line %d of %s.%d: "):format(#t + 1, gen, n)
    l = l .. ("x"):rep(math.random(0, 90)) .. (math.random(10) == 1 and "\r\n." or "") .. "\r\n"
    t[#t + 1] = l
    size = size + #l
  end
  return table.concat(t)
end
while not stopped() do
  local ok, c = pcall(moat.client, port, { timeout = 3 })
  if not ok or c.greeting_code ~= 220 then
    if ok then c:close() end
    socket.sleep(0.01)
  else
    local alive = c:ehlo("gen" .. gen .. ".example") == 250
    while alive and not stopped() do
      n = n + 1
      local mid = ("<g%s.%d.%d@crash.example>"):format(gen, os.time(), n)
      local b = body(math.random(100, 6000))
      local h = fnv(b)
      local rc = {}
      for i = 1, math.random(1, 3) do rc[i] = RCPTS[(n + i) % #RCPTS + 1] end
      local msg = ("From: <gen%s@remote.example>\r\nTo: <joe@example.test>\r\nSubject: crash %s.%d\r\n" ..
                   "Message-ID: %s\r\nX-Body-Hash: %s\r\nX-Body-Len: %d\r\n\r\n%s"):format(gen, gen, n, mid, h, #b, b)
      local okt, r = pcall(c.transaction, c, { from = "gen" .. gen .. "@remote.example", rcpts = rc, data = msg,
                                               pipeline = n % 2 == 0 })
      if okt and r.final and r.final[1] == 250 and r.id then
        rec:write(("ACK %s %s %s %d %s\n"):format(r.id, mid, h, #b, table.concat(rc, ",")))
        acks = acks + 1
        socket.sleep(0.005)   -- a steady load, not a benchmark: keeps the checks short
      else
        fails = fails + 1
        alive = false
      end
    end
    pcall(c.close, c)
  end
end
rec:close()
io.stderr:write(("gen %s: %d acks, %d broken transactions\n"):format(gen, acks, fails))
]]

-- ---- the spool --------------------------------------------------------------

local function dir_names(path)
  local out = {}
  if lfs.attributes(path, "mode") == "directory" then
    for f in lfs.dir(path) do
      if f ~= "." and f ~= ".." then out[#out + 1] = f end
    end
  end
  table.sort(out)
  return out
end

-- Check one stored message against what it says about itself; returns a
-- description { mid, hash, len } or raises with the reason.
local function check_eml(name, eml)
  assert(eml, name .. ": unreadable")
  assert(eml:sub(-2) == "\r\n", name .. ": does not end with CRLF (partial file?)")
  local head, b = eml:match("^(.-\r\n)\r\n(.*)$")
  assert(head, name .. ": no header/body separator (partial file?)")
  local mid = head:match("\r\nMessage%-ID: (<[^>\r\n]+>)\r\n")
  assert(mid, name .. ": no Message-ID")
  local h = head:match("\r\nX%-Body%-Hash: (%x+)\r\n")
  local len = tonumber(head:match("\r\nX%-Body%-Len: (%d+)\r\n"))
  assert(h and len, name .. ": no X-Body-Hash/X-Body-Len")
  assert(#b == len, ("%s: body is %d bytes, the client sent %d (partial file?)"):format(name, #b, len))
  assert(fnv(b) == h, name .. ": body hash differs from what the client sent")
  assert(head:find("^Received: from gen%d%.example "), name .. ": no Received: line of moat first")
  return { mid = mid, hash = h, len = len }
end

-- The invariants that must hold in new/ at any moment (in particular right
-- after a SIGKILL).  Returns the number of .eml files without their .env
-- and the number of files.  A file that passed once is not read again
-- (`checked`): files in new/ are never rewritten.
local function check_new(spool, label, checked)
  checked = checked or {}
  local new = spool .. "/new"
  local names = dir_names(new)
  local have = {}
  for _, f in ipairs(names) do have[f] = true end
  local orphans = 0
  for _, f in ipairs(names) do
    local id, ext = f:match("^(%x+)%.(%a+)$")
    assert(id and (ext == "eml" or ext == "env"), label .. ": unexpected file in new/: " .. f)
    if ext == "env" and not have[id .. ".eml"] then
      -- readdir is no snapshot: the .eml may have landed in a slot the
      -- listing had already passed.  What a picker does: seeing ID.env, it
      -- opens ID.eml, which must be there.
      have[id .. ".eml"] = lfs.attributes(new .. "/" .. id .. ".eml", "mode") == "file"
      assert(have[id .. ".eml"], label .. ": " .. f .. " without its .eml (the .env must be renamed last)")
    end
    if checked[f] then
      if ext == "eml" and not have[id .. ".env"] then orphans = orphans + 1 end
    elseif ext == "env" then
      checked[f] = true
      local text = moat.read_file(new .. "/" .. f)
      local env = text and json.decode(text)
      assert(type(env) == "table", label .. ": " .. f .. " does not parse as JSON: " .. tostring(text))
      assert(env.id == id, label .. ": " .. f .. " has id " .. tostring(env.id))
    else
      check_eml(label .. ": " .. f, moat.read_file(new .. "/" .. f))
      checked[f] = true
      if not have[id .. ".env"] then orphans = orphans + 1 end
    end
  end
  return orphans, #names
end

-- ---- moat on a fixed directory --------------------------------------------------

local function launch(conf, logfile)
  local p = assert(io.popen(("MOAT_ROOT=%s exec %s -c %s </dev/null >/dev/null 2>%s & echo $!"):format(
    shquote(moat.root), shquote(moat.bin()), shquote(conf), shquote(logfile))))
  local pid = tonumber(p:read("l"))
  p:close()
  assert(pid, "could not start moat")
  local ok = moat.poll(function()
    local log = moat.read_file(logfile) or ""
    if log:find("event=started", 1, true) then return true end
    if not moat.alive(pid) then return "dead" end
  end, 15)
  assert(ok == true, "moat did not start:\n" .. (moat.read_file(logfile) or ""))
  return pid
end

local gone = moat.gone

local function kill9(pid)
  os.execute("kill -KILL " .. pid .. " 2>/dev/null")
  assert(moat.poll(function() return gone(pid) end, 10), "moat survived SIGKILL")
end

local function no_sanitizer_report(logfile)
  local log = moat.read_file(logfile) or ""
  for _, p in ipairs { "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:" } do
    assert(not log:find(p, 1, true), p .. " in " .. logfile .. ":\n" .. log)
  end
end

describe("moat killed with SIGKILL under load", function()
  local dir, gens, moat_pid = nil, {}, nil

  after_each(function()
    if moat_pid and moat.alive(moat_pid) then os.execute("kill -KILL " .. moat_pid .. " 2>/dev/null") end
    if dir then moat.write_file(dir .. "/stop", "") end
    for _, pid in ipairs(gens) do
      moat.poll(function() return not moat.alive(pid) end, 10)
      if moat.alive(pid) then os.execute("kill " .. pid .. " 2>/dev/null") end
    end
  end)

  it(("loses no acknowledged message and never shows a partial file (%d kills)"):format(ROUNDS), function()
    local t_start = socket.gettime()
    local vars, conf
    dir, conf, vars = moat.prepare { tag = "crash", smtp = { max_message_size = 1 << 20 } }
    local spool = dir .. "/spool"
    local port = vars.PORT
    moat.write_file(dir .. "/loadgen.lua", ("local ROOT = %q\n"):format(moat.root) .. LOADGEN)

    for g = 1, GENERATORS do
      local p = assert(io.popen(("exec lua5.4 %s %d %d %s </dev/null >>%s 2>&1 & echo $!"):format(
        shquote(dir .. "/loadgen.lua"), port, g, shquote(dir), shquote(dir .. "/loadgen.log"))))
      gens[g] = tonumber(p:read("l"))
      p:close()
    end

    local kills, orphans_seen, max_files, cleaned = 0, 0, 0, 0
    local acks_at_kill = {}
    local checked = {}
    local function acks_so_far()
      local n = 0
      for g = 1, GENERATORS do
        local t = moat.read_file(dir .. "/acks-" .. g .. ".txt") or ""
        n = n + moat.count(t, "\n", true)
      end
      return n
    end

    for round = 1, ROUNDS + 1 do
      local leftover = #dir_names(spool .. "/tmp")
      local logfile = ("%s/moat-%02d.log"):format(dir, round)
      local pid = launch(conf, logfile)
      moat_pid = pid
      -- files a kill left in tmp/ were never acknowledged: removed at start
      if leftover > 0 then
        local log = moat.read_file(logfile)
        local removed = tonumber(log:match("event=spool_cleanup [^\n]*removed=(%d+)"))
        assert.equals(leftover, removed, "tmp/ after the kill had " .. leftover .. " files; log:\n" .. log)
        cleaned = cleaned + removed
      end
      if round > ROUNDS then
        -- the last start: let the generators finish cleanly, then a normal stop
        socket.sleep(0.5)
        moat.write_file(dir .. "/stop", "")
        for _, g in ipairs(gens) do
          assert(moat.poll(function() return not moat.alive(g) end, 15), "a load generator did not stop")
        end
        os.execute("kill -TERM " .. pid)
        assert(moat.poll(function() return not moat.alive(pid) end, 15), "moat did not stop on SIGTERM")
        no_sanitizer_report(logfile)
        break
      end
      -- a random moment under load; half-way, new/ is checked while moat writes
      local wait = 0.1 + math.random() * 0.5
      socket.sleep(wait / 2)
      check_new(spool, ("while running, round %d"):format(round), checked)
      socket.sleep(wait / 2)
      kill9(pid)
      kills = kills + 1
      acks_at_kill[#acks_at_kill + 1] = acks_so_far()
      no_sanitizer_report(logfile)
      assert.is_nil((moat.read_file(logfile) or ""):find("event=spool_error", 1, true))
      local orphans, files = check_new(spool, ("after kill %d"):format(round), checked)
      orphans_seen = math.max(orphans_seen, orphans)
      max_files = math.max(max_files, files)
    end

    -- ---- every acknowledged message is there, intact ----
    local new = spool .. "/new"
    local acked, nacks = {}, 0
    for g = 1, GENERATORS do
      for line in (moat.read_file(dir .. "/acks-" .. g .. ".txt") or ""):gmatch("[^\n]+") do
        local id, mid, h, len, rcpts = line:match("^ACK (%x+) (%S+) (%x+) (%d+) (%S+)$")
        assert(id, "bad record line: " .. line)
        assert.is_nil(acked[id], "queue ID acknowledged twice: " .. id)
        acked[id] = { mid = mid, hash = h, len = tonumber(len), rcpts = rcpts, gen = g }
        nacks = nacks + 1
      end
    end
    local final_orphans, final_files = check_new(spool, "at the end", checked)
    local mids = {}
    for id, a in pairs(acked) do
      local eml = moat.read_file(new .. "/" .. id .. ".eml")
      local env_text = moat.read_file(new .. "/" .. id .. ".env")
      assert(eml, ("acknowledged message %s (%s) has no .eml in new/"):format(id, a.mid))
      assert(env_text, ("acknowledged message %s (%s) has no .env in new/"):format(id, a.mid))
      local d = check_eml(id .. ".eml", eml)
      assert.equals(a.mid, d.mid)
      assert.equals(a.hash, d.hash)
      assert.equals(a.len, d.len)
      assert.is_nil(mids[a.mid], "Message-ID acknowledged twice: " .. a.mid)
      mids[a.mid] = id
      local env = json.decode(env_text)
      assert.equals(id, env.id)
      assert.equals(("gen%d@remote.example"):format(a.gen), env.from)
      local got = {}
      for _, r in ipairs(env.rcpts or {}) do got[#got + 1] = r.addr end
      assert.equals(a.rcpts, table.concat(got, ","), id .. ".env recipients")
    end
    -- stored but never acknowledged (killed after the rename, before the 250): allowed
    local unacked = 0
    for _, f in ipairs(dir_names(new)) do
      local id = f:match("^(%x+)%.env$")
      if id and not acked[id] then unacked = unacked + 1 end
    end

    local elapsed = socket.gettime() - t_start
    print(("  [crash] %d kills in %.1f s; %d messages acknowledged (at each kill: %s); " ..
           "%d stored but not acknowledged; %d tmp/ files cleaned at restart; " ..
           "at most %d files in new/ after a kill; .eml without .env: at most %d after a kill, %d at the end")
      :format(kills, elapsed, nacks, table.concat(acks_at_kill, " "), unacked, cleaned,
              max_files, orphans_seen, final_orphans))
    io.stdout:write(moat.read_file(dir .. "/loadgen.log") or "")
    assert.equals(ROUNDS, kills)
    assert.truthy(nacks >= 100, "too little load to mean anything: " .. nacks .. " acknowledged messages")
    -- the generators saw acknowledgements in most rounds (the kills hit a busy moat)
    local busy = 0
    for i = 1, #acks_at_kill do
      if acks_at_kill[i] > (acks_at_kill[i - 1] or 0) then busy = busy + 1 end
    end
    assert.truthy(busy >= ROUNDS // 2, ("only %d of %d rounds had traffic"):format(busy, ROUNDS))
    assert.truthy(final_files >= 2 * nacks)
    if not os.getenv("MOAT_KEEP_TMP") then os.execute("rm -rf " .. shquote(dir)) end
    dir = nil
  end)
end)
