-- Nothing starts until require("codellama").setup{} is called.
if vim.g.loaded_codellama then
  return
end
vim.g.loaded_codellama = 1
