-- Integration: hostile clients (issue #8 item 6).  For every attack: moat
-- stays up, its memory stays bounded (VmHWM from /proc/PID/status, printed),
-- and a fresh client gets a full transaction done quickly while the attack
-- is going on.  README "Limits and replies": command lines 2048 bytes,
-- message lines smtp.max_line_length, pending output 256 KiB (moat stops
-- reading from a client that does not read its replies).
local socket = require "socket"
local moat = require "helpers.moat"
local tls = require "helpers.tls"

local ASAN = moat.is_asan()
-- A fresh client's whole transaction must finish within this (seconds).
local PROBE_MAX = ASAN and 5 or 2

-- ---- memory -------------------------------------------------------------------

-- VmRSS and VmHWM of a process, in KiB.
local function mem(pid)
  local st = moat.read_file("/proc/" .. pid .. "/status") or ""
  return tonumber(st:match("VmRSS:%s*(%d+)")) or 0, tonumber(st:match("VmHWM:%s*(%d+)")) or 0
end

-- Memory growth allowed by an attack, MiB.  The ASan build keeps freed
-- memory in its quarantine (and shadow memory on top), so it gets a larger
-- allowance; the plain build's bound is the one that matters.
local function allowance(plain_mb, asan_mb) return ASAN and asan_mb or plain_mb end

-- Assert that the peak (VmHWM) stayed within base + mb MiB; prints the numbers.
local function assert_memory(srv, label, base_kb, mb)
  local rss, hwm = mem(srv.pid)
  print(("  [hostile] %-34s baseline %6.1f MiB  peak VmHWM %6.1f MiB  now VmRSS %6.1f MiB  (bound +%d MiB%s)")
    :format(label, base_kb / 1024, hwm / 1024, rss / 1024, mb, ASAN and ", asan" or ""))
  assert.truthy(hwm - base_kb <= mb * 1024,
    ("%s: moat peak memory grew by %.1f MiB (bound %d MiB)"):format(label, (hwm - base_kb) / 1024, mb))
end

-- ---- a client that must be served while the attack goes on ------------------

local probe_n = 0
local function probe(srv, opts)
  opts = opts or {}
  probe_n = probe_n + 1
  local t0 = socket.gettime()
  local c = moat.client(opts.port or srv.port, { timeout = PROBE_MAX + 5, source = opts.source or "127.0.0.1" })
  assert.equals(220, c.greeting_code, c.greeting)
  assert.equals(250, (c:ehlo("probe.example")))
  local r = c:transaction { from = "probe@remote.example", rcpts = { "joe@example.test" },
                            data = moat.message("probe " .. probe_n) }
  assert.equals(250, r.final and r.final[1], r.final and r.final[2])
  assert.truthy(r.id)
  assert.same({ 221, "221 2.0.0 Bye" }, { c:cmd("QUIT") })
  c:close()
  local dt = socket.gettime() - t0
  assert.truthy(dt < PROBE_MAX, ("a fresh client needed %.2f s for one transaction"):format(dt))
  return dt
end

local function start(opts)
  local srv = moat.start(opts)
  probe(srv)                      -- warm up: the baseline includes one session's worth
  local rss = mem(srv.pid)
  return srv, rss
end

local function assert_alive(srv)
  assert.truthy(srv:alive(), "moat died; log:\n" .. srv:log():sub(-4000))
end

-- Random bytes (math.random is seeded by busted).
local function random_bytes(n, exclude)
  local t = {}
  for i = 1, n do
    local b
    repeat b = math.random(0, 255) until not (exclude and exclude[b])
    t[i] = string.char(b)
  end
  return table.concat(t)
end

-- Send `data` on a blocking client in chunks, running `between()` every
-- `every` bytes (e.g. a probe while the attack is half-way through).
local function send_chunked(c, data, chunk, every, between)
  local sent, next_call = 0, every
  while sent < #data do
    local piece = data:sub(sent + 1, sent + chunk)
    assert(c:send(piece))
    sent = sent + #piece
    if between and every and sent >= next_call then
      between(sent)
      next_call = next_call + every
    end
  end
end

describe("moat under hostile clients", function()
  after_each(function() moat.stop_all() end)

  -- ------------------------------------------------------------------------
  it("slowloris: 1,000 clients sending one byte a second stay connected, a fresh client is served", function()
    local N = 1000
    local srv, base = start {}
    local slow = {}
    local t0 = socket.gettime()
    for i = 1, N do
      -- spread over 127.1.0.0/16: one address per 250 clients.  Connected in
      -- batches of 50: this test is about slow bytes, not a connect burst
      -- (that is the next test).
      local src = ("127.1.%d.%d"):format(i // 250, i % 250 + 1)
      local s = assert(socket.tcp())
      assert(s:bind(src, 0))
      s:settimeout(5)
      local ok, err = s:connect("127.0.0.1", srv.port)
      assert(ok, "slow client " .. i .. ": " .. tostring(err))
      s:settimeout(0)
      slow[i] = s
      if i % 50 == 0 then socket.sleep(0.02) end
    end
    print(("  [hostile] slowloris: %d clients connected in %.2f s"):format(N, socket.gettime() - t0))
    local line = "EHLO slow.example\r\n"
    local probes = {}
    for tick = 1, 4 do                      -- "EHLO": one byte a second from every client
      local tick_start = socket.gettime()
      for i = 1, N do
        local n, err = slow[i]:send(line:sub(tick, tick))
        assert(n == 1, ("slow client %d, byte %d: %s"):format(i, tick, tostring(err)))
      end
      probes[#probes + 1] = ("%.3f"):format(probe(srv))
      assert_alive(srv)
      local rest = 1 - (socket.gettime() - tick_start)
      if rest > 0 then socket.sleep(rest) end
    end
    print("  [hostile] slowloris: probe transactions (s): " .. table.concat(probes, " "))
    -- every slow client is still there and gets its greeting and EHLO answered
    local rest = line:sub(5)
    for i = 1, N do
      slow[i]:settimeout(5)
      assert(slow[i]:send(rest))
    end
    local served = 0
    local any = moat.client(srv.port, { greeting = false })
    local Client = getmetatable(any)
    any:close()
    for i = 1, N do
      local c = setmetatable({ sock = slow[i] }, Client)
      local code, text = c:read_reply()
      assert.equals(220, code, "slow client " .. i .. " greeting: " .. tostring(text))
      code, text = c:read_reply()
      assert.equals(250, code, "slow client " .. i .. " EHLO: " .. tostring(text))
      served = served + 1
    end
    assert.equals(N, served)
    assert_memory(srv, "slowloris x1000", base, allowance(64, 128))
    for i = 1, N do slow[i]:close() end
    probe(srv)
    assert_alive(srv)
  end)

  -- ------------------------------------------------------------------------
  -- Regression: listener.c bind_one() listens with BACKLOG (1024); open_new()
  -- once passed backlog -1 to evconnlistener_new(), which libevent turns into
  -- listen(fd, 128).  A burst of connections then overflowed the accept
  -- queue, the kernel dropped SYNs and those clients (legitimate ones too)
  -- waited 1 s, then 3 s, for a retransmission.
  it("a burst of 1,000 connections is queued (listen backlog 1024), no client waits for a SYN retransmit", function()
    local N = 1000
    local srv, base = start {}
    local p = io.popen("ss -ltnH 'sport = :" .. srv.port .. "' 2>/dev/null")
    local ss = p and p:read("a") or ""
    if p then p:close() end
    local backlog = tonumber(ss:match("LISTEN%s+%d+%s+(%d+)"))
    print(("  [hostile] connect burst: listen backlog of the moat socket: %s"):format(tostring(backlog)))
    local socks, worst, worst_i = {}, 0, 0
    local t0 = socket.gettime()
    for i = 1, N do
      local s = assert(socket.tcp())
      assert(s:bind(("127.2.%d.%d"):format(i // 250, i % 250 + 1), 0))
      s:settimeout(10)
      local t = socket.gettime()
      local ok, err = s:connect("127.0.0.1", srv.port)
      assert(ok, "client " .. i .. ": " .. tostring(err))
      local dt = socket.gettime() - t
      if dt > worst then worst, worst_i = dt, i end
      socks[i] = s
    end
    print(("  [hostile] connect burst: %d connections in %.2f s, slowest connect %.3f s (client %d)")
      :format(N, socket.gettime() - t0, worst, worst_i))
    probe(srv)
    for i = 1, N do socks[i]:close() end
    assert_alive(srv)
    assert_memory(srv, "connect burst x1000", base, allowance(64, 128))
    assert.truthy(worst < 0.5, ("a connect took %.2f s: SYN dropped (listen backlog %s, not 1024)")
      :format(worst, tostring(backlog)))
  end)

  -- ------------------------------------------------------------------------
  describe("a 10 MB line without LF", function()
    local BIG = 10 * 1000 * 1000

    it("in a command: 500 5.5.2 once the LF arrives, memory bounded, session goes on", function()
      local srv, base = start {}
      local c = moat.client(srv.port, { timeout = 30 })
      assert.equals(250, (c:ehlo()))
      local junk = "EHLO " .. ("A"):rep(BIG - 5)
      local probes = 0
      send_chunked(c, junk, 64 * 1024, 2 * 1000 * 1000, function()
        probe(srv)
        probes = probes + 1
      end)
      assert.equals(5, probes)
      assert_alive(srv)
      assert.same({ 500, "500 5.5.2 Error: line too long" }, { c:cmd("") })
      -- the session is in a sane state afterwards
      assert.same({ 250, "250 2.0.0 Ok" }, { c:cmd("NOOP") })
      local r = c:transaction { from = "big@remote.example", rcpts = { "joe@example.test" } }
      assert.equals(250, r.final[1], r.final[2])
      c:close()
      assert_memory(srv, "10 MB command line", base, allowance(8, 96))
    end)

    it("in DATA: rejected after the dot (500 5.5.2), memory bounded, session goes on", function()
      local srv, base = start {}
      local c = moat.client(srv.port, { timeout = 30 })
      assert.equals(250, (c:ehlo()))
      assert.equals(250, (c:cmd("MAIL FROM:<big@remote.example>")))
      assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
      assert.equals(354, (c:cmd("DATA")))
      assert(c:send("Subject: big\r\n\r\n"))
      local probes = 0
      send_chunked(c, ("B"):rep(BIG), 64 * 1024, 2 * 1000 * 1000, function()
        probe(srv)
        probes = probes + 1
      end)
      assert.equals(5, probes)
      assert_alive(srv)
      assert(c:send("\r\n.\r\n"))
      local code, text = c:read_reply()
      assert.equals(500, code, text)
      assert.truthy(text:find("^500 5%.5%.2 Line too long"), text)
      -- nothing of it was stored: new/ holds only the probes' messages
      for _, m in ipairs(srv:spool_files()) do
        assert.truthy((m.eml or ""):find("\r\nSubject: probe ", 1, true), "stored: " .. m.id)
      end
      local r = c:transaction { from = "big@remote.example", rcpts = { "joe@example.test" } }
      assert.equals(250, r.final[1], r.final[2])
      c:close()
      assert_memory(srv, "10 MB DATA line", base, allowance(8, 96))
    end)
  end)

  -- ------------------------------------------------------------------------
  it("a 10 MB line sent while the session's hook is suspended (moat.sleep): input bounded", function()
    local srv, base = start {
      scripts = { ["site.lua"] = [[
local moat = require "moat"
return { helo = function(s, name) if name == "sleepy.example" then moat.sleep(2) end end }
]] },
    }
    local c = moat.client(srv.port, { timeout = 30 })
    assert(c:send("EHLO sleepy.example\r\n"))
    -- moat reads up to its input watermark, then lets TCP push back
    c.sock:settimeout(0)
    local data = ("C"):rep(10 * 1000 * 1000)
    local pos, t0 = 1, socket.gettime()
    while pos <= #data and socket.gettime() - t0 < 1.5 do
      local n, err, last = c.sock:send(data, pos)
      pos = (n or last or pos - 1) + 1
      if err == "timeout" then socket.sleep(0.01) end
    end
    probe(srv)
    local _, hwm = mem(srv.pid)
    print(("  [hostile] suspended hook: %.1f MiB taken by the kernel and moat while the hook slept")
      :format((pos - 1) / 1048576))
    assert.truthy(hwm - base < allowance(8, 96) * 1024)
    c.sock:settimeout(30)
    if pos <= #data then assert(c:send(data, pos)) end
    local code, text = c:read_reply()
    assert.equals(250, code, text)
    assert.same({ 500, "500 5.5.2 Error: line too long" }, { c:cmd("") })
    assert.same({ 250, "250 2.0.0 Ok" }, { c:cmd("NOOP") })
    c:close()
    assert_alive(srv)
    assert_memory(srv, "10 MB during a suspended hook", base, allowance(8, 96))
  end)

  -- ------------------------------------------------------------------------
  it("binary junk and NUL bytes as commands: 500s, then 421 after max_errors and the close", function()
    local MAX = 6
    local srv, base = start { smtp = { max_errors = MAX } }
    local c = moat.client(srv.port)
    local no_lf = { [10] = true }
    local lines = {}
    for i = 1, MAX do
      local l
      if i % 3 == 1 then
        l = ("\0"):rep(math.random(1, 100))                      -- only NULs
      elseif i % 3 == 2 then
        l = "NOOP\0" .. random_bytes(math.random(1, 200), no_lf)  -- a verb with a NUL in it
      else
        l = "\255" .. random_bytes(math.random(1, 1500), no_lf)   -- binary junk
      end
      lines[i] = l
    end
    assert(c:send(table.concat(lines, "\r\n") .. "\r\n"))
    for i = 1, MAX do
      local code, text = c:read_reply()
      assert.equals(500, code, ("junk line %d: %s"):format(i, tostring(text)))
      assert.truthy(text:find("^500 5%.5%.2 "), text)
      if lines[i]:find("\0", 1, true) then
        assert.equals("500 5.5.2 Error: NUL byte in command", text)
      end
    end
    local code, text = c:read_reply()
    assert.equals(421, code, text)
    assert.truthy(text:find("^421 4%.7%.0 "), text)
    assert.truthy(c:closed(3))
    c:close()
    srv:wait_log("event=too_many_errors ")
    -- the same on a session that did EHLO first, with more junk than max_errors pipelined
    c = moat.client(srv.port)
    assert.equals(250, (c:ehlo()))
    local junk = {}
    for i = 1, MAX * 20 do junk[i] = "\0\1\2\3" .. random_bytes(64, no_lf) end
    c:send(table.concat(junk, "\n") .. "\n")
    local n500 = 0
    while true do
      code, text = c:read_reply()
      if code ~= 500 then break end
      n500 = n500 + 1
    end
    assert.equals(MAX, n500, tostring(code) .. " " .. tostring(text))
    assert.equals(421, code, text)
    assert.truthy(c:closed(3))
    c:close()
    assert_alive(srv)
    probe(srv)
    assert_memory(srv, "binary junk", base, allowance(8, 64))
  end)

  -- ------------------------------------------------------------------------
  it("10,000 pipelined commands in one write: all answered, in order", function()
    local N = 10000
    local srv, base = start {}
    local c = moat.client(srv.port, { timeout = 20 })
    assert.equals(250, (c:ehlo()))
    -- NOOP x 10,000, every 97th a HELP (214): the replies must come back in order
    local cmds = {}
    for i = 1, N do cmds[i] = i % 97 == 0 and "HELP" or "NOOP" end
    assert(c:send(table.concat(cmds, "\r\n") .. "\r\n"))
    local probed = false
    for i = 1, N do
      local code, text = c:read_reply()
      local want = cmds[i] == "HELP" and 214 or 250
      if code ~= want then
        assert.equals(want, code, ("reply %d of %d: %s"):format(i, N, tostring(text)))
      end
      if i == N // 2 and not probed then probe(srv); probed = true end
    end
    assert.same({ 250, "250 2.0.0 Ok" }, { c:cmd("NOOP") })
    c:close()
    assert_alive(srv)
    assert_memory(srv, "10,000 pipelined commands", base, allowance(8, 64))
  end)

  -- ------------------------------------------------------------------------
  it("invalid UTF-8 in SMTPUTF8 addresses: 501 5.6.7", function()
    local srv = start { smtp = { max_errors = 100 } }
    local c = moat.client(srv.port)
    assert.equals(250, (c:ehlo()))
    local bad = {
      "\255\254@remote.example",             -- bytes that are never UTF-8
      "a\192\175b@remote.example",           -- overlong "/"
      "a\237\160\128@remote.example",        -- a UTF-16 surrogate
      "a\226\130@remote.example",            -- truncated sequence
      "j\195\182e@r\128emote.example",       -- stray continuation byte in the domain
      "a@\244\144\128\128.example",          -- past U+10FFFF
    }
    for _, a in ipairs(bad) do
      local code, text = c:cmd("MAIL FROM:<" .. a .. "> SMTPUTF8")
      assert.same({ 501, "501 5.6.7 Invalid UTF-8 in address" }, { code, text })
    end
    -- valid UTF-8 is fine; a bad recipient gets the same reply
    assert.equals(250, (c:cmd("MAIL FROM:<j\195\182rg@remote.example> SMTPUTF8")))
    for _, l in ipairs { "\255\254", "a\192\175b", "a\237\160\128", "a\226\130", "\128" } do
      assert.same({ 501, "501 5.6.7 Invalid UTF-8 in address" }, { c:cmd("RCPT TO:<" .. l .. "@example.test>") })
    end
    assert.same({ 501, "501 5.6.7 Invalid UTF-8 in address" }, { c:cmd("RCPT TO:<joe@ex\255ample.test>") })
    assert.equals(250, (c:cmd("RCPT TO:<j\195\182e@example.test>")))
    c:close()
    assert_alive(srv)
    probe(srv)
  end)

  -- ------------------------------------------------------------------------
  it("TLS garbage on a tls = \"on\" socket: closed, tls_error logged, still serving", function()
    local files = tls.domain_files({}, "example.test", "ex")
    local srv, base = start {
      files = files,
      ports = 1,
      listener = '{ { port = %PORT%, address = "127.0.0.1" }, { port = %PORT1%, address = "127.0.0.1", tls = "on" } }',
      extra = 'domains = { ["example.test"] = { addresses = { "127.0.0.1" }, certificate = "ex.pem", private_key = "ex.key" } }',
    }
    local tport = srv.vars.PORT1
    local ROUNDS = 8
    for i = 1, ROUNDS do
      local c = moat.client(tport, { greeting = false })
      local junk = random_bytes(math.random(64, 8192))
      if i % 2 == 0 then
        -- a TLS record header with a valid type and version, and junk inside
        junk = "\22\3\1\0\200" .. random_bytes(200)
      elseif junk:byte(1) == 22 then
        junk = "\0" .. junk
      end
      c:send(junk)
      -- moat may answer with a TLS alert before it closes: read to the end
      c.sock:settimeout(5)
      local data, err, partial = c.sock:receive("*a")
      local got = #(data or partial or "")
      assert.truthy(data ~= nil or err == "closed" or err == "connection reset by peer",
        ("round %d: moat kept the connection (%s)"):format(i, tostring(err)))
      assert.truthy(got < 1024, ("round %d: %d bytes back for junk"):format(i, got))
      c:close()
      probe(srv)
    end
    srv:wait_log("event=tls_error ", 5, ROUNDS)
    -- the TLS socket still works for a real client
    local c = assert(tls.connect(tport))
    assert.equals(220, c.greeting_code, c.greeting)
    assert.equals(250, (c:ehlo()))
    local r = c:transaction { from = "tls@remote.example", rcpts = { "joe@example.test" } }
    assert.equals(250, r.final[1], r.final[2])
    c:close()
    assert_alive(srv)
    assert_memory(srv, "TLS garbage", base, allowance(16, 96))
  end)

  -- ------------------------------------------------------------------------
  local function flood(how)
    local files = tls.domain_files({}, "example.test", "ex")
    local srv, base = start { files = files,
      extra = 'domains = { ["example.test"] = { addresses = { "127.0.0.1" }, certificate = "ex.pem", private_key = "ex.key" } }' }
    local c = moat.client(srv.port, { timeout = 10 })
    if how == "starttls" then
      assert.equals(250, (c:ehlo("flood.ex")))
      assert(tls.starttls(c))
    end
    local code, ehlo_text = c:ehlo("flood.ex")
    assert.equals(250, code)
    -- Each EHLO is answered with ~200 bytes for 15 sent: 256 KiB of pending
    -- output comes fast.  Sent with a non-blocking socket, in order, never torn.
    local cmd = "EHLO flood.ex\r\n"
    local block = cmd:rep(4096)
    c.sock:settimeout(0)
    local sent, pos, t0 = 0, 1, socket.gettime()
    local history, last_probe, probes = {}, t0, {}
    local inflight = false    -- a send stopped half-way: TLS must retry it with the same bytes
    while socket.gettime() - t0 < 3 do
      local n, err, last = c.sock:send(block, pos)
      local upto = n or last or pos - 1           -- index of the last byte sent
      sent = math.tointeger(sent + (upto - pos + 1))
      pos = upto + 1
      if pos > #block then pos = 1 end
      inflight = err ~= nil
      assert(err == nil or err == "timeout" or err == "wantwrite", err)
      if err then socket.sleep(0.02) end
      if socket.gettime() - last_probe >= 1 then
        probes[#probes + 1] = ("%.3f"):format(probe(srv))
        last_probe = socket.gettime()
        history[#history + 1] = math.tointeger(sent) or sent
      end
    end
    print(("  [hostile] flood (" .. how .. "): %.1f MiB of commands taken in 3 s; running total each second: %s; probes (s): %s")
      :format(sent / 1048576, table.concat(history, " "), table.concat(probes, " ")))
    -- the flood stalled: moat stopped reading, the socket buffers filled up
    assert.truthy(sent < 64 * 1048576, ("%d bytes went in: moat did not stop reading"):format(sent))
    assert.truthy(sent - history[#history - 1] < 1048576,
      ("the flood still went on: %d bytes in the last seconds"):format(sent - history[#history - 1]))
    assert_memory(srv, "non-reading flooder (" .. how .. ")", base, allowance(16, 96))
    assert_alive(srv)
    -- Once the client reads, every reply comes, whole and in order.  The
    -- block being sent is finished first (non-blocking, while reading: moat
    -- reads again only as its output drains), so exactly sent / #cmd
    -- commands went out.  (A TLS write must be retried with the same bytes.)
    local rep = ehlo_text:gsub("\n", "\r\n") .. "\r\n"
    local pending, replies, t1 = "", 0, socket.gettime()
    local function take(data)
      pending = pending .. data
      local k = #pending // #rep
      if k > 0 then
        local chunk = pending:sub(1, k * #rep)
        if chunk ~= rep:rep(k) then
          local want, i = rep:rep(k), 1
          while chunk:byte(i) == want:byte(i) do i = i + 1 end
          error(("reply stream differs after %d replies: %q"):format(replies + (i - 1) // #rep,
            chunk:sub(math.max(1, i - 40), i + 40)))
        end
        replies = replies + k
        pending = pending:sub(k * #rep + 1)
      end
    end
    local commands
    while true do
      if pos ~= 1 or inflight then
        local n, err, last = c.sock:send(block, pos)
        local upto = n or last or pos - 1
        sent = math.tointeger(sent + (upto - pos + 1))
        pos = upto + 1
        if pos > #block then pos = 1 end
        inflight = err ~= nil
        assert(err == nil or err == "timeout" or err == "wantwrite" or err == "wantread", err)
      end
      if pos == 1 and not inflight and not commands then commands = sent // #cmd end
      local data, err, partial = c.sock:receive(65536)
      take(data or partial or "")
      assert(data or err == "timeout" or err == "wantread" or err == "wantwrite", err)
      if commands and replies >= commands then break end
      assert.truthy(socket.gettime() - t1 < 60, ("read %d of %s replies in 60 s"):format(replies, tostring(commands)))
      if not data and (partial or "") == "" then socket.sleep(0.002) end
    end
    assert.equals(commands, replies)
    assert.equals("", pending)
    if how == "plain" then
      c.sock:settimeout(10)
      assert.same({ 250, "250 2.0.0 Ok" }, { c:cmd("NOOP") })
    end
    -- After STARTTLS the client's own TLS layer may still hold a partial
    -- record from the non-blocking writes above; OpenSSL refuses a new write
    -- until that one is retried ("bad length"), which says nothing about
    -- moat.  The session's health is checked by assert_alive (a fresh client).
    c:close()
    print(("  [hostile] flood (" .. how .. "): %d EHLO replies (%.1f MiB) read back in order"):format(commands, commands * #rep / 1048576))
    assert_alive(srv)
  end

  it("a client that never reads its replies: moat stops reading it, memory flat, others served", function()
    flood("plain")
  end)

  it("the same after STARTTLS (replies go through the TLS filter)", function()
    flood("starttls")
  end)

  -- ------------------------------------------------------------------------
  it("data sent before the greeting with greet_delay_ms: 554 5.5.1 and closed", function()
    local srv = moat.start { smtp = { greet_delay_ms = 400 } }
    local c = moat.client(srv.port, { greeting = false })
    assert(c:send("EHLO eager.example\r\n"))
    local code, text = c:read_reply()
    assert.equals(554, code, text)
    assert.truthy(text:find("^554 5%.5%.1 "), text)
    assert.truthy(c:closed(3))
    c:close()
    srv:wait_log("event=pregreet ")
    -- a patient client gets its greeting after the delay and is served
    local t0 = socket.gettime()
    local p = moat.client(srv.port)
    assert.equals(220, p.greeting_code, p.greeting)
    assert.truthy(socket.gettime() - t0 >= 0.35)
    p:close()
    probe(srv)
  end)
end)
