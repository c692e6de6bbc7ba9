-- moat.config: runs conf/moat.conf in an empty sandbox and validates it.
--
-- Every top-level assignment goes through __newindex, so an unknown or badly
-- typed setting is reported with the file and line of the assignment itself
-- (error level 2 points at the config chunk).  Typos must never silently
-- disable protection, so nothing unknown is ignored.
local M = {}
local source = require "moat.source"

local function fail(msg) error(msg, 0) end

local function check_type(name, v, t)
  if type(v) ~= t then fail(("%s: expected a %s, got %s"):format(name, t, type(v))) end
  return v
end

local function check_int(name, v, lo, hi)
  if math.type(v) ~= "integer" then
    fail(("%s: expected an integer, got %s"):format(name, type(v) == "number" and "a fraction" or type(v)))
  end
  if (lo and v < lo) or (hi and v > hi) then
    fail(("%s: %d is out of range %d..%d"):format(name, v, lo or math.mininteger, hi or math.maxinteger))
  end
  return v
end

local function check_bool(name, v) return check_type(name, v, "boolean") end

local function check_list(name, v, each)
  check_type(name, v, "table")
  local out = {}
  for k in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 or k > #v then fail(name .. ": expected a list { ... }") end
  end
  for i, item in ipairs(v) do out[i] = each(("%s[%d]"):format(name, i), item) end
  return out
end

local function string_list(name, v) return check_list(name, v, function(n, s) return check_type(n, s, "string") end) end

-- A record with known keys: spec maps key -> checker(name, value).
local function check_record(name, v, spec)
  check_type(name, v, "table")
  local out = {}
  for k, val in pairs(v) do
    local f = type(k) == "string" and spec[k]
    if not f then fail(("%s: unknown key '%s'"):format(name, tostring(k))) end
    out[k] = f(name .. "." .. k, val)
  end
  return out
end

local function pair(name, v)
  check_list(name, v, function(n, x) return check_int(n, x, 1) end)
  if #v ~= 2 then fail(name .. ": expected { count, seconds }") end
  return { v[1], v[2] }
end

local protection_spec = {
  rbl_servers = string_list,
  blacklist_by_dns_name = string_list,
  whitehole_by_dns_name = string_list,
  client_by_dns_name = string_list,
  blacklisted_messages = function(n, v)
    if v == "reject" then return v end
    return check_record(n, v, { add_header = function(n2, s) return check_type(n2, s, "string") end })
  end,
  verify_helo_and_return_path = check_bool,
  spf = function(n, v)
    local function one_of(list)
      return function(n2, x)
        for _, ok in ipairs(list) do if x == ok then return x end end
        fail(("%s: expected %s, got %s"):format(n2, '"' .. table.concat(list, '", "') .. '"',
                                               type(x) == "string" and ('"' .. x .. '"') or type(x)))
      end
    end
    return check_record(n, v, { mode = one_of { "off", "header", "reject" }, helo = check_bool,
                                permerror = one_of { "accept", "reject" } })
  end,
  reverse_connect = function(n, v)
    local function secs(n2, x) return check_int(n2, x, 1) end
    return check_record(n, v, {
      mode = function(n2, x)
        if x == "off" or x == "reject" then return x end
        fail(('%s: expected "off", "reject", got %s'):format(n2, type(x) == "string" and ('"' .. x .. '"') or type(x)))
      end,
      timeout = secs, cache_positive = function(n2, x) return check_int(n2, x, 0) end,
      cache_negative = function(n2, x) return check_int(n2, x, 0) end,
      port = function(n2, x) return check_int(n2, x, 1, 65535) end,
      max_probes = secs,
    })
  end,
  temp_block = function(n, v)
    return check_record(n, v, {
      failed_logins = pair, protocol_errors = pair,
      debug_failed_logins = pair, debug_protocol_errors = pair,
      block_time = function(n2, x) return check_int(n2, x, 1) end,
      limit = function(n2, x) return check_int(n2, x, 0) end,
    })
  end,
  temp_unblock = function(n, v)
    return check_record(n, v, {
      time = function(n2, x) return check_int(n2, x, 1) end,
      limit = function(n2, x) return check_int(n2, x, 0) end,
    })
  end,
}

local table_names = {
  "client_ips", "lan_ips", "denied_ips", "blacklisted_ips", "unblacklistable_ips",
  "cluster_ips", "router", "accounts", "banned_headers", "banned_body", "rules",
}

local smtp_spec = {
  max_message_size = function(n, v) return check_int(n, v, 1024, 1 << 31) end,
  max_recipients = function(n, v) return check_int(n, v, 1, 100000) end,
  timeout = function(n, v) return check_int(n, v, 1, 3600) end,
  max_errors = function(n, v) return check_int(n, v, 1, 1000) end,
  greet_delay_ms = function(n, v) return check_int(n, v, 0, 60000) end,
  max_line_length = function(n, v) return check_int(n, v, 1000, 1 << 20) end,
}

local lua_spec = {
  budget = function(n, v) return check_int(n, v, 1000) end,
  memory_mb = function(n, v) return check_int(n, v, 8, 65536) end,
}

local socket_spec = {
  port = function(n, v) return check_int(n, v, 1, 65535) end,
  address = function(n, v) return check_type(n, v, "string") end,
  tls = function(n, v)
    if v ~= "off" and v ~= "on" and v ~= "ext" then fail(n .. ": expected \"off\", \"on\" or \"ext\"") end
    return v
  end,
  restrict = function(n, v)
    if v ~= "none" and v ~= "grant" and v ~= "deny" then fail(n .. ": expected \"grant\", \"deny\" or \"none\"") end
    return v
  end,
  remote = function(n, v) return check_type(n, v, "string") end,
  proxy = check_bool,
}

local listener_limits = {
  limit_per_address = 0, limit_non_client = 0, reserve_for_clients = 0, max_connections = 0,
}

local function resolve(dir, p)
  if p:sub(1, 1) == "/" then return p end
  return dir .. "/" .. p
end

-- Each setting: checker(name, value, ctx) -> normalized value.
local settings = {
  server_name = function(n, v) return check_type(n, v, "string") end,
  main_domain = function(n, v) return check_type(n, v, "string"):lower() end,
  local_domains = function(n, v)
    local l = string_list(n, v)
    for i, d in ipairs(l) do l[i] = d:lower() end
    return l
  end,
  spool_dir = function(n, v, ctx) return resolve(ctx.dir, check_type(n, v, "string")) end,
  spool_threads = function(n, v) return check_int(n, v, 1, 64) end,
  -- MB (MiB) that must stay free in spool_dir; 100 TB is a typo, not a margin.
  min_free_space = function(n, v) return check_int(n, v, 0, 100000000) end,
  spool_sync = function(n, v)
    if v ~= "fsync" and v ~= "syncfs" then fail(n .. ': expected "fsync" or "syncfs"') end
    return v
  end,
  control_socket = function(n, v, ctx) return resolve(ctx.dir, check_type(n, v, "string")) end,
  shutdown_timeout = function(n, v) return check_int(n, v, 0, 3600) end,
  user = function(n, v)
    check_type(n, v, "string")
    if v == "" then fail(n .. ": expected a user name") end
    return v
  end,
  log_level = function(n, v)
    if v ~= "debug" and v ~= "info" and v ~= "warn" and v ~= "error" then
      fail(n .. ": expected \"debug\", \"info\", \"warn\" or \"error\"")
    end
    return v
  end,
  dns = function(n, v)
    return check_record(n, v, {
      servers = string_list,
      timeout_ms = function(n2, x) return check_int(n2, x, 10, 60000) end,
      tries = function(n2, x) return check_int(n2, x, 1, 10) end,
      cache_size = function(n2, x) return check_int(n2, x, 0, 10000000) end,
      cache_max_ttl = function(n2, x) return check_int(n2, x, 1, 604800) end,
    })
  end,
  domains = function(n, v, ctx)
    check_type(n, v, "table")
    local out = {}
    for d, rec in pairs(v) do
      if type(d) ~= "string" then fail(n .. ": domain names must be strings") end
      local dn = ("%s[%q]"):format(n, d)
      out[d:lower()] = check_record(dn, rec, {
        addresses = string_list,
        certificate = function(n2, s) return resolve(ctx.dir, check_type(n2, s, "string")) end,
        private_key = function(n2, s) return resolve(ctx.dir, check_type(n2, s, "string")) end,
        roaming = check_bool, relay = check_bool,
      })
    end
    return out
  end,
  tables = function(n, v, ctx)
    local spec = {}
    for _, t in ipairs(table_names) do
      spec[t] = function(n2, s) return resolve(ctx.dir, check_type(n2, s, "string")) end
    end
    return check_record(n, v, spec)
  end,
  protection = function(n, v) return check_record(n, v, protection_spec) end,
  smtp = function(n, v) return check_record(n, v, smtp_spec) end,
  lua = function(n, v) return check_record(n, v, lua_spec) end,
  watch = check_bool,
  proxy_from = function(n, v) return check_type(n, v, "string") end,   -- parsed as an address list in C
  delivery = function(n, v)
    if v == "spool" then return { mode = "spool" } end
    local d = check_record(n, v, {
      mode = function(n2, x)
        if x ~= "spool" and x ~= "relay" and x ~= "proxy" then fail(n2 .. ': expected "spool", "relay" or "proxy"') end
        return x
      end,
      next_hop = function(n2, x) return check_type(n2, x, "string") end,
      protocol = function(n2, x)
        if x ~= "smtp" and x ~= "lmtp" then fail(n2 .. ': expected "smtp" or "lmtp"') end
        return x
      end,
      max_age = function(n2, x) return check_int(n2, x, 1) end,
      retry_min = function(n2, x) return check_int(n2, x, 1) end,
      retry_max = function(n2, x) return check_int(n2, x, 1) end,
      concurrency = function(n2, x) return check_int(n2, x, 1, 1000) end,
      timeout = function(n2, x) return check_int(n2, x, 1, 3600) end,
    })
    d.mode = d.mode or "spool"
    if d.mode == "proxy" and not d.next_hop then fail(n .. ': mode "proxy" needs a next_hop') end
    return d
  end,
  metrics = function(n, v)
    local m = check_record(n, v, {
      address = function(n2, x)
        -- an address literal: a host name would need a resolver call at start
        check_type(n2, x, "string")
        local a, b, c, d = x:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
        local v4 = a and tonumber(a) < 256 and tonumber(b) < 256 and tonumber(c) < 256 and tonumber(d) < 256
        if not v4 and not (x:find(":", 1, true) and x:match("^[%x:.]+$")) then
          fail(n2 .. ": must be an IPv4 or IPv6 address, not '" .. x .. "'")
        end
        return x
      end,
      port = function(n2, x) return check_int(n2, x, 1, 65535) end,
    })
    if not m.port then fail(n .. ": port is required") end
    m.address = m.address or "127.0.0.1"
    return m
  end,
  policies = function(n, v)
    return check_list(n, v, function(n2, s)
      check_type(n2, s, "string")
      if not s:match("^[%w_]+$") then fail(n2 .. ": policy names are letters, digits and _") end
      return s
    end)
  end,
  scripts = function(n, v, ctx)
    return check_list(n, v, function(n2, s) return resolve(ctx.dir, check_type(n2, s, "string")) end)
  end,
}

-- shadow = { policies = {...}, scripts = {...}, sample = 1.0 } (DESIGN.md §12)
settings.shadow = function(n, v, ctx)
  local out = check_record(n, v, {
    policies = settings.policies,
    scripts = function(n2, x) return settings.scripts(n2, x, ctx) end,
    sample = function(n2, x)
      check_type(n2, x, "number")
      if x < 0 or x > 1 then fail(n2 .. ": must be between 0 and 1") end
      return x
    end,
  })
  out.policies = out.policies or {}
  out.scripts = out.scripts or {}
  out.sample = out.sample or 1.0
  return out
end

local function make_listener(ctx, line)
  return function(name)
    if type(name) ~= "string" then error("listener: expected a name: listener \"smtp\" { ... }", 2) end
    return function(body)
      if type(body) ~= "table" then error("listener '" .. name .. "': expected a table { ... }", 2) end
      local at = line()   -- here, not inside the pcall: the level must reach the config chunk
      local ok, res = pcall(function()
        local l = { name = name, sockets = {}, line = at }
        for k, v in pairs(body) do
          if math.type(k) == "integer" then
            if k < 1 or k > #body then fail("listener '" .. name .. "': socket entries must form a list") end
          elseif listener_limits[k] then
            l[k] = check_int("listener '" .. name .. "' " .. k, v, 0)
          else
            fail(("listener '%s': unknown key '%s'"):format(name, tostring(k)))
          end
        end
        for i, s in ipairs(body) do
          local sn = ("listener '%s' socket %d"):format(name, i)
          local sock = check_record(sn, s, socket_spec)
          if not sock.port then fail(sn .. ": port is required") end
          sock.address = sock.address or "all"
          sock.tls = sock.tls or "off"
          sock.restrict = sock.restrict or (sock.remote and "grant" or "none")
          if sock.restrict ~= "none" and not sock.remote then fail(sn .. ": restrict needs a remote address list") end
          sock.index = i
          l.sockets[i] = sock
        end
        if #l.sockets == 0 then fail("listener '" .. name .. "': no sockets") end
        return l
      end)
      if not ok then error(res, 2) end
      for _, other in ipairs(ctx.listeners) do
        if other.name == name then error("listener '" .. name .. "' is defined twice", 2) end
      end
      ctx.listeners[#ctx.listeners + 1] = res
    end
  end
end

-- load(path) -> cfg table, or nil, "file:line: problem"
function M.load(path)
  local dir = path:match("^(.*)/[^/]*$") or "."
  local ctx = { dir = dir, listeners = {} }
  local values, lines = {}, {}
  local env = {}
  local function current_line() return debug.getinfo(3, "l").currentline end
  env.listener = make_listener(ctx, current_line)
  setmetatable(env, {
    __newindex = function(_, k, v)
      local check = settings[k]
      if not check then error(("unknown setting '%s'"):format(tostring(k)), 2) end
      if values[k] ~= nil then error(("setting '%s' is set twice"):format(k), 2) end
      local ok, res = pcall(check, k, v, ctx)
      if not ok then error(res, 2) end
      values[k] = res
      lines[k] = debug.getinfo(2, "l").currentline
    end,
    __index = function(_, k)
      if values[k] ~= nil then return values[k] end
      error(("unknown name '%s'"):format(tostring(k)), 2)
    end,
  })
  local ok, rerr = source.run(path, env)
  if not ok then return nil, rerr end
  -- protection.spf without the spf policy would check nothing, silently.
  local spf = values.protection and values.protection.spf
  if spf and spf.mode and spf.mode ~= "off" then
    local listed = false
    for _, p in ipairs(values.policies or {}) do if p == "spf" then listed = true end end
    if not listed then
      return nil, ('%s:%d: protection.spf.mode = "%s" needs the policy "spf" in policies'):format(
        path, lines.protection, spf.mode)
    end
  end
  values.listeners = ctx.listeners
  values.lines = lines
  values.config_dir = dir
  return values
end

return M
