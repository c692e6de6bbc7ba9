-- Driver for fuzz_lua_spf: moat.spf's record parser, macro expansion and
-- check_host() on hostile records.
--
-- Input: RECORD [NEWLINE OTHER]...: RECORD is the TXT record of the checked
-- domain (fuzz.example); every other name's TXT answer is the next OTHER line
-- in turn (so include:, redirect= and exp= reach more hostile text), A/AAAA
-- answer an address, MX one host, PTR the checked domain.  The resolver is
-- a Lua function: nothing leaves the process.
-- Invariants: no Lua error; the result is one of the seven RFC 7208 words;
-- only fail carries an explanation, a string without CR/LF or NUL; no name
-- queried is longer than 253 bytes; the processing limits hold (at most
-- 10 DNS-querying terms, so a bounded number of queries per check).
local spf = require "moat.spf"

local RESULTS = { pass = true, fail = true, softfail = true, neutral = true, none = true,
                  permerror = true, temperror = true }
local MAX_QUERIES = 1 + 11 * (1 + 10) + 11 + 2   -- record + terms * (MX + 10 hosts) + PTR names + exp

return function(data)
  local lines = {}
  for l in (data .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
  local record, next_other, queries = lines[1], 2, 0
  local function query(name, qtype)
    queries = queries + 1
    assert(type(name) == "string" and #name <= 253, "query name over 253 bytes")
    assert(queries <= MAX_QUERIES, "more queries than the limits allow")
    if qtype == "TXT" then
      if name == "fuzz.example" then return { record } end
      local l = lines[next_other]
      if not l then return nil, "nxdomain" end
      next_other = next_other + 1
      return { l }
    elseif qtype == "A" then return { "192.0.2.1" }
    elseif qtype == "AAAA" then return { "2001:db8::1" }
    elseif qtype == "MX" then return { { host = "mx.fuzz.example", pref = 10 } }
    elseif qtype == "PTR" then return { "fuzz.example" }
    end
    return nil, "nodata"
  end
  spf.parse(record)
  for _, ip in ipairs { "192.0.2.1", "2001:db8::1" } do
    queries, next_other = 0, 2
    local r, expl = spf.check_host(ip, "fuzz.example", "user@fuzz.example", "helo.fuzz.example",
                                   { query = query, receiver = "mx.test" })
    assert(RESULTS[r], "not an RFC 7208 result: " .. tostring(r))
    if r == "fail" then
      assert(type(expl) == "string", "fail without an explanation")
      assert(not expl:find("[\r\n%z]"), "explanation with CR, LF or NUL")
    else
      assert(expl == nil, "explanation for " .. r)
    end
  end
end
