-- An example of a site's own offline tests (README "Session replay and
-- offline policy tests"): conf/site.lua, the example site script, alone and
-- behind the stock router and relay policies, driven by moat.test.  Copy this
-- file next to your scripts and run it with busted (the command is in the
-- README).
local T = require "moat.test"

-- Load a chain of one script given as source (written to a temporary file).
local function load_source(src, opts)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  opts = opts or {}
  opts.scripts = { path }
  local chain, err = T.load(opts)
  os.remove(path)
  return chain, err
end

describe("conf/site.lua (the README's site-script example)", function()
  it("refuses noreply@ recipients with 550 5.1.1, and says it was site.lua", function()
    local chain = assert(T.load { scripts = { "conf/site.lua" } })
    local s = chain:session { ip = "192.0.2.1" }
    local v, by = chain:rcpt(s, "NoReply-billing@example.test")
    assert.equal("reject", v.action)
    assert.equal(550, v.code)
    assert.equal("5.1.1 This address does not accept mail", v.text)
    assert.equal("site.lua", by)
    assert.same({}, s.rcpts)              -- a refused recipient is not kept
  end)

  it("lets every other recipient through to the next policy", function()
    local chain = assert(T.load { scripts = { "conf/site.lua" } })
    local s = chain:session()
    assert.is_nil(chain:rcpt(s, "joe@example.test"))
    assert.equal(1, #s.rcpts)
    assert.equal("joe@example.test", s.rcpts[1].addr)
  end)

  it("runs after the stock policies: relay refuses a remote recipient first", function()
    local chain = assert(T.load {
      policies = { "router", "relay" }, scripts = { "conf/site.lua" },
      tables = { router = "<sales> = joe\n" },
    })
    local s = chain:session { ip = "203.0.113.5" }
    assert.is_nil(chain:helo(s, "mx.sender.example"))
    assert.is_nil(chain:mail_from(s, "a@sender.example"))
    local v, by = chain:rcpt(s, "noreply@elsewhere.example")
    assert.equal(550, v.code)
    assert.equal("5.7.1 <noreply@elsewhere.example>: relaying denied", v.text)
    assert.equal("relay", by)
    -- a local noreply address passes the router and relay, then site.lua refuses it
    v, by = chain:rcpt(s, "noreply@example.test")
    assert.equal("site.lua", by)
    -- and the router's alias is the route the core would store
    local route
    v, by, route = chain:rcpt(s, "sales@example.test")
    assert.is_nil(v)
    assert.equal("joe@example.test", route.address)
  end)

  it("reports a script that does not load with file and line", function()
    local chain, err = load_source("local moat = require 'moat'\nreturn { rcpt = function(s, r) return moat.reject(550 end }\n")
    assert.is_nil(chain)
    assert.matches(":2: ", err)
  end)

  it("gives scripts canned DNS answers and address lists, and records the questions", function()
    local chain = assert(load_source([[
local moat = require "moat"
return {
  helo = function(s, name)
    if moat.list("client_ips"):contains(s.ip) then return moat.accept() end
    local a, err = moat.dns.query(name, "A")
    if not a then return moat.reject(550, "5.7.1 HELO name " .. name .. ": " .. err) end
  end,
}
]], { lists = { client_ips = { "10.0.0.1" } }, dns = { ["mx.good.example A"] = { "198.51.100.7" } } }))
    assert.equal("accept", chain:helo(chain:session { ip = "10.0.0.1" }, "anything").action)
    assert.is_nil(chain:helo(chain:session(), "mx.good.example"))
    local v = chain:helo(chain:session(), "bogus.example")
    assert.equal("5.7.1 HELO name bogus.example: nxdomain", v.text)
    assert.same({ "A mx.good.example", "A bogus.example" }, chain.queries)
  end)

  it("feeds a whole message through data_line and data_end", function()
    local chain = assert(load_source([[
local moat = require "moat"
return {
  data_line = function(s, line, part)
    if part == "header" and line:lower():match("^subject:.*viagra") then return moat.reject(554, "5.7.1 No thanks") end
  end,
  data_end = function(s, msg) s:add_header("X-Size", tostring(msg.size)) end,
}
]]))
    local s = chain:session()
    local v = chain:message(s, "From: a@b\nSubject: cheap\n  viagra\n\nhello\n")
    assert.equal(554, v.code)
    s = chain:session()
    assert.is_nil(chain:message(s, "Subject: hi\n\nhello\n"))
    assert.same({ "X-Size: 22" }, s.headers)
  end)
end)
