-- moat.source: load a Lua file so that every error names the whole path.
--
-- Lua keeps at most LUA_IDSIZE (60) bytes of a chunk name: a config or
-- script under a long directory is reported as "...tail/moat.conf:12: …",
-- which an administrator cannot paste into an editor.  Errors from these
-- loaders are rewritten back to the full path.
local M = {}

-- full_path(msg, path): replace Lua's "...<tail>:<line>:" with "<path>:<line>:"
-- wherever <tail> is the end of path.  Other text is left as it is.
function M.full_path(msg, path)
  msg = tostring(msg)
  if not msg:find("...", 1, true) then return msg end
  return (msg:gsub("%.%.%.([^\n]-):(%d+):", function(tail, line)
    if #tail > 0 and path:sub(-#tail) == tail then return path .. ":" .. line .. ":" end
  end))
end

-- loadfile(path, env) -> chunk  or  nil, "path:line: problem"
function M.loadfile(path, env)
  local chunk, err = loadfile(path, "t", env)
  if not chunk then return nil, M.full_path(err, path) end
  return chunk
end

-- run(path, env) -> true, result  or  nil, "path:line: problem"
-- Loads and runs the file once (config files, policy scripts).
function M.run(path, env)
  local chunk, err = M.loadfile(path, env)
  if not chunk then return nil, err end
  local ok, res = pcall(chunk)
  if not ok then return nil, M.full_path(res, path) end
  return true, res
end

return M
