-- The client half of the server's Instruct actions (Explain, Write tests, Fix, Edit selection…).
--
-- They come as code actions (vim.lsp.buf.code_action) whose command is the server's
-- `codellama.instruct`. Neovim runs a command registered in vim.lsp.commands locally, so this
-- handler can ask for Edit's instruction (vim.ui.input) before sending the command, and show
-- Explain's markdown in a floating window when the answer comes. The other actions' edits
-- arrive as workspace/applyEdit, which Neovim applies itself.
local M = {}

M.command = "codellama.instruct"

local function notify(msg, level)
  vim.notify("codellama: " .. msg, level or vim.log.levels.INFO)
end

--- Explain's answer beside the cursor, as markdown (q closes it, or moving the cursor).
function M.show_markdown(markdown)
  local lines = vim.split(markdown, "\n", { plain = true })
  return vim.lsp.util.open_floating_preview(lines, "markdown", {
    border = "rounded",
    focus_id = "codellama-explain",
    max_width = math.max(40, math.floor(vim.o.columns * 0.8)),
    max_height = math.max(5, math.floor(vim.o.lines * 0.7)),
    title = " codellama ",
  })
end

local function on_answer(err, result)
  if err then
    notify(err.message or tostring(err), vim.log.levels.WARN)
  elseif type(result) ~= "table" then
    return
  elseif result.error then
    notify(result.error, vim.log.levels.WARN)
  elseif type(result.markdown) == "string" then
    M.show_markdown(result.markdown)
  elseif result.applied == false then
    notify("the edit was not applied (the document changed?)", vim.log.levels.WARN)
  end
  M.last_answer = result
end

--- vim.lsp.commands handler: (command, ctx) as Neovim calls it for a chosen code action.
function M.run(command, ctx)
  local client = vim.lsp.get_client_by_id(ctx.client_id)
  if not client then
    return
  end
  local argument = vim.deepcopy((command.arguments or {})[1] or {})
  local function send()
    local params = { command = M.command, arguments = { argument } }
    if vim.fn.has("nvim-0.11") == 1 then
      client:request("workspace/executeCommand", params, on_answer, ctx.bufnr)
    else
      client.request("workspace/executeCommand", params, on_answer, ctx.bufnr)
    end
  end
  if argument.action == "edit" and (argument.instruction or "") == "" then
    vim.ui.input({ prompt = "Edit selection: " }, function(input)
      if input and input ~= "" then
        argument.instruction = input
        send()
      end
    end)
  else
    send()
  end
end

function M.register()
  vim.lsp.commands[M.command] = M.run
end

return M
