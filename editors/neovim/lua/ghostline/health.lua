-- :checkhealth ghostline: Neovim version, the server binary (every place looked in and the one
-- used, or how to install one), its version, `ghostline doctor`, the renderer in use and, when
-- a client runs, the model's state from ghostline/stats.
-- Only reads; it never starts a server or changes settings.

local M = {}

local health = vim.health

local function check_neovim()
  if vim.fn.has('nvim-0.11') == 1 then
    health.ok('Neovim ' .. tostring(vim.version()))
  else
    health.error('Neovim ' .. tostring(vim.version()) .. ' is too old', { 'Ghostline needs Neovim 0.11 or newer (vim.lsp.config)' })
  end
  local ghostline = require('ghostline')
  if ghostline.renderer == 'builtin' then
    health.ok('ghost text: built-in vim.lsp.inline_completion')
  elseif ghostline.renderer == 'plugin' then
    health.ok('ghost text: drawn by the plugin (extmarks)')
  elseif ghostline.binary_search and not ghostline.cmd then
    health.info('setup() found no binary, so the server is off (see "Ghostline server")')
  elseif vim.lsp.config.ghostline == nil then
    health.warn('require("ghostline").setup{} has not run')
  else
    health.info('ghost text is off (ghost_text = false)')
  end
end

--- The binary to check: the one setup() uses, or (before setup) the one it would find.
--- @return string? exe, string? how
local function check_binary_place()
  local ghostline = require('ghostline')
  local binary = require('ghostline.binary')
  if ghostline.options.cmd then
    local exe = ghostline.options.cmd[1]
    if not exe or vim.fn.executable(exe) == 0 then
      health.error(('server command `%s` (setup `cmd`) is not executable'):format(tostring(exe)), binary.install_advice())
      return nil
    end
    return exe, 'from setup `cmd`'
  end
  local search = ghostline.binary_search or binary.find()
  -- setup() has no `cmd`: every place looked in, in order.
  for _, line in ipairs(binary.describe(search)) do
    health.info('looked in ' .. line)
  end
  if not search.path then
    health.error('no ghostline binary found', binary.install_advice())
    return nil
  end
  return search.path, 'found in ' .. search.label
end

local function check_binary()
  local exe, how = check_binary_place()
  if not exe then
    return
  end
  health.ok(('server: %s (%s)'):format(vim.fn.exepath(exe), how))
  local version = vim.system({ exe, '--version' }, { text = true }):wait(5000)
  if version.code == 0 then
    health.ok(vim.trim(version.stdout))
  else
    health.error(('`%s --version` failed: %s'):format(exe, vim.trim((version.stderr or '') .. (version.stdout or ''))),
      { 'a binary for another platform, or one whose lib/ directory is missing; rebuild it or use another one' })
    return
  end
  -- The engine check loads the model and decodes a few tokens in a child process: seconds on an
  -- idle machine, far more for a large model on a busy one.
  local doctor_timeout_s = 180
  local doctor = vim.system({ exe, 'doctor' }, { text = true }):wait(doctor_timeout_s * 1000)
  if doctor.code == 124 then
    health.error(('`ghostline doctor` did not finish within %d s'):format(doctor_timeout_s),
      { 'run `ghostline doctor` in a terminal to see where it stops' })
    return
  end
  if doctor.code ~= 0 then
    health.error('`ghostline doctor` failed: ' .. vim.trim((doctor.stderr or '') .. (doctor.stdout or '')))
    return
  end
  for _, line in ipairs(vim.split(vim.trim(doctor.stdout), '\n', { plain = true })) do
    if line:match('not cached') or line:match('missing') then
      health.warn(line, { 'fetch it with `ghostline models fetch NAME`' })
    else
      health.info(line)
    end
  end
end

--- Where the jobs run: the embedded model, or a server (and whether the embedded model answers
--- for it while it fails).
local function check_backend(backend)
  if type(backend) ~= 'table' or backend.kind == 'local' then
    health.ok('backend: the embedded model')
    return
  end
  local where = ('%s at %s (%d jobs there, %d by the embedded model)'):format(
    backend.kind, tostring(backend.url), backend.remoteJobs or 0, backend.fallbackJobs or 0)
  local last_error = backend.lastError ~= vim.NIL and backend.lastError or nil
  if backend.usingFallback then
    health.warn(('backend %s is failing; the embedded model answers until it is back. Last error: %s'):format(where, tostring(last_error)),
      { 'check the server with `ghostline doctor --backend \'{"kind": ..., "url": ...}\'`' })
  elseif last_error then
    health.ok(('backend %s; last error: %s'):format(where, last_error))
  else
    health.ok('backend ' .. where)
  end
end

--- The job the model is on now (`currentJob` of ghostline/stats): a prompt that has been
--- decoding for seconds is an arrival too large for this machine, or a stuck engine.
local function check_current_job(job)
  if type(job) ~= 'table' then
    health.info('current job: none yet')
    return
  end
  local line = ('current job: %s, %d of %d prompt tokens decoded, %d tokens generated, %.1f s old'):format(
    job.stage, job.promptTokensDone or 0, job.promptTokens or 0, job.generatedTokens or 0, (job.ageMs or 0) / 1000)
  if job.stage == 'prompt' and (job.ageMs or 0) > 5000 then
    health.warn(line, { 'the prompt decodes slowly here: lower `coldPromptMs` or `prefixLines`, or use a smaller model' })
  else
    health.info(line)
  end
end

local function check_client()
  local client = require('ghostline').client()
  if not client then
    health.info('no Ghostline client is running (open a file of a configured file type)')
    return
  end
  health.ok(('client %d running, position encoding %s'):format(client.id, client.offset_encoding))
  local bufnr = next(client.attached_buffers) or 0
  local response, err = client:request_sync('ghostline/stats', vim.empty_dict(), 3000, bufnr)
  if not response then
    health.warn('ghostline/stats got no answer: ' .. tostring(err))
    return
  end
  if response.err then
    health.error('ghostline/stats failed: ' .. response.err.message)
    return
  end
  local engine = response.result and response.result.engine or {}
  if engine.state == 'ready' then
    local model = engine.model or {}
    health.ok(('model ready: %s'):format(model.name or vim.inspect(model)))
    check_backend(engine.backend)
    check_current_job(response.result.currentJob)
  elseif engine.state == 'failed' then
    -- The error says which: a model that did not load, or an engine that crashed twice.
    health.error('engine failed: ' .. tostring(engine.error), { 'set `settings = { model = ... }` to a registry name or a .gguf path', 'after a crash: change the settings or restart Neovim' })
  else
    health.info('model state: ' .. tostring(engine.state))
  end
end

function M.check()
  health.start('Neovim')
  check_neovim()
  health.start('Ghostline server')
  check_binary()
  health.start('Ghostline client')
  check_client()
end

return M
