-- Integration: moat -c FILE --replay SESSION.smtp runs a session file through
-- the configured policies and prints every command, moat's reply and the
-- hook and policy file that decided (DESIGN.md §12).
local H = require "helpers.moat"
local socket = require "socket"
local lfs = require "lfs"
local dns = require "helpers.dns"

local dirs = {}

-- Replay a session file against an existing config.
local function replay_file(conf, file, flags)
  local out, err = os.tmpname(), os.tmpname()
  local cmd = ("MOAT_ROOT=%s timeout 20 %s -c %s --replay %s %s >%s 2>%s; echo $?"):format(
    H.shquote(H.root), H.shquote(H.bin()), H.shquote(conf), H.shquote(file), flags or "", H.shquote(out), H.shquote(err))
  local p = assert(io.popen(cmd, "r"))
  local rc = tonumber(p:read("l"))
  p:close()
  local function slurp(f)
    local h = io.open(f)
    local t = h and h:read("a") or ""
    if h then h:close() end
    os.remove(f)
    return t
  end
  return rc, slurp(out), slurp(err)
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- Run a replay of `session` (text) against a config built from opts (as
-- helpers.moat start options).  Returns exit code, stdout, stderr, dir, vars.
local function replay(opts, session)
  opts.tag = "replay"
  local dir, conf, vars = H.prepare(opts)
  dirs[#dirs + 1] = dir
  write(dir .. "/session.smtp", session)
  local rc, out, err = replay_file(conf, dir .. "/session.smtp")
  return rc, out, err, dir, vars
end

-- The text that follows `first` (plain) in out: the next line.
local function line_after(out, first)
  local s, e = out:find(first .. "\n", 1, true)
  if not s then return nil end
  return out:sub(e + 1):match("^([^\n]*)")
end

after_each(function()
  dns.stop_all()
  if not os.getenv("MOAT_KEEP_TMP") then
    for _, d in ipairs(dirs) do os.execute("rm -rf " .. H.shquote(d)) end
  end
  dirs = {}
end)

local SESSION = [[
# A session recorded from a relay attempt (S: lines are the old replies, ignored).
# ip=192.0.2.7 port=41000 helo=mail.sender.example
S: 220 mx.example.test ESMTP
C: MAIL FROM:<a@sender.example>
S: 250 2.1.0 Ok
C: RCPT TO:<victim@elsewhere.example>
S: 250 2.1.5 Ok
C: RCPT TO:<joe@example.test>
C: DATA
C: Subject: replayed
C:
C: body line
C: .
C: QUIT
]]

describe("moat --replay", function()
  it("prints each command, the live reply and the policy that rejected at RCPT; stores nothing, listens nowhere", function()
    local rc, out, err, dir, vars = replay({ policies = { "relay" } }, SESSION)
    assert.are.equal(0, rc, err)
    assert.falsy(err:find("Sanitizer", 1, true) or err:find("runtime error", 1, true), err)
    assert.truthy(out:find("S: 220 mx.example.test", 1, true), out)
    -- helo= in the header stands for the EHLO the file does not have
    assert.truthy(out:find("C: EHLO mail.sender.example\nS: 250-mx.example.test", 1, true), out)
    assert.truthy(out:find("C: MAIL FROM:<a@sender.example>\nS: 250 2.1.0 Ok", 1, true), out)
    assert.are.equal("S: 550 5.7.1 <victim@elsewhere.example>: relaying denied",
                     line_after(out, "C: RCPT TO:<victim@elsewhere.example>"), out)
    assert.are.equal("   (rcpt: policies/relay.lua)",
                     line_after(out, "S: 550 5.7.1 <victim@elsewhere.example>: relaying denied"), out)
    assert.are.equal("S: 250 2.1.5 Ok", line_after(out, "C: RCPT TO:<joe@example.test>"), out)
    assert.truthy(out:find("C: DATA\nS: 354 End data with <CR><LF>.<CR><LF>\nC: (message, 3 lines)\n", 1, true), out)
    assert.truthy(out:find("S: 250 2.0.0 Ok: queued as ", 1, true), out)
    assert.truthy(out:find("C: QUIT\nS: 221 ", 1, true), out)
    -- the recorded (old) replies are not echoed as moat's
    assert.falsy(out:find("S: 250 2.1.5 Ok\n   ", 1, true), out)
    -- nothing was stored
    local n = 0
    if lfs.attributes(dir .. "/spool/new") then
      for f in lfs.dir(dir .. "/spool/new") do if f:sub(1, 1) ~= "." then n = n + 1 end end
    end
    assert.are.equal(0, n)
    -- and the configured listener was never opened
    local c = socket.tcp()
    c:settimeout(1)
    assert.falsy(c:connect("127.0.0.1", vars.PORT))
    c:close()
  end)

  it("gives the scripts the peer of the header and names the site script that decided", function()
    local SITE = [[
local moat = require "moat"
return {
  helo = function(s, name)
    if s.ip == "198.51.100.9" then return moat.reject(554, "5.7.1 no thanks " .. s.ip .. ":" .. s.port .. " " .. name .. " tls=" .. s.tls) end
  end,
}
]]
    local rc, out, err = replay({ policies = { "relay" }, scripts = { ["site.lua"] = SITE } }, [[
# ip=198.51.100.9 port=5555 tls=on
C: HELO bad.example
C: QUIT
]])
    assert.are.equal(0, rc, err)
    assert.are.equal("S: 554 5.7.1 no thanks 198.51.100.9:5555 bad.example tls=ext", line_after(out, "C: HELO bad.example"), out)
    assert.are.equal("   (helo: site.lua)", line_after(out, "S: 554 5.7.1 no thanks 198.51.100.9:5555 bad.example tls=ext"), out)
  end)

  it("asks real DNS: the rbl policy refuses a listed address, and a file cut inside DATA still ends", function()
    local bl = dns.start_rbldnsd { zone = "bl.example.test", entries = { "192.0.2.66" } }
    local rc, out, err = replay({
      policies = { "rbl", "relay" },
      extra = ('dns = { servers = { "%s" }, timeout_ms = 500, tries = 2 }\nprotection = { rbl_servers = { "bl.example.test" }, blacklisted_messages = "reject" }\n'):format(bl.server),
    }, "# ip=192.0.2.66\nC: EHLO listed.example\nC: MAIL FROM:<a@b.example>\nC: RCPT TO:<joe@example.test>\nC: QUIT\n")
    assert.are.equal(0, rc, err)
    assert.truthy(out:find("C: RCPT TO:<joe@example.test>\nS: 5%d%d [^\n]*\n   %(rcpt: policies/rbl%.lua%)\n"), out)
    assert.truthy(#bl:queries() >= 1)
    rc, out, err = replay({ policies = { "relay" } },
      "C: HELO x.example\nC: MAIL FROM:<a@b.example>\nC: RCPT TO:<joe@example.test>\nC: DATA\nC: Subject: cut\nC:\nC: half a mess")
    assert.are.equal(0, rc, err)
    assert.truthy(out:find("C: (message, 3 lines; the file ends inside DATA: '.' added)\nS: 250 2.0.0 Ok", 1, true), out)
  end)

  it("refuses a file without client lines, and a bad ip= header", function()
    local rc, _, err = replay({}, "# only a comment\nS: 220 hi\n")
    assert.are_not.equal(0, rc)
    assert.truthy(err:find("no client lines", 1, true), err)
    rc, _, err = replay({}, "# ip=not-an-ip\nC: QUIT\n")
    assert.are_not.equal(0, rc)
    assert.truthy(err:find("ip=not-an-ip is not an address", 1, true), err)
  end)

  it("replays the file moat wrote for a debugged address's session", function()
    local srv = H.start {
      tag = "replay-debug", smtp = { max_errors = 50 },
      extra = [[
protection = {
  temp_block = { failed_logins = { 50, 60 }, protocol_errors = { 50, 60 },
                 debug_failed_logins = { 50, 60 }, debug_protocol_errors = { 1, 60 },
                 block_time = 600, limit = 100 },
}
]],
    }
    local ip = "127.0.0.71"
    local c = H.client(srv.port, { source = ip })
    assert.equals(500, (c:cmd("BOGUS1")))
    assert.equals(500, (c:cmd("BOGUS2")))        -- past the debug threshold
    c:close()
    srv:wait_log("event=debug_on session=%S+ ip=127%.0%.0%.71")
    -- the next session of that address is written from its start
    c = H.client(srv.port, { source = ip })
    assert.equals(250, (c:ehlo("attacker.example")))
    assert.equals(250, (c:cmd("MAIL FROM:<x@attacker.example>")))
    assert.equals(550, (c:cmd("RCPT TO:<victim@elsewhere.example>")))
    assert.equals(250, (c:cmd("RCPT TO:<joe@example.test>")))
    assert.equals(354, (c:cmd("DATA")))
    c:send("Subject: hi\r\n\r\n..dotted line\r\n.\r\n")
    assert.equals(250, (c:read_reply()))
    assert.equals(221, (c:cmd("QUIT")))
    c:close()
    local file
    assert.truthy(H.poll(function()
      for f in lfs.dir(srv.dir .. "/spool/debug") do
        if f:match("%.smtp$") then
          local h = io.open(srv.dir .. "/spool/debug/" .. f)
          local t = h:read("a")
          h:close()
          if t:find("C: EHLO attacker.example", 1, true) and t:find("S: 221 ", 1, true) then file = srv.dir .. "/spool/debug/" .. f end
        end
      end
      return file ~= nil
    end, 5), "no debug session file")
    local h = io.open(file)
    local text = h:read("a")
    h:close()
    assert.truthy(text:find("# ip=127.0.0.71 port=%d+ tls=off\n"), text)
    assert.truthy(text:find("C: RCPT TO:<victim@elsewhere.example>\nS: 550 5.7.1 <victim@elsewhere.example>: relaying denied\n", 1, true), text)
    assert.truthy(text:find("C: ..dotted line\nC: .\nS: 250 2.0.0 Ok: queued as", 1, true), text)
    -- the first session became debugged in its middle: written too, and says so
    local mid = 0
    for f in lfs.dir(srv.dir .. "/spool/debug") do
      local hh = f:match("%.smtp$") and io.open(srv.dir .. "/spool/debug/" .. f)
      if hh then
        local t = hh:read("a")
        hh:close()
        if t:find("# debugging began during the session", 1, true) then mid = mid + 1 end
      end
    end
    assert.are.equal(1, mid)
    local rc, out, err = replay_file(srv.conf or (srv.dir .. "/moat.conf"), file)
    assert.are.equal(0, rc, err)
    assert.are.equal("S: 550 5.7.1 <victim@elsewhere.example>: relaying denied",
                     line_after(out, "C: RCPT TO:<victim@elsewhere.example>"), out)
    assert.are.equal("   (rcpt: policies/relay.lua)",
                     line_after(out, "S: 550 5.7.1 <victim@elsewhere.example>: relaying denied"), out)
    assert.truthy(out:find("S: 250 2.0.0 Ok: queued as", 1, true), out)
    srv:stop()
  end)
end)

describe("moat --replay --shadow", function()
  it("prints both chains' answers: the live chain rejects at RCPT (relaying denied), the shadow without relay accepts", function()
    local dir, conf = H.prepare { tag = "replay", policies = { "relay" }, extra = 'shadow = { policies = { "blacklist" } }' }
    dirs[#dirs + 1] = dir
    write(dir .. "/session.smtp", SESSION)
    local rc, out, err = replay_file(conf, dir .. "/session.smtp", "--shadow")
    assert.are.equal(0, rc, err)
    assert.falsy(err:find("Sanitizer", 1, true) or err:find("runtime error", 1, true), err)
    -- the live reply and the policy that decided, then the shadow's verdict
    assert.are.equal("S: 550 5.7.1 <victim@elsewhere.example>: relaying denied",
                     line_after(out, "C: RCPT TO:<victim@elsewhere.example>"), out)
    assert.are.equal("   (rcpt: policies/relay.lua)",
                     line_after(out, "S: 550 5.7.1 <victim@elsewhere.example>: relaying denied"), out)
    assert.are.equal("   shadow rcpt: none [differs]", line_after(out, "   (rcpt: policies/relay.lua)"), out)
    -- the accepted recipient: both chains agree
    assert.are.equal("   shadow rcpt: none [same]", line_after(out, "S: 250 2.1.5 Ok"), out)
    assert.truthy(out:find("   shadow mail_from: none [same]", 1, true), out)
    assert.truthy(out:find("S: 250 2.0.0 Ok: queued as ", 1, true), out)
  end)

  it("shows the shadow's data_line verdict for the message at the final dot", function()
    local NEXT = [[
local moat = require "moat"
return { data_line = function(s, line)
  if line == "body line" then return moat.reject(550, "5.7.1 no body lines") end
end }
]]
    local dir, conf = H.prepare { tag = "replay", policies = { "relay" }, files = { ["next.lua"] = NEXT },
                                  extra = 'shadow = { policies = { "relay" }, scripts = { "next.lua" } }' }
    dirs[#dirs + 1] = dir
    write(dir .. "/session.smtp", SESSION)
    local rc, out, err = replay_file(conf, dir .. "/session.smtp", "--shadow")
    assert.are.equal(0, rc, err)
    assert.truthy(out:find("C: %(message, 3 lines%)\nS: 250 2%.0%.0 Ok: queued as [^\n]+\n"
                           .. "   shadow data_line: 550 5.7.1 no body lines %(next.lua%) %[differs%]\n"), out)
    assert.truthy(out:find("   shadow rcpt: none [same]", 1, true), out)
  end)

  it("refuses --shadow without a shadow configured, and --shadow without --replay", function()
    local dir, conf = H.prepare { tag = "replay", policies = { "relay" } }
    dirs[#dirs + 1] = dir
    write(dir .. "/session.smtp", SESSION)
    local rc, _, err = replay_file(conf, dir .. "/session.smtp", "--shadow")
    assert.are.equal(1, rc)
    assert.truthy(err:find("no shadow", 1, true), err)
    local p = io.popen(("%s -c %s --shadow >/dev/null 2>&1; echo $?"):format(H.shquote(H.bin()), H.shquote(conf)))
    assert.are.equal("2", p:read("l"))
    p:close()
  end)
end)
