"""llama.cpp for the tests: the weights to export (its server is ``codellama_lsp.devtools.llamacpp_server``).

The weights are the bundled model when it is there, else random weights with the bundled
tokenizer (a real Code Llama-shaped vocabulary, which llama.cpp takes as it is).
"""

from __future__ import annotations

from pathlib import Path

from codellama_lsp import BUNDLED_MODEL
from conftest import make_random_checkpoint


def llamacpp_model_dir(scratch: Path) -> Path:
    """The bundled model if it has been trained, else a random one with its tokenizer, in ``scratch``."""
    if (BUNDLED_MODEL / "config.json").is_file():
        return BUNDLED_MODEL
    out = scratch / "random-bundled-tokenizer"
    if not (out / "config.json").is_file():
        make_random_checkpoint(out, BUNDLED_MODEL / "tokenizer.model", hidden_size=128, intermediate_size=352)
    return out
