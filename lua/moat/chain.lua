-- moat.chain: loads policy and site scripts and runs the hook chain.
--
-- A policy is a file returning a table of hook functions.  For a phase the
-- chain runs the hooks in `policies` order, then `scripts` order, and stops at
-- the first verdict.  Anything a hook returns that is not a verdict made by
-- the moat module is an error, so a stray `return true` can never accept.
local moat = require "moat"
local source = require "moat.source"
local lineset = require "moat.lineset"

local M = {}

M.phases = {
  connect = true, helo = true, auth = true, mail_from = true, rcpt = true,
  data = true, data_line = true, data_end = true, disconnect = true,
}

-- The globals a script sees.  Nothing here can block the event loop or escape
-- the sandbox: no io, no os.execute/exit, no debug, no loadfile/dofile.
local function safe_globals()
  local g = {}
  for _, k in ipairs { "assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "select",
                       "tonumber", "tostring", "type", "rawequal", "rawget", "rawset", "rawlen",
                       "setmetatable", "getmetatable", "load" } do
    g[k] = _G[k]
  end
  for _, lib in ipairs { "string", "table", "math", "utf8", "coroutine" } do
    local copy = {}
    for k, v in pairs(_G[lib]) do copy[k] = v end
    g[lib] = copy
  end
  g.os = { time = os.time, clock = os.clock, date = os.date, difftime = os.difftime, getenv = os.getenv }
  g.print = function(...) moat.log(...) end
  -- Only moat's own modules: the standard ones (io, os, debug) stay out of reach.
  g.require = function(name)
    if type(name) ~= "string" or not (name == "moat" or name:match("^moat%.[%w_.]+$")) then
      error("require: module '" .. tostring(name) .. "' is not available to scripts", 2)
    end
    return require(name)
  end
  return g
end

local function sandbox()
  local g = safe_globals()
  local env = setmetatable({}, { __index = g })
  -- load() with no env would hand out the real _G: give the script's own.
  g.load = function(chunk, name, _, e) return load(chunk, name, "t", e or env) end  -- never binary chunks
  g._G = env
  return env
end

local function check_hooks(path, hooks)
  if type(hooks) ~= "table" then
    return nil, path .. ": a policy must return a table of hook functions, got " .. type(hooks)
  end
  for k, fn in pairs(hooks) do
    local line = type(fn) == "function" and debug.getinfo(fn, "S").linedefined or 0
    if not M.phases[k] then
      return nil, ("%s:%d: unknown hook '%s' (hooks: connect, helo, auth, mail_from, rcpt, data, data_line, data_end, disconnect)")
        :format(path, line, tostring(k))
    end
    if type(fn) ~= "function" and not (k == "data_line" and lineset.is_filter(fn)) then
      return nil, ("%s: hook '%s' is not a function"):format(path, k)
    end
  end
  return hooks
end

-- entries: list of { name = "router", path = "/…/policies/router.lua" }.
-- Returns the run function and the set of phases that have hooks.
function M.load(entries)
  local by_phase = {}
  for phase in pairs(M.phases) do by_phase[phase] = {} end
  for _, e in ipairs(entries) do
    local ok, res = source.run(e.path, sandbox())
    if not ok then return nil, res end
    local hooks, herr = check_hooks(e.path, res)
    if not hooks then return nil, herr end
    for phase, fn in pairs(hooks) do
      local list = by_phase[phase]
      list[#list + 1] = { name = e.name, fn = fn }
    end
  end
  local present = {}
  for phase, list in pairs(by_phase) do present[phase] = #list > 0 end
  -- data_line hooks that are all line filters (moat.lineset.filter) are run
  -- by the core itself, without a coroutine per message line.
  local natives = #by_phase.data_line > 0 and {} or nil
  for _, h in ipairs(by_phase.data_line) do
    if type(h.fn) == "function" then natives = nil break end
    natives[#natives + 1] = { name = h.name, filter = h.fn }
  end

  local is_verdict = moat.is_verdict
  local function run(phase, s, ...)
    local list = by_phase[phase]
    for i = 1, #list do
      local h = list[i]
      local v = h.fn(s, ...)
      if v ~= nil then
        if not is_verdict(v) then
          error(("%s: %s hook returned a %s, not a verdict (use moat.accept/reject/tempfail/drop/discard)")
            :format(h.name, phase, type(v)), 0)
        end
        return v, h.name
      end
    end
    return nil
  end
  return run, present, natives
end

return M
