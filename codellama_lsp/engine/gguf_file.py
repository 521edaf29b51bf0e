"""Open a GGUF file for its metadata, without torch: the llama.cpp engine and GGUF tokenizers need no more.

``gguf.GGUFReader`` maps the file and parses its header and tensor table; reading weights
(``gguf_reader``, for the torch engine) builds on the reader this returns.
"""

from __future__ import annotations

from pathlib import Path

import gguf

from codellama_lsp.engine.config import CheckpointError

GGUF_MAGIC = b"GGUF"


def open_gguf(path: Path) -> gguf.GGUFReader:
    """A ``GGUFReader`` on ``path``, or a CheckpointError saying what is wrong with the file."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}") from None
    if magic != GGUF_MAGIC:
        raise CheckpointError(f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # noqa: BLE001 - the reader raises ValueError, IndexError, KeyError, … on bad data
        raise CheckpointError(f"{path} is a truncated or corrupt GGUF file: {exc}") from None
