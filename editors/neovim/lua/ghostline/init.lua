-- Ghostline for Neovim: registers the `ghostline` language server with vim.lsp.config and
-- vim.lsp.enable (Neovim 0.11+), turns on ghost text (Neovim 0.12's built-in
-- vim.lsp.inline_completion, or this plugin's own extmark renderer in ghostline/ghost.lua),
-- maps the accept keys and offers :GhostlineStats. Without `cmd`, the server binary is found
-- by ghostline/binary.lua (this plugin's own build or archive, PATH, ~/.cargo/bin).
--
-- This file only wires things together; it never draws or edits text itself.

local M = {}

--- @class ghostline.Keys
--- @field accept string|false        accept the whole suggestion (falls back to the key itself)
--- @field accept_word string|false   accept the next word (plugin renderer only)
--- @field accept_line string|false   accept the rest of the line (plugin renderer only)
--- @field dismiss string|false       hide the suggestion until the next change

--- @class ghostline.Options
--- @field cmd string[]|nil             the server command; nil: the binary found by ghostline.binary
--- @field args string[]                arguments after the binary (of `cmd` or the one found)
--- @field filetypes string[]|nil       file types to attach to; nil attaches to every file buffer
--- @field settings table               server settings sent as initializationOptions (camelCase)
--- @field ghost_text 'auto'|'builtin'|'plugin'|false  'auto': built-in on 0.12, plugin on 0.11
--- @field completion_menu boolean      also offer the Ghostline item to completion menus
--- @field keys ghostline.Keys
--- @field hl_group string              highlight group of the ghost text
--- @field rest_ms integer|false        after the cursor rests this long in normal mode, tell the
---                                     server (ghostline/cursorRest) so it can start there; false: never

--- @type ghostline.Options
M.defaults = {
  cmd = nil,
  args = {},
  filetypes = nil,
  settings = {},
  ghost_text = 'auto',
  completion_menu = false,
  keys = {
    accept = '<Tab>',
    accept_word = '<M-Right>',
    accept_line = '<M-Down>',
    dismiss = '<C-]>',
  },
  hl_group = 'GhostlineSuggestion',
  rest_ms = 300,
}

--- @type ghostline.Options
M.options = vim.deepcopy(M.defaults)

--- How many ghostline/cursorRest notifications were sent (for tests and debugging).
M.rests_sent = 0

--- The server command in use after setup, nil when no binary was found.
--- @type string[]?
M.cmd = nil

--- Where setup() looked for the binary (nil when `cmd` was given): see ghostline.binary.
--- @type ghostline.BinarySearch?
M.binary_search = nil

--- The renderer in use after setup: 'builtin', 'plugin' or nil (no ghost text).
--- @type 'builtin'|'plugin'|nil
M.renderer = nil

local augroup = vim.api.nvim_create_augroup('ghostline', { clear = true })

--- Returns the Ghostline client attached to a buffer, if any.
--- @param bufnr? integer
--- @return vim.lsp.Client?
function M.client(bufnr)
  local clients = vim.lsp.get_clients({ name = 'ghostline', bufnr = bufnr })
  return clients[1]
end

local function choose_renderer(ghost_text)
  local has_builtin = vim.lsp.inline_completion ~= nil
  if ghost_text == false then
    return nil
  elseif ghost_text == 'builtin' then
    if not has_builtin then
      vim.notify('ghostline: ghost_text = "builtin" needs Neovim 0.12; using the plugin renderer', vim.log.levels.WARN)
      return 'plugin'
    end
    return 'builtin'
  elseif ghost_text == 'plugin' then
    return 'plugin'
  end
  return has_builtin and 'builtin' or 'plugin'
end

--- What `lhs` did in insert mode before this plugin mapped it in `bufnr` (another plugin's
--- mapping, such as nvim-cmp's or a snippet engine's Tab), as a function that does it again;
--- nil when it was not mapped.
local function previous_mapping(bufnr, lhs)
  local previous = vim.api.nvim_buf_call(bufnr, function()
    return vim.fn.maparg(lhs, 'i', false, true)
  end)
  if vim.tbl_isempty(previous) or (previous.desc or ''):match('^Ghostline: ') then
    return nil
  end
  local keys = function(text)
    if previous.replace_keycodes == 1 or previous.expr ~= 1 then
      text = vim.keycode(text)
    end
    -- Typed as that mapping would have typed them: remapped unless it was a noremap mapping.
    vim.api.nvim_feedkeys(text, previous.noremap == 1 and 'n' or 'm', false)
  end
  if previous.callback then
    return function()
      local result = previous.callback()
      if previous.expr == 1 and type(result) == 'string' and result ~= '' then
        keys(result)
      end
    end
  end
  if previous.rhs and previous.rhs ~= '' then
    return function()
      keys(previous.expr == 1 and vim.api.nvim_eval(previous.rhs) or previous.rhs)
    end
  end
  return nil
end

--- Maps `lhs` in insert mode for one buffer: runs `action`, and when the action reports that
--- there was nothing to accept, does what `lhs` did before (the user's or another plugin's
--- mapping of it, called as it was: a callback runs, keys are typed with its remap setting),
--- else types `lhs` itself.
local function map_with_fallback(bufnr, lhs, action, desc)
  if not lhs then
    return
  end
  local fallback = previous_mapping(bufnr, lhs)
  vim.keymap.set('i', lhs, function()
    if not action() then
      if fallback then
        fallback()
      else
        vim.api.nvim_feedkeys(vim.keycode(lhs), 'n', false)
      end
    end
  end, { buffer = bufnr, desc = desc, silent = true })
end

--- In normal mode, once the cursor has rested `rest_ms`, sends ghostline/cursorRest with its
--- position: the server starts there (unless a job serves that state), so the first key typed there finds the
--- prompt decoded. (Insert mode asks for suggestions on every cursor move anyway.)
local function watch_cursor_rest(client, bufnr)
  if not M.options.rest_ms then
    return
  end
  local timer = vim.uv.new_timer()
  local group = vim.api.nvim_create_augroup('ghostline_rest_' .. bufnr, { clear = true })
  local function stop()
    if timer and not timer:is_closing() then
      timer:stop()
      timer:close()
    end
    pcall(vim.api.nvim_del_augroup_by_id, group)
  end
  vim.api.nvim_create_autocmd('CursorMoved', {
    group = group,
    buffer = bufnr,
    callback = function()
      timer:stop()
      timer:start(M.options.rest_ms, 0, vim.schedule_wrap(function()
        if client:is_stopped() or not vim.api.nvim_buf_is_valid(bufnr) or vim.api.nvim_get_current_buf() ~= bufnr then
          return
        end
        if vim.api.nvim_get_mode().mode ~= 'n' then
          return
        end
        local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
        client:notify('ghostline/cursorRest', params)
        M.rests_sent = M.rests_sent + 1
      end))
    end,
  })
  vim.api.nvim_create_autocmd({ 'BufWipeout', 'LspDetach' }, {
    group = group,
    buffer = bufnr,
    callback = function(args)
      if args.event == 'BufWipeout' or (args.data and args.data.client_id == client.id) then
        stop()
      end
    end,
  })
end

local function on_attach(client, bufnr)
  watch_cursor_rest(client, bufnr)
  local keys = M.options.keys
  if M.renderer == 'plugin' then
    local ghost = require('ghostline.ghost')
    ghost.attach(client, bufnr, M.options)
    map_with_fallback(bufnr, keys.accept, function()
      return ghost.accept('all')
    end, 'Ghostline: accept suggestion')
    map_with_fallback(bufnr, keys.accept_word, function()
      return ghost.accept('word')
    end, 'Ghostline: accept next word')
    map_with_fallback(bufnr, keys.accept_line, function()
      return ghost.accept('line')
    end, 'Ghostline: accept line')
    map_with_fallback(bufnr, keys.dismiss, ghost.dismiss, 'Ghostline: dismiss suggestion')
  elseif M.renderer == 'builtin' then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr, client_id = client.id })
    if keys.accept then
      -- The pattern from `:help vim.lsp.inline_completion.get()`: an expr mapping that types
      -- the key itself when there is nothing to accept.
      vim.keymap.set('i', keys.accept, function()
        if not vim.lsp.inline_completion.get() then
          return keys.accept
        end
      end, { buffer = bufnr, expr = true, replace_keycodes = true, desc = 'Ghostline: accept suggestion' })
    end
  end
end

--- Asks the server for its counters and latency distributions.
--- @param callback fun(err: lsp.ResponseError?, stats: table?)
--- @param bufnr? integer
function M.stats(callback, bufnr)
  local client = M.client(bufnr) or M.client()
  if not client then
    callback({ code = -1, message = 'no Ghostline client is running' }, nil)
    return
  end
  -- Params `{}`, not nil: the server rejects a request without a params field.
  client:request('ghostline/stats', vim.empty_dict(), function(err, result)
    callback(err, result)
  end, bufnr or vim.api.nvim_get_current_buf())
end

--- :GhostlineStats: shows the server's stats as JSON in a floating window.
function M.show_stats()
  M.stats(function(err, stats)
    if err then
      vim.notify('ghostline: ' .. err.message, vim.log.levels.ERROR)
      return
    end
    local ok, json = pcall(vim.json.encode, stats)
    local lines = ok and vim.split(M.pretty_json(json), '\n', { plain = true }) or vim.split(vim.inspect(stats), '\n')
    vim.lsp.util.open_floating_preview(lines, 'json', { border = 'rounded', title = 'Ghostline stats' })
  end)
end

--- Indents compact JSON (vim.json.encode has no pretty printer) without touching strings.
--- @param json string
--- @return string
function M.pretty_json(json)
  local out, depth, in_string, escaped = {}, 0, false, false
  local function newline()
    out[#out + 1] = '\n' .. string.rep('  ', depth)
  end
  for ch in json:gmatch('.') do
    if in_string then
      out[#out + 1] = ch
      if escaped then
        escaped = false
      elseif ch == '\\' then
        escaped = true
      elseif ch == '"' then
        in_string = false
      end
    elseif ch == '"' then
      in_string = true
      out[#out + 1] = ch
    elseif ch == '{' or ch == '[' then
      depth = depth + 1
      out[#out + 1] = ch
      newline()
    elseif ch == '}' or ch == ']' then
      depth = depth - 1
      newline()
      out[#out + 1] = ch
    elseif ch == ',' then
      out[#out + 1] = ch
      newline()
    elseif ch == ':' then
      out[#out + 1] = ': '
    else
      out[#out + 1] = ch
    end
  end
  return table.concat(out)
end

--- The server command from the options: `cmd`, or the binary found (ghostline.binary), with
--- `args` after it; nil when `cmd` is not given and no binary is found.
--- @return string[]?
function M.server_command()
  local cmd = M.options.cmd
  M.binary_search = nil
  if not cmd then
    M.binary_search = require('ghostline.binary').find()
    if not M.binary_search.path then
      return nil
    end
    cmd = { M.binary_search.path }
  end
  return vim.list_extend(vim.deepcopy(cmd), M.options.args or {})
end

--- @param opts? ghostline.Options
function M.setup(opts)
  if vim.fn.has('nvim-0.11') == 0 then
    vim.notify('ghostline: needs Neovim 0.11 or newer (vim.lsp.config)', vim.log.levels.ERROR)
    return
  end
  M.options = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  M.cmd = M.server_command()
  if not M.cmd then
    -- Enabling the server without a binary would fail once per buffer; say it once, with the
    -- places looked in and how to install.
    local binary = require('ghostline.binary')
    vim.notify(('ghostline: no ghostline binary found. Looked in:\n  %s\nTo install:\n  %s\n(:checkhealth ghostline)'):format(
      table.concat(binary.describe(M.binary_search), '\n  '), table.concat(binary.install_advice(), '\n  ')), vim.log.levels.ERROR)
    return
  end
  M.renderer = choose_renderer(M.options.ghost_text)
  vim.api.nvim_set_hl(0, M.options.hl_group, { link = 'Comment', default = true })

  local init_options = vim.deepcopy(M.options.settings)
  -- Only the plugin renderer re-asks on ghostline/suggestionReady; every other client is
  -- answered when the suggestion is ready (bounded by the server's maxWaitMs).
  if M.renderer == 'plugin' then
    init_options.suggestionReadyNotification = true
  end
  -- The server leaves the model out of the completion list of a client with inline completion
  -- (Neovim 0.12 declares it) unless asked.
  if M.options.completion_menu and init_options.completionItem == nil then
    init_options.completionItem = 'always'
  end

  vim.lsp.config('ghostline', {
    cmd = M.cmd,
    filetypes = M.options.filetypes,
    init_options = init_options,
    handlers = {
      ['ghostline/suggestionReady'] = function(_, params, ctx)
        if M.renderer == 'plugin' then
          require('ghostline.ghost').on_suggestion_ready(params, ctx)
        end
      end,
    },
    on_init = function(client)
      if not M.options.completion_menu then
        -- Completion menus (vim.lsp.completion, nvim-cmp) would wait for the model on every
        -- keystroke; ghost text covers that case.
        client.server_capabilities.completionProvider = nil
      end
    end,
  })

  vim.api.nvim_clear_autocmds({ group = augroup })
  vim.api.nvim_create_autocmd('LspAttach', {
    group = augroup,
    callback = function(args)
      local client = vim.lsp.get_client_by_id(args.data.client_id)
      if client and client.name == 'ghostline' then
        on_attach(client, args.buf)
      end
    end,
  })

  vim.api.nvim_create_user_command('GhostlineStats', M.show_stats, { desc = "Show Ghostline's counters and latencies" })
  vim.lsp.enable('ghostline')
end

return M
