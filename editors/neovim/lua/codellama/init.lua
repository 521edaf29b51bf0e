-- codellama.nvim: Neovim client for codellama-lsp. See :help codellama.
local config = require("codellama.config")
local suggest = require("codellama.suggest")
local instruct = require("codellama.instruct")

local M = {}

local has_011 = vim.fn.has("nvim-0.11") == 1
local did_setup = false

--- Where the server is, as far as this plugin knows: drives the loading/ready messages, the
--- statusline component and :CodeLlamaStatus.
---@class codellama.State
---@field phase "off"|"missing"|"starting"|"loading"|"ready"|"failed"|"stopped"
---@field detail string? one line: the model, the error, the missing command
---@field notified_missing boolean the missing-server message is given once per session
local state = { phase = "off", detail = nil, notified_missing = false }
M.state = state

local function notify(msg, level)
  vim.notify("codellama: " .. msg, level or vim.log.levels.INFO)
end

local function set_phase(phase, detail)
  local changed = state.phase ~= phase or state.detail ~= detail
  state.phase, state.detail = phase, detail
  if changed then
    vim.schedule(function()
      pcall(vim.cmd.redrawstatus)
    end)
  end
end

local function clients()
  local get = vim.lsp.get_clients or vim.lsp.get_active_clients
  return get({ name = "codellama" })
end
M.clients = clients

--- A model path as a user recognises it: the file or folder name, "demo model" for the bundled one.
local function short_model(path)
  if type(path) ~= "string" or path == "" then
    return "the model"
  end
  if config.is_demo_model(path) then
    return "the demo model"
  end
  return vim.fn.fnamemodify((path:gsub("[/\\]+$", "")), ":t")
end
M._short_model = short_model

local function on_exit(code, signal)
  vim.schedule(function()
    if #clients() > 1 then
      return -- another codellama client (another root) is still running
    end
    if code == 0 and signal == 0 then
      set_phase("stopped", nil)
    else
      -- Neovim itself says "Client codellama quit with exit code ..."; keep it for the status.
      set_phase("failed", ("the server exited (code %d, signal %d); see :LspLog"):format(code, signal))
    end
  end)
end

local function client_config()
  local opts = config.options
  local settings = config.server_settings()
  return {
    name = "codellama",
    cmd = opts.cmd,
    cmd_env = opts.cmd_env,
    filetypes = opts.filetypes,
    root_markers = opts.root_markers,
    init_options = settings,
    settings = { codellama = settings },
    on_exit = on_exit,
  }
end

--- Push the current settings to running servers.
function M.push_settings()
  local settings = config.server_settings()
  for _, client in ipairs(clients()) do
    client.settings = { codellama = settings }
    if has_011 then
      client:notify("workspace/didChangeConfiguration", { settings = { codellama = settings } })
    else
      client.notify("workspace/didChangeConfiguration", { settings = { codellama = settings } })
    end
  end
end

function M.toggle(on)
  if on == nil then
    on = not config.options.enabled
  end
  config.options.enabled = on
  if not on then
    suggest.dismiss()
  end
  M.push_settings()
  pcall(vim.cmd.redrawstatus)
  notify("suggestions " .. (on and "enabled" or "disabled"))
end

--- Fetch the server status (codellama.status) and call `cb(err, result)`.
local function fetch_status(cb)
  local client = clients()[1]
  if not client then
    cb(state.phase == "missing" and state.detail or "the server is not running", nil)
    return
  end
  suggest.request(client, "workspace/executeCommand", { command = "codellama.status", arguments = {} }, function(err, result)
    cb(err and (err.message or tostring(err)) or nil, result)
  end)
end

--- Statusline component with no argument; with `cb`, fetch the server's codellama.status.
---
--- `status()` returns a short word for a statusline ("" until a server is wanted), e.g.
--- `vim.o.statusline = "%f %= %{v:lua.require'codellama'.status()}"`. It only reads state the
--- plugin keeps, so it is cheap to call on every redraw.
---@param cb? fun(err: string?, result: table?)
---@return string?
function M.status(cb)
  if cb ~= nil then
    fetch_status(cb)
    return nil
  end
  local phase = state.phase
  if phase == "off" then
    return ""
  elseif phase == "missing" then
    return "CodeLlama: no server"
  elseif phase == "ready" then
    if not config.options.enabled then
      return "CodeLlama: off"
    end
    local ms = suggest.stats.last_latency_ms
    return ms and ("CodeLlama: %d ms"):format(ms) or "CodeLlama: ready"
  elseif phase == "failed" then
    return "CodeLlama: error"
  end
  return "CodeLlama: " .. phase -- starting, loading, stopped
end

--- Show `lines` in a focused floating scratch window (q or <Esc> closes it): a status that
--- does not stop at "Press ENTER", and can be scrolled when long.
local function open_float(lines, filetype)
  local buf = vim.api.nvim_create_buf(false, true)
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].modifiable = false
  vim.bo[buf].bufhidden = "wipe"
  vim.bo[buf].filetype = filetype or "codellama-status"
  local width = 20
  for _, l in ipairs(lines) do
    width = math.max(width, vim.fn.strdisplaywidth(l))
  end
  width = math.min(width + 1, math.max(20, vim.o.columns - 6))
  local height = math.min(#lines, math.max(1, vim.o.lines - 6))
  local win = vim.api.nvim_open_win(buf, true, {
    relative = "editor",
    row = math.max(0, math.floor((vim.o.lines - height) / 2) - 1),
    col = math.max(0, math.floor((vim.o.columns - width) / 2)),
    width = width,
    height = height,
    style = "minimal",
    border = "rounded",
    title = " codellama ",
    title_pos = "center",
  })
  vim.wo[win].wrap = true
  for _, key in ipairs({ "q", "<Esc>" }) do
    vim.keymap.set("n", key, "<Cmd>close<CR>", { buffer = buf, nowait = true, silent = true })
  end
  vim.api.nvim_create_autocmd("WinLeave", {
    buffer = buf,
    once = true,
    callback = function()
      pcall(vim.api.nvim_win_close, win, true)
    end,
  })
  return win, buf
end

local function show_status(cmd)
  local full = cmd and cmd.bang
  M.status(function(err, result)
    local s = suggest.stats
    local lines = {
      "suggestions: " .. (config.options.enabled and "on" or "off"),
      ("requests %d, shown %d, accepted %d, last latency %s"):format(
        s.requests, s.shown, s.accepted, s.last_latency_ms and (s.last_latency_ms .. " ms") or "-"),
    }
    if s.last_error then
      lines[#lines + 1] = "last error: " .. s.last_error
    end
    local filetype
    if err then
      lines[#lines + 1] = "server: " .. err
      local _, advice = config.server_problem()
      for _, a in ipairs(advice or {}) do
        lines[#lines + 1] = "  - " .. a
      end
    elseif full or type(result) ~= "table" then
      lines[#lines + 1] = "server:"
      vim.list_extend(lines, vim.split(vim.inspect(result), "\n", { plain = true }))
      filetype = "lua"
    else
      lines[#lines + 1] = ("server: %s, model %s (%s, %s)%s"):format(
        tostring(result.state), tostring(result.model), tostring(result.device), tostring(result.dtype),
        type(result.error) == "string" and (", error: " .. result.error) or "")
      lines[#lines + 1] = "(:CodeLlamaStatus! shows everything; q closes)"
    end
    vim.schedule(function()
      open_float(lines, filetype)
    end)
  end)
end

--- Once per session: say that the server cannot be started, which command was tried and how
--- to fix it. Called where a client would start (FileType), so a venv activated later
--- (vim.env.PATH changed by a plugin) is noticed too.
local function check_server()
  local problem, advice = config.server_problem()
  if not problem then
    if state.phase == "missing" then
      set_phase("off", nil)
    end
    return true
  end
  set_phase("missing", problem)
  if not state.notified_missing then
    state.notified_missing = true
    local lines = { problem .. ". To fix it:" }
    for _, a in ipairs(advice or {}) do
      lines[#lines + 1] = "  - " .. a
    end
    lines[#lines + 1] = ":checkhealth codellama checks the setup."
    -- After the event: shown once the buffer is on screen, and not turned into an error of
    -- the command that opened the file.
    vim.schedule(function()
      notify(table.concat(lines, "\n"), vim.log.levels.ERROR)
    end)
  end
  return false
end

--- Loading messages from the server's work-done progress ($/progress), and the readiness
--- the statusline shows.
local function on_progress(ev)
  local data = ev.data or {}
  local client = data.client_id and vim.lsp.get_client_by_id(data.client_id)
  if not client or client.name ~= "codellama" then
    return
  end
  local value = data.params and data.params.value
  if type(value) ~= "table" then
    return
  end
  if value.kind == "begin" then
    local path = type(value.message) == "string" and value.message:match("^Loading model (.+)$")
    set_phase("loading", path)
    if config.options.notify then
      notify(("loading %s…"):format(short_model(path)))
    end
  elseif value.kind == "end" then
    -- The server ends the progress with the model's state; its status says the rest.
    fetch_status(function(err, result)
      result = type(result) == "table" and result or {}
      if result.state == "ready" then
        set_phase("ready", result.model)
        if config.options.notify then
          local took = type(result.load_ms) == "number" and (", %.1f s"):format(result.load_ms / 1000) or ""
          notify(("ready: %s on %s%s"):format(short_model(result.model), tostring(result.device), took))
        end
      elseif result.state ~= "loading" then
        local why = err or (type(result.error) == "string" and result.error) or tostring(value.message)
        set_phase("failed", why)
        notify(("the model did not load: %s (:CodeLlamaStatus, :checkhealth codellama)"):format(why),
          vim.log.levels.ERROR)
      end
    end)
  end
end

--- Build the help tags next to the help file when they are missing or older than it, so
--- `:help codellama` works however the plugin was installed (lazy.nvim tags only a
--- plugin's top-level doc/, and a plain 'runtimepath' install tags nothing).
local function ensure_helptags()
  local source = debug.getinfo(1, "S").source
  if source:sub(1, 1) ~= "@" then
    return
  end
  local doc = vim.fn.fnamemodify(source:sub(2), ":p:h:h:h") .. "/doc"
  local txt, tags = doc .. "/codellama.txt", doc .. "/tags"
  if vim.fn.filereadable(txt) == 0 or vim.fn.getftime(tags) >= vim.fn.getftime(txt) then
    return
  end
  if vim.fn.filewritable(doc) == 2 then
    pcall(vim.cmd, "silent! helptags " .. vim.fn.fnameescape(doc))
  end
end

local function start_compat(opts)
  -- Neovim 0.10: start the client per buffer from a FileType autocmd.
  vim.api.nvim_create_autocmd("FileType", {
    group = vim.api.nvim_create_augroup("codellama.start", { clear = true }),
    pattern = opts.filetypes,
    callback = function(ev)
      if not check_server() then
        return
      end
      local cfg = client_config()
      cfg.root_dir = vim.fs.root(ev.buf, cfg.root_markers) or vim.fn.getcwd()
      cfg.root_markers = nil
      vim.lsp.start(cfg, { bufnr = ev.buf })
    end,
  })
end

--- Whether setup() has run (for :checkhealth).
function M.did_setup()
  return did_setup
end

function M.setup(opts)
  local o = config.set(opts)
  suggest.set_keymaps()
  instruct.register()
  ensure_helptags()

  vim.api.nvim_create_autocmd("LspAttach", {
    group = vim.api.nvim_create_augroup("codellama.attach", { clear = true }),
    callback = function(ev)
      local client = vim.lsp.get_client_by_id(ev.data.client_id)
      if client and client.name == "codellama" then
        suggest.attach(ev.buf)
        if config.options.omnifunc then
          vim.bo[ev.buf].omnifunc = "v:lua.vim.lsp.omnifunc"
        end
        if state.phase == "off" or state.phase == "stopped" or state.phase == "missing" then
          set_phase("starting", nil)
        end
      end
    end,
  })
  vim.api.nvim_create_autocmd("LspProgress", {
    group = vim.api.nvim_create_augroup("codellama.progress", { clear = true }),
    callback = on_progress,
  })

  if not did_setup then
    vim.api.nvim_create_user_command("CodeLlamaStatus", show_status, { bang = true, desc = "Show codellama-lsp status" })
    vim.api.nvim_create_user_command("CodeLlamaToggle", function()
      M.toggle()
    end, { desc = "Toggle codellama suggestions" })
  end
  did_setup = true

  if vim.lsp.config and vim.lsp.enable then
    -- Neovim skips a config whose command is not executable without a word: check it
    -- ourselves where the client would start.
    vim.api.nvim_create_autocmd("FileType", {
      group = vim.api.nvim_create_augroup("codellama.check", { clear = true }),
      pattern = o.filetypes,
      callback = function()
        check_server()
      end,
    })
    vim.lsp.config("codellama", client_config())
    vim.lsp.enable("codellama")
    -- Buffers opened before setup() (lazy-loading) get the check too.
    for _, buf in ipairs(vim.api.nvim_list_bufs()) do
      if vim.api.nvim_buf_is_loaded(buf) and vim.tbl_contains(o.filetypes, vim.bo[buf].filetype) then
        check_server()
        break
      end
    end
  else
    start_compat(o)
  end
end

return M
