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
    engine = nil, -- "auto" | "torch" | "llamacpp" (llama.cpp on a .gguf file, CPU)
    format = nil, -- "auto" (the server's default) | "psm" | "spm"
    maxNewTokens = nil,
    prefixTokens = nil,
    suffixTokens = nil,
    temperature = nil,
    timeBudgetMs = nil,
  },
  -- Set 'omnifunc' to vim.lsp.omnifunc in attached buffers (<C-x><C-o> completes the
  -- suggestion as a popup item); false leaves 'omnifunc' alone.
  omnifunc = true,
  -- Ghost text.
  enabled = true, -- show suggestions while typing (:CodeLlamaToggle)
  debounce_ms = 75, -- wait this long after the last keystroke before asking
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

return M
