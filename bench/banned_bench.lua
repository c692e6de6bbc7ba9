-- bench/banned_bench.lua: how fast do banned header/body lines scan mail?
--
--   lua5.4 bench/banned_bench.lua            (from the repo root)
--
-- Generates ~10 MB of message text (header fields, wrapped ones whole with
-- their inner CR LF, as moat hands them to data_line; body lines of prose,
-- HTML, quoted text and base64), 1,000 patterns (exact lines and wildcards,
-- split between banned-headers and banned-body), and feeds every line
-- through the same loop twice: once with the 1,000 patterns, once with empty
-- sets.  Prints one line:
--   banned: patterns=1000 mb_per_s=X; patterns=0 mb_per_s=Y
-- A benchmark prints numbers; it never fails.
local dir = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
package.path = dir .. "/lua/?.lua;" .. dir .. "/lua/?/init.lua;" .. package.path
package.cpath = dir .. "/build/lua/?.so;" .. package.cpath   -- moat.lineset (make builds it)
local banned = require "moat.banned"

local TARGET = tonumber(os.getenv("BANNED_BENCH_MB") or "10") * 1e6
math.randomseed(20240601)
local rnd = math.random

local WORDS = {}
for w in ([[the of and to a in is that for it as was with be by on not he this are or his
  from at which but have an they you were her she there been one all we their has would when
  if so no will more out up about into them can only other time new some could these two may
  first then do any like my now over such our man me even most made after also did many off
  before must well back through years much where your way down should because each just those
  people how too little state good very make world still own see men work long get here
  between both life being under never day same another know while last might us great old
  year come since against go came right used take three meeting project report invoice
  attached please regards thanks schedule budget review customer order shipment account
  password support team office quarter release server network update]]):gmatch("%a+") do
  WORDS[#WORDS + 1] = w
end
local NAMES = { "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy" }
local DOMAINS = { "example.org", "example.net", "mail.example.com", "corp.example.test", "isp.example" }

local function words(n)
  local t = {}
  for i = 1, n do t[i] = WORDS[rnd(#WORDS)] end
  t[1] = t[1]:sub(1, 1):upper() .. t[1]:sub(2)
  return table.concat(t, " ")
end
local function addr() return NAMES[rnd(#NAMES)] .. "@" .. DOMAINS[rnd(#DOMAINS)] end
local function ip() return ("192.0.2.%d"):format(rnd(1, 254)) end
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64_line()
  local t = {}
  for i = 1, 76 do local k = rnd(64); t[i] = B64:sub(k, k) end
  return table.concat(t)
end

-- One message: list of { part, line }.
local function message(out)
  local function h(line) out[#out + 1] = { "header", line } end
  local function b(line) out[#out + 1] = { "body", line } end
  for _ = 1, rnd(2, 4) do
    h(("Received: from %s (%s [%s])\r\n\tby mx.example.test (moat) with ESMTP id %08X\r\n\tfor <%s>; Mon, 3 Jun 2024 10:%02d:%02d +0000")
      :format(DOMAINS[rnd(#DOMAINS)], DOMAINS[rnd(#DOMAINS)], ip(), rnd(0, 0x7fffffff), addr(), rnd(0, 59), rnd(0, 59)))
  end
  h("From: " .. NAMES[rnd(#NAMES)] .. " <" .. addr() .. ">")
  h("To: <" .. addr() .. ">")
  if rnd(3) == 1 then h("Cc: <" .. addr() .. ">,\r\n <" .. addr() .. ">") end
  h("Subject: " .. words(rnd(3, 9)))
  h(("Date: Mon, 3 Jun 2024 10:%02d:%02d +0000"):format(rnd(0, 59), rnd(0, 59)))
  h(("Message-ID: <%08x.%04x@%s>"):format(rnd(0, 0x7fffffff), rnd(0, 0xffff), DOMAINS[rnd(#DOMAINS)]))
  h("MIME-Version: 1.0")
  h("X-Mailer: Microsoft Outlook 16.0")
  local kind = rnd(10)
  if kind <= 6 then
    h("Content-Type: text/plain; charset=utf-8")
    for _ = 1, rnd(5, 60) do
      local r = rnd(10)
      if r == 1 then b("")
      elseif r == 2 then b("> " .. words(rnd(5, 12)))
      else b(words(rnd(6, 14)) .. ".") end
    end
    b("-- ")
    b(NAMES[rnd(#NAMES)] .. ", " .. words(3))
  elseif kind <= 8 then
    h("Content-Type: text/html; charset=utf-8")
    b("<html><body>")
    for _ = 1, rnd(5, 40) do
      b(("<p style=\"font-family:Arial\">%s <a href=\"https://www.%s/%s\">%s</a></p>")
        :format(words(rnd(4, 10)), DOMAINS[rnd(#DOMAINS)], WORDS[rnd(#WORDS)], words(2)))
    end
    b("</body></html>")
  else
    h("Content-Type: multipart/mixed;\r\n\tboundary=\"----=_Part_" .. rnd(1, 99999) .. "\"")
    b("------=_Part")
    b("Content-Type: text/plain")
    b("")
    for _ = 1, rnd(3, 10) do b(words(rnd(6, 12)) .. ".") end
    b("------=_Part")
    b("Content-Type: application/pdf; name=\"report.pdf\"")
    b("Content-Transfer-Encoding: base64")
    b("")
    for _ = 1, rnd(20, 200) do b(base64_line()) end
    b("------=_Part--")
  end
end

local lines, bytes = {}, 0
while bytes < TARGET do
  local start = #lines + 1
  message(lines)
  for i = start, #lines do bytes = bytes + #lines[i][2] + 2 end
end

-- 1,000 patterns: 350 exact header fields and 350 exact body lines copied
-- from "spam", 300 wildcards of every shape.
local hdr, body = {}, {}
for i = 1, 350 do hdr[#hdr + 1] = ("Subject: Congratulations winner %d, claim your prize today"):format(i) end
for i = 1, 350 do body[#body + 1] = ("Dear friend, I am the %s of the late %s and need your help %d"):format(
  WORDS[rnd(#WORDS)], NAMES[rnd(#NAMES)], i) end
for i = 1, 80 do hdr[#hdr + 1] = ("Subject: *%s pills %d*"):format(WORDS[rnd(#WORDS)], i) end
for i = 1, 40 do hdr[#hdr + 1] = ("X-Mailer: Bulk Sender %d*"):format(i) end
for i = 1, 30 do hdr[#hdr + 1] = ("Received: from *\\r\\n\\tby relay%d.bulkhost.invalid*"):format(i) end
for i = 1, 80 do body[#body + 1] = ("*http://promo%d.cheap-meds.invalid/*"):format(i) end
for i = 1, 50 do body[#body + 1] = ("*unsubscribe code %05d*"):format(i * 37) end
for i = 1, 15 do body[#body + 1] = ("*%s*%d*"):format(("rolex"):sub(1, 3), i) end   -- short pieces: scan list
for i = 1, 5 do body[#body + 1] = ("*v%diagra*"):format(i) end
assert(#hdr + #body == 1000)
local H = assert(banned.compile(table.concat(hdr, "\n"), "bench-headers", "header"))
local Bd = assert(banned.compile(table.concat(body, "\n"), "bench-body", "body"))
local H0 = assert(banned.compile("", "empty", "header"))
local B0 = assert(banned.compile("", "empty", "body"))

-- The line loop: what policies/banned.lua does for each data_line call.
local function scan(headers, bodyset)
  local hits = 0
  local t0 = os.clock()
  for i = 1, #lines do
    local l = lines[i]
    local set = l[1] == "header" and headers or bodyset
    if set:match(l[2]) then hits = hits + 1 end
  end
  return os.clock() - t0, hits
end

local function best_of(n, headers, bodyset)
  local best, hits = math.huge, 0
  for _ = 1, n do
    local t, h = scan(headers, bodyset)
    if t < best then best, hits = t, h end
  end
  return best, hits
end

local t1, hits = best_of(3, H, Bd)
local t0 = best_of(3, H0, B0)
local mb = bytes / 1e6
io.stderr:write(("# %d lines, %.1f MB, %d hits; index: headers %s, body %s\n"):format(#lines, mb, hits,
  ("exact=%d gram=%d prefix=%d suffix=%d scan=%d"):format(H.kinds.exact, H.kinds.gram, H.kinds.prefix, H.kinds.suffix, H.kinds.scan),
  ("exact=%d gram=%d prefix=%d suffix=%d scan=%d"):format(Bd.kinds.exact, Bd.kinds.gram, Bd.kinds.prefix, Bd.kinds.suffix, Bd.kinds.scan)))
print(("banned: patterns=1000 mb_per_s=%.1f; patterns=0 mb_per_s=%.1f"):format(mb / t1, mb / math.max(t0, 1e-9)))
