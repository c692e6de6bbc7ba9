-- Integration: connection limits of a listener (seed 000 "Limiting
-- Connections from the same Network Address", "Reserving Connections for
-- Client Addresses"; DESIGN §3 listener, §6 Connection).
-- client_ips is 127.0.0.1 (the harness default); every other 127.x source
-- address is a non-client.
local moat = require "helpers.moat"
local socket_sleep = require("socket").sleep

local open = {}   -- every client of the current test, closed in after_each

local function connect(port, source)
  local c = moat.client(port, { source = source })
  open[#open + 1] = c
  return c
end

local function assert_greeted(c, what)
  assert.equals(220, c.greeting_code, (what or "") .. ": " .. tostring(c.greeting))
end

-- Refused by a limit: 421 4.7.0, then the connection is closed.
local function assert_refused(c, what)
  assert.equals(421, c.greeting_code, (what or "") .. ": " .. tostring(c.greeting))
  assert.truthy(c.greeting:find("^421 4%.7%.0 "), c.greeting)
  assert.is_true((c:closed(3)), "the connection stays open after 421")
end

local function close(c)
  c:close()
  for i, x in ipairs(open) do
    if x == c then table.remove(open, i) break end
  end
end

-- The number of refused log lines (with reason and ip), once it reaches
-- `want` (the client may read the 421 before moat writes the log line).
local function refusals(srv, want, reason, ip)
  local m = { reason = reason }
  if ip then m.ip = ip end
  local n = 0
  moat.poll(function()
    n = #srv:events("refused", m)
    return n >= want
  end, 3)
  socket_sleep(0.05)
  return #srv:events("refused", m)
end

local function listener(body)
  return '{ { port = %PORT%, address = "127.0.0.1" }, { port = %PORT1%, address = "127.0.0.1" }, ' .. body .. ' }'
end

describe("moat connection limits", function()
  after_each(function()
    for _, c in ipairs(open) do c:close() end
    open = {}
    moat.stop_all()
  end)

  it("limit_per_address counts the connections of one address on all sockets of the listener", function()
    local srv = moat.start { ports = 1, listener = listener("limit_per_address = 3") }
    local a = "127.0.0.20"
    local c1 = connect(srv.port, a)
    assert_greeted(c1)
    assert_greeted(connect(srv.vars.PORT1, a))
    assert_greeted(connect(srv.port, a))
    assert_refused(connect(srv.vars.PORT1, a), "4th connection on the second socket")
    assert_refused(connect(srv.port, a), "4th connection on the first socket")
    assert.equals(2, refusals(srv, 2, "limit_per_address", a))
    -- other addresses are still served
    for i = 1, 3 do assert_greeted(connect(srv.vars.PORT1, "127.0.0.21"), "other address #" .. i) end
    -- a closed connection frees its slot
    close(c1)
    srv:wait_log("event=disconnect session=%S+ ip=127%.0%.0%.20")
    assert_greeted(connect(srv.port, a), "after one was closed")
    assert_refused(connect(srv.port, a), "full again")
    -- the refused ones got no session
    assert.equals(3 + 3 + 1, #srv:events("connect"))
  end)

  it("limit_non_client is stricter for non-clients; a client address gets limit_per_address", function()
    local srv = moat.start { ports = 1, listener = listener("limit_per_address = 4, limit_non_client = 2") }
    local nc = "127.0.0.22"
    assert_greeted(connect(srv.port, nc))
    assert_greeted(connect(srv.vars.PORT1, nc))
    assert_refused(connect(srv.port, nc), "3rd non-client connection")
    assert.equals(1, refusals(srv, 1, "limit_non_client", nc))
    for i = 1, 4 do
      assert_greeted(connect(i % 2 == 0 and srv.port or srv.vars.PORT1, "127.0.0.1"), "client connection #" .. i)
    end
    assert_refused(connect(srv.port, "127.0.0.1"), "5th client connection")
    assert.equals(1, refusals(srv, 1, "limit_per_address", "127.0.0.1"))
  end)

  it("reserve_for_clients: when free slots are at or below the reserve, only clients get in", function()
    local srv = moat.start { ports = 1, listener = listener("max_connections = 6, reserve_for_clients = 2") }
    -- 6 - active > 2 for active = 0..3: four non-clients fit
    for i = 1, 4 do
      assert_greeted(connect(i % 2 == 0 and srv.port or srv.vars.PORT1, "127.0.1." .. i), "non-client #" .. i)
    end
    local c5 = connect(srv.port, "127.0.1.5")
    assert_refused(c5, "non-client with 2 free slots")
    assert.equals(1, refusals(srv, 1, "reserve_for_clients", "127.0.1.5"))
    -- the reserve is for clients: both free slots
    assert_greeted(connect(srv.port, "127.0.0.1"), "client in the reserve")
    assert_greeted(connect(srv.vars.PORT1, "127.0.0.1"), "client in the last slot")
    -- the listener is now full, for clients too
    assert_refused(connect(srv.port, "127.0.0.1"), "client past max_connections")
    assert.equals(1, refusals(srv, 1, "max_connections", "127.0.0.1"))
  end)

  it("max_connections: the listener refuses everyone past it, then admits again when one leaves", function()
    local srv = moat.start { ports = 1, listener = listener("max_connections = 3") }
    local first = connect(srv.port, "127.0.0.1")
    assert_greeted(first)
    assert_greeted(connect(srv.vars.PORT1, "127.0.0.23"))
    assert_greeted(connect(srv.port, "127.0.0.24"))
    assert_refused(connect(srv.vars.PORT1, "127.0.0.25"), "non-client past max_connections")
    assert_refused(connect(srv.port, "127.0.0.1"), "client past max_connections")
    assert.equals(2, refusals(srv, 2, "max_connections"))
    close(first)
    srv:wait_log("event=disconnect ")
    assert_greeted(connect(srv.port, "127.0.0.25"), "after one left")
  end)

  it("limits are per listener: another listener has its own counts", function()
    local srv = moat.start {
      ports = 1,
      listener = '{ { port = %PORT%, address = "127.0.0.1" }, limit_per_address = 1 }\n' ..
                 'listener "submission" { { port = %PORT1%, address = "127.0.0.1" }, limit_per_address = 1 }',
    }
    assert_greeted(connect(srv.port, "127.0.0.26"))
    assert_greeted(connect(srv.vars.PORT1, "127.0.0.26"))
    assert_refused(connect(srv.port, "127.0.0.26"))
    assert_refused(connect(srv.vars.PORT1, "127.0.0.26"))
  end)

  it("cluster_ips are exempt from every limit", function()
    local srv = moat.start {
      ports = 1,
      tables = { cluster_ips = "127.0.0.30\n" },
      listener = listener("limit_per_address = 1, limit_non_client = 1, max_connections = 4, reserve_for_clients = 2"),
    }
    for i = 1, 6 do
      assert_greeted(connect(i % 2 == 0 and srv.port or srv.vars.PORT1, "127.0.0.30"), "cluster connection #" .. i)
    end
    assert.equals(0, #srv:events("refused"))
  end)

  it("--check refuses limit_non_client > limit_per_address, naming it", function()
    local _, conf = moat.prepare { listener = '{ { port = %PORT%, address = "127.0.0.1" },\n' ..
                                              '  limit_per_address = 2, limit_non_client = 3 }' }
    finally(function() os.execute("rm -rf '" .. conf:match("^(.*)/") .. "'") end)
    local rc, out, err = moat.check(conf)
    assert.equals(1, rc, out .. err)
    local text = out .. err
    assert.truthy(text:find("limit_non_client", 1, true), text)
    assert.truthy(text:find("limit_per_address", 1, true), text)
    assert.truthy(text:find(conf:gsub("%p", "%%%0") .. ":%d+:"), "file:line expected: " .. text)
    -- equal values are fine
    local _, conf2 = moat.prepare { listener = '{ { port = %PORT%, address = "127.0.0.1" }, ' ..
                                               'limit_per_address = 3, limit_non_client = 3 }' }
    finally(function() os.execute("rm -rf '" .. conf2:match("^(.*)/") .. "'") end)
    rc, out, err = moat.check(conf2)
    assert.equals(0, rc, out .. err)
  end)

  -- Every connection of a wave is made before any greeting is read: moat
  -- sees them arrive together and decides each one as it accepts it.
  local function wave(srv, sources)
    local conns = {}
    for i, src in ipairs(sources) do
      local c = moat.client(i % 2 == 0 and srv.port or srv.vars.PORT1, { source = src, greeting = false })
      open[#open + 1] = c
      conns[i] = c
    end
    local greeted, refused = {}, 0
    for i, c in ipairs(conns) do
      c.greeting_code, c.greeting = c:read_reply()
      if c.greeting_code == 220 then greeted[sources[i]] = (greeted[sources[i]] or 0) + 1
      else
        assert_refused(c, sources[i])
        refused = refused + 1
      end
    end
    local total = 0
    for _, n in pairs(greeted) do total = total + n end
    return total, refused, greeted
  end

  it("bursts of simultaneous connections: limit_non_client, the reserve and max_connections hold exactly", function()
    local srv = moat.start { ports = 1, listener = listener(
      "max_connections = 100, reserve_for_clients = 10, limit_per_address = 12, limit_non_client = 3") }
    -- 1: 15 strangers open 4 connections each at once: 3 each get in
    local sources = {}
    for a = 1, 15 do for _ = 1, 4 do sources[#sources + 1] = "127.0.3." .. a end end
    local total, refused, per = wave(srv, sources)
    assert.same({ 45, 15 }, { total, refused })
    for a = 1, 15 do assert.equals(3, per["127.0.3." .. a], "127.0.3." .. a) end
    assert.equals(15, refusals(srv, 15, "limit_non_client"))
    -- 2: 20 more strangers, 3 each at once: strangers fill up to 90 (free
    -- slots > reserve), the last 10 slots stay free for clients
    sources = {}
    for a = 1, 20 do for _ = 1, 3 do sources[#sources + 1] = "127.0.4." .. a end end
    total, refused = wave(srv, sources)
    assert.same({ 45, 15 }, { total, refused })
    assert.equals(15, refusals(srv, 15, "reserve_for_clients"))
    -- 3: 12 client connections at once: the 10 reserved slots, then the listener is full
    sources = {}
    for _ = 1, 12 do sources[#sources + 1] = "127.0.0.1" end
    total, refused = wave(srv, sources)
    assert.same({ 10, 2 }, { total, refused })
    assert.equals(2, refusals(srv, 2, "max_connections"))
    -- every admitted connection is a live session
    local _, out = srv:ctl("stats")
    assert.truthy(out:find("connections_current 100\n", 1, true), out)
    assert.equals(100, #srv:events("connect"))
  end)

  it("many concurrent connections: each address is held to its own limit", function()
    local srv = moat.start { listener = '{ { port = %PORT%, address = "127.0.0.1" }, limit_per_address = 2 }' }
    local greeted, refused = 0, 0
    for a = 1, 20 do
      for _ = 1, 3 do
        local c = connect(srv.port, "127.0.2." .. a)
        if c.greeting_code == 220 then greeted = greeted + 1
        elseif c.greeting_code == 421 then refused = refused + 1 end
      end
    end
    assert.equals(40, greeted)
    assert.equals(20, refused)
    assert.equals(20, refusals(srv, 20, "limit_per_address"))
  end)
end)
