"""The completion service: what the editor asks for, without LSP (the server and the CLI call it)."""
