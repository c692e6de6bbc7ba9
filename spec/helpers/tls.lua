-- spec/helpers/tls.lua: certificates made at test time, a TLS client on top
-- of the helpers.moat SMTP client, and password hashes for accounts tables.
--
--   local moat = require "helpers.moat"
--   local tls = require "helpers.tls"
--   local files = tls.domain_files({}, "example.test", "ex")   -- ex.pem / ex.key (CN = example.test)
--   local srv = moat.start { files = files, extra = 'domains = { ["example.test"] = {
--       addresses = { "127.0.0.1" }, certificate = "ex.pem", private_key = "ex.key" } }' }
--   local c = moat.client(srv.port); c:ehlo()
--   assert(tls.starttls(c))                -- STARTTLS, 220, handshake: c now talks TLS
--   tls.peer_cn(c)                         -- "example.test"
--   local c2 = tls.connect(port, { sni = "other.test", host = "127.0.0.2" })   -- tls = "on" socket
--
-- Needs LuaSec (Debian package lua-sec) and the openssl command.
local socket = require "socket"
local mime = require "mime"
local moat = require "helpers.moat"

local has_ssl, ssl = pcall(require, "ssl")
if not has_ssl then
  error("helpers.tls needs LuaSec: apt-get install lua-sec (" .. tostring(ssl) .. ")", 0)
end

local T = { ssl = ssl }

local shquote = moat.shquote

local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1", "r"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok and code == 0, out
end

-- ---- certificates ---------------------------------------------------------

local cert_cache = {}

-- A self-signed certificate for `name` (CN = name, subjectAltName DNS:name),
-- made once per process: { pem = text, key = text }.
function T.cert(name)
  if cert_cache[name] then return cert_cache[name] end
  local dir = moat.tmpdir("cert")
  local pem, key = dir .. "/cert.pem", dir .. "/cert.key"
  local ok, out = run(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes " ..
    "-days 2 -subj %s -addext %s -keyout %s -out %s"):format(
    shquote("/CN=" .. name), shquote("subjectAltName=DNS:" .. name), shquote(key), shquote(pem)))
  local c = ok and { pem = moat.read_file(pem), key = moat.read_file(key) } or nil
  os.execute("rm -rf " .. shquote(dir))
  assert(c and c.pem and c.key, "openssl could not make a certificate for " .. name .. ":\n" .. tostring(out))
  cert_cache[name] = c
  return c
end

-- Add BASE.pem and BASE.key for `domain` to a moat.start files table.
function T.domain_files(files, domain, base)
  local c = T.cert(domain)
  files[base .. ".pem"] = c.pem
  files[base .. ".key"] = c.key
  return files
end

-- ---- the TLS client -----------------------------------------------------------

-- LuaSec client parameters.  opts.protocol: "any" (default), "tlsv1_1",
-- "tlsv1_2", "tlsv1_3"; opts.ciphers: an OpenSSL cipher string (for old
-- protocols, "DEFAULT:@SECLEVEL=0" lets the client itself offer them).
function T.params(opts)
  opts = opts or {}
  return {
    mode = "client",
    protocol = opts.protocol or "any",
    verify = "none",
    options = { "all" },
    ciphers = opts.ciphers,
  }
end

-- Run a client handshake over the connection of a helpers.moat client
-- (c.sock).  On success c.sock is the TLS connection (the client's methods
-- keep working) and c.tls is set.  opts.sni sends that server name.
-- Returns true, or nil and the error.
function T.wrap(c, opts)
  opts = opts or {}
  local conn, err = ssl.wrap(c.sock, T.params(opts))
  if not conn then return nil, err end
  if opts.sni then conn:sni(opts.sni) end
  conn:settimeout(opts.timeout or 5)
  local ok, herr = conn:dohandshake()
  c.sock = conn         -- the plain socket was handed over to the TLS object either way
  if not ok then return nil, herr end
  c.tls = conn
  return true
end

-- STARTTLS on an SMTP session: returns true after a completed handshake, or
-- nil, err, code, text (code/text: the reply when it was not 220).
function T.starttls(c, opts)
  local code, text = c:cmd("STARTTLS")
  if code ~= 220 then return nil, "STARTTLS answered " .. tostring(code) .. " " .. tostring(text), code, text end
  local ok, err = T.wrap(c, opts)
  if not ok then return nil, "handshake: " .. tostring(err), code, text end
  return true
end

-- Connect to a tls = "on" socket: TCP (opts.host, opts.source as in
-- moat.client), handshake, then the greeting over TLS into c.greeting_code /
-- c.greeting.  Returns the client, or nil, err, client (handshake failed).
function T.connect(port, opts)
  opts = opts or {}
  local c = moat.client(port, { host = opts.host, source = opts.source, timeout = opts.timeout, greeting = false })
  local ok, err = T.wrap(c, opts)
  if not ok then return nil, err, c end
  if opts.greeting ~= false then c.greeting_code, c.greeting = c:read_reply() end
  return c
end

-- The peer certificate's subject CN.
function T.peer_cn(c)
  local cert = assert(c.tls, "not a TLS session"):getpeercertificate()
  if not cert then return nil end
  for _, e in ipairs(cert:subject()) do
    if e.short_name == "CN" or e.name == "commonName" or e.oid == "2.5.4.3" then return e.value end
  end
  return nil
end

-- The negotiated protocol ("TLSv1.3", ...).
function T.protocol(c)
  local info = assert(c.tls, "not a TLS session"):info()
  return info and info.protocol
end

-- ---- SASL and passwords -------------------------------------------------------

function T.b64(s) return (mime.b64(s)) end

-- AUTH PLAIN with an initial response, or (opts.continuation) after a 334.
-- Returns the final code, text (and the 334 code/text with a continuation).
function T.auth_plain(c, user, password, opts)
  local blob = T.b64("\0" .. user .. "\0" .. password)
  if opts and opts.continuation then
    local code, text = c:cmd("AUTH PLAIN")
    if code ~= 334 then return code, text end
    local fc, ft = c:cmd(blob)
    return fc, ft, code, text
  end
  return c:cmd("AUTH PLAIN " .. blob)
end

-- AUTH LOGIN: 334 Username, 334 Password, then the result.
function T.auth_login(c, user, password)
  local code, text = c:cmd("AUTH LOGIN")
  if code ~= 334 then return code, text end
  code, text = c:cmd(T.b64(user))
  if code ~= 334 then return code, text end
  return c:cmd(T.b64(password))
end

local hash_cache = {}

-- A crypt(3) SHA-512 hash of password: `openssl passwd -6`; with
-- rounds, crypt(3) itself through perl (libxcrypt reads "$6$rounds=N$").
function T.hash_password(password, rounds)
  local k = password .. "\0" .. tostring(rounds)
  if hash_cache[k] then return hash_cache[k] end
  local ok, out
  if rounds then
    local salt = ("%08x%08x"):format(math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
    ok, out = run(("perl -e 'print crypt($ARGV[0], $ARGV[1])' %s %s"):format(
      shquote(password), shquote(("$6$rounds=%d$%s$"):format(rounds, salt))))
  else
    ok, out = run("openssl passwd -6 " .. shquote(password))
  end
  local h = ok and out:match("^(%$6%$%S+)")
  assert(h, "could not hash a password: " .. tostring(out))
  hash_cache[k] = h
  return h
end

-- Wait helper re-exported for specs that only need this module.
T.sleep = socket.sleep

return T
