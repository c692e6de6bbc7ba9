-- moat.spf: RFC 7208 check_host() on moat's own asynchronous resolver
-- (DESIGN §8).  Every DNS query goes through moat.dns.query, so a check
-- suspends only the session (or control task) running it.
--
--   local spf = require "moat.spf"
--   local result, explanation = spf.check_host(ip, domain, sender, helo [, opts])
--   result: "pass" "fail" "softfail" "neutral" "none" "permerror" "temperror";
--   explanation: for "fail" only (exp= or the default text).
--   opts.query(name, type) replaces moat.dns.query (the fuzz target and unit
--   tests use this); opts.receiver is the %{r} name.
--
-- The record is parsed completely before anything is evaluated, so a syntax
-- error anywhere is a permerror whatever comes before it (RFC 7208 §4.6).
-- Limits (§4.6.4): 10 DNS-querying terms per check (include and redirect
-- count, and the count is shared by the whole include tree), 10 MX or PTR
-- names, 2 void lookups.  Those limits also bound the work a hostile
-- record can cause: at most ~10 * 10 address lookups per check.
local M = {}

local MAX_TERMS, MAX_NAMES, MAX_VOID = 10, 10, 2
M.DEFAULT_EXPLANATION = "Rejected by SPF policy of %{o}"

-- ---- addresses ----------------------------------------------------------

-- "1.2.3.4" -> { 1, 2, 3, 4 } or nil.  No leading zeros beyond "0".
local function parse_ip4(s)
    local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
    if not a then return nil end
    local out = {}
    for i, p in ipairs { a, b, c, d } do
        if #p > 3 or (#p > 1 and p:sub(1, 1) == "0") then return nil end
        local n = tonumber(p)
        if n > 255 then return nil end
        out[i] = n
    end
    return out
end

-- IPv6 text -> 16 bytes, or nil.  Accepts "::" and a trailing dotted quad.
local function parse_ip6(s)
    if #s > 45 or not s:find(":") then return nil end
    local head, tail = s, nil
    local dc = s:find("::", 1, true)
    if dc then
        if s:find("::", dc + 1, true) then return nil end
        head, tail = s:sub(1, dc - 1), s:sub(dc + 2)
    end
    local function groups(part, allow_v4)
        local out = {}
        if part == "" then return out end
        local fields = {}
        for f in (part .. ":"):gmatch("([^:]*):") do fields[#fields + 1] = f end
        for i, f in ipairs(fields) do
            if i == #fields and allow_v4 and f:find("%.") then
                local v4 = parse_ip4(f)
                if not v4 then return nil end
                for _, b in ipairs(v4) do out[#out + 1] = b end
            else
                if not f:match("^%x%x?%x?%x?$") then return nil end
                local n = tonumber(f, 16)
                out[#out + 1] = n >> 8
                out[#out + 1] = n & 255
            end
        end
        return out
    end
    local h = groups(head, tail == nil)
    local t = tail and groups(tail, true) or {}
    if not h or not t then return nil end
    if tail then
        if #h + #t > 14 then return nil end
        local out = {}
        for _, b in ipairs(h) do out[#out + 1] = b end
        for _ = 1, 16 - #h - #t do out[#out + 1] = 0 end
        for _, b in ipairs(t) do out[#out + 1] = b end
        return out
    end
    if #h ~= 16 then return nil end
    return h
end

-- RFC 5952 text of 16 bytes (lowercase, longest zero run compressed).
local function format_ip6(b)
    local g = {}
    for i = 1, 8 do g[i] = (b[2 * i - 1] << 8) | b[2 * i] end
    local best, bestlen, i = nil, 1, 1
    while i <= 8 do
        if g[i] == 0 then
            local j = i
            while j <= 8 and g[j] == 0 do j = j + 1 end
            if j - i > bestlen then best, bestlen = i, j - i end
            i = j
        else
            i = i + 1
        end
    end
    local parts = {}
    for k = 1, 8 do parts[k] = string.format("%x", g[k]) end
    if not best then return table.concat(parts, ":") end
    return table.concat(parts, ":", 1, best - 1) .. "::" .. table.concat(parts, ":", best + bestlen, 8)
end

-- The client address: family 4 or 6, bytes.  An IPv4-mapped IPv6 address
-- is the IPv4 address (what dual-stack sockets report).
local function client_ip(s)
    local v4 = parse_ip4(s)
    if v4 then return { family = 4, bytes = v4 } end
    local v6 = parse_ip6(s)
    if not v6 then return nil end
    local mapped = true
    for i = 1, 10 do if v6[i] ~= 0 then mapped = false end end
    if mapped and v6[11] == 255 and v6[12] == 255 then
        return { family = 4, bytes = { v6[13], v6[14], v6[15], v6[16] } }
    end
    return { family = 6, bytes = v6 }
end

local function in_net(ip, net, bits)
    if #ip ~= #net then return false end
    for i = 1, #ip do
        local take = math.min(8, math.max(0, bits - 8 * (i - 1)))
        if take == 0 then return true end
        local mask = (0xff << (8 - take)) & 0xff
        if ip[i] & mask ~= net[i] & mask then return false end
    end
    return true
end

local function ip_text(ip)
    if ip.family == 4 then return table.concat(ip.bytes, ".") end
    return format_ip6(ip.bytes)
end

-- %{i}: dotted quad, or 32 dot-separated nibbles for IPv6.
local function ip_dotted(ip)
    if ip.family == 4 then return table.concat(ip.bytes, ".") end
    local n = {}
    for _, b in ipairs(ip.bytes) do
        -- upper case, as the OpenSPF suite's explanations expect (DNS does not care)
        n[#n + 1] = string.format("%X", b >> 4)
        n[#n + 1] = string.format("%X", b & 15)
    end
    return table.concat(n, ".")
end

-- ---- syntax ---------------------------------------------------------------

local MACRO_LETTERS = "slodipvh"
local EXP_LETTERS = "slodipvhcrt"

-- Check a macro-string; returns true or nil.  exp: c, r, t allowed.
local function valid_macro_string(s, exp)
    local i, n = 1, #s
    local letters = exp and EXP_LETTERS or MACRO_LETTERS
    while i <= n do
        local c = s:sub(i, i)
        if c == "%" then
            local nx = s:sub(i + 1, i + 1)
            if nx == "%" or nx == "_" or nx == "-" then
                i = i + 2
            elseif nx == "{" then
                local close = s:find("}", i + 2, true)
                if not close then return nil end
                local body = s:sub(i + 2, close - 1)
                local letter, digits, rev, delims = body:match("^(%a)(%d*)(r?)([%.%-%+,/_=]*)$")
                if not letter then
                    letter, digits, rev, delims = body:match("^(%a)(%d*)(R?)([%.%-%+,/_=]*)$")
                end
                if not letter or not letters:find(letter:lower(), 1, true) then return nil end
                if digits ~= "" and (tonumber(digits) == 0 or #digits > 3) then return nil end
                i = close + 1
            else
                return nil
            end
        else
            local b = c:byte()
            if b < 0x21 or b > 0x7e then
                if not (exp and b == 0x20) then return nil end
            end
            i = i + 1
        end
    end
    return true
end

local function valid_toplabel(l)
    if l == "" or #l > 63 then return false end
    if not l:match("^[%w%-]+$") then return false end
    if not l:find("%a") then return false end   -- all-numeric is an address, not a name
    return l:sub(1, 1) ~= "-" and l:sub(-1) ~= "-"
end

-- domain-spec = macro-string domain-end; domain-end = "." toplabel ["."] / macro-expand
local function valid_domain_spec(s)
    if s == "" or not valid_macro_string(s, false) then return nil end
    if s:sub(-1) == "}" then return true end   -- domain-end is a macro-expand
    local t = s:gsub("%.$", "")
    local top = t:match("%.([^%.]*)$")
    if not top then return nil end
    return valid_toplabel(top) or nil
end

local function parse_cidr(s, max)
    if s == "" then return max end
    if not s:match("^%d+$") or (#s > 1 and s:sub(1, 1) == "0") then return nil end
    local n = tonumber(s)
    if n > max then return nil end
    return n
end

-- Split "name/24//64" into domain-spec and the two prefix lengths.
local function split_dual_cidr(arg)
    local spec, c4, c6 = arg, "", ""
    local s1, r6 = arg:match("^(.-)//(%d*)$")
    if s1 then spec, c6 = s1, r6 end
    local s2, r4 = spec:match("^(.-)/(%d*)$")
    if s2 then spec, c4 = s2, r4 end
    if (s1 and c6 == "") or (s2 and c4 == "") then return nil end
    local b4, b6 = parse_cidr(c4, 32), parse_cidr(c6, 128)
    if not b4 or not b6 then return nil end
    return spec, b4, b6
end

local MECHS = { all = true, include = true, a = true, mx = true, ptr = true, ip4 = true, ip6 = true,
                exists = true }

-- Parse a record (after "v=spf1") into terms; nil, why on a syntax error.
function M.parse(record)
    if #record > 0 and not record:match("^[\32-\126]*$") then return nil, "non-ASCII or control character" end
    local lower = record:lower()
    if lower ~= "v=spf1" and lower:sub(1, 7) ~= "v=spf1 " then return nil, "not an SPF record" end
    local terms, mods = {}, {}
    for term in record:sub(7):gmatch("[^ ]+") do
        local name, value = term:match("^([%a][%w%-_%.]*)=(.*)$")
        if name then
            name = name:lower()
            if name == "redirect" or name == "exp" then
                if mods[name] then return nil, "duplicate " .. name .. "=" end
                if not valid_domain_spec(value) then return nil, "bad " .. name .. "= domain" end
                mods[name] = value
            elseif not valid_macro_string(value, false) then
                return nil, "bad modifier " .. name
            end
        else
            local q, rest = term:match("^([%+%-~%?]?)(.*)$")
            local mech, sep, arg = rest:match("^(%a[%w]*)([:/]?)(.*)$")
            if not mech then return nil, "bad term " .. term end
            mech = mech:lower()
            if not MECHS[mech] then return nil, "unknown mechanism " .. mech end
            if sep == "" and arg ~= "" then return nil, "bad term " .. term end
            local t = { q = q == "" and "+" or q, mech = mech }
            if mech == "all" then
                if sep ~= "" then return nil, "all takes no argument" end
            elseif mech == "include" or mech == "exists" then
                if sep ~= ":" or not valid_domain_spec(arg) then return nil, mech .. " needs a domain" end
                t.domain = arg
            elseif mech == "ptr" then
                if sep == "/" then return nil, "ptr takes no prefix" end
                if sep == ":" then
                    if not valid_domain_spec(arg) then return nil, "bad ptr domain" end
                    t.domain = arg
                end
            elseif mech == "a" or mech == "mx" then
                local full = sep .. arg
                local spec, b4, b6 = split_dual_cidr(full)
                if not spec then return nil, "bad prefix length" end
                if spec ~= "" then
                    if spec:sub(1, 1) ~= ":" then return nil, "bad " .. mech end
                    spec = spec:sub(2)
                    if not valid_domain_spec(spec) then return nil, "bad " .. mech .. " domain" end
                    t.domain = spec
                end
                t.b4, t.b6 = b4, b6
            elseif mech == "ip4" or mech == "ip6" then
                local parse_ip, max = parse_ip4, 32
                if mech == "ip6" then parse_ip, max = parse_ip6, 128 end
                if sep ~= ":" then return nil, mech .. " needs an address" end
                local addr, bits = arg:match("^([^/]*)/?(.*)$")
                if arg:find("/", 1, true) and bits == "" then return nil, "bad " .. mech .. " prefix" end
                t.net, t.bits = parse_ip(addr), parse_cidr(bits, max)
                if not t.net or not t.bits then return nil, "bad " .. mech .. " " .. arg end
            end
            terms[#terms + 1] = t
        end
    end
    return { terms = terms, redirect = mods.redirect, exp = mods.exp }
end

-- ---- macro expansion (§7) ---------------------------------------------------

local function urlencode(s)
    return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- Drop leftmost labels until the name fits in 253 bytes (§7.3).
local function truncate_name(s)
    s = s:gsub("%.$", "")
    while #s > 253 do
        local dot = s:find(".", 1, true)
        if not dot then return s:sub(-253) end
        s = s:sub(dot + 1)
    end
    return s
end

local expand

local function macro_value(ctx, letter)
    if letter == "s" then return ctx.sender
    elseif letter == "l" then return ctx.local_part
    elseif letter == "o" then return ctx.sender_domain
    elseif letter == "d" then return ctx.domain
    elseif letter == "i" then return ip_dotted(ctx.ip)
    elseif letter == "p" then return ctx.st:validated_name(ctx)
    elseif letter == "v" then return ctx.ip.family == 4 and "in-addr" or "ip6"
    elseif letter == "h" then return ctx.helo
    elseif letter == "c" then return ip_text(ctx.ip)
    elseif letter == "r" then return ctx.st.receiver
    elseif letter == "t" then return tostring(os.time())
    end
end

function expand(ctx, s, exp)
    local out, i, n = {}, 1, #s
    while i <= n do
        local c = s:sub(i, i)
        if c ~= "%" then
            out[#out + 1] = c
            i = i + 1
        else
            local nx = s:sub(i + 1, i + 1)
            if nx == "%" then out[#out + 1] = "%"; i = i + 2
            elseif nx == "_" then out[#out + 1] = " "; i = i + 2
            elseif nx == "-" then out[#out + 1] = "%20"; i = i + 2
            else
                local close = s:find("}", i + 2, true)
                local body = s:sub(i + 2, close - 1)
                local letter, digits, rev, delims = body:match("^(%a)(%d*)([rR]?)(.*)$")
                local value = macro_value(ctx, letter:lower()) or ""
                local parts = {}
                local pat = delims == "" and "[^%.]*" or ("[^" .. delims:gsub("[%.%-%+]", "%%%0") .. "]*")
                -- split keeping empty parts
                local pos = 1
                while true do
                    local a, b = value:find(pat, pos)
                    parts[#parts + 1] = value:sub(a, b)
                    if b + 1 > #value then break end
                    pos = b + 2
                end
                if rev ~= "" then
                    local r = {}
                    for k = #parts, 1, -1 do r[#r + 1] = parts[k] end
                    parts = r
                end
                if digits ~= "" then
                    local keep = tonumber(digits)
                    if keep < #parts then
                        local r = {}
                        for k = #parts - keep + 1, #parts do r[#r + 1] = parts[k] end
                        parts = r
                    end
                end
                local v = table.concat(parts, ".")
                if letter:match("%u") then v = urlencode(v) end
                out[#out + 1] = v
                i = close + 1
            end
        end
        if not exp and #out > 4096 then break end   -- bounded before truncation
    end
    return table.concat(out)
end

-- The name a domain-spec stands for, or nil when it is no valid name (an
-- empty or over-long label): the caller's permerror.
local function target_name(ctx, spec)
    if not spec then return ctx.domain end
    local name = truncate_name(expand(ctx, spec, false))
    for label in (name .. "."):gmatch("([^%.]*)%.") do
        if label == "" or #label > 63 then return nil end
    end
    return name
end

-- ---- DNS ----------------------------------------------------------------------

local State = {}
State.__index = State

-- One lookup: list (possibly empty: nxdomain/nodata are "void"), or nil, "temperror".
function State:lookup(name, qtype)
    local ans, err = self.query(name, qtype)
    if ans then return ans end
    if err == "nxdomain" or err == "nodata" then return {}, err end
    return nil, err
end

function State:count_term()
    self.terms = self.terms + 1
    return self.terms <= MAX_TERMS
end

function State:void()
    self.voids = self.voids + 1
    return self.voids <= MAX_VOID
end

local function name_eq(a, b) return a:lower():gsub("%.$", "") == b:lower():gsub("%.$", "") end

local function addr_matches(ctx, list, bits)
    for _, a in ipairs(list) do
        local p = ctx.ip.family == 4 and parse_ip4(a) or parse_ip6(a)
        if p and in_net(ctx.ip.bytes, p, bits) then return true end
    end
    return false
end

-- Validated PTR names of the client (§5.5): up to 10 names whose A/AAAA
-- includes the client address.  DNS errors just drop names.
function State:validated_names(ctx)
    if self._validated then return self._validated end
    local out = {}
    local rev = ip_dotted(ctx.ip)
    local parts = {}
    for p in rev:gmatch("[^%.]+") do table.insert(parts, 1, p) end
    local ptrname = table.concat(parts, ".") .. (ctx.ip.family == 4 and ".in-addr.arpa" or ".ip6.arpa")
    local names = self:lookup(ptrname, "PTR") or {}
    local qtype = ctx.ip.family == 4 and "A" or "AAAA"
    for k = 1, math.min(#names, MAX_NAMES) do
        local addrs = self:lookup(names[k], qtype)
        if addrs and addr_matches(ctx, addrs, ctx.ip.family == 4 and 32 or 128) then out[#out + 1] = names[k] end
    end
    self._validated = out
    return out
end

function State:validated_name(ctx)
    local names = self:validated_names(ctx)
    for _, n in ipairs(names) do
        if name_eq(n, ctx.domain) then return n end
    end
    for _, n in ipairs(names) do
        if n:lower():sub(-(#ctx.domain + 1)) == "." .. ctx.domain:lower() then return n end
    end
    return names[1] or "unknown"
end

-- ---- check_host ---------------------------------------------------------------

local function valid_domain(d)
    if not d or d == "" or #d > 253 then return false end
    d = d:gsub("%.$", "")
    if not d:find(".", 1, true) then return false end
    for label in (d .. "."):gmatch("([^%.]*)%.") do
        if label == "" or #label > 63 then return false end
    end
    return true
end

local check

-- The record of a domain: parsed record, or nil + result.
local function fetch_record(st, domain)
    local txt, err = st:lookup(domain, "TXT")
    if not txt then return nil, "temperror" end
    local found
    for _, r in ipairs(txt) do
        local l = r:lower()
        if l == "v=spf1" or l:sub(1, 7) == "v=spf1 " then
            if found then return nil, "permerror" end
            found = r
        end
    end
    if not found then return nil, "none" end
    local rec = M.parse(found)
    if not rec then return nil, "permerror" end
    return rec
end

local QUAL = { ["+"] = "pass", ["-"] = "fail", ["~"] = "softfail", ["?"] = "neutral" }

-- Evaluate one mechanism: true (match), false, or nil + result (error).
local function mech_match(st, ctx, t)
    local m = t.mech
    if m == "all" then return true end
    if m == "ip4" then return ctx.ip.family == 4 and in_net(ctx.ip.bytes, t.net, t.bits) end
    if m == "ip6" then return ctx.ip.family == 6 and in_net(ctx.ip.bytes, t.net, t.bits) end
    if not st:count_term() then return nil, "permerror" end
    local name = target_name(ctx, t.domain)
    if not name then return nil, "permerror" end
    if m == "include" then
        local r = check(st, ctx, name, true)
        if r == "pass" then return true end
        if r == "fail" or r == "softfail" or r == "neutral" then return false end
        if r == "temperror" then return nil, "temperror" end
        return nil, "permerror"
    end
    local qtype = ctx.ip.family == 4 and "A" or "AAAA"
    local bits = ctx.ip.family == 4 and t.b4 or t.b6
    if m == "a" then
        local ans = st:lookup(name, qtype)
        if not ans then return nil, "temperror" end
        if #ans == 0 and not st:void() then return nil, "permerror" end
        return addr_matches(ctx, ans, bits)
    end
    if m == "mx" then
        local mxs = st:lookup(name, "MX")
        if not mxs then return nil, "temperror" end
        if #mxs == 0 and not st:void() then return nil, "permerror" end
        if #mxs > MAX_NAMES then return nil, "permerror" end
        for _, mx in ipairs(mxs) do
            local host = mx.host or mx
            if host ~= "" and host ~= "." then
                local ans = st:lookup(host, qtype)
                if not ans then return nil, "temperror" end
                if #ans == 0 and not st:void() then return nil, "permerror" end
                if addr_matches(ctx, ans, bits) then return true end
            end
        end
        return false
    end
    if m == "ptr" then
        local target = name
        for _, n in ipairs(st:validated_names(ctx)) do
            local ln, lt = n:lower():gsub("%.$", ""), target:lower():gsub("%.$", "")
            if ln == lt or ln:sub(-(#lt + 1)) == "." .. lt then return true end
        end
        return false
    end
    if m == "exists" then
        local ans = st:lookup(name, "A")
        if not ans then return nil, "temperror" end
        if #ans == 0 and not st:void() then return nil, "permerror" end
        return #ans > 0
    end
    return nil, "permerror"
end

local function explanation(st, ctx, rec)
    if rec.exp then
        local name = target_name(ctx, rec.exp)
        local txt = name and st:lookup(name, "TXT")
        if txt and #txt == 1 and valid_macro_string(txt[1], true) then
            local text = expand(ctx, txt[1], true)
            if text:match("^[\32-\126]*$") then return text end
        end
    end
    return expand(ctx, M.DEFAULT_EXPLANATION, true)
end

-- check_host(ip, domain, sender) for one domain; nested = include/redirect.
function check(st, ctx, domain, nested)
    if not valid_domain(domain) then return nested and "permerror" or "none" end
    st.depth = st.depth + 1
    if st.depth > 20 then return "permerror" end
    local c = setmetatable({ domain = domain:gsub("%.$", "") }, { __index = ctx })
    local rec, res = fetch_record(st, c.domain)
    if not rec then
        st.depth = st.depth - 1
        return res
    end
    for _, t in ipairs(rec.terms) do
        local m, err = mech_match(st, c, t)
        if err then st.depth = st.depth - 1 return err end
        if m then
            local r = QUAL[t.q]
            local expl
            if r == "fail" and not nested then expl = explanation(st, c, rec) end
            st.depth = st.depth - 1
            return r, expl
        end
    end
    if rec.redirect then
        if not st:count_term() then st.depth = st.depth - 1 return "permerror" end
        local name = target_name(c, rec.redirect)
        if not name then st.depth = st.depth - 1 return "permerror" end
        local r, expl = check(st, ctx, name, nested)
        if r == "none" then r = "permerror" end
        st.depth = st.depth - 1
        return r, expl
    end
    st.depth = st.depth - 1
    return "neutral"
end

-- Public entry: sender "" means postmaster@helo.
function M.check_host(ip, domain, sender, helo, opts)
    opts = opts or {}
    local cip = client_ip(ip or "")
    if not cip then return "permerror", nil end
    local query = opts.query
    if not query then
        local moat = require "moat"
        query = moat.dns.query
    end
    local st = setmetatable({ query = query, terms = 0, voids = 0, depth = 0,
                              receiver = opts.receiver or "unknown" }, State)
    sender = sender or ""
    helo = helo or ""
    if sender == "" then sender = "postmaster@" .. helo end
    local lp, dom = sender:match("^(.*)@([^@]*)$")
    if not lp then lp, dom = "postmaster", sender end
    if lp == "" then lp = "postmaster" end
    local ctx = { ip = cip, sender = lp .. "@" .. dom, local_part = lp, sender_domain = dom, helo = helo }
    ctx.st = st
    local r, expl = check(st, ctx, domain or dom, false)
    return r, expl
end

-- `moatctl spf IP SENDER [HELO]`: one line, the result and for fail the
-- explanation.  SENDER may be "" (quoted by the shell: arrives as '""').
function M.control(arg)
    -- moatctl joins its arguments with a tab when one of them holds a
    -- space ("Macro Error"@x, a HELO of two words), else with one space; an
    -- empty SENDER shows up as two separators in a row.
    local sep = arg and arg:find("\t", 1, true) and "\t" or " "
    local words = {}
    for w in ((arg or "") .. sep):gmatch("([^" .. sep .. "]*)" .. sep) do words[#words + 1] = w end
    if #words > 3 then return "error: usage: spf IP SENDER [HELO]" end
    local ip, sender, helo = words[1], words[2], words[3]
    if not ip or ip == "" or not sender then return "error: usage: spf IP SENDER [HELO]" end
    if sender == '""' or sender == "<>" then sender = "" end
    if not client_ip(ip) then return "error: '" .. ip .. "' is not an IP address" end
    helo = helo or ""
    local domain
    if sender == "" then domain = helo else domain = sender:match("@([^@]*)$") or sender end
    local moat = require "moat"
    local receiver = type(moat.settings) == "table" and moat.settings.server_name or nil
    local r, expl = M.check_host(ip, domain, sender, helo, { receiver = receiver })
    if r == "fail" and expl then return r .. " " .. expl:gsub("[\r\n]", " ") end
    return r
end

M._parse_ip6, M._format_ip6 = parse_ip6, format_ip6
return M
