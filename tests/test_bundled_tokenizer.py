"""The shipped codellama_lsp/demo_model/tokenizer.model has what Code Llama infilling needs, and round-trips text."""

from __future__ import annotations


import pytest

from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.engine.tokenizer import FIM_PIECES, SMILEY, Tokenizer

TOKENIZER = BUNDLED_MODEL / "tokenizer.model"

ROUND_TRIP = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    "\tx = 1",
    " x",
    "    return x\n",
    "        if a:\n            b()\n",
    "def f(x):\n    return x + 1\n",
    "\n    pass",
    "x = 'héllo wörld'  # ünïcode",
    "emoji = '🙂🚀'  ",
    "中文注释 = 42",
    "trailing spaces   \n  \n",
    "\r\n",
    "a\u00a0b",
    "<PRE> <SUF> <MID> <EOT>",
    "☺ smile",
    "12345678901234567890",
    "   \t  mixed \t indentation",
    "\\n escaped \\t",
    "0x1F600",
]
# Not in the list: text containing U+2581 "▁" itself, which every sentencepiece model
# (Llama's included) decodes back as a space.


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    if not TOKENIZER.is_file():
        pytest.skip(f"{TOKENIZER} not built yet (python model/train_tokenizer.py)")
    return Tokenizer(TOKENIZER)


def test_llama_special_ids(tok: Tokenizer) -> None:
    assert (tok.sp.unk_id(), tok.bos_id, tok.eos_id, tok.sp.pad_id()) == (0, 1, 2, -1)


def test_smiley_is_one_piece(tok: Tokenizer) -> None:
    ids = tok.sp.EncodeAsIds(SMILEY + "x")
    assert tok.sp.IdToPiece(ids[1]) == SMILEY
    assert len(tok.encode_infilling("")) == 0


def test_fim_pieces_exist_and_are_never_produced_by_text(tok: Tokenizer) -> None:
    assert tok.supports_fim
    fim_ids = {tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id}
    assert len(fim_ids) == 4 and None not in fim_ids
    ids = {"prefix": tok.prefix_id, "suffix": tok.suffix_id, "middle": tok.middle_id, "eot": tok.eot_id}
    assert {name: tok.sp.IdToPiece(i) for name, i in ids.items()} == FIM_PIECES
    text = " ".join(["<PRE>", "<SUF>", "<MID>", "<EOT>", *FIM_PIECES.values()])
    assert not fim_ids & set(tok.encode(text))
    assert not fim_ids & set(tok.encode_infilling(text))


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_infilling_round_trip_is_exact(tok: Tokenizer, text: str) -> None:
    assert tok.decode_infilling(tok.encode_infilling(text)) == text


def test_decoded_middle_keeps_leading_space(tok: Tokenizer) -> None:
    assert tok.decode_infilling(tok.encode_infilling(" = 1")) == " = 1"
    assert tok.decode_infilling(tok.encode_infilling(" ")) == " "


def test_indentation_runs_are_single_pieces(tok: Tokenizer) -> None:
    for width in (4, 8, 12):
        assert tok.sp.PieceToId("▁" * width) != tok.sp.unk_id()
    # After a newline, four spaces of indentation are one piece.
    pieces = [tok.sp.IdToPiece(i) for i in tok.encode_infilling("\n    x")]
    assert "▁▁▁▁" in pieces
