-- Reverse Connect (sender callout, DESIGN §8) over real SMTP: the sender
-- domain's MX is a scriptable SMTP server (spec/helpers/nexthop.lua's fake)
-- on 127.0.0.2, found through dnsmasq (spec/helpers/dns.lua).  Its RCPT
-- answers by local part: "bad" 550, "later" 451, "hang" nothing, "huge" a
-- 1 MB line, others 250.
local H = require "helpers.moat"
local DNS = require "helpers.dns"
local NH = require "helpers.nexthop"

local STRANGER = "127.0.0.9"

-- Site script: RCPT to "callout@example.test" reports what it sees: s.callout
-- (from the MAIL FROM) and moat.callout() on another address.
local SITE = [[
local moat = require "moat"
return { rcpt = function(s, rcpt)
  if rcpt.addr.localpart == "callout" then
    local r = moat.callout("bad@sender.example")
    return moat.reject(550, ("5.7.1 s.callout=%s moat.callout=%s (%s)")
      :format(s.callout and s.callout.result or "nil", r.result, r.reply))
  end
end }
]]

local function mail_from(srv, from)
  return H.mail_from(srv.port, from, { source = STRANGER })
end

describe("reverse connect (integration)", function()
  local dns, mx, srv

  setup(function()
    mx = NH.fake { address = "127.0.0.2" }
    dns = DNS.start {
      mx = { ["sender.example"] = "mx.sender.example", ["self.example"] = "mx.self.example",
             ["bound.example"] = "mx.bound.example" },
      a = { ["mx.sender.example"] = "127.0.0.2", ["mx.self.example"] = "127.0.0.1",
            ["mx.bound.example"] = "127.0.0.5",
            ["bare.example"] = "127.0.0.2" },
    }
    srv = H.start { tag = "callout", policies = { "return_path", "reverse_connect", "relay" },
                    scripts = { ["site.lua"] = SITE },
                    extra = ('dns = { servers = { "%s" }, timeout_ms = 200, tries = 1 }\n'
                             .. 'protection = { reverse_connect = { mode = "reject", timeout = 2, port = %d } }\n')
                      :format(dns.server, mx.port) }
  end)
  teardown(function()
    NH.stop_all()
    H.stop_all()
    DNS.stop_all()
  end)

  local function probes(addr)
    return #mx:grep("^rcpt <" .. addr:gsub("%p", "%%%0") .. ">")
  end

  it("accepts a sender the MX accepts, with the probe dialogue and no DATA", function()
    local code, text = mail_from(srv, "good@sender.example")
    assert.are.equal(250, code, text)
    assert.is_true(H.poll(function() return #mx:grep("^quit") > 0 end, 3))
    local l = mx:lines()
    local want = { "connect", "ehlo", "mail <>", "rcpt <good@sender.example> 250", "quit" }
    assert.are.same(want, { table.unpack(l, 1, 5) })
    assert.are.equal(0, #mx:grep("^data"))
  end)

  it("serves a second session from the cache", function()
    assert.are.equal(250, (mail_from(srv, "cached@sender.example")))
    assert.are.equal(250, (mail_from(srv, "cached@sender.example")))
    assert.are.equal(1, probes("cached@sender.example"))
  end)

  it("rejects with the remote text when the MX refuses the address, and caches that", function()
    local code, text = mail_from(srv, "bad@sender.example")
    assert.are.equal(550, code)
    assert.matches("^550 5%.1%.7 Sender address rejected: 5%.1%.1 no such user", text)
    assert.are.equal(550, (mail_from(srv, "bad@sender.example")))
    assert.are.equal(1, probes("bad@sender.example"))
  end)

  it("tempfails (not cached) when the MX tempfails", function()
    local code, text = mail_from(srv, "later@sender.example")
    assert.are.equal(451, code)
    assert.matches("^451 4%.1%.7", text)
    assert.are.equal(451, (mail_from(srv, "later@sender.example")))
    assert.are.equal(2, probes("later@sender.example"))
  end)

  it("tempfails within the timeout when the MX never answers", function()
    local t0 = os.time()
    local code, text = mail_from(srv, "hang@sender.example")
    assert.are.equal(451, code)
    assert.matches("^451 4%.1%.7", text)
    assert.is_true(os.time() - t0 <= 4, "took " .. (os.time() - t0) .. "s")
  end)

  it("tempfails on a 1 MB reply line, at once (not by the timeout)", function()
    local t0 = require("socket").gettime()
    local code, text = mail_from(srv, "huge@sender.example")
    assert.is_true(require("socket").gettime() - t0 < 1.5)
    assert.are.equal(451, code)
    assert.matches("^451 4%.1%.7", text)
    assert.are.equal(250, (mail_from(srv, "good2@sender.example")))   -- still serving
  end)

  it("shares one probe between concurrent sessions", function()
    local cs = {}
    for i = 1, 3 do
      local c = H.client(srv.port, { source = STRANGER })
      c:ehlo("host.example")
      cs[i] = c
    end
    for _, c in ipairs(cs) do c.sock:send("MAIL FROM:<hang@sender.example>\r\n") end
    for _, c in ipairs(cs) do
      local code = c:read_reply()
      assert.are.equal(451, code)
      c:close()
    end
    assert.are.equal(1, probes("hang@sender.example") - 1)   -- one before this test
  end)

  it("uses the domain's A record when it has no MX", function()
    assert.are.equal(550, (mail_from(srv, "bad@bare.example")))
  end)

  it("never probes moat's own address, never local domains or <>", function()
    local before = #mx:grep("^connect")
    local code = mail_from(srv, "x@self.example")
    assert.are.equal(451, code)     -- no host left to ask
    assert.are.equal(250, (mail_from(srv, "someone@example.test")))
    assert.are.equal(250, (mail_from(srv, "")))
    assert.are.equal(before, #mx:grep("^connect"))
  end)

  it("counts outcomes, probes, cache hits and joined probes in moatctl stats", function()
    local rc, out = srv:ctl("stats")
    assert.equal(0, rc, out)
    local function n(name) return tonumber(out:match("\n" .. name .. " (%d+)\n")) end
    -- from the tests above: good, cached x2, bad x2, later x2, hang, huge, good2, 3 x hang, bare, self
    assert.are.equal(4, n("callout_ok_total"))
    assert.are.equal(3, n("callout_rejected_total"))
    assert.are.equal(8, n("callout_tempfail_total"))
    assert.are.equal(2, n("callout_cached_total"))
    assert.are.equal(2, n("callout_joined_total"))
    assert.are.equal(10, n("callout_probes_total"))
  end)

  it("site scripts see s.callout and can call moat.callout", function()
    local c = H.client(srv.port, { source = STRANGER })
    c:ehlo("host.example")
    assert.are.equal(250, (c:cmd("MAIL FROM:<good@sender.example>")))
    local code, text = c:cmd("RCPT TO:<callout@example.test>")
    c:close()
    assert.are.equal(550, code)
    assert.are.equal("550 5.7.1 s.callout=ok moat.callout=rejected (5.1.1 no such user)", text)
  end)

  -- A second moat on the same DNS and MX; rc: more reverse_connect settings.
  local function start_own(tag, rc, top)
    return H.start { tag = tag, policies = { "return_path", "reverse_connect", "relay" },
                     extra = ('%sdns = { servers = { "%s" }, timeout_ms = 200, tries = 1 }\n'
                              .. 'protection = { reverse_connect = { mode = "reject", port = %d, %s } }\n')
                       :format(top or "", dns.server, mx.port, rc) }
  end

  -- A session of srv2 that sent MAIL FROM:<from> (its reply not read).
  local function mail_pending(srv2, from)
    local c = H.client(srv2.port, { source = STRANGER })
    c:ehlo("host.example")
    c.sock:send("MAIL FROM:<" .. from .. ">\r\n")
    return c
  end

  it("beyond max_probes running probes: 451 4.1.7 at once, no probe", function()
    local one = start_own("callout-max", "timeout = 2, max_probes = 1")
    local a = mail_pending(one, "HANG@sender.example")
    assert.is_true(H.poll(function() return probes("HANG@sender.example") == 1 end, 2))
    local socket = require "socket"
    local t0 = socket.gettime()
    local code, text = H.mail_from(one.port, "other@sender.example", { source = STRANGER })
    assert.is_true(socket.gettime() - t0 < 1)
    assert.are.equal(451, code)
    assert.matches("^451 4%.1%.7", text)
    assert.are.equal(0, probes("other@sender.example"))
    assert.are.equal(451, (a:read_reply()))
    a:close()
    one:stop()
  end)

  it("stops cleanly (no leak, no sanitizer report) during a hanging probe", function()
    -- a probe timeout far beyond the shutdown: the probe is still running
    -- when moat exits, shared by a session that is gone and one still waiting
    local one = start_own("callout-stop", "timeout = 60", "shutdown_timeout = 1\n")
    local gone = mail_pending(one, "hanG@sender.example")
    assert.is_true(H.poll(function() return probes("hanG@sender.example") == 1 end, 3))
    local waiting = mail_pending(one, "hanG@sender.example")   -- joins the running probe
    gone:close()
    local socket = require "socket"
    local t0 = socket.gettime()
    one:stop()            -- errors on a sanitizer report (ASan's leak check) or no exit
    assert.is_true(socket.gettime() - t0 < 10)
    waiting:close()
  end)

  it("never probes an address a listener socket is bound to, though no interface has it", function()
    -- 127.0.0.5 is on no interface (lo lists 127.0.0.1 only), but this moat
    -- listens on it: its MX there is moat itself, never asked
    local mx5 = NH.fake { address = "127.0.0.5" }
    local one = H.start { tag = "callout-bound", policies = { "return_path", "reverse_connect", "relay" },
                          listener = '{ { port = %PORT%, address = "127.0.0.1" }, { port = %PORT%, address = "127.0.0.5" } }',
                          extra = ('dns = { servers = { "%s" }, timeout_ms = 200, tries = 1 }\n'
                                   .. 'protection = { reverse_connect = { mode = "reject", timeout = 2, port = %d } }\n')
                            :format(dns.server, mx5.port) }
    local code, text = H.mail_from(one.port, "x@bound.example", { source = STRANGER })
    assert.are.equal(451, code)
    assert.matches("^451 4%.1%.7", text)
    assert.are.equal(0, #mx5:grep("^connect"))
    -- still so after a reload (the snapshot is taken again)
    assert.are.equal(0, (one:ctl("reload")))
    assert.are.equal(451, (H.mail_from(one.port, "y@bound.example", { source = STRANGER })))
    assert.are.equal(0, #mx5:grep("^connect"))
    one:stop()
  end)

  it("moat --check refuses a bad mode", function()
    local dir, path = H.prepare { tag = "callout-check", policies = { "reverse_connect", "relay" },
                                  extra = 'protection = { reverse_connect = { mode = "rejekt" } }' }
    local rc, out, err = H.check(path)
    assert.are_not.equal(0, rc)
    assert.matches("protection%.reverse_connect%.mode: expected", out .. err)
    os.execute("rm -rf " .. H.shquote(dir))
  end)
end)
