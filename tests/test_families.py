"""Model families: recognised from the vocabulary, each prompted in its documented layout, id for id."""

from __future__ import annotations

import pytest

from codellama_lsp.completion.families import (
    CODE_LLAMA, DEEPSEEK_CODER, PLAIN, QWEN_CODER, STARCODER2, UnknownFamily, bind, detect,
)
from codellama_lsp.completion.templates import infilling_tokens
from codellama_lsp.engine.tokenizer import Tokenizer


class Vocab:
    """A byte-level-style vocabulary: special tokens by text, every other character its code point + 1000."""

    def __init__(self, specials: list[str], bos: int | None = None, eos: int = 0) -> None:
        self.special_tokens = {t: i + 1 for i, t in enumerate(specials)}
        self.bos_id, self.eos_id, self.eot_id = bos, eos, None

    def encode(self, text: str) -> list[int]:
        return [1000 + ord(c) for c in text]

    encode_infilling = encode


def ids(text: str) -> list[int]:
    return [1000 + ord(c) for c in text]


def test_qwen_coder_psm_without_bos_and_its_stops() -> None:
    vocab = Vocab(["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                   "<|repo_name|>", "<|file_sep|>", "<|im_end|>"], bos=1)
    t = detect(vocab)
    assert t.family is QWEN_CODER and t.bos_id is None
    assert t.prompt(vocab, "a", "b", "psm") == [2, *ids("a"), 4, *ids("b"), 3]
    assert t.prompt(vocab, "a", "b", "spm") == t.prompt(vocab, "a", "b", "psm")  # it has no SPM: its main layout
    assert t.stop_ids == {1, 5, 6, 7, 8, 0}


def test_deepseek_coder_has_bos_and_its_hole_markers() -> None:
    vocab = Vocab(["<｜begin▁of▁sentence｜>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>",
                   "<｜end▁of▁sentence｜>", "<|EOT|>"], bos=1, eos=5)
    t = detect(vocab)
    assert t.family is DEEPSEEK_CODER
    assert t.prompt(vocab, "x", "y", "psm") == [1, 2, *ids("x"), 3, *ids("y"), 4]
    assert t.stop_ids == {5, 6}


def test_starcoder2_markers_and_file_separator_stop() -> None:
    vocab = Vocab(["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<file_sep>"])
    t = detect(vocab)
    assert t.family is STARCODER2 and t.bos_id is None
    assert t.prompt(vocab, "p", "s", "psm") == [2, *ids("p"), 4, *ids("s"), 3]
    assert {1, 6} <= t.stop_ids


def test_a_vocabulary_without_fim_tokens_completes_the_prefix_and_says_so() -> None:
    vocab = Vocab(["<|endoftext|>"], bos=7)
    t = detect(vocab)
    assert t.family is PLAIN and not t.infills
    assert t.prompt(vocab, "def f(", ") -> int:", "psm") == [7, *ids("def f(")]
    assert "plain prefix completion" in t.describe()


def test_naming_a_family_the_vocabulary_lacks_is_a_clear_error() -> None:
    with pytest.raises(UnknownFamily, match="<fim_prefix>.*not starcoder2"):
        bind(STARCODER2, Vocab(["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]))
    with pytest.raises(UnknownFamily, match="unknown model family 'gpt'"):
        detect(Vocab([]), "gpt")


def test_code_llama_is_recognised_from_its_pieces_and_prompted_as_meta_does(tokenizer_path) -> None:
    tok = Tokenizer(tokenizer_path)
    t = detect(tok)
    assert t.family is CODE_LLAMA and t.bos_id == tok.bos_id
    for fmt in ("psm", "spm"):
        assert t.prompt(tok, "def f(x):\n    ", "\n    return y\n", fmt) == \
            infilling_tokens(tok, "def f(x):\n    ", "\n    return y\n", fmt)
    assert {tok.eot_id, tok.eos_id} <= t.stop_ids
