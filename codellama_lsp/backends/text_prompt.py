"""The token-exact prompt in the form each server takes: text, or token ids.

The model family's template builds the prompt as ids. A server that takes text gets the
text that tokenizes back into those ids: the special tokens as the model's own pieces
(``▁<PRE>``, which Hugging Face tokenizers and llama.cpp match as added/control tokens),
every other run decoded with its leading space kept, and no BOS (the server adds its own).
That is exact for a tokenizer that does not insert its dummy-prefix space after each
special token (llama.cpp with ``add_space_prefix`` off, as ``export-gguf`` writes it).
"""

from __future__ import annotations

from typing import Sequence

from codellama_lsp.generation import GenerationRequest, TextTokenizer


def as_text(tok: TextTokenizer, ids: Sequence[int]) -> str:
    """``ids`` as text whose tokenization with special tokens parsed gives ``ids``; a leading BOS is left to the server."""
    body = list(ids[1:] if ids and ids[0] == tok.bos_id else ids)
    parts: list[str] = []
    run: list[int] = []
    for i in body + [None]:  # type: ignore[list-item]
        if i is None or i in tok.special_ids:
            if run:
                parts.append(tok.decode_infilling(run))
                run = []
            if i is not None:
                parts.append(tok.token_text(i))
        else:
            run.append(i)
    return "".join(parts)


def split_infilling(tok: TextTokenizer, ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """The prefix and suffix ids inside a PSM or SPM prompt, for servers that lay out the prompt themselves."""
    ids = list(ids)
    try:
        pre, suf, mid = ids.index(tok.prefix_id), ids.index(tok.suffix_id), ids.index(tok.middle_id)  # type: ignore[arg-type]
    except ValueError:
        raise ValueError("not an infilling prompt: it lacks the prefix, suffix or middle token") from None
    if suf == pre + 1:  # SPM (or PSM with an empty prefix, which splits the same way)
        return ids[mid + 1:], ids[suf + 1: mid]
    return ids[pre + 1:suf], ids[suf + 1: mid]


def eot_text(tok: TextTokenizer) -> str | None:
    """How the end-of-middle token looks in a server's output when it does not treat it as the end."""
    return None if tok.eot_id is None else tok.token_text(tok.eot_id).lstrip("▁")


def stop_texts(tok: TextTokenizer, req: GenerationRequest) -> list[str]:
    """The request's stop strings, then the texts of its family's stop tokens, for servers that stop on text.

    The tokenizer's own EOS and end-of-middle are left out: servers end at EOS themselves, and
    the end-of-middle as text is the stop rule's ``end_text``.
    """
    own = {tok.eos_id, tok.eot_id}
    tokens = [tok.token_text(i) for i in sorted(req.stop_ids) if i not in own]
    return [s for s in (*req.stop_strings, *tokens) if s]
