-- The spamtrap policy over real SMTP (seed 002 "Spam Traps", DESIGN §6):
-- one spam-trap recipient among good ones refuses the whole message at DATA
-- (554 5.7.1, nothing spooled) and temporarily blocks the sending address
-- (its next connection gets 421 4.7.0), except for client and white-hole
-- addresses.  Different senders are played with 127.0.0.0/8 source addresses
-- (client_ips is 127.0.0.1 only).
local H = require "helpers.moat"

local GOOD = { "joe@example.test", "sales@corp.example.test" }

local function send(srv, source, rcpts, helo)
  local c = H.client(srv.port, { source = source })
  assert.equal(220, c.greeting_code, c.greeting)
  assert.equal(250, (c:ehlo(helo or "sender.example")))
  local r = c:transaction { from = "sender@remote.example", rcpts = rcpts, data = H.message("hello") }
  return r, c
end

-- The policy logs what became of the sender: "IP: blocked", "IP: client"...
local function block_result(srv, ip)
  srv:wait_log("spamtrap: .*" .. ip:gsub("%.", "%%.") .. ": ")
  for _, l in ipairs(srv:events("script")) do
    local r = l:match("spamtrap: .*" .. ip:gsub("%.", "%%.") .. ": ([^\"]*)")
    if r then return r end
  end
end

local function next_connection(srv, source)
  local c = H.client(srv.port, { source = source })
  return c.greeting_code, c.greeting, c
end

local function spamtrap_suite(policies, tables)
  return function()
    local srv
    setup(function()
      srv = H.start { tag = "spamtrap", policies = policies, tables = tables }
    end)
    teardown(function() H.stop_all() end)

    it("accepts a message without a spam trap", function()
      local r, c = send(srv, "127.0.0.20", GOOD)
      assert.equal(354, r.data[1])
      assert.equal(250, r.final[1])
      c:close()
      assert.equal(1, #srv:spool_files())
    end)

    it("refuses the whole message at DATA when one recipient is spamtrap@ a local domain", function()
      local before = #srv:spool_names()
      local rcpts = { GOOD[1], "spamtrap@example.test", GOOD[2] }
      local r, c = send(srv, "127.0.0.21", rcpts)
      for i = 1, 3 do assert.equal(250, r.rcpts[i][1], r.rcpts[i][2]) end
      assert.equal(554, r.data[1])
      assert.matches("^554 5%.7%.1 ", r.data[2])
      assert.is_nil(r.final)
      -- The session goes on, but nothing was stored.
      assert.equal(250, (c:cmd("RSET")))
      c:close()
      assert.equal(before, #srv:spool_names())
      srv:wait_log("spamtrap: recipient <spamtrap@example.test>")
    end)

    it("blocks the sending address: its next connection gets 421 4.7.0", function()
      assert.equal("blocked", block_result(srv, "127.0.0.21"))
      assert.equal(1, #srv:events("blocked", { ip = "127.0.0.21", reason = "spamtrap" }))
      local code, text, c = next_connection(srv, "127.0.0.21")
      assert.equal(421, code, text)
      assert.matches("^421 4%.7%.0", text)
      assert.is_true((c:closed(3)))
      c:close()
      -- Other addresses are not affected.
      local code2, text2, c2 = next_connection(srv, "127.0.0.22")
      assert.equal(220, code2, text2)
      c2:close()
    end)

    it("matches the spamtrap local part in any case and in every local domain", function()
      local r = send(srv, "127.0.0.23", { "SpamTrap@Corp.Example.Test", GOOD[1] })
      assert.equal(554, r.data[1])
    end)

    it("does not take spamtrap@ a remote domain for a trap", function()
      -- From the client address (relaying allowed), to a remote spamtrap@.
      local r = send(srv, "127.0.0.1", { "spamtrap@elsewhere.example" })
      assert.equal(250, r.rcpts[1][1])
      assert.equal(354, r.data[1])
      assert.equal(250, r.final[1])
    end)

    it("refuses a client's message but never blocks a client address", function()
      local r, c = send(srv, "127.0.0.1", { "spamtrap@example.test", GOOD[1] })
      assert.equal(554, r.data[1])
      c:close()
      assert.equal("client", block_result(srv, "127.0.0.1"))
      local code, text, c2 = next_connection(srv, "127.0.0.1")
      assert.equal(220, code, text)
      c2:close()
    end)

    it("never blocks a white-hole address", function()
      local r, c = send(srv, "127.0.0.24", { GOOD[1], "spamtrap@example.test" })
      assert.equal(554, r.data[1])
      c:close()
      assert.equal("white hole", block_result(srv, "127.0.0.24"))
      local code, text, c2 = next_connection(srv, "127.0.0.24")
      assert.equal(220, code, text)
      c2:close()
    end)
  end
end

describe("spamtrap policy without the router", spamtrap_suite({ "relay", "spamtrap" },
  { unblacklistable_ips = "127.0.0.24\n" }))

describe("spamtrap policy with the router", function()
  local srv
  local ROUTER = "<misterX> = spamtrap\n<spamtrap> = joe\n"
  setup(function()
    srv = H.start { tag = "spamtrap-router", policies = { "router", "relay", "spamtrap" },
                    tables = { router = ROUTER, unblacklistable_ips = "127.0.0.24\n" } }
  end)
  teardown(function() H.stop_all() end)

  it("refuses a message for an address the Router sends to spamtrap", function()
    local before = #srv:spool_names()
    local r, c = send(srv, "127.0.0.30", { GOOD[1], "misterX@example.test" })
    assert.equal(250, r.rcpts[1][1])
    assert.equal(250, r.rcpts[2][1], r.rcpts[2][2])
    assert.equal(554, r.data[1])
    assert.matches("^554 5%.7%.1 ", r.data[2])
    c:close()
    assert.equal(before, #srv:spool_names())
    assert.equal("blocked", block_result(srv, "127.0.0.30"))
    local code, text, c2 = next_connection(srv, "127.0.0.30")
    assert.equal(421, code, text)
    assert.matches("^421 4%.7%.0", text)
    c2:close()
  end)

  it("follows the Router: <spamtrap> = joe makes spamtrap@ an ordinary address", function()
    local r, c = send(srv, "127.0.0.31", { "spamtrap@example.test" })
    assert.equal(250, r.rcpts[1][1])
    assert.equal(354, r.data[1])
    assert.equal(250, r.final[1])
    c:close()
  end)
end)
