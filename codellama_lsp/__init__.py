"""codellama-lsp: a Language Server serving Code Llama infilling from a resident engine."""

from pathlib import Path

__version__ = "0.1.0"

# The small model trained and shipped in this repository (see model/README.md).
BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "model" / "default"
