-- Ghost text from `textDocument/inlineCompletion` (LSP 3.18), drawn with extmarks:
-- the first line as inline virtual text at the cursor, the rest as virtual lines.
local config = require("codellama.config")

local M = {}

local ns = vim.api.nvim_create_namespace("codellama.ghost")
M.ns = ns
local has_011 = vim.fn.has("nvim-0.11") == 1

---@class codellama.Suggestion
---@field bufnr integer
---@field row integer 0-based
---@field col integer 0-based byte column of the cursor when shown
---@field text string what accepting inserts at (row, col)
---@field extmark integer

---@type codellama.Suggestion?
local current = nil
---@type table<integer, {client: table, id: integer}>
local inflight = {}
local timers = {}

--- Stats for :CodeLlamaStatus.
M.stats = { requests = 0, shown = 0, accepted = 0, last_latency_ms = nil, last_error = nil }

local function client_for(bufnr)
  local get = vim.lsp.get_clients or vim.lsp.get_active_clients
  return get({ bufnr = bufnr, name = "codellama" })[1]
end
M.client_for = client_for

local function request(client, method, params, handler, bufnr)
  if has_011 then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end
M.request = request

local function notify(client, method, params)
  if has_011 then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

local function cancel(client, id)
  if has_011 then
    client:cancel_request(id)
  else
    client.cancel_request(id)
  end
end

--- Byte index in `line` of an LSP character offset in the client's encoding.
local function to_byte(line, character, encoding)
  if encoding == "utf-8" then
    return math.min(character, #line)
  end
  local units, i = 0, 1
  while i <= #line and units < character do
    local b = line:byte(i)
    local len = b >= 0xF0 and 4 or b >= 0xE0 and 3 or b >= 0xC0 and 2 or 1
    if encoding == "utf-16" and len == 4 then
      units = units + 2
    else
      units = units + 1
    end
    i = i + len
  end
  return i - 1
end

local function cursor_params(client, bufnr)
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local line = vim.api.nvim_buf_get_lines(bufnr, row - 1, row, false)[1] or ""
  local before = line:sub(1, col)
  local character
  local enc = client.offset_encoding or "utf-16"
  if enc == "utf-8" then
    character = #before
  elseif enc == "utf-32" then
    character = vim.fn.strchars(before)
  else
    character = vim.fn.strutf16len and vim.fn.strutf16len(before) or vim.str_utfindex(before)
  end
  return {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    position = { line = row - 1, character = character },
    context = { triggerKind = 2 }, -- Automatic
  }, row - 1, col
end

function M.is_visible()
  return current ~= nil and current.bufnr == vim.api.nvim_get_current_buf()
end

--- The text the visible suggestion would insert (nil if none).
function M.current_text()
  return current and current.text or nil
end

function M.clear()
  if current then
    pcall(vim.api.nvim_buf_del_extmark, current.bufnr, ns, current.extmark)
    current = nil
  end
end

local function cancel_inflight(bufnr)
  local req = inflight[bufnr]
  if req then
    inflight[bufnr] = nil
    pcall(cancel, req.client, req.id)
  end
end

local function stop_timer(bufnr)
  local t = timers[bufnr]
  if t then
    timers[bufnr] = nil
    t:stop()
    t:close()
  end
end

--- Drop the ghost text and any pending work for `bufnr`.
function M.dismiss(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  stop_timer(bufnr)
  cancel_inflight(bufnr)
  M.clear()
end

local function show(bufnr, row, col, text)
  M.clear()
  if text == "" then
    return
  end
  local lines = vim.split(text, "\n", { plain = true })
  local hl = config.options.hl_group
  local opts = {
    virt_text = { { lines[1], hl } },
    virt_text_pos = "inline",
    hl_mode = "combine",
    priority = 200,
  }
  if #lines > 1 then
    local rest = {}
    for i = 2, #lines do
      rest[#rest + 1] = { { lines[i], hl } }
    end
    opts.virt_lines = rest
  end
  local ok, id = pcall(vim.api.nvim_buf_set_extmark, bufnr, ns, row, col, opts)
  if ok then
    current = {
      bufnr = bufnr, row = row, col = col, text = text, extmark = id,
      tick = vim.api.nvim_buf_get_changedtick(bufnr),
    }
    M.stats.shown = M.stats.shown + 1
    vim.api.nvim_exec_autocmds("User", { pattern = "CodeLlamaSuggestion", modeline = false })
  end
end

--- Pick the text to show from an inlineCompletion result, relative to the cursor.
local function pick(result, client, bufnr, row, col)
  local items = result and (result.items or result) or {}
  local item = items[1]
  if type(item) ~= "table" then
    return nil
  end
  local text = item.insertText
  if type(text) == "table" then -- StringValue (snippet): show it as plain text
    text = text.value
  end
  if type(text) ~= "string" then
    return nil
  end
  if item.range then
    -- The item replaces `range` (which ends at the cursor); keep what comes after
    -- the part already typed.
    local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
    local enc = client.offset_encoding or "utf-16"
    local s = item.range.start
    if s.line ~= row then
      return nil
    end
    local start_col = to_byte(line, s.character, enc)
    local typed = line:sub(start_col + 1, col)
    if text:sub(1, #typed) ~= typed then
      return nil
    end
    text = text:sub(#typed + 1)
  end
  return text
end

--- Ask the server now for a suggestion at the cursor.
function M.trigger(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  if not config.options.enabled then
    return
  end
  local client = client_for(bufnr)
  if not client then
    return
  end
  cancel_inflight(bufnr)
  local params, row, col = cursor_params(client, bufnr)
  local tick = vim.api.nvim_buf_get_changedtick(bufnr)
  local started = vim.uv and vim.uv.hrtime() or vim.loop.hrtime()
  M.stats.requests = M.stats.requests + 1
  local ok, id
  ok, id = request(client, "textDocument/inlineCompletion", params, function(err, result)
    if inflight[bufnr] and inflight[bufnr].id == id then
      inflight[bufnr] = nil
    end
    if err then
      if err.code ~= -32800 then -- RequestCancelled
        M.stats.last_error = err.message
      end
      return
    end
    local now = vim.uv and vim.uv.hrtime() or vim.loop.hrtime()
    M.stats.last_latency_ms = math.floor((now - started) / 1e6)
    -- Stale: the user typed or moved since the request went out.
    if vim.api.nvim_get_current_buf() ~= bufnr or vim.api.nvim_buf_get_changedtick(bufnr) ~= tick then
      return
    end
    local r, c = unpack(vim.api.nvim_win_get_cursor(0))
    if r - 1 ~= row or c ~= col or not vim.api.nvim_get_mode().mode:match("^i") then
      return
    end
    local text = pick(result, client, bufnr, row, col)
    if text then
      show(bufnr, row, col, text)
    end
  end, bufnr)
  if ok and id then
    inflight[bufnr] = { client = client, id = id }
  end
end

--- Debounced trigger, called on every keystroke in insert mode.
function M.schedule(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  M.dismiss(bufnr)
  if not config.options.enabled then
    return
  end
  local t = (vim.uv or vim.loop).new_timer()
  timers[bufnr] = t
  t:start(config.options.debounce_ms, 0, vim.schedule_wrap(function()
    if timers[bufnr] ~= t then
      return
    end
    stop_timer(bufnr)
    if vim.api.nvim_get_current_buf() == bufnr and vim.api.nvim_get_mode().mode:match("^i") then
      M.trigger(bufnr)
    end
  end))
end

local rest_timers = {}

--- Tell the server where the cursor rests once it has not moved for `rest_ms`, so that it
--- computes the suggestion there while the user reads (codellama/cursorRest).
function M.rest(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  local old = rest_timers[bufnr]
  if old then
    old:stop()
    old:close()
    rest_timers[bufnr] = nil
  end
  if not config.options.enabled or (config.options.rest_ms or 0) <= 0 then
    return
  end
  local t = (vim.uv or vim.loop).new_timer()
  rest_timers[bufnr] = t
  t:start(config.options.rest_ms, 0, vim.schedule_wrap(function()
    if rest_timers[bufnr] ~= t then
      return
    end
    rest_timers[bufnr] = nil
    t:close()
    local client = client_for(bufnr)
    if client and vim.api.nvim_get_current_buf() == bufnr and not M.is_visible() then
      local params = cursor_params(client, bufnr)
      params.context = nil
      notify(client, "codellama/cursorRest", params)
    end
  end))
end

--- Insert `text` at the cursor and put the cursor after it.
local function insert(text)
  local s = current
  if not s then
    return
  end
  M.clear()
  local lines = vim.split(text, "\n", { plain = true })
  vim.api.nvim_buf_set_text(s.bufnr, s.row, s.col, s.row, s.col, lines)
  local end_row = s.row + #lines - 1
  local end_col = (#lines == 1 and s.col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { end_row + 1, end_col })
  M.stats.accepted = M.stats.accepted + 1
end

--- Accept the whole suggestion. Returns false when none was shown.
function M.accept()
  if not M.is_visible() then
    return false
  end
  insert(current.text)
  return true
end

--- Accept the next word of the suggestion.
function M.accept_word()
  if not M.is_visible() then
    return false
  end
  local text = current.text
  local word = text:match("^%s*[%w_]+") or text:match("^%s*[^%w_%s]+") or text:match("^%s+") or text
  local rest = text:sub(#word + 1)
  local s = current
  insert(word)
  if rest ~= "" then
    local r, c = unpack(vim.api.nvim_win_get_cursor(0))
    show(s.bufnr, r - 1, c, rest)
  end
  return true
end

--- Accept up to the end of the suggestion's current line (with its newline).
function M.accept_line()
  if not M.is_visible() then
    return false
  end
  local text = current.text
  -- A leading newline belongs to the line it opens.
  local from = text:sub(1, 1) == "\n" and 2 or 1
  local nl = text:find("\n", from, true)
  local part = nl and text:sub(1, nl - 1) or text
  local rest = text:sub(#part + 1)
  local s = current
  insert(part)
  if rest ~= "" then
    local r, c = unpack(vim.api.nvim_win_get_cursor(0))
    show(s.bufnr, r - 1, c, rest)
  end
  return true
end

--- Insert-mode mapping: run `action` when a suggestion is shown, else type `key`.
local function map_accept(key, action)
  if not key or key == "" then
    return
  end
  vim.keymap.set("i", key, function()
    if M.is_visible() then
      return "<Cmd>lua require('codellama.suggest')." .. action .. "()<CR>"
    end
    return key
  end, { expr = true, replace_keycodes = true, silent = true, desc = "codellama: " .. action })
end

local attached = {}

--- Start suggesting in `bufnr` (called when the server attaches).
function M.attach(bufnr)
  if attached[bufnr] then
    return
  end
  attached[bufnr] = true
  M.rest(bufnr) -- the file just opened: where its cursor stands
  local group = vim.api.nvim_create_augroup("codellama.suggest." .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ "TextChangedI", "TextChangedP" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      -- Our own partial accept re-shows the rest of the suggestion: keep it.
      if current and current.bufnr == bufnr and current.tick == vim.api.nvim_buf_get_changedtick(bufnr) then
        return
      end
      M.schedule(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd("CursorMovedI", {
    group = group,
    buffer = bufnr,
    callback = function()
      if current and current.bufnr == bufnr then
        local r, c = unpack(vim.api.nvim_win_get_cursor(0))
        if r - 1 ~= current.row or c ~= current.col then
          M.dismiss(bufnr)
        end
      end
    end,
  })
  vim.api.nvim_create_autocmd({ "CursorMoved", "BufEnter" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.rest(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.dismiss(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd("BufUnload", {
    group = group,
    buffer = bufnr,
    callback = function()
      M.dismiss(bufnr)
      local t = rest_timers[bufnr]
      if t then
        t:stop()
        t:close()
        rest_timers[bufnr] = nil
      end
      attached[bufnr] = nil
      pcall(vim.api.nvim_del_augroup_by_id, group)
    end,
  })
end

--- Global insert-mode keymaps (they fall through when no suggestion is shown).
function M.set_keymaps()
  local km = config.options.keymaps or {}
  map_accept(km.accept, "accept")
  map_accept(km.accept_word, "accept_word")
  map_accept(km.accept_line, "accept_line")
  if km.dismiss and km.dismiss ~= "" then
    vim.keymap.set("i", km.dismiss, function()
      if M.is_visible() then
        M.dismiss()
        return ""
      end
      return km.dismiss
    end, { expr = true, replace_keycodes = true, silent = true, desc = "codellama: dismiss" })
  end
  vim.api.nvim_set_hl(0, "CodeLlamaGhostText", { link = "Comment", default = true })
end

return M
