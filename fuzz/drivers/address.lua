-- Driver for fuzz_lua_address: moat.address on hostile text.
--
-- The whole input is one path (with or without <>).  Any Lua error is a bug.
-- Invariants: parse gives an address or nil, message; for an address,
-- format() parses again to the same canonical form (idempotent), with the
-- same route kind and mailbox, so there is exactly one spelling the relay
-- checks and the Router compare.  valid_domain / simple / route_kind /
-- canonical_domain / quote_local never raise on any string.
local address = require "moat.address"

local ROUTE_KINDS = { source = true, quoted = true, percent = true, bang = true }

return function(data)
  local a, err = address.parse(data)
  local ok, kind = address.simple(data)
  assert(type(ok) == "boolean", "simple() must return a boolean")
  local rk = address.route_kind(data)
  address.valid_domain(data)
  address.canonical_domain(data)
  address.is_dot_string(data)
  if not a then
    assert(type(err) == "string" and err ~= "", "parse returned nil without a message")
    assert(ok == false and kind == "invalid" and rk == "invalid", "unparsable address must be 'invalid'")
    return
  end
  assert(type(a) == "table", "parse returned a non-table")
  if a.null then
    assert(address.format(a) == "", "null address formats as empty")
    return
  end
  assert(type(a.localpart) == "string" and a.localpart ~= "", "address without a local part")
  assert(a.route_kind == nil or ROUTE_KINDS[a.route_kind], "unknown route kind")
  assert(a.simple == (a.route_kind == nil), "simple iff no route kind")
  assert(ok == a.simple and rk == a.route_kind, "simple()/route_kind() disagree with parse")
  if a.domain then
    assert(address.valid_domain(a.domain), "parsed domain is not valid_domain")
  end
  -- the canonical local part parses back to the same decoded local part
  local qa = address.parse(a.local_text .. "@x.example")
  assert(qa and qa.localpart == a.localpart, "quote_local does not round-trip for " .. a.local_text)
  local f = address.format(a)
  local b, berr = address.parse(f)
  assert(b, ("format %q of %q does not parse: %s"):format(f, data, tostring(berr)))
  assert(address.format(b) == f, ("format is not idempotent: %q -> %q"):format(f, address.format(b)))
  assert(b.route_kind == a.route_kind, "route kind changes through format")
  assert(b.mailbox == a.mailbox, "mailbox changes through format")
  assert(b.localpart == a.localpart, "local part changes through format")
  local c = address.parse("<" .. f .. ">")
  assert(c and address.format(c) == f, "bracketed canonical form parses the same")
end
