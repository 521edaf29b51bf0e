"""The Language Server: LSP wiring (``server``, ``protocol``) around the request lifecycle, loading and metrics."""
