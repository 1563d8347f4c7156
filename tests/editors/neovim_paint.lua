-- Keypress-to-paint measurement for Neovim (a benchmark, not a test: it asserts nothing about
-- the times). tests/editors/neovim.sh runs it instead of neovim_driver.lua when
-- GHOSTLINE_PAINT_OUT names a file: `nvim -l tests/editors/neovim_paint.lua SOCKET`.
--
-- In the editor started by neovim.sh (the plugin's own extmark renderer, the default model) it
-- rests the cursor on the line above the one to write, then presses `o` and types a line of
-- Python key by key with nvim_input. The times are Neovim's own: the key's is vim.uv.hrtime()
-- right before nvim_input, inside the editor, and each change of the ghost text is stamped
-- inside the editor by a `User GhostlineGhostText` autocommand, which the plugin fires right
-- after it changed the extmark; the autocommand reads the extmark itself. The driver only polls
-- the recorded changes (every 20 ms), so the poll does not limit the resolution.
--
-- Per key: `first` is the time to the first non-empty ghost text at the cursor the key left
-- (a suggestion for what is typed: the plugin draws only at the cursor its suggestion was made
-- for); `final` the time to the last change of the ghost text, once it has stayed non-empty
-- and unchanged for STABLE_MS; a key with no ghost text within CAP_MS is `never`. A key is a
-- flicker when the ghost text shown as it was pressed began with it (and held more), yet the
-- ghost text was hidden or left the cursor before the next key. After each key the driver
-- waits for `final` (or the cap), then PAUSE_MS, then presses the next one.
--
-- Appends one JSON line to GHOSTLINE_PAINT_OUT and prints the keys one by one.

local socket = assert(arg[1], 'usage: nvim -l neovim_paint.lua SOCKET')
local out_path = assert(os.getenv('GHOSTLINE_PAINT_OUT'), 'GHOSTLINE_PAINT_OUT is not set')
local line_above = assert(os.getenv('GHOSTLINE_PAINT_LINE_ABOVE'), 'GHOSTLINE_PAINT_LINE_ABOVE is not set')
local typed_line = assert(os.getenv('GHOSTLINE_PAINT_TYPED'), 'GHOSTLINE_PAINT_TYPED is not set')
local load_timeout_ms = tonumber(os.getenv('GHOSTLINE_TEST_LOAD_TIMEOUT_MS') or '') or 120000

local CAP_MS = 3000
local STABLE_MS = 1000
local PAUSE_MS = 100
-- A suggestion still changing this long after its key is not waited for any longer.
local SETTLE_LIMIT_MS = 15000
local POLL_MS = 20

local rpc = dofile(vim.fs.joinpath(vim.fs.dirname(arg[0]), 'neovim_rpc.lua'))(socket)
local chan, fail, remote, wait_for, STATS = rpc.chan, rpc.fail, rpc.remote, rpc.wait_for, rpc.STATS

-- In the editor: every change of the ghost text, stamped when the plugin made it, with the
-- extmark read back (its text and position; text '' when there is none).
local RECORDER = [[
  local ns = require('ghostline.ghost').namespace
  local api = vim.api
  _G.ghostline_paint = { changes = {} }
  api.nvim_create_autocmd('User', {
    pattern = 'GhostlineGhostText',
    callback = function(args)
      local at = vim.uv.hrtime()
      local marks = api.nvim_buf_get_extmarks(args.data.bufnr, ns, 0, -1, { details = true })
      local change = { at = at, text = '' }
      if marks[1] then
        local details = marks[1][4]
        local parts = {}
        for _, chunk in ipairs(details.virt_text or {}) do
          parts[#parts + 1] = chunk[1]
        end
        for _, virt_line in ipairs(details.virt_lines or {}) do
          parts[#parts + 1] = '\n'
          for _, chunk in ipairs(virt_line) do
            parts[#parts + 1] = chunk[1]
          end
        end
        change = { at = at, text = table.concat(parts), row = marks[1][2], col = marks[1][3] }
      end
      table.insert(_G.ghostline_paint.changes, change)
    end,
  })
]]

-- In the editor: presses one key and returns the time right before nvim_input.
local PRESS = [[
  local at = vim.uv.hrtime()
  vim.api.nvim_input(...)
  return at
]]

-- In the editor: the changes recorded from index `from` on, the time now, the mode, the
-- cursor (0-based row, byte column) and the cursor's line.
local POLL = [[
  local from = ...
  local changes = {}
  for idx = from, #_G.ghostline_paint.changes do
    changes[#changes + 1] = _G.ghostline_paint.changes[idx]
  end
  local cursor = vim.api.nvim_win_get_cursor(0)
  return { changes = changes, now = vim.uv.hrtime(), mode = vim.api.nvim_get_mode().mode,
           row = cursor[1] - 1, col = cursor[2], line = vim.api.nvim_get_current_line() }
]]

local function ms(from_ns, to_ns)
  return (to_ns - from_ns) / 1e6
end

--- The p-th percentile (nearest rank) of a list of numbers; nil for an empty list.
local function percentile(values, p)
  if #values == 0 then
    return nil
  end
  local sorted = vim.deepcopy(values)
  table.sort(sorted)
  return sorted[math.max(1, math.ceil(p / 100 * #sorted))]
end

--- Milliseconds as JSON, to a tenth ('null' for none).
local function ms_json(value)
  return value and ('%.1f'):format(value) or 'null'
end

-- 1. The model is loaded, the recorder is in place, the cursor rests on the line above.
local engine = wait_for('the Ghostline client and the model', load_timeout_ms, function()
  local stats = remote(STATS)
  if stats and stats.engine and stats.engine.state == 'failed' then
    fail('the model failed to load: ' .. vim.inspect(stats.engine))
  end
  return stats and stats.engine and stats.engine.state == 'ready' and stats.engine
end)
if remote("return require('ghostline').renderer") ~= 'plugin' then
  fail('the paint measurement needs the plugin renderer (Neovim 0.11)')
end
local children = remote('return vim.api.nvim_get_proc_children(vim.fn.getpid())')
local pids_file = os.getenv('GHOSTLINE_CHILD_PIDS_FILE')
if pids_file then
  local file = assert(io.open(pids_file, 'w'))
  file:write(table.concat(children, ' '), '\n')
  file:close()
end
remote(RECORDER)
local above = remote([[
  local wanted = ...
  for idx, line in ipairs(vim.api.nvim_buf_get_lines(0, 0, -1, false)) do
    if line == wanted then
      vim.api.nvim_win_set_cursor(0, { idx, #line })
      return idx
    end
  end
]], line_above)
if not above then
  fail('the file has no line ' .. vim.inspect(line_above))
end
-- The cursor rests (ghostline/cursorRest after the plugin's rest_ms) and the server finishes
-- what it started there: a user reading the function before writing its body.
local rest_jobs = remote(STATS).counters.restJobs
wait_for('a job where the cursor rests', 10000, function()
  return remote(STATS).counters.restJobs > rest_jobs
end)
wait_for('the server to finish the job where the cursor rests', 60000, function()
  local counters = remote(STATS).counters
  return counters.jobsEnded >= counters.jobsStarted
end)
print(('model %s ready (%.0f ms); typing %q below line %d'):format(engine.model.name, engine.model.load_ms, typed_line, above))

-- 2. The keys: `o`, then the line character by character.
local keys = { 'o' }
for ch in typed_line:gmatch('.') do
  keys[#keys + 1] = ch
end

local changes = {} -- every change recorded so far, in order
local shown = { text = '' } -- the latest change: what the extmark shows now

--- Fetches what the editor recorded since the last poll; returns the poll.
local function poll()
  local res = remote(POLL, #changes + 1)
  for _, change in ipairs(res.changes) do
    changes[#changes + 1] = change
    shown = change
  end
  return res
end

--- Whether a change shows ghost text at a cursor.
local function shows_at(change, cursor)
  return change.text ~= '' and change.row == cursor.row and change.col == cursor.col
end

local results = {}
local indent -- the new line's indentation, once `o` is processed
for idx, key in ipairs(keys) do
  poll()
  local before = shown -- what is shown as the key is pressed
  local pressed = remote(PRESS, key == '<' and '<lt>' or key)
  local result = { key = key }
  local cursor -- the cursor the key left, once the key is processed
  local last_change_at = pressed
  while true do
    local now = poll()
    if not cursor then
      local processed
      if idx == 1 then
        processed = now.mode:sub(1, 1) == 'i' and now.row == above and now.line:match('^%s*$')
        indent = processed and now.line
      else
        processed = now.line == indent .. typed_line:sub(1, idx - 1)
      end
      cursor = processed and { row = now.row, col = now.col } or nil
    end
    for change_idx = #changes, 1, -1 do
      local change = changes[change_idx]
      if change.at < pressed then
        break
      end
      last_change_at = math.max(last_change_at, change.at)
      if cursor and shows_at(change, cursor) then
        result.first_ms = math.min(result.first_ms or math.huge, ms(pressed, change.at))
      end
    end
    local elapsed = ms(pressed, now.now)
    if result.first_ms and shows_at(shown, cursor) and ms(last_change_at, now.now) >= STABLE_MS then
      result.final_ms = ms(pressed, last_change_at)
      result.text = shown.text
      break
    end
    if not result.first_ms and elapsed >= CAP_MS then
      result.never = true
      break
    end
    if elapsed >= SETTLE_LIMIT_MS then
      result.unsettled = true
      break
    end
    vim.wait(POLL_MS)
  end
  result.cursor = cursor
  results[idx] = result
  vim.wait(PAUSE_MS)
  -- Flicker: what was shown at the previous key's cursor when this key was pressed began with
  -- the key and held more, yet before the next key the ghost text was hidden or left the
  -- cursor this key left.
  local previous = results[idx - 1] and results[idx - 1].cursor
  if previous and cursor and #before.text > 1 and before.text:sub(1, 1) == key and shows_at(before, previous) then
    poll()
    for change_idx = #changes, 1, -1 do
      local change = changes[change_idx]
      if change.at < pressed then
        break
      end
      if not shows_at(change, cursor) then
        result.flicker = true
      end
    end
  end
  print(('key %2d %-5s first %8s ms  final %8s ms%s%s  %s'):format(idx, vim.inspect(key),
    result.first_ms and ('%.1f'):format(result.first_ms) or 'never',
    result.final_ms and ('%.1f'):format(result.final_ms) or '-',
    result.flicker and '  FLICKER' or '', result.unsettled and '  (still changing)' or '',
    result.text and vim.inspect(result.text) or ''))
end

-- 3. The figures.
local firsts, finals = {}, {}
local never, flicker = 0, 0
for _, result in ipairs(results) do
  if result.first_ms then
    firsts[#firsts + 1] = result.first_ms
  end
  if result.final_ms then
    finals[#finals + 1] = result.final_ms
  end
  if result.never then
    never = never + 1
  end
  if result.flicker then
    flicker = flicker + 1
  end
end
-- One JSON object with its fields in this order (vim.json.encode keeps none), as JSON text.
local fields = {
  { 'editor', vim.json.encode('neovim') },
  { 'mode', vim.json.encode(('plugin extmarks (Neovim %d.%d.%d)'):format(vim.version().major, vim.version().minor, vim.version().patch)) },
  { 'model', vim.json.encode(os.getenv('GHOSTLINE_TEST_MODEL') or engine.model.name) },
  { 'keys', tostring(#keys) },
  { 'first_p50_ms', ms_json(percentile(firsts, 50)) },
  { 'first_p90_ms', ms_json(percentile(firsts, 90)) },
  { 'first_max_ms', ms_json(percentile(firsts, 100)) },
  { 'final_p50_ms', ms_json(percentile(finals, 50)) },
  { 'final_p90_ms', ms_json(percentile(finals, 90)) },
  { 'never', tostring(never) },
  { 'flicker', tostring(flicker) },
  -- Stamped in the editor at each change of the extmark: no polling interval limits it.
  { 'resolution_ms', 'null' },
}
local encoded = {}
for _, field in ipairs(fields) do
  encoded[#encoded + 1] = vim.json.encode(field[1]) .. ':' .. field[2]
end
local line = '{' .. table.concat(encoded, ',') .. '}'
local file = assert(io.open(out_path, 'a'))
file:write(line, '\n')
file:close()
print(line)
pcall(vim.rpcrequest, chan, 'nvim_command', 'qall!')
