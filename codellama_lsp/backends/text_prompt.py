"""The token-exact prompt in the form each server takes: text, or token ids.

``prompt.infilling_tokens`` builds the prompt as ids. A server that takes text gets the
text that tokenizes back into those ids: the special tokens as the model's own pieces
(``▁<PRE>``, which Hugging Face tokenizers and llama.cpp match as added/control tokens),
every other run decoded with its leading space kept, and no BOS (the server adds its own).
That is exact for a tokenizer that does not insert its dummy-prefix space after each
special token (llama.cpp with ``add_space_prefix`` off, as ``export-gguf`` writes it).
"""

from __future__ import annotations

from typing import Sequence

from codellama_lsp.engine.tokenizer import Tokenizer


def as_text(tok: Tokenizer, ids: Sequence[int]) -> str:
    """``ids`` (a prompt starting with BOS) as text whose tokenization with BOS and special pieces gives ``ids``."""
    specials = {i for i in (tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id, tok.eos_id) if i is not None}
    body = list(ids[1:] if ids and ids[0] == tok.bos_id else ids)
    parts: list[str] = []
    run: list[int] = []
    for i in body + [None]:  # type: ignore[list-item]
        if i is None or i in specials:
            if run:
                parts.append(tok.decode_infilling(run))
                run = []
            if i is not None:
                parts.append(tok.sp.IdToPiece(i))
        else:
            run.append(i)
    return "".join(parts)


def split_infilling(tok: Tokenizer, ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """The prefix and suffix ids inside a PSM or SPM prompt, for servers that lay out the prompt themselves."""
    ids = list(ids)
    try:
        suf, mid = ids.index(tok.suffix_id), ids.index(tok.middle_id)  # type: ignore[arg-type]
    except ValueError:
        raise ValueError("not an infilling prompt: it lacks the suffix or middle token") from None
    if suf == 2:  # SPM (or PSM with an empty prefix, which splits the same way)
        return ids[mid + 1:], ids[suf + 1: mid]
    return ids[2:suf], ids[suf + 1: mid]


def eot_text(tok: Tokenizer) -> str | None:
    """How ``<EOT>`` looks in a server's output when it does not treat it as the end: ``<EOT>``."""
    return None if tok.eot_id is None else tok.sp.IdToPiece(tok.eot_id).lstrip("▁")
