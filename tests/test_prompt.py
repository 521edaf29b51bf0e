"""Prompt ids against transformers' slow CodeLlamaTokenizer, which follows Meta's infilling rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import CodeLlamaTokenizer

from codellama_lsp.engine.tokenizer import Tokenizer
from codellama_lsp.completion.templates import Message, infilling_tokens, instruct_tokens

CASES = [
    ("def f(x):\n    ", "\n    return y\n"),
    ("", " x = 1\n"),
    ("    ", "    pass"),
    ("x = 1\n", "\n\n  y = 2"),
    ("\tif a:\n\t\t", "\n\treturn b"),
    ("s = '日本語 ", "' # café 😀\n"),
    ("  \t leading", " ☺ trailing  "),
    ("a ", "x"),
    ("# ünïcödé\n", "\r\nwindows\r\n"),
]


@pytest.fixture(scope="module")
def ours(tokenizer_path: Path) -> Tokenizer:
    return Tokenizer(tokenizer_path)


@pytest.fixture(scope="module")
def reference(tokenizer_path: Path) -> CodeLlamaTokenizer:
    return CodeLlamaTokenizer(vocab_file=str(tokenizer_path))


def test_special_ids_come_from_the_pieces(ours: Tokenizer, reference: CodeLlamaTokenizer) -> None:
    assert (ours.prefix_id, ours.suffix_id, ours.middle_id, ours.eot_id) == (
        reference.prefix_id, reference.suffix_id, reference.middle_id, reference.eot_id)
    assert (ours.bos_id, ours.eos_id) == (1, 2)


def test_smiley_is_one_piece(ours: Tokenizer) -> None:
    pieces = [ours.sp.IdToPiece(i) for i in ours.encode("☺")]
    assert pieces == ["▁", "☺"]  # the implicit space, then the single piece Meta's rule drops


@pytest.mark.parametrize("fmt", ["psm", "spm"])
@pytest.mark.parametrize("prefix,suffix", CASES)
def test_infilling_ids_match_transformers(ours: Tokenizer, reference: CodeLlamaTokenizer, prefix: str, suffix: str,
                                          fmt: str) -> None:
    expected = reference.encode(prefix + "<FILL_ME>" + suffix, suffix_first=fmt == "spm")
    assert infilling_tokens(ours, prefix, suffix, fmt) == expected


@pytest.mark.parametrize("fmt", ["psm", "spm"])
@pytest.mark.parametrize("prefix", ["", "def f():\n    ", " x"])
def test_empty_suffix_follows_meta(ours: Tokenizer, reference: CodeLlamaTokenizer, prefix: str, fmt: str) -> None:
    """transformers turns an empty suffix into a plain prompt; Meta's rule keeps <SUF><MID>.

    The reference is transformers' prompt for a one-character suffix with that character's ids cut out.
    """
    full = reference.encode(prefix + "<FILL_ME>" + "x", suffix_first=fmt == "spm")
    suf, mid = full.index(reference.suffix_id), full.index(reference.middle_id)
    x_ids = ours.encode_infilling("x")
    assert full[suf + 1 : mid] == x_ids
    assert infilling_tokens(ours, prefix, "", fmt) == full[: suf + 1] + full[mid:]


def test_infilling_decode_keeps_leading_space(ours: Tokenizer) -> None:
    for text in [" return x", "\n    y", "日本", "", "\t😀 ok "]:
        assert ours.decode_infilling(ours.encode_infilling(text)) == text


def test_unknown_format(ours: Tokenizer) -> None:
    with pytest.raises(ValueError, match="psm, spm"):
        infilling_tokens(ours, "a", "b", "pms")  # type: ignore[arg-type]


def test_instruct_layout(ours: Tokenizer) -> None:
    dialog = [
        Message("system", "Answer with code."),
        Message("user", "Reverse a list.  "),
        Message("assistant", " xs[::-1] "),
        Message("user", "And a string?"),
    ]
    expected = (
        [1, *ours.encode("[INST] <<SYS>>\nAnswer with code.\n<</SYS>>\n\nReverse a list. [/INST] xs[::-1] "), 2]
        + [1, *ours.encode("[INST] And a string? [/INST]")]
    )
    assert instruct_tokens(ours, dialog) == expected
    with pytest.raises(ValueError, match="end with a user turn"):
        instruct_tokens(ours, dialog[:3])
    with pytest.raises(ValueError, match="expected 'user'"):
        instruct_tokens(ours, [Message("assistant", "a")])
