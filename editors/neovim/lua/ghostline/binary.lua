-- Finds the ghostline binary when setup() is given no `cmd`. The places, in order:
--
--   1. <root>/target/release/ghostline: this plugin's own checkout built from source (what
--      lazy.nvim's `build = 'cargo build --release'` makes);
--   2. <root>/bin/ghostline: the binary of an unpacked release archive
--      (ghostline-VERSION-TARGET.tar.gz holds bin/, lib/ and editors/neovim side by side);
--   3. `ghostline` on PATH;
--   4. $CARGO_HOME/bin/ghostline (~/.cargo/bin, what `cargo install --path .` makes), for a
--      Neovim started with a PATH that lacks it.
--
-- <root> is two directories above editors/neovim, found from this file's own location. The
-- binary next to the plugin comes first because it is the one of the same version as this Lua
-- code; PATH may hold an older `cargo install`.
--
-- Only looks at files; it never runs the binary or starts a server.

local M = {}

local uv = vim.uv or vim.loop
local exe_name = vim.fn.has('win32') == 1 and 'ghostline.exe' or 'ghostline'

--- @class ghostline.BinaryPlace
--- @field label string   what the place is, for :checkhealth and error messages
--- @field path string?   the file looked at (nil for PATH when nothing is there)
--- @field found boolean  whether an executable file is there

--- @class ghostline.BinarySearch
--- @field path string?   the binary found, nil when none
--- @field label string?  the label of the place it was found in
--- @field places ghostline.BinaryPlace[]  every place looked in, in order

--- The checkout or archive this plugin lives in: two directories above editors/neovim.
--- @return string?
function M.root()
  local source = debug.getinfo(1, 'S').source
  if source:sub(1, 1) ~= '@' then
    return nil
  end
  -- Real path: the plugin directory may be a symbolic link in a pack/ directory.
  local file = uv.fs_realpath(source:sub(2)) or source:sub(2)
  -- <root>/editors/neovim/lua/ghostline/binary.lua
  return vim.fn.fnamemodify(file, ':p:h:h:h:h:h')
end

local function is_executable(path)
  return path ~= nil and vim.fn.executable(path) == 1 and vim.fn.isdirectory(path) == 0
end

--- Looks in every place and returns what it found.
--- @return ghostline.BinarySearch
function M.find()
  local places = {}
  local root = M.root()
  if root then
    places[#places + 1] = { label = 'this plugin\'s checkout, built with `cargo build --release`', path = vim.fs.joinpath(root, 'target', 'release', exe_name) }
    places[#places + 1] = { label = 'this plugin\'s release archive', path = vim.fs.joinpath(root, 'bin', exe_name) }
  end
  local on_path = vim.fn.exepath(exe_name)
  places[#places + 1] = { label = 'PATH', path = on_path ~= '' and on_path or nil }
  local cargo_home = vim.env.CARGO_HOME
  if not cargo_home or cargo_home == '' then
    cargo_home = vim.fs.joinpath(uv.os_homedir() or '~', '.cargo')
  end
  places[#places + 1] = { label = '`cargo install --path .`', path = vim.fs.joinpath(cargo_home, 'bin', exe_name) }

  local res = { places = places }
  for _, place in ipairs(places) do
    place.found = is_executable(place.path)
    if place.found and not res.path then
      res.path = place.path
      res.label = place.label
    end
  end
  return res
end

--- Every place looked in, as one line each, for messages.
--- @param search ghostline.BinarySearch
--- @return string[]
function M.describe(search)
  local lines = {}
  for _, place in ipairs(search.places) do
    local where = place.path or ('`' .. exe_name .. '` is not on PATH')
    local mark = place.found and (place.path == search.path and 'used' or 'found') or 'missing'
    lines[#lines + 1] = ('%s: %s (%s)'):format(place.label, where, mark)
  end
  return lines
end

--- How to get a binary when none was found.
--- @return string[]
function M.install_advice()
  local root = M.root() or '/path/to/ghostline'
  return {
    ('build it in this plugin\'s checkout: `cd %s && cargo build --release` (lazy.nvim: `build = \'cargo build --release\'`, then `:Lazy build ghostline`)'):format(root),
    'or unpack a release archive ghostline-VERSION-TARGET.tar.gz and use its editors/neovim, or put its bin/ on PATH',
    'or install it from a source checkout with `cargo install --path .`',
    'or pass its path: require("ghostline").setup({ cmd = { "/path/to/ghostline" } })',
  }
end

return M
