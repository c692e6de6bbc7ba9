-- Integration: the shadow chain (DESIGN.md §12): a second policy set run on
-- live sessions whose verdicts are only logged and counted, never given to
-- the client and never changing what is stored.
local moat = require "helpers.moat"
local DNS = require "helpers.dns"

-- One whole transaction to joe@example.test; returns the RCPT and DATA-end codes.
local function send_one(srv)
  local c = moat.client(srv.port)
  assert.equals(220, c.greeting_code)
  assert.equals(250, (c:ehlo()))
  assert.equals(250, (c:cmd("MAIL FROM:<sender@remote.example>")))
  local rcpt = c:cmd("RCPT TO:<joe@example.test>")
  assert.equals(354, (c:cmd("DATA")))
  assert(c:send(moat.dot_stuff(moat.message())))
  local fin = c:read_reply()
  c:cmd("QUIT")
  c:close()
  return rcpt, fin
end

local REJECTER = [[
  local moat = require "moat"
  return { rcpt = function(s, rcpt) return moat.reject(550, "5.7.1 the new policy says no") end }
]]

local BROKEN = [[
  local function boom() error("shadow script is broken") end
  return { connect = boom, helo = boom, mail_from = boom, rcpt = boom, data = boom, data_end = boom }
]]

local function shadow_conf(sample)
  return ('shadow = { policies = { "relay" }, scripts = { "next.lua" }%s }'):format(
    sample and (", sample = " .. sample) or "")
end

describe("moat shadow chain", function()
  after_each(function()
    moat.stop_all()
    DNS.stop_all()
  end)

  it("a shadow that rejects at RCPT: the client gets 250, the message is stored, the difference logged and counted", function()
    local srv = moat.start { files = { ["next.lua"] = REJECTER }, extra = shadow_conf() }
    local rcpt, fin = send_one(srv)
    assert.equals(250, rcpt)
    assert.equals(250, fin)
    assert.equals(1, #srv:spool_files())
    srv:wait_log('event=shadow_diff session=[^ ]+ phase=rcpt ip=127%.0%.0%.1 live=none '
                 .. 'shadow="550 5%.7%.1 the new policy says no" policy=next%.lua')
    local rc, out = srv:ctl("shadow")
    assert.equals(0, rc)
    assert.matches("shadow: on", out, 1, true)
    assert.matches("diff rcpt none%->reject: 1\n", out)
    assert.matches("recent session=[^ ]+ phase=rcpt ip=127%.0%.0%.1 live=\"none\" shadow=\"550 5%.7%.1 the new policy says no\" policy=next%.lua", out)
  end)

  it("a shadow script that errors on every hook under load leaves the live chain unaffected, errors counted", function()
    local srv = moat.start { files = { ["next.lua"] = BROKEN }, extra = shadow_conf() }
    for _ = 1, 20 do
      local rcpt, fin = send_one(srv)
      assert.equals(250, rcpt)
      assert.equals(250, fin)
    end
    assert.equals(20, #srv:spool_files())
    srv:wait_log("event=shadow_error session=[^ ]+ phase=rcpt ", 5, 20)
    local log = srv:log()
    assert.equals(0, moat.count(log, "event=hook_error"))
    local rc, out = srv:ctl("shadow")
    assert.equals(0, rc)
    local errors = tonumber(out:match("errors: (%d+)"))
    -- connect, helo, mail, rcpt, data, data_end on each of 20 sessions
    assert.equals(120, errors)
    assert.matches("diff rcpt none%->error: 20\n", out)
    local _, stats = srv:ctl("stats")
    assert.not_matches("hook_errors: [1-9]", stats)
  end)

  it("data_line hooks run on the shadow: its verdict kept for the message is compared at the final dot", function()
    local LINES = [[
  local moat = require "moat"
  return { data_line = function(s, line)
    if line:find("BADWORD", 1, true) then return moat.reject(550, "5.7.1 banned word") end
  end }
]]
    local srv = moat.start { files = { ["next.lua"] = LINES }, extra = shadow_conf() }
    local c = moat.client(srv.port)
    assert.equals(250, (c:ehlo()))
    assert.equals(250, (c:cmd("MAIL FROM:<sender@remote.example>")))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    -- a clean message: both chains agree, no difference
    assert.equals(354, (c:cmd("DATA")))
    assert(c:send(moat.dot_stuff(moat.message("clean", "nothing here\r\n"))))
    assert.equals(250, (c:read_reply()))
    -- the banned word on the third body line: the client still gets 250
    assert.equals(250, (c:cmd("MAIL FROM:<sender@remote.example>")))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    assert.equals(354, (c:cmd("DATA")))
    assert(c:send(moat.dot_stuff(moat.message("dirty", "one\r\ntwo\r\nsay BADWORD\r\nfour\r\n"))))
    assert.equals(250, (c:read_reply()))
    c:cmd("QUIT")
    c:close()
    assert.equals(2, #srv:spool_files())
    srv:wait_log('event=shadow_diff session=[^ ]+ phase=data_line ip=127%.0%.0%.1 live=none '
                 .. 'shadow="550 5%.7%.1 banned word" policy=next%.lua')
    local rc, out = srv:ctl("shadow")
    assert.equals(0, rc)
    assert.matches("differences: 1\n", out)
    assert.matches("diff data_line none%->reject: 1\n", out)
  end)

  it("sample = 0 runs no shadow", function()
    local srv = moat.start { files = { ["next.lua"] = REJECTER }, extra = shadow_conf(0) }
    local rcpt, fin = send_one(srv)
    assert.equals(250, rcpt)
    assert.equals(250, fin)
    local rc, out = srv:ctl("shadow")
    assert.equals(0, rc)
    assert.matches("sessions: 0\n", out, 1, true)
    assert.matches("hooks: 0\n", out, 1, true)
    assert.equals(0, moat.count(srv:log(), "event=shadow_diff"))
  end)

  it("a broken shadow script fails the configuration check", function()
    local dir, conf = moat.prepare { files = { ["next.lua"] = "return {" }, extra = shadow_conf() }
    local rc, out, err = moat.check(conf)
    assert.is_not.equals(0, rc)
    assert.matches("shadow: .*next%.lua", out .. err)
    os.execute("rm -rf " .. moat.shquote(dir))
  end)

  it("DNS is shared: the same question from both chains is one query", function()
    local d = DNS.retry_start(DNS.start, { a = { ["mx1.good.example"] = "192.0.2.1" }, ttl = 60 })
    local ASK = [[
      local moat = require "moat"
      return { rcpt = function(s, rcpt)
        local ans = moat.dns.query("mx1.good.example", "A")
        if %s then return moat.reject(550, "5.7.1 saw " .. table.concat(ans or {}, ",")) end
      end }
    ]]
    local srv = moat.start { scripts = { ["live.lua"] = ASK:format("false") },
                             files = { ["next.lua"] = ASK:format("true") },
                             extra = shadow_conf() .. ('\ndns = { servers = { "%s" }, timeout_ms = 500, tries = 1 }'):format(d.server) }
    local rcpt, fin = send_one(srv)
    assert.equals(250, rcpt)
    assert.equals(250, fin)
    srv:wait_log('event=shadow_diff session=[^ ]+ phase=rcpt ip=127%.0%.0%.1 live=none shadow="550 5%.7%.1 saw 192%.0%.2%.1" policy=next%.lua')
    assert.equals(1, d:asked("mx1.good.example", "A"))
  end)

  it("a reload starts, replaces and ends the shadow", function()
    local srv = moat.start { files = { ["next.lua"] = REJECTER } }
    local base = moat.read_file(srv.dir .. "/moat.conf")
    local _, out = srv:ctl("shadow")
    assert.matches("shadow: off", out, 1, true)
    srv:write("moat.conf", base .. "\n" .. shadow_conf() .. "\n")
    assert.equals(0, (srv:ctl("reload")))
    _, out = srv:ctl("shadow")
    assert.matches("shadow: on", out, 1, true)
    assert.equals(250, (send_one(srv)))
    srv:wait_log('event=shadow_diff session=[^ ]+ phase=rcpt .*policy=next%.lua')
    -- replaced: the new shadow script accepts, no further difference
    srv:write("next.lua", "return {}\n")
    assert.equals(0, (srv:ctl("reload")))
    assert.equals(250, (send_one(srv)))
    -- ended
    srv:write("moat.conf", base)
    assert.equals(0, (srv:ctl("reload")))
    _, out = srv:ctl("shadow")
    assert.matches("shadow: off", out, 1, true)
    srv:write("next.lua", REJECTER)
    assert.equals(250, (send_one(srv)))
    assert.equals(1, moat.count(srv:log(), "event=shadow_diff"))
    assert.equals(3, #srv:spool_files())
  end)

  it("moatctl promote makes the shadow set live and ends the shadow; a broken shadow changes nothing", function()
    local srv = moat.start { files = { ["next.lua"] = REJECTER }, extra = shadow_conf() }
    assert.equals(250, (send_one(srv)))
    -- broken on disk: promote is refused, live and shadow unchanged
    srv:write("next.lua", "return {")
    local rc, out = srv:ctl("promote")
    assert.is_not.equals(0, rc)
    assert.matches("error: .*next%.lua", out)
    local _, sh = srv:ctl("shadow")
    assert.matches("shadow: on", sh, 1, true)
    srv:write("next.lua", REJECTER)
    rc, out = srv:ctl("promote")
    assert.equals(0, rc, out)
    assert.matches("promoted: the shadow set is live", out, 1, true)
    _, sh = srv:ctl("shadow")
    assert.matches("shadow: promoted", sh, 1, true)
    -- the client now gets the shadow's verdict
    local c = moat.client(srv.port)
    assert.equals(250, (c:ehlo()))
    assert.equals(250, (c:cmd("MAIL FROM:<sender@remote.example>")))
    assert.same({ 550, "550 5.7.1 the new policy says no" }, { c:cmd("RCPT TO:<joe@example.test>") })
    c:close()
    -- a plain reload keeps it promoted while the file still has the shadow
    assert.equals(0, (srv:ctl("reload")))
    _, sh = srv:ctl("shadow")
    assert.matches("shadow: promoted", sh, 1, true)
    assert.equals(1, moat.count(srv:log(), "event=shadow_diff"))
  end)
end)
