-- Driver for fuzz_rules: moat.rules (Server-Wide Rules) compile + evaluate.
--
-- Input: RULES [ NUL FROM NUL RCPT NUL HELO NUL HEADER-FIELD { NUL HEADER-FIELD } ].
-- Any Lua error is a bug.  A ruleset that compiles must not make the rules
-- policy fail at run time: every add_header it produces must be accepted by
-- s:add_header (src/lua_bridge.c l_add_header: name 1..76 bytes, no
-- control/space/':'/8-bit bytes; value without CR, LF or NUL; name + value +
-- 2 <= 998), every reject code by moat.reject (integer 400..599, text a
-- string), every redirect address by moat.redirect.
local rules = require "moat.rules"

-- FUZZ_KNOWN=rules-cr-value skips the known finding
-- fuzz/regress/fuzz_rules/add-header-cr-in-value (until it is fixed).
local skip_cr = (os.getenv("FUZZ_KNOWN") or ""):find("rules-cr-value", 1, true)

local function check_header(name, value)
  assert(type(name) == "string" and #name > 0 and #name <= 76, "add_header name length")
  for i = 1, #name do
    local c = name:byte(i)
    assert(c > 32 and c ~= 58 and c < 127, ("add_header name %q has a byte s:add_header refuses"):format(name))
  end
  assert(type(value) == "string", "add_header value is a string")
  assert(skip_cr or not value:find("[\r\n%z]"), ("add_header value %q holds CR, LF or NUL: s:add_header raises, every message gets 451"):format(value))
  assert(#name + #value + 2 <= 998, "add_header longer than 998")
end

local function check_final(a)
  if a.kind == "reject" then
    assert(math.type(a.code) == "integer" and a.code >= 400 and a.code <= 599, "reject code " .. tostring(a.code))
    assert(a.text == nil or type(a.text) == "string", "reject text")
  elseif a.kind == "redirect" then
    assert(type(a.address) == "string" and a.address:match("^[^%s<>]+@[^%s<>@]+$"), "redirect address")
  else
    assert(a.kind == "discard", "unknown final action " .. tostring(a.kind))
  end
end

return function(data)
  local parts = {}
  for p in (data .. "\0"):gmatch("(.-)%z") do parts[#parts + 1] = p end
  local set, err = rules.compile(parts[1], "fuzz")
  if not set then
    assert(type(err) == "string" and err:find("^fuzz:%d+: "), "compile error without 'fuzz:LINE: ': " .. tostring(err))
    return
  end
  for _, r in ipairs(set.rules) do
    for _, a in ipairs(r.actions) do
      if a.kind == "add_header" then check_header(a.name, a.value) else check_final(a) end
    end
  end
  local headers = {}
  for i = 5, #parts do
    local name, value = rules.split_header(parts[i])
    if name then
      headers[name] = headers[name] or {}
      table.insert(headers[name], value)
    end
  end
  local ctx = { from = parts[2] or "", rcpts = { parts[3] or "joe@example.test", "x@y.example" },
                ip = "192.0.2.1", helo = parts[4] or "", headers = headers }
  local res = set:evaluate(ctx)
  assert(type(res) == "table" and type(res.add_headers) == "table", "evaluate result")
  for _, h in ipairs(res.add_headers) do check_header(h.name, h.value) end
  if res.final then check_final(res.final) end
end
