-- Integration: the PROXY protocol (DESIGN.md §9): sockets with proxy = true
-- take HAProxy v1/v2 headers from proxy_from only, and the header's address
-- is the client's for admission, the envelope and Received:.
local moat = require "helpers.moat"
local tls = require "helpers.tls"
local socket = require "socket"

local SIG = "\r\n\r\n\0\r\nQUIT\n"

local function v2(cmd, fam, body) return SIG .. string.char(0x20 + cmd, fam) .. string.pack(">I2", #body) .. body end
local function v4bytes(a) local p = {} for n in a:gmatch("%d+") do p[#p + 1] = string.char(tonumber(n)) end return table.concat(p) end
local V6SRC = "\x20\x01\x0d\xb8" .. string.rep("\0", 11) .. "\x07"     -- 2001:db8::7
local function v2_tcp4(src, tlvs)
  return v2(1, 0x11, v4bytes(src) .. v4bytes("127.0.0.1") .. string.pack(">I2I2", 40000, 25) .. (tlvs or ""))
end

-- Send a header, then one message; returns the stored envelope and message.
local function deliver(srv, header, opts)
  local c = moat.client(srv.port, { greeting = false, source = opts and opts.source })
  assert(c:send(header))
  c.greeting_code, c.greeting = c:read_reply()
  assert.equals(220, c.greeting_code, c.greeting)
  assert.equals(250, (c:ehlo()))
  local r = c:transaction { from = "alice@remote.example", rcpts = { "joe@example.test" }, data = moat.message() }
  assert.equals(250, r.final[1], r.final[2])
  c:close()
  for _, f in ipairs(srv:spool_files()) do
    if f.id == r.id then return f.envelope, f.eml end
  end
  error("message " .. tostring(r.id) .. " not stored")
end

-- A header, and the greeting it gets.
local function deliver_greeting(srv)
  local c = moat.client(srv.port, { greeting = false })
  assert(c:send("PROXY TCP4 192.0.2.1 127.0.0.1 40000 25\r\n"))
  local code = c:read_reply()
  c:close()
  return code
end

-- Send bytes and expect the connection closed with no greeting at all.
local function refused(srv, bytes, opts)
  local c = moat.client(srv.port, { greeting = false, source = opts and opts.source })
  if bytes ~= "" then assert(c:send(bytes)) end
  local closed, why = c:closed((opts and opts.wait) or 3)
  c:close()
  assert.is_true(closed, "expected a close without a greeting, got " .. tostring(why))
end

-- A counter of `moatctl stats` ("name value" lines).
local function stat(srv, name)
  local rc, out = srv:ctl("stats")
  assert.equals(0, rc, out)
  return tonumber(("\n" .. out):match("\n" .. name .. " (%d+)\n"))
end

describe("PROXY protocol", function()
  after_each(function() moat.stop_all() end)

  describe("on a proxy = true socket", function()
    local srv
    before_each(function()
      srv = moat.start {
        listener = '{ { port = %PORT%, address = "127.0.0.1", proxy = true } }',
        extra = 'proxy_from = "127.0.0.1"',
        tables = { denied_ips = "192.0.2.66\n" },
      }
    end)

    it("v1 TCP4: the header's address is in the envelope and Received:", function()
      local env, eml = deliver(srv, "PROXY TCP4 192.0.2.10 127.0.0.1 40000 25\r\n")
      assert.equals("192.0.2.10", env.ip)
      assert.matches("^Received: from client%.example %(192%.0%.2%.10 %[192%.0%.2%.10%]%)", eml)
      srv:wait_log("event=connect .*ip=192%.0%.2%.10 ")
    end)

    it("v1 TCP6 and v2 TCP4 with TLVs and v2 TCP6", function()
      assert.equals("2001:db8::5", (deliver(srv, "PROXY TCP6 2001:db8::5 ::1 40000 25\r\n")).ip)
      -- a NOOP TLV (type 4) and an unknown one after the addresses are skipped
      assert.equals("198.51.100.9", (deliver(srv, v2_tcp4("198.51.100.9", "\x04\x00\x02ab\xee\x00\x00"))).ip)
      local body = V6SRC .. string.rep("\0", 15) .. "\1" .. string.pack(">I2I2", 40000, 25)
      assert.equals("2001:db8::7", (deliver(srv, v2(1, 0x21, body))).ip)
    end)

    it("LOCAL (v2) and UNKNOWN (v1) use the real peer", function()
      assert.equals("127.0.0.1", (deliver(srv, v2(0, 0x00, ""))).ip)
      assert.equals("127.0.0.1", (deliver(srv, "PROXY UNKNOWN\r\n")).ip)
    end)

    it("admission uses the header's address: denied_ips closes with no greeting", function()
      refused(srv, "PROXY TCP4 192.0.2.66 127.0.0.1 40000 25\r\n")
      srv:wait_log("event=refused ip=192%.0%.2%.66 .*reason=denied_ips")
      assert.equals(0, stat(srv, "refused_proxy_total"))   -- a header accepted, then denied_ips
    end)

    it("closes malformed and oversized headers without a greeting and logs why", function()
      local cases = {
        { "EHLO client.example\r\n", "not_proxy_header" },
        { "PROXY TCP4 192.0.2.1\r\n", "v1_field_count" },
        { "PROXY TCP4 192.0.2.300 127.0.0.1 1 2\r\n", "v1_bad_address" },
        { "PROXY TCP4 192.0.2.1 127.0.0.1 1 99999\r\n", "v1_bad_port" },
        { "PROXY TCP5 192.0.2.1 127.0.0.1 1 2\r\n", "v1_bad_protocol" },
        { "PROXY TCP4 192.0.2.1 127.0.0.1 1 2\n", "v1_bad_byte" },
        { "PROXY UNKNOWN " .. string.rep("x", 120) .. "\r\n", "v1_too_long" },
        { SIG .. "\x31\x11\0\12" .. string.rep("\0", 12), "v2_bad_version" },
        { SIG .. "\x21\x11\xff\xff", "v2_too_long" },
        { v2(1, 0x12, string.rep("\0", 12)), "v2_unsupported_family" },
        { v2(1, 0x11, "\1\2\3"), "v2_short_address" },
      }
      for _, case in ipairs(cases) do
        refused(srv, case[1])
        srv:wait_log("event=proxy_refused ip=127%.0%.0%.1 .*reason=" .. case[2])
      end
      assert.equals(0, #srv:events("connect"))
      -- every refusal is counted, in moatctl stats (and so the metrics)
      assert.equals(#cases, stat(srv, "refused_proxy_total"))
    end)

    it("closes a connection whose header is missing or incomplete after 5 s", function()
      local t0 = socket.gettime()
      local silent = moat.client(srv.port, { greeting = false })
      local slow = moat.client(srv.port, { greeting = false })
      assert(slow:send("PROXY TCP4 192.0.2."))
      assert.is_true((silent:closed(8)))
      assert.is_true((slow:closed(2)))
      local took = socket.gettime() - t0
      assert.is_true(took > 4.5 and took < 7, "closed after " .. took .. " s")
      silent:close()
      slow:close()
      srv:wait_log("event=proxy_refused .*reason=no_header")
      srv:wait_log("event=proxy_refused .*reason=header_timeout")
    end)

    it("refuses a valid header from a peer outside proxy_from", function()
      refused(srv, "PROXY TCP4 192.0.2.10 127.0.0.1 40000 25\r\n", { source = "127.0.0.2" })
      srv:wait_log("event=proxy_refused ip=127%.0%.0%.2 .*reason=not_in_proxy_from")
      assert.equals(1, stat(srv, "refused_proxy_total"))
    end)
  end)

  it("connection limits count the header's address, not the balancer's", function()
    local srv = moat.start {
      listener = '{ limit_per_address = 1, { port = %PORT%, address = "127.0.0.1", proxy = true } }',
      extra = 'proxy_from = "127.0.0.1"',
      tables = { client_ips = "" },
    }
    local function open(ip)
      local c = moat.client(srv.port, { greeting = false })
      assert(c:send("PROXY TCP4 " .. ip .. " 127.0.0.1 40000 25\r\n"))
      return c, c:read_reply()
    end
    local a, code_a = open("192.0.2.1")
    local b, code_b = open("192.0.2.2")
    assert.equals(220, code_a)
    assert.equals(220, code_b)
    local a2, code_a2, text = open("192.0.2.1")
    assert.equals(421, code_a2, text)
    srv:wait_log("event=refused ip=192%.0%.2%.1 .*reason=limit_per_address")
    a:close(); b:close(); a2:close()
  end)

  it("connections waiting for their header count against max_connections", function()
    local srv = moat.start {
      listener = '{ max_connections = 1, { port = %PORT%, address = "127.0.0.1", proxy = true } }',
      extra = 'proxy_from = "127.0.0.1"',
    }
    local waiting = moat.client(srv.port, { greeting = false })
    srv:wait_log("event=started")
    socket.sleep(0.2)
    refused(srv, "PROXY TCP4 192.0.2.1 127.0.0.1 40000 25\r\n")
    srv:wait_log("event=proxy_refused ip=127%.0%.0%.1 .*reason=max_connections")
    waiting:close()
    srv:wait_log("event=proxy_refused .*reason=closed_before_header")
    assert.equals(220, (deliver_greeting(srv)))
  end)

  it("--check refuses proxy = true without proxy_from", function()
    local _, conf = moat.prepare { listener = '{ { port = %PORT%, address = "127.0.0.1", proxy = true } }' }
    local rc, _, err = moat.check(conf)
    assert.is_not.equals(0, rc)
    assert.matches("proxy = true but proxy_from is not set", err)
  end)

  it("tls = \"on\": TLS starts after the header", function()
    local f = {}
    tls.domain_files(f, "example.test", "ex")
    local srv = moat.start {
      files = f,
      listener = '{ { port = %PORT%, address = "127.0.0.1", tls = "on", proxy = true } }',
      extra = 'proxy_from = "127.0.0.1"\ndomains = { ["example.test"] = { addresses = { "127.0.0.1" }, ' ..
              'certificate = "ex.pem", private_key = "ex.key" } }',
    }
    local c = moat.client(srv.port, { greeting = false })
    assert(c:send("PROXY TCP4 192.0.2.20 127.0.0.1 40000 25\r\n"))
    assert(tls.wrap(c))
    assert.equals(220, (c:read_reply()))
    assert.equals(250, (c:ehlo()))
    c:close()
    srv:wait_log("event=connect .*ip=192%.0%.2%.20 ")
  end)

  it("behind a real HAProxy with send-proxy-v2, the envelope has the client's address", function()
    local srv = moat.start {
      listener = '{ { port = %PORT%, address = "127.0.0.1", proxy = true } }',
      extra = 'proxy_from = "127.0.0.1"',
    }
    local hport = moat.free_port()
    local cfg = srv.dir .. "/haproxy.cfg"
    moat.write_file(cfg, ([[
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend smtp
  bind 127.0.0.1:%d
  default_backend moat
backend moat
  server s1 127.0.0.1:%d send-proxy-v2
]]):format(hport, srv.port))
    local pid = moat.spawn(("exec /usr/sbin/haproxy -f %s -db >%s 2>&1"):format(
      moat.shquote(cfg), moat.shquote(srv.dir .. "/haproxy.log")))
    local ok, err = pcall(function()
      assert.is_truthy(moat.poll(function()
        local s = socket.tcp()
        local up = s:connect("127.0.0.1", hport)
        s:close()
        return up
      end, 5), "haproxy did not start: " .. (moat.read_file(srv.dir .. "/haproxy.log") or ""))
      local c = moat.client(hport, { source = "127.0.0.2" })
      assert.equals(220, c.greeting_code, c.greeting)
      assert.equals(250, (c:ehlo()))
      local r = c:transaction { from = "alice@remote.example", rcpts = { "joe@example.test" }, data = moat.message() }
      assert.equals(250, r.final[1], r.final[2])
      c:close()
      local env
      for _, f in ipairs(srv:spool_files()) do if f.id == r.id then env = f.envelope end end
      assert.equals("127.0.0.2", env and env.ip)
    end)
    os.execute("kill " .. pid .. " 2>/dev/null")
    assert(ok, err)
  end)
end)
