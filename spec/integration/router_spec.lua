-- The router policy over real SMTP: every Router target, what lands in the
-- spool's .env, and a broken table caught by `moat --check`.
local H = require "helpers.moat"

local ROUTER = [[
; aliases and wildcards
<joe> = jsmith
<sales@corp.example.test> = joe
<*@old.example> = *@example.test
<list-*> = *-owner@corp.example.test
; domain records
legacy.example = corp.example.test
partner.example = partner.example@mx.partner.example
; errors
<promo*@spam.example> = error
spam.example = error
; special targets
<misterX> = spamtrap
<bounce-*> = null
; a loop
<loop1> = loop2
<loop2> = loop1
]]

local function msg() return H.message("router spec") end

describe("router policy (integration)", function()
  local srv

  setup(function()
    srv = H.start { tag = "router", tables = { router = ROUTER }, policies = { "router", "return_path", "relay" } }
  end)
  teardown(function() H.stop_all() end)

  local function session()
    local c = H.client(srv.port)
    assert.equal(220, c.greeting_code)
    assert.equal(250, (c:ehlo()))
    return c
  end

  -- Sends one message; returns the transaction result and the stored envelope (if any).
  local function send(from, rcpts)
    local c = session()
    local r = c:transaction { from = from, rcpts = rcpts, data = msg() }
    c:cmd("QUIT")
    c:close()
    local env, raw
    if r.id then
      for _, f in ipairs(srv:spool_files()) do
        if f.id == r.id then env, raw = f.envelope, f.env end
      end
    end
    return r, env, raw
  end

  it("routes an alias and records the routed address", function()
    local r, env = send("a@example.test", { "joe@example.test" })
    assert.equal(250, r.rcpts[1][1])
    assert.equal(250, r.final[1])
    assert.equal("joe@example.test", env.rcpts[1].addr)
    assert.equal("local", env.rcpts[1].route.kind)
    assert.equal("jsmith@example.test", env.rcpts[1].route.address)
  end)

  it("routes an alias through two records", function()
    local r, env = send("a@example.test", { "Sales@Corp.Example.Test" })
    assert.equal(250, r.final[1])
    assert.equal("jsmith@example.test", env.rcpts[1].route.address)
  end)

  it("substitutes a wildcard's matched text", function()
    local r, env = send("a@example.test", { "Anna.Lee@old.example", "list-staff@example.test" })
    assert.equal(250, r.rcpts[1][1])
    assert.equal(250, r.rcpts[2][1])
    assert.equal(250, r.final[1])
    assert.equal("Anna.Lee@example.test", env.rcpts[1].route.address)
    assert.equal("local", env.rcpts[1].route.kind)
    assert.equal("staff-owner@corp.example.test", env.rcpts[2].route.address)
  end)

  it("applies a domain record", function()
    local r, env = send("a@example.test", { "bob@legacy.example" })
    assert.equal(250, r.final[1])
    assert.same({ kind = "local", address = "bob@corp.example.test", can_relay = true }, env.rcpts[1].route)
  end)

  it("records a via-host route in the .env", function()
    local r, env = send("a@example.test", { "bob@partner.example" })
    assert.equal(250, r.rcpts[1][1])
    assert.equal(250, r.final[1])
    assert.same({ kind = "remote", address = "bob@partner.example", host = "mx.partner.example", can_relay = true },
                env.rcpts[1].route)
  end)

  it("refuses an error route at RCPT with 550 5.1.1", function()
    local c = session()
    assert.equal(250, (c:cmd("MAIL FROM:<a@example.test>")))
    for _, a in ipairs { "promo-summer@spam.example", "anyone@spam.example", "PROMO1@SPAM.EXAMPLE" } do
      local code, text = c:cmd("RCPT TO:<" .. a .. ">")
      assert.equal(550, code, a)
      assert.equal("550 5.1.1 <" .. a .. ">: recipient address rejected", text)
    end
    c:close()
  end)

  it("refuses an error route at MAIL FROM with 550", function()
    local c = session()
    local code, text = c:cmd("MAIL FROM:<promo1@spam.example>")
    assert.equal(550, code)
    assert.equal("550 5.1.0 <promo1@spam.example>: sender address rejected", text)
    code = c:cmd("MAIL FROM:<someone@spam.example>")
    assert.equal(550, code)
    -- the session goes on
    assert.equal(250, (c:cmd("MAIL FROM:<a@example.test>")))
    c:close()
  end)

  it("accepts a null route and stores it nowhere", function()
    local r, env, raw = send("a@example.test", { "bounce-123@example.test", "joe@example.test" })
    assert.equal(250, r.rcpts[1][1])
    assert.equal(250, r.rcpts[2][1])
    assert.equal(250, r.final[1])
    assert.equal(1, #env.rcpts)
    assert.equal("joe@example.test", env.rcpts[1].addr)
    assert.is_nil(raw:find("bounce-123", 1, true))
  end)

  it("discards a message whose only recipient routes to null", function()
    local before = #srv:spool_names()
    local r = send("a@example.test", { "bounce-9@example.test" })
    assert.equal(250, r.rcpts[1][1])
    assert.equal(250, r.final[1])
    assert.equal(before, #srv:spool_names())
  end)

  it("keeps a spamtrap route for the spamtrap policy", function()
    local c = session()
    assert.equal(250, (c:cmd("MAIL FROM:<a@example.test>")))
    assert.equal(250, (c:cmd("RCPT TO:<misterX@example.test>")))
    c:close()
  end)

  it("answers a routing loop with 451 4.4.6 and logs it", function()
    local c = session()
    assert.equal(250, (c:cmd("MAIL FROM:<a@example.test>")))
    local code, text = c:cmd("RCPT TO:<loop1@example.test>")
    assert.equal(451, code)
    assert.equal("451 4.4.6 <loop1@example.test>: routing loop", text)
    c:close()
    srv:wait_log("routing loop for recipient <loop1@example.test>")
  end)
end)

describe("router table errors", function()
  after_each(function() H.stop_all() end)

  it("moat --check reports file:line and exits 1", function()
    local dir, conf = H.prepare { tag = "router-check", policies = { "router", "relay" },
                                  tables = { router = "<joe> = jsmith\n; fine\n<broken = x\n" } }
    local rc, out, err = H.check(conf)
    assert.equal(1, rc, out .. err)
    local text = out .. err
    assert.truthy(text:find(dir .. "/router:3: missing '>' after the address", 1, true), text)
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("moat --check accepts a good table", function()
    local dir, conf = H.prepare { tag = "router-check", policies = { "router", "relay" },
                                  tables = { router = ROUTER } }
    local rc, out, err = H.check(conf)
    assert.equal(0, rc, out .. err)
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("the router without a table routes only the main domain and local_domains", function()
    local srv = H.start { tag = "router-none", policies = { "router", "relay" } }
    local c = H.client(srv.port)
    c:ehlo()
    local r = c:transaction { from = "a@example.test", rcpts = { "joe@example.test", "x@corp.example.test" },
                              data = msg() }
    assert.equal(250, r.final[1])
    c:close()
    local f = srv:spool_files()[1]
    assert.same({ kind = "local", address = "joe@example.test", can_relay = false }, f.envelope.rcpts[1].route)
    assert.same({ kind = "local", address = "x@corp.example.test", can_relay = false }, f.envelope.rcpts[2].route)
  end)
end)
