-- Integration: reload (SIGHUP, moatctl reload, watch mode) swaps the configuration
-- atomically (DESIGN sections 2 and 7, README "Reloading").  Every test asserts
-- what an operator sees: replies, moatctl output and exit code, log events,
-- counters.
local socket = require "socket"
local moat = require "helpers.moat"

local function shquote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- A site script whose RCPT hook answers <probe@...> with its own text,
-- <slow@...> after a 1 s moat.sleep, and <blockme@...> by blocking 127.0.0.9.
local function script(text)
  return ([[
local moat = require "moat"
return {
  rcpt = function(s, rcpt)
    local lp = rcpt.addr.localpart
    if lp == "probe" then return moat.reject(550, "5.7.1 %s") end
    if lp == "slow" then
      s:log("sleeping")
      moat.sleep(1)
      return moat.reject(550, "5.7.1 slow %s")
    end
    if lp == "blockme" then
      moat.tempblock.add("127.0.0.9", "reload test")
      return moat.reject(550, "5.7.1 blocked by %s")
    end
  end,
}
]]):format(text, text, text)
end

-- RCPT <probe@example.test> in a fresh session: the reply text.
local function probe(port)
  local c = moat.client(port)
  assert.equals(220, c.greeting_code, tostring(c.greeting))
  c:ehlo()
  c:cmd("MAIL FROM:<a@remote.example>")
  local _, text = c:cmd("RCPT TO:<probe@example.test>")
  c:cmd("QUIT")
  c:close()
  return text
end

-- moatctl -s SOCK ARGS with stdout and stderr apart: rc, stdout, stderr.
local function ctl(srv, args)
  local bin = os.getenv("MOATCTL_BIN") or (moat.root .. "/moatctl")
  local out, err = os.tmpname(), os.tmpname()
  local p = assert(io.popen(("%s -s %s %s >%s 2>%s; echo $?"):format(shquote(bin),
    shquote(srv.dir .. "/moat.sock"), args, shquote(out), shquote(err))))
  local rc = tonumber(p:read("l"))
  p:close()
  local o, e = moat.read_file(out) or "", moat.read_file(err) or ""
  os.remove(out)
  os.remove(err)
  return rc, o, e
end

-- `moatctl stats` as { name = number } plus the raw text.
local function stats(srv)
  local rc, out, err = ctl(srv, "stats")
  assert.equals(0, rc, err)
  local t = {}
  for line in out:gmatch("[^\n]+") do
    local name, v = line:match("^([%w_]+) ([%d.e+-]+)$")
    if name then t[name] = tonumber(v) end
  end
  return t, out
end

local function count_events(srv, name) return #srv:events(name) end

-- A full transaction on an open client; returns the final reply code.
local function send_mail(c)
  assert.equals(250, (c:cmd("MAIL FROM:<a@remote.example>")))
  assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
  assert.equals(354, (c:cmd("DATA")))
  assert(c:send(moat.dot_stuff(moat.message())))
  return (c:read_reply())
end

-- True when a TCP connect to 127.0.0.1:port is refused.
local function refused(port)
  local s = socket.tcp()
  s:settimeout(2)
  local ok, err = s:connect("127.0.0.1", port)
  s:close()
  return not ok, err
end

-- Replace the listener line of the server's config.
local function set_listener(srv, body)
  local conf = moat.read_file(srv.conf):gsub('listener "smtp" [^\n]*', function()
    return 'listener "smtp" ' .. body
  end)
  srv:write("moat.conf", conf)
end

describe("moat reload", function()
  after_each(function() moat.stop_all() end)

  describe("moatctl reload", function()
    it("switches new sessions to the changed script; an open session keeps the old one", function()
      local srv = moat.start { scripts = { ["site.lua"] = script("version one") } }
      local a = moat.client(srv.port)
      a:ehlo()
      assert.equals(250, (a:cmd("MAIL FROM:<a@remote.example>")))
      srv:write("site.lua", script("version two"))
      local rc, out, err = ctl(srv, "reload")
      assert.equals(0, rc, err)
      assert.equals("reloaded: generation 2\n", out)
      assert.equals("", err)
      srv:wait_log("event=reloaded generation=2")
      -- session B, opened after the reload: the new script
      assert.equals("550 5.7.1 version two", probe(srv.port))
      -- session A, opened before: still the old script, and it can finish its mail
      assert.same({ 550, "550 5.7.1 version one" }, { a:cmd("RCPT TO:<probe@example.test>") })
      assert.equals(250, (a:cmd("RCPT TO:<joe@example.test>")))
      assert.equals(354, (a:cmd("DATA")))
      assert(a:send(moat.dot_stuff(moat.message())))
      assert.equals(250, (a:read_reply()))
      -- a second transaction in A is still on the old generation
      assert.equals(250, (a:cmd("MAIL FROM:<a@remote.example>")))
      assert.same({ 550, "550 5.7.1 version one" }, { a:cmd("RCPT TO:<probe@example.test>") })
      a:close()
      assert.equals("550 5.7.1 version two", probe(srv.port))
    end)

    it("a script with a syntax error: exit 1, file:line on stderr, reload_failed logged, old script kept", function()
      local srv = moat.start { scripts = { ["site.lua"] = script("still one") } }
      srv:write("site.lua", "local moat = require 'moat'\nreturn {\n  rcpt = function(s) oops oops end\n}\n")
      local rc, out, err = ctl(srv, "reload")
      assert.equals(1, rc)
      assert.equals("", out)
      assert.truthy(err:find("site.lua:3:", 1, true), err)
      local line = srv:wait_log("event=reload_failed ")
      assert.truthy(line:find("site.lua:3:", 1, true), line)
      assert.equals("550 5.7.1 still one", probe(srv.port))
      assert.is_true(srv:alive())
      -- fixing the script: the next reload goes through
      srv:write("site.lua", script("fixed"))
      local rc2, out2, err2 = ctl(srv, "reload")
      assert.equals(0, rc2, err2)
      assert.truthy(out2:match("^reloaded: generation %d+\n$"), out2)
      assert.equals("550 5.7.1 fixed", probe(srv.port))
    end)

    it("a script that loads but is not a policy (returns 42) is refused too", function()
      local srv = moat.start { scripts = { ["site.lua"] = script("one") } }
      srv:write("site.lua", "return 42\n")
      local rc, out, err = ctl(srv, "reload")
      assert.equals(1, rc, out)
      assert.truthy(err:find("site.lua", 1, true), err)
      srv:wait_log("event=reload_failed ")
      assert.equals("550 5.7.1 one", probe(srv.port))
    end)

    it("a malformed address-table line: exit 1, the table file and line named, old tables kept", function()
      local srv = moat.start {
        scripts = { ["site.lua"] = script("tables one") },
        tables = { denied_ips = "127.0.0.40\n" },
      }
      srv:write("denied.ips", "127.0.0.41\n; comment\nnot-an-address\n")
      srv:write("site.lua", script("tables two"))
      local rc, out, err = ctl(srv, "reload")
      assert.equals(1, rc, out)
      assert.truthy(err:find("denied.ips:3:", 1, true), err)
      local line = srv:wait_log("event=reload_failed ")
      assert.truthy(line:find("denied.ips:3:", 1, true), line)
      -- nothing of the refused reload took effect: old denied list, old script
      local c = moat.client(srv.port, { source = "127.0.0.40" })
      assert.is_nil(c.greeting_code, tostring(c.greeting))
      c:close()
      local c2 = moat.client(srv.port, { source = "127.0.0.41" })
      assert.equals(220, c2.greeting_code)
      c2:close()
      assert.equals("550 5.7.1 tables one", probe(srv.port))
    end)

    it("a reload that changes the tables takes effect for new connections", function()
      local srv = moat.start()
      local c = moat.client(srv.port, { source = "127.0.0.40" })
      assert.equals(220, c.greeting_code)
      c:close()
      srv:write("denied.ips", "127.0.0.40\n")
      local conf = moat.read_file(srv.conf):gsub('tables = {[^\n]*}',
        'tables = { client_ips = "client.ips", denied_ips = "denied.ips" }')
      srv:write("moat.conf", conf)
      local rc, _, err = ctl(srv, "reload")
      assert.equals(0, rc, err)
      local c2 = moat.client(srv.port, { source = "127.0.0.40" })
      assert.is_nil(c2.greeting_code, tostring(c2.greeting))
      c2:close()
      srv:wait_log("event=refused ip=127%.0%.0%.40 .*reason=denied_ips")
    end)
  end)

  describe("SIGHUP", function()
    it("loads changed scripts for new sessions; running sessions keep theirs", function()
      local srv = moat.start { scripts = { ["site.lua"] = script("version one") } }
      local old = moat.client(srv.port)
      old:ehlo()
      assert.equals(250, (old:cmd("MAIL FROM:<a@remote.example>")))
      srv:write("site.lua", script("version two"))
      srv:signal("HUP")
      srv:wait_log("event=reloaded generation=2")
      assert.equals("550 5.7.1 version two", probe(srv.port))
      assert.same({ 550, "550 5.7.1 version one" }, { old:cmd("RCPT TO:<probe@example.test>") })
      assert.equals(250, (old:cmd("RCPT TO:<joe@example.test>")))
      assert.equals(354, (old:cmd("DATA")))
      assert(old:send(moat.dot_stuff(moat.message())))
      assert.equals(250, (old:read_reply()))
      old:close()
      assert.equals(1, (stats(srv)).reloads_ok_total)
    end)

    it("a broken script keeps the old state running and reports the error", function()
      local srv = moat.start { scripts = { ["site.lua"] = script("still one") } }
      srv:write("site.lua", "return {\n  rcpt = function(s) oops oops end\n}\n")
      srv:signal("HUP")
      local line = srv:wait_log("event=reload_failed ")
      assert.truthy(line:find("site.lua:2:", 1, true), line)
      assert.equals("550 5.7.1 still one", probe(srv.port))
      assert.is_true(srv:alive())
      local st = stats(srv)
      assert.equals(0, st.reloads_ok_total)
      assert.equals(1, st.reloads_failed_total)
    end)

    it("a broken table line likewise names the file and line", function()
      local srv = moat.start { scripts = { ["site.lua"] = script("one") } }
      srv:write("client.ips", "127.0.0.1\n10.0.0.0/99\n")
      srv:signal("HUP")
      local line = srv:wait_log("event=reload_failed ")
      assert.truthy(line:find("client.ips:2:", 1, true), line)
      assert.equals("550 5.7.1 one", probe(srv.port))
      srv:wait_log("event=connect [^\n]*status=client")
    end)
  end)

  it("a session inside a hook (moat.sleep) across a reload gets the old script's verdict", function()
    local srv = moat.start { scripts = { ["site.lua"] = script("old") } }
    local a = moat.client(srv.port)
    a:ehlo()
    assert.equals(250, (a:cmd("MAIL FROM:<a@remote.example>")))
    assert(a:send("RCPT TO:<slow@example.test>\r\n"))
    srv:wait_log("event=script [^\n]*sleeping")
    srv:write("site.lua", script("new"))
    local t = socket.gettime()
    local rc, _, err = ctl(srv, "reload")
    assert.equals(0, rc, err)
    assert.truthy(socket.gettime() - t < 0.8, "reload waited for the sleeping hook")
    -- the old generation is alive while A is in it
    assert.equals(2, (stats(srv)).runtimes_live)
    assert.equals("550 5.7.1 new", probe(srv.port))
    assert.same({ 550, "550 5.7.1 slow old" }, { a:read_reply() })
    assert.same({ 550, "550 5.7.1 old" }, { a:cmd("RCPT TO:<probe@example.test>") })
    assert.equals(250, (a:cmd("RCPT TO:<joe@example.test>")))
    assert.equals(354, (a:cmd("DATA")))
    assert(a:send(moat.dot_stuff(moat.message())))
    assert.equals(250, (a:read_reply()))
    assert.equals(221, (a:cmd("QUIT")))
    a:close()
    -- A's end frees the old generation
    assert.truthy(moat.poll(function() return stats(srv).runtimes_live == 1 end, 5),
      select(2, stats(srv)))
  end)

  it("a client that leaves during a hook of an old generation frees that generation", function()
    local srv = moat.start { scripts = { ["site.lua"] = script("old") } }
    local a = moat.client(srv.port)
    a:ehlo()
    assert.equals(250, (a:cmd("MAIL FROM:<a@remote.example>")))
    assert(a:send("RCPT TO:<slow@example.test>\r\n"))
    srv:wait_log("event=script [^\n]*sleeping")
    srv:write("site.lua", script("new"))
    assert.equals(0, (ctl(srv, "reload")))
    assert.equals(2, (stats(srv)).runtimes_live)
    a:close()
    srv:wait_log("event=disconnect ")
    assert.truthy(moat.poll(function() return stats(srv).runtimes_live == 1 end, 3),
      select(2, stats(srv)))
    -- the sleep's wake-up after the session is gone harms nothing
    socket.sleep(1.2)
    assert.is_true(srv:alive())
    assert.equals("550 5.7.1 new", probe(srv.port))
    local st = stats(srv)
    assert.equals(1, st.runtimes_live)
    assert.equals(0, st.connections_current)
  end)

  it("a reload that changes spool_dir is applied or refused, never acknowledged and ignored", function()
    local srv = moat.start { scripts = { ["site.lua"] = script("one") } }
    local conf = moat.read_file(srv.conf):gsub('spool_dir = "spool"', 'spool_dir = "spool2"')
    srv:write("moat.conf", conf)
    local rc, out, err = ctl(srv, "reload")
    local c = moat.client(srv.port)
    c:ehlo()
    local r = c:transaction { from = "a@remote.example", rcpts = { "joe@example.test" }, data = moat.message() }
    c:close()
    assert.equals(250, r.final[1], r.final[2])
    local in_new = moat.read_file(srv.dir .. "/spool2/new/" .. r.id .. ".eml") ~= nil
    local in_old = moat.read_file(srv.dir .. "/spool/new/" .. r.id .. ".eml") ~= nil
    if rc == 0 then
      -- accepted: the operator was told the new config runs, so mail goes to the new spool
      assert.truthy(in_new and not in_old,
        ("moatctl reload said %q but message %s went to %s"):format(out, r.id,
          in_old and "the old spool_dir (spool/new)" or "neither spool"))
    else
      -- refused: the reply says why, and the old spool keeps working
      assert.truthy(err:find("spool_dir", 1, true), err)
      assert.truthy(in_old, "message " .. r.id .. " is not in the old spool")
    end
  end)

  it("temporary blocks and connection counts survive a reload", function()
    local srv = moat.start {
      scripts = { ["site.lua"] = script("one") },
      listener = '{ { port = %PORT%, address = "127.0.0.1" }, limit_per_address = 2 }',
    }
    -- a script blocks 127.0.0.9
    local c = moat.client(srv.port)
    c:ehlo()
    c:cmd("MAIL FROM:<a@remote.example>")
    assert.same({ 550, "550 5.7.1 blocked by one" }, { c:cmd("RCPT TO:<blockme@example.test>") })
    c:close()
    local b = moat.client(srv.port, { source = "127.0.0.9" })
    assert.equals(421, b.greeting_code)
    assert.truthy(b.greeting:find("^421 4%.7%.0"), b.greeting)
    b:close()
    -- two connections from 127.0.0.5: the per-address limit is reached
    local k1 = moat.client(srv.port, { source = "127.0.0.5" })
    local k2 = moat.client(srv.port, { source = "127.0.0.5" })
    assert.equals(220, k1.greeting_code)
    assert.equals(220, k2.greeting_code)

    srv:write("site.lua", script("two"))
    local rc, _, err = ctl(srv, "reload")
    assert.equals(0, rc, err)
    assert.equals("550 5.7.1 two", probe(srv.port))

    -- the block is still there
    local b2 = moat.client(srv.port, { source = "127.0.0.9" })
    assert.equals(421, b2.greeting_code)
    assert.truthy(b2.greeting:find("^421 4%.7%.0"), b2.greeting)
    b2:close()
    local rc2, out2, err2 = ctl(srv, "blocked")
    assert.equals(0, rc2, err2)
    assert.truthy(out2:find("127.0.0.9 ", 1, true), out2)
    assert.truthy(out2:find("reload test", 1, true), out2)
    -- the count is still there: a third connection from 127.0.0.5 is refused
    local k3 = moat.client(srv.port, { source = "127.0.0.5" })
    assert.equals(421, k3.greeting_code)
    assert.truthy(k3.greeting:find("^421 4%.7%.0"), k3.greeting)
    k3:close()
    srv:wait_log("event=refused ip=127%.0%.0%.5 .*reason=limit_per_address")
    -- and counts down when a pre-reload session ends
    assert.equals(221, (k1:cmd("QUIT")))
    k1:close()
    local k4 = moat.poll(function()
      local k = moat.client(srv.port, { source = "127.0.0.5" })
      if k.greeting_code == 220 then return k end
      k:close()
    end, 3)
    assert.truthy(k4, "the pre-reload session's end was not counted")
    assert.equals(250, (k4:ehlo()))
    k4:close()
    k2:close()
  end)

  describe("listener sockets", function()
    it("a reload opens added sockets, closes removed ones, keeps unchanged ones open and serving", function()
      local srv = moat.start {
        ports = 2,
        scripts = { ["site.lua"] = script("one") },
        listener = '{ { port = %PORT%, address = "127.0.0.1" }, { port = %PORT1%, address = "127.0.0.1" } }',
        lua = { budget = 100000000 },   -- room for the slow load below (loading gets 100 budgets)
      }
      local P, P1, P2 = srv.port, srv.vars.PORT1, srv.vars.PORT2
      assert.truthy(refused(P2))
      -- sessions open during the reload: one on the kept socket, one on the removed one
      local kept = moat.client(P)
      assert.equals(250, (kept:ehlo()))
      local gone = moat.client(P1)
      assert.equals(250, (gone:ehlo()))

      -- The new script spends 1 s loading (the loop is busy building the new
      -- generation, before any socket is touched).  A client that connects
      -- meanwhile sits in the kernel's backlog of P: moat accepts it only
      -- after the switch, so it is greeted only if P's listening socket was
      -- kept; closing and reopening it would reset that connection.
      set_listener(srv, ('{ { port = %d, address = "127.0.0.1" }, { port = %d, address = "127.0.0.1" } }'):format(P, P2))
      srv:write("site.lua", 'print("building generation two")\n' ..
        'local t = os.clock()\nwhile os.clock() - t < 1 do end\n' .. script("two"))
      local outf = srv.dir .. "/reload.out"
      local ctl_pid = moat.spawn(("(%s -s %s reload >%s 2>&1; echo \"rc=$?\" >>%s)"):format(
        shquote(os.getenv("MOATCTL_BIN") or (moat.root .. "/moatctl")), shquote(srv.dir .. "/moat.sock"),
        shquote(outf), shquote(outf)))
      srv:wait_log("event=script [^\n]*building generation two")
      local waiting = moat.client(P, { greeting = false })
      assert.is_nil(srv:log():find("event=reloaded", 1, true), "the reload finished before the client connected")
      assert.truthy(moat.poll(function() return not moat.alive(ctl_pid) end, 10), "moatctl reload did not finish")
      local out = moat.read_file(outf) or ""
      assert.truthy(out:find("reloaded: generation 2\n", 1, true), out)
      assert.truthy(out:find("rc=0\n$"), out)
      srv:wait_log("event=listening socket=127%.0%.0%.1:" .. P2)
      srv:wait_log("event=closed socket=127%.0%.0%.1:" .. P1)

      -- kept: its listening socket was never closed nor opened again
      assert.equals(0, #srv:events("closed", { socket = "127.0.0.1:" .. P .. " " }), srv:log())
      assert.equals(1, #srv:events("listening", { socket = "127.0.0.1:" .. P .. " " }), srv:log())
      -- the client from the backlog is greeted, by the new generation (so it
      -- was accepted after the switch: it waited in P's backlog all along)
      local code, greeting = waiting:read_reply()
      assert.equals(220, code, tostring(greeting))
      assert.equals(250, (waiting:ehlo()))
      assert.equals(250, (waiting:cmd("MAIL FROM:<a@remote.example>")))
      assert.same({ 550, "550 5.7.1 two" }, { waiting:cmd("RCPT TO:<probe@example.test>") })
      assert.equals(250, (waiting:cmd("RSET")))
      assert.equals(250, send_mail(waiting))
      waiting:close()

      -- added: connect works, new script
      assert.equals("550 5.7.1 two", probe(P2))
      -- removed: connect refused
      local is_refused, why = refused(P1)
      assert.truthy(is_refused, "port " .. P1 .. " still accepts connections after its removal")
      assert.truthy(tostring(why):find("refused", 1, true), why)
      -- kept: the open session goes on, new connections are accepted
      assert.equals(250, send_mail(kept))
      assert.equals(250, (kept:cmd("MAIL FROM:<a@remote.example>")))
      assert.same({ 550, "550 5.7.1 one" }, { kept:cmd("RCPT TO:<probe@example.test>") })
      kept:close()
      assert.equals("550 5.7.1 two", probe(P))
      -- a session accepted on the removed socket still finishes
      assert.equals(250, send_mail(gone))
      assert.equals(221, (gone:cmd("QUIT")))
      gone:close()
    end)

    it("a reload whose new socket cannot bind fails, reports it, and changes nothing", function()
      local srv = moat.start {
        ports = 2,
        scripts = { ["site.lua"] = script("one") },
        listener = '{ { port = %PORT%, address = "127.0.0.1" } }',
      }
      local P, P1, P2 = srv.port, srv.vars.PORT1, srv.vars.PORT2
      -- another process (this one) holds P2
      local squatter = assert(socket.bind("127.0.0.1", P2))
      set_listener(srv, ('{ { port = %d, address = "127.0.0.1" }, { port = %d, address = "127.0.0.1" }, ' ..
                         '{ port = %d, address = "127.0.0.1" } }'):format(P, P1, P2))
      srv:write("site.lua", script("two"))
      local rc, out, err = ctl(srv, "reload")
      squatter:close()
      assert.equals(1, rc, out)
      assert.truthy(err:find("127.0.0.1:" .. P2, 1, true), err)
      assert.truthy(err:find("in use", 1, true), err)
      local line = srv:wait_log("event=reload_failed ")
      assert.truthy(line:find("127.0.0.1:" .. P2, 1, true), line)
      -- nothing changed: P1 was not left open, P serves the old script, same generation
      assert.truthy(refused(P1), "the refused reload left port " .. P1 .. " open")
      assert.truthy(refused(P2))
      assert.equals("550 5.7.1 one", probe(P))
      local st = stats(srv)
      assert.equals(1, st.reloads_failed_total)
      assert.equals(0, st.reloads_ok_total)
      assert.equals(0, count_events(srv, "listening") - 1)
      -- once the port is free, the same config reloads
      local rc2, _, err2 = ctl(srv, "reload")
      assert.equals(0, rc2, err2)
      assert.equals("550 5.7.1 two", probe(P1))
      assert.equals("550 5.7.1 two", probe(P2))
    end)
  end)

  describe("watch mode", function()
    local function start_watching(text)
      return moat.start { scripts = { ["site.lua"] = script(text) }, extra = "watch = true" }
    end

    it("an edit of the site script reloads within about a second", function()
      local srv = start_watching("one")
      socket.sleep(0.1)
      local t = socket.gettime()
      srv:write("site.lua", script("two"))
      srv:wait_log("event=reloaded", 3)
      local took = socket.gettime() - t
      assert.truthy(took < 1.2, ("reload took %.2f s"):format(took))
      assert.equals("550 5.7.1 two", probe(srv.port))
      -- an editor that writes a new file and renames it over the old one
      local tmp = srv.dir .. "/.site.lua.swp"
      moat.write_file(tmp, script("three"))
      assert(os.rename(tmp, srv.dir .. "/site.lua"))
      srv:wait_log("event=reloaded", 3, 2)
      assert.equals("550 5.7.1 three", probe(srv.port))
      -- a table edit reloads too
      srv:write("client.ips", "127.0.0.1\n127.0.0.33\n")
      srv:wait_log("event=reloaded", 3, 3)
      local c = moat.client(srv.port, { source = "127.0.0.33" })
      c:close()
      srv:wait_log("event=connect [^\n]*ip=127%.0%.0%.33 [^\n]*status=client")
    end)

    it("a broken edit logs reload_failed and keeps the old behaviour", function()
      local srv = start_watching("one")
      socket.sleep(0.1)
      srv:write("site.lua", "return {\n\n  rcpt = function( end,\n}\n")
      local line = srv:wait_log("event=reload_failed ", 3)
      assert.truthy(line:find("site.lua:3:", 1, true), line)
      assert.equals("550 5.7.1 one", probe(srv.port))
      assert.equals(0, count_events(srv, "reloaded"))
      -- the watch goes on after a failure: the fix is picked up
      srv:write("site.lua", script("fixed"))
      srv:wait_log("event=reloaded", 3)
      assert.equals("550 5.7.1 fixed", probe(srv.port))
    end)

    it("several quick edits produce one reload (debounce)", function()
      local srv = start_watching("zero")
      socket.sleep(0.1)
      for i = 1, 6 do
        srv:write("site.lua", script("edit " .. i))
        socket.sleep(0.05)
      end
      srv:wait_log("event=reloaded", 3)
      socket.sleep(1)
      assert.equals(1, count_events(srv, "reloaded"), srv:log())
      assert.equals("550 5.7.1 edit 6", probe(srv.port))
    end)

    it("an edit of moat.conf itself reloads", function()
      local srv = start_watching("one")
      socket.sleep(0.1)
      local conf = moat.read_file(srv.conf):gsub('tables = {[^\n]*}',
        'tables = { client_ips = "client.ips", denied_ips = "denied.ips" }')
      srv:write("denied.ips", "127.0.0.40\n")
      srv:write("moat.conf", conf)
      srv:wait_log("event=reloaded", 3)
      local c = moat.client(srv.port, { source = "127.0.0.40" })
      assert.is_nil(c.greeting_code, tostring(c.greeting))
      c:close()
      -- the newly listed table is watched as well
      srv:write("denied.ips", "; nobody\n")
      srv:wait_log("event=reloaded", 3, 2)
      local c2 = moat.client(srv.port, { source = "127.0.0.40" })
      assert.equals(220, c2.greeting_code)
      c2:close()
    end)

    it("watch = true switched on by a reload starts watching; switched off stops", function()
      local srv = moat.start { scripts = { ["site.lua"] = script("one") } }
      srv:write("moat.conf", moat.read_file(srv.conf) .. "watch = true\n")
      assert.equals(0, (ctl(srv, "reload")))
      srv:write("site.lua", script("two"))
      srv:wait_log("event=reloaded", 3, 2)
      assert.equals("550 5.7.1 two", probe(srv.port))
      srv:write("moat.conf", (moat.read_file(srv.conf):gsub("watch = true\n", "")))
      srv:wait_log("event=reloaded", 3, 3)
      srv:write("site.lua", script("three"))
      socket.sleep(0.8)
      assert.equals(3, count_events(srv, "reloaded"))
      assert.equals("550 5.7.1 two", probe(srv.port))
    end)

    it("without watch = true an edit does nothing until a reload", function()
      local srv = moat.start { scripts = { ["site.lua"] = script("one") } }
      srv:write("site.lua", script("two"))
      socket.sleep(0.8)
      assert.equals(0, count_events(srv, "reloaded"))
      assert.equals("550 5.7.1 one", probe(srv.port))
    end)
  end)

  describe("counters", function()
    local function exercise(srv)
      srv:write("site.lua", script("two"))
      assert.equals(0, (ctl(srv, "reload")))
      srv:write("site.lua", "return {\n  oops(\n}\n")
      assert.equals(1, (ctl(srv, "reload")))
      srv:write("site.lua", script("three"))
      srv:signal("HUP")
      srv:wait_log("event=reloaded", 5, 2)
      assert.equals("550 5.7.1 three", probe(srv.port))
      assert.equals("550 5.7.1 three", probe(srv.port))
      -- a relay refusal from a non-client address: the stock relay policy's verdict
      local c = moat.client(srv.port, { source = "127.0.0.7" })
      c:ehlo()
      c:cmd("MAIL FROM:<a@remote.example>")
      local code = c:cmd("RCPT TO:<x@elsewhere.example>")
      assert.equals(550, code)
      c:close()
    end

    it("moatctl stats counts reloads ok/failed and verdicts by policy", function()
      local srv = moat.start { scripts = { ["site.lua"] = script("one") } }
      exercise(srv)
      local st, text = stats(srv)
      assert.equals(2, st.reloads_ok_total, text)
      assert.equals(1, st.reloads_failed_total, text)
      assert.equals(1, st.runtimes_live, text)
      assert.truthy(st.generation >= 3, text)
      assert.truthy(st.lua_memory_bytes > 0, text)
      assert.truthy(text:find("\nverdict policy=site.lua phase=rcpt action=reject code=550 2\n", 1, true), text)
      assert.truthy(text:find("\nverdict policy=relay phase=rcpt action=reject code=550 1\n", 1, true), text)
    end)

    it("the metrics endpoint answers GET /metrics in Prometheus format", function()
      local mport = moat.free_port()
      local srv = moat.start {
        scripts = { ["site.lua"] = script("one") },
        extra = ("metrics = { port = %d }"):format(mport),
      }
      srv:wait_log("event=metrics address=127%.0%.0%.1 port=" .. mport)
      exercise(srv)
      local http = require "socket.http"
      local ltn12 = require "ltn12"
      local chunks = {}
      local ok, code, headers = http.request {
        url = ("http://127.0.0.1:%d/metrics"):format(mport), sink = ltn12.sink.table(chunks),
      }
      local body = table.concat(chunks)
      assert.truthy(ok, tostring(code))
      assert.equals(200, code)
      assert.truthy((headers["content-type"] or ""):find("^text/plain"), headers["content-type"])
      assert.truthy(body:find("\n# TYPE moat_reloads_ok_total counter\nmoat_reloads_ok_total 2\n", 1, true), body)
      assert.truthy(body:find("\nmoat_reloads_failed_total 1\n", 1, true), body)
      assert.truthy(body:find("\nmoat_runtimes_live 1\n", 1, true), body)
      assert.truthy(body:find("\nmoat_lua_memory_bytes %d+\n"), body)
      assert.truthy(body:find('\nmoat_verdicts_total{policy="site.lua",phase="rcpt",action="reject",code="550"} 2\n', 1, true), body)
      assert.truthy(body:find('\nmoat_verdicts_total{policy="relay",phase="rcpt",action="reject",code="550"} 1\n', 1, true), body)
      -- every sample has HELP and TYPE lines
      for name in body:gmatch("\n(moat_[%w_]+)[ {]") do
        assert.truthy(body:find("# TYPE " .. name .. " ", 1, true), name)
      end
      -- other paths are 404
      local _, code2 = http.request(("http://127.0.0.1:%d/other"):format(mport))
      assert.equals(404, code2)
    end)
  end)
end)
