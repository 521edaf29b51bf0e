from codellama_lsp.cli import main

main()
