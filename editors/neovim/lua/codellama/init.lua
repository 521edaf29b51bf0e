-- codellama.nvim: Neovim client for codellama-lsp. See :help codellama.
local config = require("codellama.config")
local suggest = require("codellama.suggest")

local M = {}

local has_011 = vim.fn.has("nvim-0.11") == 1
local did_setup = false

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
  }
end

local function notify(msg, level)
  vim.notify("codellama: " .. msg, level or vim.log.levels.INFO)
end

local function clients()
  local get = vim.lsp.get_clients or vim.lsp.get_active_clients
  return get({ name = "codellama" })
end
M.clients = clients

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
  notify("suggestions " .. (on and "enabled" or "disabled"))
end

--- Fetch the server status (codellama.status) and call `cb(err, result)`.
function M.status(cb)
  local client = clients()[1]
  if not client then
    cb("the server is not running", nil)
    return
  end
  suggest.request(client, "workspace/executeCommand", { command = "codellama.status", arguments = {} }, function(err, result)
    cb(err and (err.message or tostring(err)) or nil, result)
  end)
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
    if err then
      lines[#lines + 1] = "server: " .. err
    elseif full or type(result) ~= "table" then
      lines[#lines + 1] = "server: " .. vim.inspect(result)
    else
      lines[#lines + 1] = ("server: %s, model %s (%s, %s%s)%s"):format(
        tostring(result.state), tostring(result.model), tostring(result.device), tostring(result.dtype),
        type(result.engine) == "string" and (", " .. result.engine) or "",
        type(result.error) == "string" and (", error: " .. result.error) or "")
      lines[#lines + 1] = "(:CodeLlamaStatus! shows everything)"
    end
    notify(table.concat(lines, "\n"))
  end)
end

local function start_compat(opts)
  -- Neovim 0.10: start the client per buffer from a FileType autocmd.
  vim.api.nvim_create_autocmd("FileType", {
    group = vim.api.nvim_create_augroup("codellama.start", { clear = true }),
    pattern = opts.filetypes,
    callback = function(ev)
      local cfg = client_config()
      cfg.root_dir = vim.fs.root(ev.buf, cfg.root_markers) or vim.fn.getcwd()
      cfg.root_markers = nil
      vim.lsp.start(cfg, { bufnr = ev.buf })
    end,
  })
end

function M.setup(opts)
  local o = config.set(opts)
  suggest.set_keymaps()

  vim.api.nvim_create_autocmd("LspAttach", {
    group = vim.api.nvim_create_augroup("codellama.attach", { clear = true }),
    callback = function(ev)
      local client = vim.lsp.get_client_by_id(ev.data.client_id)
      if client and client.name == "codellama" then
        suggest.attach(ev.buf)
        if config.options.omnifunc then
          vim.bo[ev.buf].omnifunc = "v:lua.vim.lsp.omnifunc"
        end
      end
    end,
  })

  if not did_setup then
    vim.api.nvim_create_user_command("CodeLlamaStatus", show_status, { bang = true, desc = "Show codellama-lsp status" })
    vim.api.nvim_create_user_command("CodeLlamaToggle", function()
      M.toggle()
    end, { desc = "Toggle codellama suggestions" })
  end
  did_setup = true

  if vim.lsp.config and vim.lsp.enable then
    vim.lsp.config("codellama", client_config())
    vim.lsp.enable("codellama")
  else
    start_compat(o)
  end
end

return M
