-- Ghost text drawn with extmarks from textDocument/inlineCompletion answers, for Neovim 0.11
-- (0.12 has vim.lsp.inline_completion built in). In insert mode every change or cursor move
-- asks the server; the server answers within its budget (possibly empty, or the first words of
-- the suggestion) and sends ghostline/suggestionReady each time the suggestion has grown, and
-- then this module asks again and replaces the shown text with the longer one.
-- Characters typed that match the suggestion shorten it at once, before the server answers.
--
-- Accepting inserts the text with nvim_buf_set_text and runs the item's `ghostline.accept`
-- command with what was accepted of it (all, a word or a line) so the server counts it. This module never changes the
-- buffer except on an accept key, and never shows a suggestion made for another buffer
-- state (the answer's changedtick and cursor must still be the current ones).
--
-- Each time the ghost text shown changes (drawn, shortened by typing, grown, hidden) it fires
-- `User GhostlineGhostText` with `{ bufnr, text }` (text '' once hidden), right after the
-- extmark changed: a statusline can follow it, and tests/editors/neovim_paint.lua times it.

local M = {}

local api = vim.api
local ns = api.nvim_create_namespace('ghostline')

--- What is shown in one buffer.
--- @class ghostline.Suggestion
--- @field row integer       0-based row of the cursor it was made for
--- @field col integer       byte column of that cursor
--- @field text string       what accepting inserts at the cursor (may hold newlines)
--- @field command lsp.Command?  the item's command, run when the whole suggestion is accepted
--- @field client_id integer

--- @class ghostline.BufferState
--- @field client_id integer
--- @field request_id integer?
--- @field seq integer
--- @field suggestion ghostline.Suggestion?
--- @field scheduled boolean

--- @type table<integer, ghostline.BufferState>
local buffers = {}

--- @type ghostline.Options
local options

--- The last answer shown, for tests and debugging: { bufnr, item, shown_text }.
M.last_shown = nil

local function in_insert_mode()
  return api.nvim_get_mode().mode:sub(1, 1) == 'i'
end

--- Text as the screen shows it: tabs expanded, since virtual text would show them as ^I.
local function display(text, bufnr)
  if not text:find('\t', 1, true) then
    return text
  end
  return (text:gsub('\t', string.rep(' ', vim.bo[bufnr].tabstop)))
end

--- Fires `User GhostlineGhostText` for a change of what is shown ('' once hidden).
local function announce(bufnr, text)
  api.nvim_exec_autocmds('User', { pattern = 'GhostlineGhostText', data = { bufnr = bufnr, text = text }, modeline = false })
end

local function render(bufnr, suggestion)
  api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
  local hl = options.hl_group
  local lines = vim.split(suggestion.text, '\n', { plain = true })
  local extmark = { hl_mode = 'combine', right_gravity = false }
  if lines[1] ~= '' then
    extmark.virt_text = { { display(lines[1], bufnr), hl } }
    extmark.virt_text_pos = 'inline'
  end
  if #lines > 1 then
    extmark.virt_lines = {}
    for idx = 2, #lines do
      extmark.virt_lines[#extmark.virt_lines + 1] = { { display(lines[idx], bufnr), hl } }
    end
  end
  api.nvim_buf_set_extmark(bufnr, ns, suggestion.row, suggestion.col, extmark)
  announce(bufnr, suggestion.text)
end

local function clear(bufnr)
  local state = buffers[bufnr]
  local shown = state and state.suggestion
  if state then
    state.suggestion = nil
  end
  if api.nvim_buf_is_valid(bufnr) then
    api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
    if shown then
      announce(bufnr, '')
    end
  end
end

local function cancel_request(bufnr)
  local state = buffers[bufnr]
  if not (state and state.request_id) then
    return
  end
  local client = vim.lsp.get_client_by_id(state.client_id)
  if client then
    client:cancel_request(state.request_id)
  end
  state.request_id = nil
end

--- Turns an item into the text to insert at the cursor, or nil when it does not fit this
--- cursor. The item's range must end at the cursor; text between its start and the cursor
--- (already typed) must be where the item's text begins.
--- @return string?
local function text_at_cursor(bufnr, item, row, col, encoding)
  local insert_text = item.insertText
  if type(insert_text) == 'table' then
    -- A snippet (StringValue): Ghostline sends plain text; show a snippet's text literally.
    insert_text = insert_text.value
  end
  if type(insert_text) ~= 'string' or insert_text == '' then
    return nil
  end
  if not item.range then
    return insert_text
  end
  local start, finish = item.range.start, item.range['end']
  if start.line ~= row or finish.line ~= row then
    return nil
  end
  local line = api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
  local ok_start, start_col = pcall(vim.str_byteindex, line, encoding, start.character, false)
  local ok_end, end_col = pcall(vim.str_byteindex, line, encoding, finish.character, false)
  if not (ok_start and ok_end) or end_col ~= col or start_col > col then
    return nil
  end
  local typed = line:sub(start_col + 1, col)
  if insert_text:sub(1, #typed) ~= typed then
    return nil
  end
  return insert_text:sub(#typed + 1)
end

local function show(bufnr, client, item, row, col)
  local text = text_at_cursor(bufnr, item, row, col, client.offset_encoding)
  if not text or text == '' then
    return
  end
  local shown = buffers[bufnr].suggestion
  if shown and shown.row == row and shown.col == col and shown.text == text and shown.client_id == client.id then
    -- The same text at the same place (asked again after ghostline/suggestionReady): nothing
    -- to redraw. Any other answer (the suggestion grown since) replaces what is shown: only
    -- the latest request's answer gets here (see `seq`), so it is never an older one.
    shown.command = item.command
    return
  end
  local suggestion = { row = row, col = col, text = text, command = item.command, client_id = client.id }
  buffers[bufnr].suggestion = suggestion
  render(bufnr, suggestion)
  M.last_shown = { bufnr = bufnr, item = item, shown_text = text }
  api.nvim_exec_autocmds('User', { pattern = 'GhostlineSuggestion', data = { bufnr = bufnr, item = item, text = text } })
end

--- Asks the server for a suggestion at the cursor of the current window.
--- @param bufnr integer
function M.request(bufnr)
  local state = buffers[bufnr]
  if not state or bufnr ~= api.nvim_get_current_buf() or not in_insert_mode() then
    return
  end
  local client = vim.lsp.get_client_by_id(state.client_id)
  if not client then
    return
  end
  cancel_request(bufnr)
  local win = api.nvim_get_current_win()
  local params = vim.lsp.util.make_position_params(win, client.offset_encoding)
  --- @diagnostic disable-next-line: inject-field
  params.context = { triggerKind = 2 } -- InlineCompletionTriggerKind.Automatic
  local tick = api.nvim_buf_get_changedtick(bufnr)
  local cursor = api.nvim_win_get_cursor(win)
  state.seq = state.seq + 1
  local seq = state.seq
  local ok, request_id = client:request('textDocument/inlineCompletion', params, function(err, result)
    if state.seq ~= seq then
      return
    end
    state.request_id = nil
    if err or not result or not api.nvim_buf_is_valid(bufnr) then
      return
    end
    local now = api.nvim_win_is_valid(win) and api.nvim_win_get_cursor(win) or {}
    if api.nvim_buf_get_changedtick(bufnr) ~= tick or now[1] ~= cursor[1] or now[2] ~= cursor[2] or not in_insert_mode() then
      return
    end
    local items = result.items or result
    if type(items) ~= 'table' or not items[1] then
      -- Empty within the budget: whatever is shown still matches what was typed, and
      -- ghostline/suggestionReady will bring the new suggestion.
      return
    end
    show(bufnr, client, items[1], cursor[1] - 1, cursor[2])
  end, bufnr)
  if ok then
    state.request_id = request_id
  end
end

--- Schedules one request for a buffer after the current batch of events (typing fires both
--- TextChangedI and CursorMovedI).
local function schedule_request(bufnr)
  local state = buffers[bufnr]
  if not state or state.scheduled then
    return
  end
  state.scheduled = true
  vim.schedule(function()
    state.scheduled = false
    M.request(bufnr)
  end)
end

--- After a change: keeps the suggestion if the characters typed since it was made are where
--- it begins (shortened by them), else hides it.
local function follow_typing(bufnr)
  local state = buffers[bufnr]
  local suggestion = state and state.suggestion
  if not suggestion then
    return
  end
  local row, col = unpack(api.nvim_win_get_cursor(0))
  row = row - 1
  if row ~= suggestion.row or col < suggestion.col then
    clear(bufnr)
    return
  end
  if col == suggestion.col then
    return
  end
  local line = api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
  local typed = line:sub(suggestion.col + 1, col)
  if suggestion.text:sub(1, #typed) ~= typed or #typed == #suggestion.text then
    clear(bufnr)
    return
  end
  suggestion.text = suggestion.text:sub(#typed + 1)
  suggestion.col = col
  render(bufnr, suggestion)
end

--- Starts ghost text for a buffer the Ghostline client attached to.
--- @param client vim.lsp.Client
--- @param bufnr integer
--- @param opts ghostline.Options
function M.attach(client, bufnr, opts)
  options = opts
  if buffers[bufnr] then
    buffers[bufnr].client_id = client.id
    return
  end
  buffers[bufnr] = { client_id = client.id, seq = 0, scheduled = false }
  local group = api.nvim_create_augroup('ghostline_buffer_' .. bufnr, { clear = true })
  api.nvim_create_autocmd('TextChangedI', {
    group = group,
    buffer = bufnr,
    callback = function()
      follow_typing(bufnr)
      schedule_request(bufnr)
    end,
  })
  api.nvim_create_autocmd({ 'InsertEnter', 'CursorMovedI' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      -- A typed character moves the cursor too, and CursorMovedI comes before TextChangedI:
      -- follow the typing here already, or ghost text that agrees with the character would
      -- be hidden and drawn again when the server answers (a flicker). A move anywhere else
      -- than over text the suggestion begins with hides it.
      follow_typing(bufnr)
      schedule_request(bufnr)
    end,
  })
  api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      cancel_request(bufnr)
      clear(bufnr)
    end,
  })
  api.nvim_create_autocmd('LspDetach', {
    group = group,
    buffer = bufnr,
    callback = function(args)
      if args.data.client_id == buffers[bufnr].client_id then
        clear(bufnr)
        buffers[bufnr] = nil
        api.nvim_del_augroup_by_id(group)
      end
    end,
  })
  api.nvim_create_autocmd('BufWipeout', {
    group = group,
    buffer = bufnr,
    callback = function()
      buffers[bufnr] = nil
      api.nvim_del_augroup_by_id(group)
    end,
  })
  if bufnr == api.nvim_get_current_buf() and in_insert_mode() then
    schedule_request(bufnr)
  end
end

--- ghostline/suggestionReady: the suggestion for a buffer state is ready or has grown (the
--- server sends it again each time it grows past what it last answered: first words, then the
--- whole line). If that state is the current buffer's current version and cursor, asks again,
--- also while a suggestion is shown: the answer replaces the shown text when it is longer.
function M.on_suggestion_ready(params, ctx)
  if type(params) ~= 'table' or type(params.uri) ~= 'string' then
    return
  end
  local bufnr = api.nvim_get_current_buf()
  local state = buffers[bufnr]
  if not state or vim.uri_from_bufnr(bufnr) ~= params.uri then
    return
  end
  if params.version ~= vim.lsp.util.buf_versions[bufnr] then
    return
  end
  local position = params.position
  if type(position) == 'table' and position.line ~= nil then
    local client = vim.lsp.get_client_by_id(ctx and ctx.client_id or state.client_id)
    local cursor = api.nvim_win_get_cursor(0)
    if position.line ~= cursor[1] - 1 then
      return
    end
    if client then
      local line = api.nvim_buf_get_lines(bufnr, cursor[1] - 1, cursor[1], false)[1] or ''
      local ok, character = pcall(vim.str_utfindex, line, client.offset_encoding, cursor[2], false)
      if ok and character ~= position.character then
        return
      end
    end
  end
  M.request(bufnr)
end

--- The next word of a suggestion: leading whitespace (a newline included) and then a run of
--- word characters, or else a run of other non-blank characters.
local function next_word(text)
  local blank = text:match('^%s*')
  local rest = text:sub(#blank + 1)
  local word = rest:match('^[%w_]+') or rest:match('^[^%w_%s]+') or ''
  return blank .. word
end

--- The rest of the current line of a suggestion; at a line end, the newline and the next line.
local function next_line(text)
  if text:sub(1, 1) == '\n' then
    return '\n' .. (text:sub(2):match('^[^\n]*'))
  end
  return text:match('^[^\n]*')
end

--- Returns the suggestion shown at the cursor of the current window, if any.
--- @return ghostline.Suggestion?
function M.current()
  local bufnr = api.nvim_get_current_buf()
  local suggestion = buffers[bufnr] and buffers[bufnr].suggestion
  if not suggestion then
    return nil
  end
  local row, col = unpack(api.nvim_win_get_cursor(0))
  if row - 1 ~= suggestion.row or col ~= suggestion.col then
    return nil
  end
  return suggestion
end

--- Inserts all of the suggestion, its next word or the rest of its line at the cursor.
--- Returns false when no suggestion is shown (so a key mapping can fall back to the key).
--- @param kind 'all'|'word'|'line'
--- @return boolean
function M.accept(kind)
  local bufnr = api.nvim_get_current_buf()
  local suggestion = M.current()
  if not suggestion then
    return false
  end
  local part = suggestion.text
  if kind == 'word' then
    part = next_word(suggestion.text)
  elseif kind == 'line' then
    part = next_line(suggestion.text)
  end
  if part == '' then
    part = suggestion.text
  end
  cancel_request(bufnr)
  local lines = vim.split(part, '\n', { plain = true })
  local row, col = suggestion.row, suggestion.col
  api.nvim_buf_set_text(bufnr, row, col, row, col, lines)
  local end_row = row + #lines - 1
  local end_col = #lines == 1 and col + #part or #lines[#lines]
  api.nvim_win_set_cursor(0, { end_row + 1, end_col })
  local rest = suggestion.text:sub(#part + 1)
  -- The item's command tells the server what was accepted: all of the suggestion shown, or a
  -- word or a line of it (`acceptedChars`).
  local client = vim.lsp.get_client_by_id(suggestion.client_id)
  if client and suggestion.command then
    local command = vim.deepcopy(suggestion.command)
    if type(command.arguments) == 'table' and type(command.arguments[1]) == 'table' then
      command.arguments[1].chars = vim.fn.strchars(suggestion.text)
      command.arguments[1].acceptedChars = vim.fn.strchars(part)
    end
    client:exec_cmd(command, { bufnr = bufnr }, function() end)
  end
  if rest == '' then
    clear(bufnr)
  else
    suggestion.text = rest
    suggestion.row, suggestion.col = end_row, end_col
    render(bufnr, suggestion)
  end
  return true
end

--- Hides the suggestion until the next change. Returns false when none was shown.
--- @return boolean
function M.dismiss()
  local bufnr = api.nvim_get_current_buf()
  if not M.current() then
    return false
  end
  cancel_request(bufnr)
  clear(bufnr)
  return true
end

--- The ghost text namespace (tests read the extmarks from it).
M.namespace = ns

return M
