-- Integration: reload (SIGHUP, moatctl reload) swaps scripts atomically (DESIGN section 7).
local socket = require "socket"
local moat = require "helpers.moat"

local function script(text)
  return ([[
    local moat = require "moat"
    return { rcpt = function(s, rcpt)
      if rcpt.addr.localpart == "probe" then return moat.reject(550, "5.7.1 %s") end
    end }
  ]]):format(text)
end

local function probe(srv)
  local c = moat.client(srv.port)
  c:ehlo()
  c:cmd("MAIL FROM:<a@remote.example>")
  local code, text = c:cmd("RCPT TO:<probe@example.test>")
  c:close()
  return text
end

describe("moat reload", function()
  after_each(function() moat.stop_all() end)

  it("SIGHUP loads changed scripts for new sessions; running sessions keep theirs", function()
    local srv = moat.start { scripts = { ["site.lua"] = script("version one") } }
    local old = moat.client(srv.port)
    old:ehlo()
    assert.equals(250, (old:cmd("MAIL FROM:<a@remote.example>")))
    srv:write("site.lua", script("version two"))
    srv:signal("HUP")
    srv:wait_log("event=reloaded generation=2")
    assert.equals("550 5.7.1 version two", probe(srv))
    assert.same({ 550, "550 5.7.1 version one" }, { old:cmd("RCPT TO:<probe@example.test>") })
    assert.equals(250, (old:cmd("RCPT TO:<joe@example.test>")))
    assert.equals(354, (old:cmd("DATA")))
    assert(old:send(moat.dot_stuff(moat.message())))
    assert.equals(250, (old:read_reply()))
    old:close()
  end)

  it("a broken script keeps the old state running and reports the error", function()
    local srv = moat.start { scripts = { ["site.lua"] = script("still one") } }
    srv:write("site.lua", "return {\n  rcpt = function(s) oops oops end\n}\n")
    srv:signal("HUP")
    local line = srv:wait_log("event=reload_failed ")
    assert.truthy(line:find("site.lua:2:", 1, true), line)
    assert.equals("550 5.7.1 still one", probe(srv))
    assert.is_true(srv:alive())
  end)

  it("moatctl reload answers ok or the error", function()
    local srv = moat.start { scripts = { ["site.lua"] = script("one") } }
    srv:write("site.lua", script("two"))
    local rc, out = srv:ctl("reload")
    assert.equals(0, rc, out)
    assert.equals("reloaded: generation 2\n", out:gsub("^ok\n", ""))
    assert.equals("550 5.7.1 two", probe(srv))
    srv:write("site.lua", "return 42\n")
    local rc2, out2 = srv:ctl("reload")
    assert.is_not.equals(0, rc2)
    assert.truthy(out2:find("site.lua", 1, true), out2)
    assert.equals("550 5.7.1 two", probe(srv))
  end)

  it("a reload that changes the tables takes effect for new connections", function()
    local srv = moat.start()
    local c = moat.client(srv.port, { source = "127.0.0.40" })
    assert.equals(220, c.greeting_code)
    c:close()
    srv:write("denied.ips", "127.0.0.40\n")
    -- add the table to the config: rewrite the tables line
    local conf = moat.read_file(srv.conf):gsub('tables = {[^\n]*}', 'tables = { client_ips = "client.ips", denied_ips = "denied.ips" }')
    srv:write("moat.conf", conf)
    srv:signal("HUP")
    srv:wait_log("event=reloaded generation=2")
    local c2 = moat.client(srv.port, { source = "127.0.0.40" })
    assert.is_nil(c2.greeting_code, tostring(c2.greeting))
    c2:close()
    srv:wait_log("event=refused ip=127%.0%.0%.40 .*reason=denied_ips")
  end)
end)
