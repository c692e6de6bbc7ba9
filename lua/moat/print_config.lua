-- moat.print_config: `moat -c FILE --print-config`, the effective
-- configuration (every setting, defaults included) in the config's own syntax.
--
-- render(values, eff): values is what moat.config.load returned (as written,
-- normalized); eff holds the settings with the defaults the C core applied
-- (src/main.c builds it from struct config), so the defaults are stated in
-- one place only.  The output passes `moat --check`.
local M = {}

local function is_list(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n == #t
end

local function key(k)
  if type(k) == "string" and k:match("^[%a_][%w_]*$") then return k end
  return "[" .. (type(k) == "string" and ("%q"):format(k) or tostring(k)) .. "]"
end

local function value(v, indent)
  local t = type(v)
  if t == "string" then return ("%q"):format(v) end
  if t ~= "table" then return tostring(v) end
  if next(v) == nil then return "{}" end
  local parts = {}
  if is_list(v) then
    for _, x in ipairs(v) do parts[#parts + 1] = value(x, indent) end
    return "{ " .. table.concat(parts, ", ") .. " }"
  end
  local ks = {}
  for k in pairs(v) do ks[#ks + 1] = k end
  table.sort(ks, function(a, b) return tostring(a) < tostring(b) end)
  local inner = indent .. "  "
  for _, k in ipairs(ks) do parts[#parts + 1] = inner .. key(k) .. " = " .. value(v[k], inner) .. "," end
  return "{\n" .. table.concat(parts, "\n") .. "\n" .. indent .. "}"
end

-- In the order of conf/moat.conf; anything else (a setting added later) follows, sorted.
local ORDER = {
  "server_name", "main_domain", "local_domains", "spool_dir", "spool_threads", "spool_sync",
  "control_socket", "user", "shutdown_timeout", "min_free_space", "log_level", "watch", "dns", "metrics",
  "tables", "domains", "smtp", "lua", "delivery", "protection", "policies", "scripts",
}
local SKIP = { listeners = true, lines = true, config_dir = true }

function M.render(values, eff, listener_limits)
  local merged = {}
  for k, v in pairs(values) do if not SKIP[k] then merged[k] = v end end
  for k, v in pairs(eff) do
    if type(v) == "table" and type(merged[k]) == "table" and not is_list(v) then
      local m = {}
      for k2, v2 in pairs(merged[k]) do m[k2] = v2 end
      for k2, v2 in pairs(v) do m[k2] = v2 end
      merged[k] = m
    else
      merged[k] = v
    end
  end
  local out = { "-- moat --print-config: the effective configuration, defaults included" }
  local done = {}
  local function emit(k)
    if merged[k] ~= nil and not done[k] then
      out[#out + 1] = key(k) .. " = " .. value(merged[k], "")
      done[k] = true
    end
  end
  for _, k in ipairs(ORDER) do emit(k) end
  local rest = {}
  for k in pairs(merged) do if not done[k] then rest[#rest + 1] = k end end
  table.sort(rest)
  for _, k in ipairs(rest) do emit(k) end
  for i, l in ipairs(values.listeners or {}) do
    local body = {}
    for _, s in ipairs(l.sockets) do
      local sock = {}
      for k2, v2 in pairs(s) do if k2 ~= "index" then sock[k2] = v2 end end
      body[#body + 1] = "  " .. value(sock, "  ") .. ","
    end
    local lim = listener_limits[i] or {}
    local names = {}
    for k2 in pairs(lim) do names[#names + 1] = k2 end
    table.sort(names)
    for _, k2 in ipairs(names) do body[#body + 1] = ("  %s = %d,"):format(k2, lim[k2]) end
    out[#out + 1] = ("listener %q {\n%s\n}"):format(l.name, table.concat(body, "\n"))
  end
  return table.concat(out, "\n") .. "\n"
end

return M
