"""codellama-lsp: a Language Server serving code infilling (Code Llama and its family) from a resident engine."""

from pathlib import Path

__version__ = "0.1.0"

# The small demo model trained in this repository (see model/README.md), shipped inside the
# package so that every install, editable or not, has a model that works with no download.
BUNDLED_MODEL = Path(__file__).resolve().parent / "demo_model"
