-- Drives a headless Neovim (started by tests/editors/neovim.sh with --listen) over its RPC
-- socket as a user would: types into a Python file, waits for the ghost text extmark, checks
-- that it shows exactly what the server returns for that buffer state, that typing its first
-- character shortens it without hiding it in between, accepts it with Tab,
-- accepts a word with <M-Right>, leaves insert mode, and runs :checkhealth ghostline and
-- :GhostlineStats. Run as `nvim -l tests/editors/neovim_driver.lua SOCKET`.
--
-- Nothing here knows what the model will write: every expectation comes from the server's
-- own answer at the moment of the check.

local socket = assert(arg[1], 'usage: nvim -l neovim_driver.lua SOCKET')
local load_timeout_ms = tonumber(os.getenv('GHOSTLINE_TEST_LOAD_TIMEOUT_MS') or '') or 120000
local suggestion_timeout_ms = tonumber(os.getenv('GHOSTLINE_TEST_SUGGESTION_TIMEOUT_MS') or '') or 60000
-- From the first ghost text until the server is idle and the ghost text is its complete
-- suggestion (the model finishing the line, then a few milliseconds for the refresh).
local complete_timeout_ms = tonumber(os.getenv('GHOSTLINE_TEST_COMPLETE_TIMEOUT_MS') or '') or 60000

local rpc = dofile(vim.fs.joinpath(vim.fs.dirname(arg[0]), 'neovim_rpc.lua'))(socket)
local chan, fail, remote, wait_for, STATS = rpc.chan, rpc.fail, rpc.remote, rpc.wait_for, rpc.STATS

local started = vim.uv.hrtime()
local function log(message)
  io.stdout:write(('[%5.1f s] %s\n'):format((vim.uv.hrtime() - started) / 1e9, message))
  io.stdout:flush()
end

local function check(condition, message)
  if not condition then
    fail(message)
  end
end

local function input(keys)
  vim.rpcrequest(chan, 'nvim_input', keys)
end

--- Types text one key at a time, as fast as a quick typist.
local function type_text(text)
  for ch in text:gmatch('.') do
    input(ch == '<' and '<lt>' or ch)
    vim.wait(40)
  end
end

-- In the editor: the ghost text extmark as text, the cursor, the buffer, and the server's own
-- answer for this exact state, all read in one go so nothing changes in between.
local SNAPSHOT = [[
  local ghost = require('ghostline.ghost')
  local api = vim.api
  local marks = api.nvim_buf_get_extmarks(0, ghost.namespace, 0, -1, { details = true })
  local res = { marks = #marks, cursor = api.nvim_win_get_cursor(0), lines = api.nvim_buf_get_lines(0, 0, -1, false),
                mode = api.nvim_get_mode().mode }
  if #marks ~= 1 then
    return res
  end
  local details = marks[1][4]
  local first = {}
  for _, chunk in ipairs(details.virt_text or {}) do
    first[#first + 1] = chunk[1]
  end
  local lines = { table.concat(first) }
  for _, virt_line in ipairs(details.virt_lines or {}) do
    local parts = {}
    for _, chunk in ipairs(virt_line) do
      parts[#parts + 1] = chunk[1]
    end
    lines[#lines + 1] = table.concat(parts)
  end
  res.ghost = table.concat(lines, '\n')
  res.mark = { marks[1][2], marks[1][3] }
  res.hl = details.virt_text and details.virt_text[1][2] or (details.virt_lines and details.virt_lines[1][1][2])
  local client = require('ghostline').client(0)
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = 1 }
  local response = client:request_sync('textDocument/inlineCompletion', params, 5000, 0)
  local items = response and response.result and (response.result.items or response.result) or {}
  if items[1] then
    res.server_text = items[1].insertText
    res.server_range = items[1].range
    res.server_command = items[1].command and items[1].command.command
  end
  res.position = params.position
  return res
]]

--- Waits until the ghost text equals the server's answer for the current state (the first
--- answers may belong to states typed past a moment ago) and returns that snapshot.
local function wait_for_ghost(what)
  local last
  local ok = vim.wait(suggestion_timeout_ms, function()
    last = remote(SNAPSHOT)
    return last.ghost and last.server_text and last.ghost ~= '' and last.ghost == last.server_text
  end, 100)
  if not ok then
    fail(('timed out after %d ms waiting for %s: the ghost text is %s, the server answers %s for this state'):format(
      suggestion_timeout_ms, what, vim.inspect(last and last.ghost), vim.inspect(last and last.server_text)))
  end
  check(last.mode:sub(1, 1) == 'i', 'the editor left insert mode: ' .. last.mode)
  check(last.mark[1] == last.cursor[1] - 1 and last.mark[2] == last.cursor[2], 'the ghost text is not at the cursor: ' .. vim.inspect(last))
  check(last.server_range and last.server_range.start.line == last.position.line and last.server_range.start.character == last.position.character,
    'the server answered for another position: ' .. vim.inspect(last))
  check(last.server_command == 'ghostline.accept', 'the item has no ghostline.accept command: ' .. vim.inspect(last))
  check(last.hl == 'GhostlineSuggestion', 'the ghost text is not highlighted as GhostlineSuggestion: ' .. tostring(last.hl))
  return last
end

--- Whether the server has no job running (every job started has ended): the suggestion for
--- the current state is then complete, and what it answers for that state is final.
local function server_idle(stats)
  return stats and stats.counters and stats.counters.jobsEnded >= stats.counters.jobsStarted
end

--- Waits until the server is idle and the ghost text equals its complete suggestion for the
--- current state. The suggestion grows while it is generated (first words, then the whole
--- line) and the server sends ghostline/suggestionReady each time: the plugin must ask again
--- and show the longer text, also while a shorter one is shown. The server's answer is read
--- only while it stays idle around the read (that request starts no job and sends no
--- notification), so nothing here can make the plugin refresh itself.
local function wait_for_complete_ghost(what)
  local last, idle_seen
  local ok = vim.wait(complete_timeout_ms, function()
    local before = remote(STATS)
    if not server_idle(before) then
      return false
    end
    idle_seen = true
    local snapshot = remote(SNAPSHOT)
    local after = remote(STATS)
    if not server_idle(after) or after.counters.jobsStarted ~= before.counters.jobsStarted then
      return false
    end
    last = snapshot
    return snapshot.ghost ~= nil and snapshot.server_text ~= nil and snapshot.ghost == snapshot.server_text
  end, 200)
  if not ok then
    if not idle_seen then
      fail(('timed out after %d ms waiting for the server to finish its jobs (%s)'):format(complete_timeout_ms, what))
    end
    fail(('%s: after %d ms the ghost text is %s but the server\'s complete suggestion for this state is %s (the plugin did not show the grown suggestion after ghostline/suggestionReady)'):format(
      what, complete_timeout_ms, vim.inspect(last and last.ghost), vim.inspect(last and last.server_text)))
  end
  check(last.mark[1] == last.cursor[1] - 1 and last.mark[2] == last.cursor[2], 'the ghost text is not at the cursor: ' .. vim.inspect(last))
  return last
end

--- The buffer lines after inserting `text` at a 1-based row and byte column.
local function insert_into(lines, row, col, text)
  local res = vim.deepcopy(lines)
  local line = res[row]
  local inserted = vim.split(line:sub(1, col) .. text .. line:sub(col + 1), '\n', { plain = true })
  table.remove(res, row)
  for idx, new_line in ipairs(inserted) do
    table.insert(res, row + idx - 1, new_line)
  end
  return res
end

local function buffer_lines()
  return remote('return vim.api.nvim_buf_get_lines(0, 0, -1, false)')
end

-- 1. The server starts when the Python file opens and loads the model.
local engine = wait_for('the Ghostline client and the model', load_timeout_ms, function()
  local stats = remote(STATS)
  check(not (stats and stats.error), 'ghostline/stats failed: ' .. tostring(stats and stats.error))
  check(not (stats and stats.engine and stats.engine.state == 'failed'), 'the model failed to load: ' .. vim.inspect(stats and stats.engine))
  return stats and stats.engine and stats.engine.state == 'ready' and stats.engine
end)
log(('model ready: %s (%.0f ms)'):format(engine.model.name, engine.model.load_ms))
-- The editor's children (the server) for the test script to stop if they outlive the editor.
local children = remote('return vim.api.nvim_get_proc_children(vim.fn.getpid())')
local pids_file = os.getenv('GHOSTLINE_CHILD_PIDS_FILE')
if pids_file then
  local file = assert(io.open(pids_file, 'w'))
  file:write(table.concat(children, ' '), '\n')
  file:close()
end
check(remote("return require('ghostline').renderer") == 'plugin', 'Neovim 0.11 must use the plugin renderer')

-- The plugin was given no `cmd` and PATH has no ghostline: it must have found this checkout's
-- target/release/ghostline, and the server running must be that file.
local expected_server = assert(os.getenv('GHOSTLINE_EXPECTED_SERVER'), 'GHOSTLINE_EXPECTED_SERVER is not set')
local found = remote([[
  local ghostline = require('ghostline')
  return { cmd = ghostline.cmd, path = ghostline.binary_search and ghostline.binary_search.path,
           label = ghostline.binary_search and ghostline.binary_search.label }
]])
check(found.path and vim.uv.fs_realpath(found.path) == expected_server,
  'the plugin did not find ' .. expected_server .. ' by itself: ' .. vim.inspect(found))
check(found.label:find('checkout', 1, true), 'the binary was not found as the checkout\'s build: ' .. vim.inspect(found))
local server_exes = {}
for _, pid in ipairs(children) do
  local exe = vim.uv.fs_readlink('/proc/' .. pid .. '/exe')
  if exe and exe:match('ghostline') then
    server_exes[#server_exes + 1] = exe
  end
end
check(#server_exes == 1 and server_exes[1] == expected_server,
  'the server running is not ' .. expected_server .. ': ' .. vim.inspect(server_exes))
log('server found by the plugin: ' .. found.path .. ' (' .. found.label .. ')')

-- 2. Type a function body and wait for the ghost text.
input('G')
input('o')
local typed = 'return math.'
type_text(typed)
local shown = wait_for_ghost('ghost text after typing ' .. vim.inspect(typed))
log('first ghost text: ' .. vim.inspect(shown.ghost))
local first = wait_for_complete_ghost('the complete suggestion after typing ' .. vim.inspect(typed))
log('complete ghost text (the server is idle): ' .. vim.inspect(first.ghost))
local row, col = first.cursor[1], first.cursor[2]
check(first.lines[row]:sub(1, col):sub(-#typed) == typed, 'the typed text is not before the cursor: ' .. vim.inspect(first.lines[row]))

-- 2b. Typing the suggestion's first character shortens the ghost text at once, without hiding
-- it in between (Neovim fires CursorMovedI before TextChangedI: hiding it on the move drew it
-- again only once the server answered, a flicker). The editor records each change of the ghost
-- text from the plugin's `User GhostlineGhostText` ('' when hidden).
remote([[
  _G.ghost_changes = {}
  vim.api.nvim_create_autocmd('User', { pattern = 'GhostlineGhostText', callback = function(args)
    table.insert(_G.ghost_changes, args.data.text)
  end })
]])
local next_char = first.ghost:sub(1, 1)
check(#first.ghost > 1 and next_char ~= '\n', 'the suggestion must go on after its first character: ' .. vim.inspect(first.ghost))
input(next_char == '<' and '<lt>' or next_char)
local ghost_changes = wait_for('the ghost text to follow the typed ' .. vim.inspect(next_char), 5000, function()
  local recorded = remote('return _G.ghost_changes')
  return #recorded > 0 and recorded
end)
check(ghost_changes[1] == first.ghost:sub(2),
  'typing ' .. vim.inspect(next_char) .. ' did not shorten the ghost text at once: ' .. vim.inspect(ghost_changes))
first = wait_for_complete_ghost('the complete suggestion after typing its first character')
ghost_changes = remote('return _G.ghost_changes')
check(not vim.tbl_contains(ghost_changes, ''), 'the ghost text was hidden after typing a character it agreed with: ' .. vim.inspect(ghost_changes))
row, col = first.cursor[1], first.cursor[2]
log('typed ' .. vim.inspect(next_char) .. ': the ghost text followed at once: ' .. vim.inspect(first.ghost))

-- 3. Tab inserts exactly the ghost text and moves the cursor to its end.
input('<Tab>')
local expected = insert_into(first.lines, row, col, first.ghost)
wait_for('Tab to insert the suggestion', 10000, function()
  return vim.deep_equal(buffer_lines(), expected)
end)
local ghost_lines = vim.split(first.ghost, '\n', { plain = true })
local cursor = remote('return vim.api.nvim_win_get_cursor(0)')
local expected_cursor = #ghost_lines == 1 and { row, col + #first.ghost } or { row + #ghost_lines - 1, #ghost_lines[#ghost_lines] }
check(vim.deep_equal(cursor, expected_cursor), 'cursor after accept: ' .. vim.inspect(cursor) .. ', expected ' .. vim.inspect(expected_cursor))
wait_for('the server to count the acceptance', 5000, function()
  local stats = remote(STATS)
  return stats.counters.accepted == 1
end)
log('accepted with Tab: ' .. vim.inspect(expected[row + #ghost_lines - 1]))

-- 4. Leaving insert mode hides the ghost text.
input('<Esc>')
wait_for('the ghost text to disappear on InsertLeave', 5000, function()
  local snapshot = remote('return { marks = #vim.api.nvim_buf_get_extmarks(0, require("ghostline.ghost").namespace, 0, -1, {}), mode = vim.api.nvim_get_mode().mode }')
  return snapshot.mode == 'n' and snapshot.marks == 0
end)

-- 5. A new line: <M-Right> takes the next word of the suggestion and leaves the rest shown.
input('Go')
input('<C-u>')
typed = 'print(circle'
type_text(typed)
shown = wait_for_ghost('ghost text after typing ' .. vim.inspect(typed))
log('first ghost text: ' .. vim.inspect(shown.ghost))
local second = wait_for_complete_ghost('the complete suggestion after typing ' .. vim.inspect(typed))
log('complete ghost text (the server is idle): ' .. vim.inspect(second.ghost))
local blank = second.ghost:match('^%s*')
local rest = second.ghost:sub(#blank + 1)
local word = blank .. (rest:match('^[%w_]+') or rest:match('^[^%w_%s]+') or '')
check(word ~= '', 'no word to accept in ' .. vim.inspect(second.ghost))
input('<M-Right>')
expected = insert_into(second.lines, second.cursor[1], second.cursor[2], word)
wait_for('<M-Right> to insert the next word ' .. vim.inspect(word), 10000, function()
  return vim.deep_equal(buffer_lines(), expected)
end)
if #word < #second.ghost then
  -- The rest stays shown at once; a later answer of the server may replace it.
  local remaining = second.ghost:sub(#word + 1)
  local after = remote(SNAPSHOT)
  check(after.ghost == remaining or after.ghost == after.server_text,
    'after accepting a word the ghost text is ' .. vim.inspect(after.ghost) .. ', expected ' .. vim.inspect(remaining))
end
log('accepted a word: ' .. vim.inspect(word))
if #word < #second.ghost then
  -- The server counted a partial acceptance of that many characters.
  local counted = wait_for('the partial acceptance to be counted', 5000, function()
    local counters = remote(STATS).counters
    return counters.acceptedPartially == 1 and counters
  end)
  check(counted.accepted == 1 and counted.acceptedChars >= vim.fn.strchars(word),
    'acceptance counters after a whole and a partial accept: ' .. vim.inspect(counted))
  log(('acceptance counted: %d whole, %d partial, %d characters'):format(counted.accepted, counted.acceptedPartially, counted.acceptedChars))
end

-- 5b. With no suggestion shown (dismissed), Tab is the other plugin's Tab (mapped before
-- Ghostline attached): Ghostline's mapping calls it instead of typing a bare Tab.
local tabs_before = remote('return _G.other_plugin_tabs')
input('<C-]><Tab>')
wait_for("the other plugin's Tab", 5000, function()
  return remote('return _G.other_plugin_tabs') == tabs_before + 1
end)
log("Tab without a suggestion: the other plugin's mapping ran")
input('<Esc>')

-- 6. The server re-asked after ghostline/suggestionReady (the model is far slower than the
-- 8 ms budget, so at least one suggestion came that way).
local stats = remote(STATS)
check(stats.counters.readyNotifications >= 1, 'no ghostline/suggestionReady was sent: ' .. vim.inspect(stats.counters))
check(stats.counters.answeredWithSuggestion >= 2, 'too few suggestions: ' .. vim.inspect(stats.counters))
log(('server counters: %d requests, %d with a suggestion, %d ready notifications, %d accepted'):format(
  stats.counters.requests, stats.counters.answeredWithSuggestion, stats.counters.readyNotifications, stats.counters.accepted))

-- 6b. In normal mode, a cursor that rests on another line is reported (ghostline/cursorRest)
-- and the server starts there.
wait_for('the server to be idle', suggestion_timeout_ms, function()
  return server_idle(remote(STATS))
end)
local rest_jobs = remote(STATS).counters.restJobs
input('k')
wait_for('a job where the cursor rests', 10000, function()
  return remote(STATS).counters.restJobs > rest_jobs
end)
log('cursor rest: the server started where the cursor rests')

-- 7. :checkhealth ghostline reports the binary found, its version, the running client, the
-- loaded model, the backend and the job the model is on (the latest), and no error.
local health = remote([[
  vim.cmd('checkhealth ghostline')
  local text = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), '\n')
  vim.cmd('bwipeout!')
  return text
]])
check(health:find('model ready', 1, true), ':checkhealth ghostline does not report the model: ' .. health)
check(health:find('backend: the embedded model', 1, true), ':checkhealth ghostline does not say where the jobs run: ' .. health)
check(health:find('current job: %a+, %d+ of %d+ prompt tokens decoded') ~= nil, ':checkhealth ghostline does not show the job the model is on: ' .. health)
check(health:find('server: ' .. found.path .. ' (found in ' .. found.label .. ')', 1, true),
  ':checkhealth ghostline does not name the binary it found: ' .. health)
check(health:find('looked in ' .. found.label .. ': ' .. found.path .. ' (used)', 1, true),
  ':checkhealth ghostline does not list the places it looked in: ' .. health)
local version = vim.system({ expected_server, '--version' }, { text = true }):wait()
check(version.code == 0 and health:find(vim.trim(version.stdout), 1, true),
  ':checkhealth ghostline does not show `ghostline --version` (' .. vim.trim(version.stdout or '') .. '): ' .. health)
check(not health:find('ERROR', 1, true), ':checkhealth ghostline reports an error: ' .. health)
log(':checkhealth ghostline: OK')

-- 8. :GhostlineStats opens a float with the counters.
local float_text = wait_for(':GhostlineStats to open a float', 5000, function()
  return remote([[
    if not _G.ghostline_stats_opened then
      vim.cmd('GhostlineStats')
      _G.ghostline_stats_opened = true
    end
    for _, win in ipairs(vim.api.nvim_list_wins()) do
      if vim.api.nvim_win_get_config(win).relative ~= '' then
        return table.concat(vim.api.nvim_buf_get_lines(vim.api.nvim_win_get_buf(win), 0, -1, false), '\n')
      end
    end
  ]])
end)
check(float_text:find('"accepted": 1', 1, true), ':GhostlineStats does not show the acceptance: ' .. float_text)
log(':GhostlineStats: OK')

pcall(vim.rpcrequest, chan, 'nvim_command', 'qall!')
log('PASS')
