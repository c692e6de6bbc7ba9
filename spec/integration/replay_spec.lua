-- Integration: moat -c FILE --replay SESSION.smtp runs a session file through
-- the configured policies and prints every command, moat's reply and the
-- hook and policy file that decided (DESIGN.md §12).
local H = require "helpers.moat"
local socket = require "socket"
local lfs = require "lfs"

local dirs = {}

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
  local out, err = os.tmpname(), os.tmpname()
  local cmd = ("cd %s && MOAT_ROOT=%s timeout 20 %s -c %s --replay session.smtp >%s 2>%s; echo $?"):format(
    H.shquote(dir), H.shquote(H.root), H.shquote(H.bin()), H.shquote(conf), H.shquote(out), H.shquote(err))
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
  return rc, slurp(out), slurp(err), dir, vars
end

-- The text that follows `first` (plain) in out: the next line.
local function line_after(out, first)
  local s, e = out:find(first .. "\n", 1, true)
  if not s then return nil end
  return out:sub(e + 1):match("^([^\n]*)")
end

after_each(function()
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
    assert.truthy(out:find("C: DATA\nS: 354 ", 1, true), out)
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

  it("refuses a file without client lines, and a bad ip= header", function()
    local rc, _, err = replay({}, "# only a comment\nS: 220 hi\n")
    assert.are_not.equal(0, rc)
    assert.truthy(err:find("no client lines", 1, true), err)
    rc, _, err = replay({}, "# ip=not-an-ip\nC: QUIT\n")
    assert.are_not.equal(0, rc)
    assert.truthy(err:find("ip=not-an-ip is not an address", 1, true), err)
  end)
end)
