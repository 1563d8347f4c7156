-- What the Neovim drivers (neovim_driver.lua, neovim_paint.lua) share: the RPC channel to the
-- editor neovim.sh started, failing, running Lua in the editor, waiting for a condition, and
-- the server's stats. `local rpc = dofile(<this file>)(SOCKET)`.

return function(socket)
  local rpc = {}

  for _ = 1, 200 do
    local ok, res = pcall(vim.fn.sockconnect, 'pipe', socket, { rpc = true })
    if ok and res > 0 then
      rpc.chan = res
      break
    end
    vim.wait(50)
  end
  assert(rpc.chan, 'could not connect to ' .. socket)

  function rpc.fail(message)
    io.stderr:write('FAIL: ' .. message .. '\n')
    pcall(vim.rpcnotify, rpc.chan, 'nvim_command', 'qall!')
    os.exit(1)
  end

  --- Runs Lua in the editor and returns its result.
  function rpc.remote(code, ...)
    local res = vim.rpcrequest(rpc.chan, 'nvim_exec_lua', code, { ... })
    if res == vim.NIL then
      return nil
    end
    return res
  end

  function rpc.wait_for(description, timeout_ms, probe)
    local res
    local ok = vim.wait(timeout_ms, function()
      res = probe()
      return res ~= nil and res ~= false and res ~= vim.NIL
    end, 100)
    if not ok then
      rpc.fail('timed out after ' .. timeout_ms .. ' ms waiting for ' .. description .. (res and (': ' .. vim.inspect(res)) or ''))
    end
    return res
  end

  -- In the editor: the server's `ghostline/stats` (an `error` field when it failed).
  rpc.STATS = [[
    local client = require('ghostline').client(0)
    if not client then return nil end
    local response = client:request_sync('ghostline/stats', vim.empty_dict(), 3000, 0)
    if response and response.err then
      return { error = response.err.message }
    end
    return response and response.result
  ]]

  return rpc
end
