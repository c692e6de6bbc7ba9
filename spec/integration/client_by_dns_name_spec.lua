-- Integration: protection.client_by_dns_name (seed 002 "Detect Clients by
-- DNS Name", DESIGN §9) with a real moat and a real dnsmasq.  A PTR name that
-- matches makes a client only when the name resolves back to the address
-- (forward-confirmed); senders are client sockets bound to 127.0.0.x, and the
-- only policy is relay, so "client" shows as being allowed to relay.
local H = require "helpers.moat"
local DNS = require "helpers.dns"

local IP = {
  confirmed = "127.0.0.21",   -- pc21.corp.example, whose A is 127.0.0.21
  elsewhere = "127.0.0.22",   -- PTR pc22.corp.example, whose A is 127.0.0.99
  nowhere   = "127.0.0.23",   -- PTR ghost.corp.example, which has no A
  other     = "127.0.0.24",   -- PTR mail24.other.example (no match), A back to it
}

local function rcpt_reply(srv, ip, rcpt)
  local c = H.client(srv.port, { source = ip })
  assert.equal(220, c.greeting_code)
  assert.equal(250, (c:ehlo("sender.example")))
  assert.equal(250, (c:cmd("MAIL FROM:<sender@remote.example>")))
  local code, text = c:cmd("RCPT TO:<" .. rcpt .. ">")
  c:cmd("QUIT")
  c:close()
  return code, text
end

describe("client_by_dns_name (integration)", function()
  local dnsmasq, srv

  setup(function()
    -- dnsmasq answers the PTR of every a-record address with its name, so the
    -- confirmed case is one a-record; the others are explicit PTRs whose name
    -- points elsewhere (127.0.0.99 then gets a PTR too, unused) or nowhere.
    dnsmasq = DNS.retry_start(DNS.start, {
      a = { ["pc21.corp.example"] = IP.confirmed, ["pc22.corp.example"] = "127.0.0.99",
            ["mail24.other.example"] = IP.other },
      ptr = { [IP.elsewhere] = "pc22.corp.example", [IP.nowhere] = "ghost.corp.example" },
    })
    srv = H.start {
      tag = "clientdns",
      policies = { "relay" },
      extra = ("dns = { servers = { %q }, timeout_ms = 300, tries = 2 }\n"):format(dnsmasq.server) ..
              'protection = { client_by_dns_name = { "*.corp.example" } }\n',
    }
  end)

  teardown(function()
    H.stop_all()
    DNS.stop_all()
  end)

  it("the DNS data is what the cases claim", function()
    assert.same({ "pc21.corp.example" }, dnsmasq:query(DNS.ptr_name(IP.confirmed), "PTR").answers)
    assert.same({ "pc22.corp.example" }, dnsmasq:query(DNS.ptr_name(IP.elsewhere), "PTR").answers)
    assert.same({ "127.0.0.99" }, dnsmasq:query("pc22.corp.example", "A").answers)
    assert.equal("nxdomain", dnsmasq:query("ghost.corp.example", "A").rcode)
  end)

  it("a matching, forward-confirmed name is a client: it may relay, and test-address says Client", function()
    local code, text = rcpt_reply(srv, IP.confirmed, "u@other.example")
    assert.equal(250, code, text)
    srv:wait_log("address status: client %(client_by_dns_name%)")
    local rc, out = srv:ctl("test-address " .. IP.confirmed)
    assert.equal(0, rc, out)
    assert.equal("[127.0.0.21](pc21.corp.example) is Client\n", out)
  end)

  it("a matching PTR whose name resolves elsewhere or not at all never makes a client, and is logged", function()
    for _, ip in ipairs { IP.elsewhere, IP.nowhere } do
      local code, text = rcpt_reply(srv, ip, "u@other.example")
      assert.equal(550, code)
      assert.matches("relaying denied", text, 1, true)
      local _, out = srv:ctl("test-address " .. ip)
      assert.matches(" is Other\n$", out)
    end
    srv:wait_log("client_by_dns_name: PTR name pc22%.corp%.example of 127%.0%.0%.22 does not resolve back")
    srv:wait_log("client_by_dns_name: PTR name ghost%.corp%.example of 127%.0%.0%.23 does not resolve back")
  end)

  it("a confirmed name outside the list is not a client; local recipients are unaffected", function()
    local code = rcpt_reply(srv, IP.other, "u@other.example")
    assert.equal(550, code)
    assert.equal(250, (rcpt_reply(srv, IP.elsewhere, "joe@example.test")))
  end)

  it("the setting is validated: a string instead of a list is refused by --check", function()
    local _, path = H.prepare {
      tag = "clientdns-bad",
      extra = 'protection = { client_by_dns_name = "*.corp.example" }\n',
    }
    local rc, out, err = H.check(path)
    assert.are_not.equal(0, rc)
    assert.matches("client_by_dns_name", out .. err, 1, true)
  end)
end)
