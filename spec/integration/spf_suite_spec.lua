-- Integration: the OpenSPF RFC 7208 test suite (spec/fixtures/openspf/, a copy
-- of the suite as published, BSD licence beside it)
-- against the real daemon (DESIGN §8).  For every scenario a small
-- authoritative DNS server (spec/helpers/spf_dns.py) serves its zonedata on
-- a loopback port and a fresh moat resolves through it (so no cache crosses
-- scenarios); every test is one `moatctl spf IP SENDER HELO`.  A test passes
-- when the result is one of its accepted results and, when it names an
-- explanation (other than DEFAULT), the explanation is exactly that.
local json = require "dkjson"
local H = require "helpers.moat"

local SUITE = os.getenv("SPF_SUITE") or (H.root .. "/spec/fixtures/openspf/rfc7208-tests.yml")
-- moat's own hostile cases (issue 13 "bad input"), in the same format
local HOSTILE = H.root .. "/spec/fixtures/spf-hostile.yml"
local PY = "/usr/bin/python3"
local DNS_PY = H.root .. "/spec/helpers/spf_dns.py"

local function load_suite(file)
  local p = assert(io.popen(("%s %s dump %s"):format(PY, H.shquote(DNS_PY), H.shquote(file))))
  local data = p:read("a")
  p:close()
  return assert(json.decode(data), "could not read the suite " .. file)
end

-- Start the DNS server for scenario n; returns port and a stop function.
local function start_dns(file, n)
  local dir = H.tmpdir("spfdns")
  local p = assert(io.popen(("%s %s serve %s %d 0 >%s/out 2>%s/err & echo $!"):format(
    PY, H.shquote(DNS_PY), H.shquote(file), n, dir, dir)))
  local pid = tonumber(p:read("l"))
  p:close()
  -- the server chooses its port (free for UDP and TCP both) and prints it
  local port
  assert(H.poll(function()
    port = tonumber((H.read_file(dir .. "/out") or ""):match("ready (%d+)"))
    return port
  end, 10), "spf_dns.py did not start: " .. (H.read_file(dir .. "/err") or ""))
  H.claim_port(port)  -- never handed to a moat of this process later
  return port, function()
    os.execute("kill " .. pid .. " 2>/dev/null")
    os.execute("rm -rf " .. H.shquote(dir))
  end
end

local function check(srv, t)
  local args = ("spf %s %s %s"):format(H.shquote(t.host), H.shquote(t.mailfrom or ""), H.shquote(t.helo or ""))
  local rc, out = srv:ctl(args)
  return rc, (out:gsub("\n$", ""))
end

local passed, total = 0, 0

local function run_suite(file, title)
  for n, scenario in ipairs(load_suite(file)) do
    describe(title .. ": " .. scenario.description, function()
      local srv, stop_dns
      setup(function()
        local port
        port, stop_dns = start_dns(file, n)
        srv = H.start { tag = "spfsuite",
                        extra = ('dns = { servers = { "127.0.0.1:%d" }, timeout_ms = 100, tries = 1 }'):format(port) }
      end)
      teardown(function()
        if srv then srv:stop() end
        if stop_dns then stop_dns() end
      end)
      for _, t in ipairs(scenario.tests) do
        it(t.name .. ": " .. table.concat(t.result, "|"), function()
          total = total + 1
          local rc, out = check(srv, t)
          assert.are.equal(0, rc, out)
          local result, expl = out:match("^(%S+) ?(.*)$")
          local ok = false
          for _, r in ipairs(t.result) do if r == result then ok = true end end
          assert.is_true(ok, ("%s %s %s: got %q, want %s"):format(t.host, t.mailfrom, t.helo, out,
                                                                  table.concat(t.result, "|")))
          if t.explanation and t.explanation ~= "DEFAULT" and result == "fail" then
            assert.are.equal(t.explanation, expl)
          end
          passed = passed + 1
        end)
      end
    end)
  end
end

describe("SPF via moatctl spf", function()
  teardown(function()
    print(("\nSPF suites (OpenSPF RFC 7208 + moat's hostile cases): %d of %d tests pass"):format(passed, total))
  end)
  run_suite(SUITE, "OpenSPF RFC 7208")
  run_suite(HOSTILE, "hostile")
end)
