-- The spf policy over real SMTP (DESIGN §8): protection.spf's reject and
-- header modes, HELO identity, the null sender, the headers on stored
-- messages, s.spf for site scripts, no check (and no DNS query) for client
-- sessions, and --check refusing bad values.  DNS: dnsmasq (spec/helpers/dns.lua)
-- with TXT records, and a black hole for temperror.
local H = require "helpers.moat"
local DNS = require "helpers.dns"

local STRANGER = "127.0.0.9"

local RECORDS = {
  txt = {
    ["pass.example"] = "v=spf1 ip4:127.0.0.0/8 -all",
    ["fail.example"] = "v=spf1 -all exp=why.fail.example",
    ["why.fail.example"] = "%{i} may not send mail for %{d}",
    ["soft.example"] = "v=spf1 ~all",
    ["strict.example"] = "v=spf1 ~all",
    ["perm.example"] = "v=spf1 foo:bar -all",
    ["badhelo.example"] = "v=spf1 -all",
    ["split.example"] = { "v=spf1 ip4:127.0.0.9", " -all" },
  },
}

-- Site script: "reject softfail from domains in my list" (the README example).
local SITE = [[
local moat = require "moat"
local strict = { ["strict.example"] = true }
return { mail_from = function(s)
  if s.spf and s.spf.result == "softfail" and strict[s.spf.domain] then
    return moat.reject(550, "5.7.23 SPF softfail for " .. s.spf.domain .. " is not accepted here")
  end
end }
]]

local function conf(dns_server, spf)
  return ('dns = { servers = { "%s" }, timeout_ms = 100, tries = 1 }\nprotection = { spf = %s }\n')
    :format(dns_server, spf)
end

local function mail_from(srv, from, opts)
  opts = opts or {}
  return H.mail_from(srv.port, from, { source = opts.source or STRANGER, helo = opts.helo })
end

describe("spf policy (integration)", function()
  local dns, srv, hdr

  setup(function()
    dns = DNS.start(RECORDS)
    srv = H.start { tag = "spf", policies = { "spf", "relay" }, scripts = { ["site.lua"] = SITE },
                    extra = conf(dns.server, '{ mode = "reject", helo = false }') }
    hdr = H.start { tag = "spf-header", policies = { "spf", "relay" },
                    extra = conf(dns.server, '{ mode = "header" }') }
  end)
  teardown(function()
    H.stop_all()
    DNS.stop_all()
  end)
  before_each(function() dns:clear() end)

  it("rejects a fail with 550 5.7.23 and the exp= explanation", function()
    local code, text = mail_from(srv, "alice@fail.example")
    assert.equal(550, code)
    assert.equal("550 5.7.23 127.0.0.9 may not send mail for fail.example", text)
  end)

  it("accepts pass, softfail, none and (by default) permerror", function()
    assert.equal(250, (mail_from(srv, "bob@pass.example")))
    assert.equal(250, (mail_from(srv, "bob@soft.example")))
    assert.equal(250, (mail_from(srv, "bob@nospf.example")))
    assert.equal(250, (mail_from(srv, "bob@perm.example")))
  end)

  it("reads a record spread over several TXT strings", function()
    assert.equal(250, (mail_from(srv, "bob@split.example")))
    assert.equal(550, (mail_from(srv, "bob@split.example", { source = "127.0.0.10" })))
  end)

  it("checks the null sender as postmaster@HELO", function()
    local code, text = mail_from(srv, "", { helo = "fail.example" })
    assert.equal(550, code)
    assert.matches("^550 5%.7%.23 ", text)
    assert.equal(250, (mail_from(srv, "", { helo = "pass.example" })))
  end)

  it("gives site scripts s.spf (reject softfail from listed domains)", function()
    local code, text = mail_from(srv, "eve@strict.example")
    assert.equal(550, code)
    assert.equal("550 5.7.23 SPF softfail for strict.example is not accepted here", text)
  end)

  it("makes no check and no DNS query for client sessions", function()
    assert.equal(250, (mail_from(srv, "alice@fail.example", { source = "127.0.0.1" })))
    assert.equal(0, dns:asked("fail.example"))
  end)

  it("in header mode accepts a fail and stores Received-SPF and Authentication-Results", function()
    local c = H.client(hdr.port, { source = STRANGER })
    assert.equal(250, (c:ehlo("host.example")))
    local r = c:transaction { from = "alice@fail.example", rcpts = { "joe@example.test" },
                              data = H.message("spf") }
    assert.equal(250, r.final[1], r.final[2])
    c:close()
    local f
    for _, x in ipairs(hdr:spool_files()) do if x.id == r.id then f = x end end
    assert.truthy(f)
    assert.matches("Received%-SPF: fail %(mx%.example%.test: domain of alice@fail%.example does not designate "
                   .. "127%.0%.0%.9 as permitted sender%) client%-ip=127%.0%.0%.9; envelope%-from=\"alice@fail%.example\"; "
                   .. "helo=host%.example; receiver=mx%.example%.test; identity=mailfrom;", f.eml)
    assert.matches("Authentication%-Results: mx%.example%.test; spf=fail smtp%.mailfrom=alice@fail%.example", f.eml)
  end)

  describe("with helo = true and permerror = reject", function()
    local s2
    setup(function()
      s2 = H.start { tag = "spf-helo", policies = { "spf", "relay" },
                     extra = conf(dns.server, '{ mode = "reject", helo = true, permerror = "reject" }') }
    end)

    it("a HELO fail decides, whatever the MAIL FROM domain says", function()
      local code, text = mail_from(s2, "bob@pass.example", { helo = "badhelo.example" })
      assert.equal(550, code)
      assert.matches("^550 5%.7%.23 ", text)
      assert.equal(250, (mail_from(s2, "bob@pass.example", { helo = "pass.example" })))
    end)

    it("rejects a permerror with 550 5.7.24", function()
      local code, text = mail_from(s2, "bob@perm.example")
      assert.equal(550, code)
      assert.matches("^550 5%.7%.24 ", text)
    end)
  end)

  it("answers 451 4.7.24 when the DNS does not answer (temperror)", function()
    local hole = DNS.black_hole()
    local s3 = H.start { tag = "spf-temp", policies = { "spf", "relay" },
                         extra = conf(hole.server, '{ mode = "reject" }') }
    local code, text = mail_from(s3, "bob@pass.example")
    assert.equal(451, code)
    assert.matches("^451 4%.7%.24 ", text)
    s3:stop()
    hole:stop()
  end)

  it("counts SPF results in moatctl stats", function()
    local s4 = H.start { tag = "spf-stats", policies = { "spf", "relay" },
                         extra = conf(dns.server, '{ mode = "reject" }') }
    mail_from(s4, "a@fail.example")
    mail_from(s4, "a@fail.example")
    mail_from(s4, "a@pass.example")
    mail_from(s4, "a@fail.example", { source = "127.0.0.1" })   -- a client: not checked, not counted
    local rc, out = s4:ctl("stats")
    assert.equal(0, rc, out)
    assert.matches("\nspf_fail_total 2\n", out)
    assert.matches("\nspf_pass_total 1\n", out)
    assert.matches("\nspf_temperror_total 0\n", out)
    s4:stop()
  end)

  it("1,000 sessions waiting on SPF DNS suspend only themselves: a new session is served at once", function()
    local socket = require "socket"
    local hole = DNS.black_hole()
    local s5 = H.start { tag = "spf-many", policies = { "spf", "relay" },
                         extra = ('dns = { servers = { "%s" }, timeout_ms = 1500, tries = 1 }\n'
                                  .. 'protection = { spf = { mode = "reject" } }\n'):format(hole.server) }
    local conns = {}
    for i = 1, 1000 do
      local c = assert(socket.tcp())
      assert(c:bind("127.0.1." .. (i % 250 + 1), 0))
      c:settimeout(5)
      assert(c:connect("127.0.0.1", s5.port))
      assert(c:receive("*l"):match("^220"))
      -- pipelined: the MAIL FROM reply waits for the TXT lookup that never comes back
      assert(c:send(("EHLO h%d.example\r\nMAIL FROM:<a@d%d.example>\r\n"):format(i, i)))
      conns[i] = c
    end
    local t0 = socket.gettime()
    local c = H.client(s5.port, { source = "127.0.0.1" })   -- a client: no check
    assert.equal(220, c.greeting_code)
    assert.equal(250, (c:ehlo("client.example")))
    assert.equal(250, (c:cmd("MAIL FROM:<a@d1.example>")))
    c:close()
    local elapsed = socket.gettime() - t0
    assert.is_true(elapsed < 1, ("a new session took %.2fs while 1,000 checks waited"):format(elapsed))
    -- and every waiting session gets its 451 4.7.24 once the lookups time out
    local tempfails = 0
    for _, k in ipairs(conns) do
      local line
      repeat line = k:receive("*l") until not line or line:match("^%d%d%d ") and not line:match("^250")
      if line and line:match("^451 4%.7%.24 ") then tempfails = tempfails + 1 end
      k:close()
    end
    assert.equal(1000, tempfails)
    s5:stop()
    hole:stop()
  end)

  it("moat --check refuses mode = \"rejekt\" naming the file and line", function()
    local dir, path = H.prepare { tag = "spf-check", policies = { "spf", "relay" },
                                  extra = 'protection = { spf = { mode = "rejekt" } }' }
    local rc, out, err = H.check(path)
    assert.are_not.equal(0, rc)
    assert.matches("moat%.conf:%d+: protection%.spf%.mode: expected", out .. err)
    os.execute("rm -rf " .. H.shquote(dir))
  end)

  it("moat --check refuses protection.spf without the spf policy (it would check nothing)", function()
    local dir, path = H.prepare { tag = "spf-check2", policies = { "relay" },
                                  extra = 'protection = { spf = { mode = "header" } }' }
    local rc, out, err = H.check(path)
    assert.are_not.equal(0, rc)
    assert.matches('moat%.conf:%d+: protection%.spf%.mode = "header" needs the policy "spf" in policies', out .. err)
    os.execute("rm -rf " .. H.shquote(dir))
  end)
end)
