-- Neovim configuration for tests/editors/neovim.sh: the plugin from editors/neovim with the
-- server it finds by itself and the test model, and the plugin's own ghost text renderer (Neovim 0.11).
local root = assert(vim.env.GHOSTLINE_ROOT, 'GHOSTLINE_ROOT is not set')
vim.opt.runtimepath:prepend(root .. '/editors/neovim')
vim.cmd('filetype plugin indent on')
vim.o.swapfile = false
vim.o.shadafile = 'NONE'

local settings = { model = vim.env.GHOSTLINE_TEST_MODEL }
if vim.env.GHOSTLINE_TEST_THREADS and vim.env.GHOSTLINE_TEST_THREADS ~= '' then
  settings.threads = tonumber(vim.env.GHOSTLINE_TEST_THREADS)
end

-- A second plugin's insert-mode Tab, mapped before Ghostline attaches (as nvim-cmp or a snippet
-- engine maps it): Ghostline's Tab must run it when no suggestion is shown.
_G.other_plugin_tabs = 0
vim.keymap.set('i', '<Tab>', function()
  _G.other_plugin_tabs = _G.other_plugin_tabs + 1
  vim.api.nvim_feedkeys(vim.keycode('<Tab>'), 'n', false)
end, { desc = 'another plugin: Tab' })

-- No `cmd`: the plugin finds the binary itself (the test's PATH has none, so it must be this
-- checkout's target/release/ghostline).
require('ghostline').setup({
  args = { '--log-file', vim.env.GHOSTLINE_SERVER_LOG },
  settings = settings,
  ghost_text = vim.env.GHOSTLINE_GHOST_TEXT or 'auto',
})
