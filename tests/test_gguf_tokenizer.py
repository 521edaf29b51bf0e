"""Tokenizers from GGUF metadata: sentencepiece (Code Llama) and byte-level BPE (Qwen2.5-Coder and kin)."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path
from typing import Any

import gguf
import pytest

from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.engine.config import CheckpointError
from codellama_lsp.engine.tokenizer import FimUnsupported, Tokenizer
from codellama_lsp.engine.gguf_reader import read_gguf
from codellama_lsp.engine.gguf_tokenizer import PRE_TOKENIZERS, GgufBpeTokenizer, load_gguf_tokenizer, read_bpe_vocabulary
from codellama_lsp.engine.gguf_export import export_gguf

# Held-out text: code, tabs and runs of spaces, CRLF, CJK, emoji (a ZWJ sequence), accents,
# contractions and digits, and text that looks like special tokens (which must stay text).
TEXTS = [
    "def read_config(path):\n\twith open(path) as f:\n\t\treturn json.load(f)  # naïve ✓\n",
    "if x  ==   1:\r\n    y = '\t'\r\n\r\n",
    "日本語のテキスト、中文，한국어 — «quotes» …",
    "emoji 😀🎉 and 👩‍💻 family 👨‍👩‍👧",
    "        \t\t    \n\n\n      x = 0    ",
    "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>",
    "▁<PRE> ▁<SUF> <s></s> <unk> [INST]",
    "it's I'M they'RE we've 1234567 3.14159 0x1F",
    " leading space",
    "",
]


def stdlib_text() -> str:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return "\n".join((stdlib / name).read_text(encoding="utf-8") for name in ("textwrap.py", "heapq.py"))


# --- sentencepiece: Code Llama GGUFs --------------------------------------------------------------


def test_from_proto_equals_loading_the_file(tokenizer_path: Path) -> None:
    ref = Tokenizer(tokenizer_path)
    tok = Tokenizer.from_proto(tokenizer_path.read_bytes(), tokenizer_path)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.special_ids, tok.path) == \
        (ref.vocab_size, ref.bos_id, ref.eos_id, ref.special_ids, ref.path)
    assert all(tok.encode(t) == ref.encode(t) for t in TEXTS)
    with pytest.raises(CheckpointError, match="x.gguf"):
        Tokenizer.from_proto(b"not a model", "x.gguf")


def assert_same_tokenizer(tok: Any, ref: Tokenizer) -> None:
    assert isinstance(tok, Tokenizer)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id) == \
        (ref.vocab_size, ref.bos_id, ref.eos_id, ref.prefix_id, ref.suffix_id, ref.middle_id, ref.eot_id)
    assert tok.special_ids == ref.special_ids and tok.supports_fim == ref.supports_fim
    for text in TEXTS + [stdlib_text()[:5000]]:
        ids = ref.encode(text)
        assert tok.encode(text) == ids, text
        assert tok.encode_infilling(text) == ref.encode_infilling(text), text
        assert tok.decode(ids) == ref.decode(ids) and tok.decode_infilling(ids) == ref.decode_infilling(ids), text


def test_bundled_model_gguf_tokenizer_is_token_exact(tmp_path: Path) -> None:
    """The vocabulary that export-gguf writes, rebuilt, gives the ids of tokenizer.model itself."""
    path = export_gguf(BUNDLED_MODEL, tmp_path / "bundled.gguf")
    ref = Tokenizer(BUNDLED_MODEL / "tokenizer.model")
    tok = load_gguf_tokenizer(path)
    assert_same_tokenizer(tok, ref)
    assert tok.path == path
    for piece in ("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>", "<s>", "</s>"):
        assert tok.special_tokens[piece] == ref.sp.PieceToId(piece)
    assert_same_tokenizer(load_gguf_tokenizer(read_gguf(path).reader), ref)


def test_test_tokenizer_gguf_is_token_exact(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert_same_tokenizer(load_gguf_tokenizer(export_gguf(tiny_model_dir, tmp_path / "tiny.gguf")),
                          Tokenizer(tiny_model_dir / "tokenizer.model"))


# --- byte-level BPE: synthetic vocabularies against llama.cpp -------------------------------------


@pytest.fixture(scope="module")
def bpe_vocab() -> tuple[list[str], list[str]]:
    """A 1000-token byte-level BPE (all 256 byte symbols) trained with HF tokenizers: tokens, merges.

    Trained on whole lines, not pre-tokenized words, so its merges cross every boundary a
    pre-tokenizer could draw: a wrong split shows as different ids.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    t = HFTokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    lines = stdlib_text().splitlines(keepends=True) + [t for t in TEXTS if t]
    t.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    model = json.loads(t.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    # First-rank merges across the boundaries the pre-tokenizers draw differently (training ties
    # are broken at random, so the learned merges alone may not show every difference):
    # " 1" (gpt-2 keeps " 12345" whole), "(p" (qwen2 keeps "(path"), "\n\n" (deepseek splits it).
    forced = ["Ġ 1", "( p", "Ċ Ċ"]
    tokens += [m.replace(" ", "") for m in forced if m.replace(" ", "") not in tokens]
    return tokens, forced + [m for m in merges if m not in forced]


def write_bpe_gguf(path: Path, vocab: tuple[list[str], list[str]], pre: str,
                   added: list[tuple[str, gguf.TokenType]], model: str = "gpt2") -> Path:
    """A vocabulary-only GGUF (llama metadata, no tensors) that llama.cpp loads with vocab_only."""
    tokens, merges = vocab
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(64)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(64)
    w.add_head_count(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens + [t for t, _ in added])
    w.add_token_types([gguf.TokenType.NORMAL] * len(tokens) + [k for _, k in added])
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens))
    w.add_eos_token_id(len(tokens))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


STARCODER_LIKE = [("<|endoftext|>", gguf.TokenType.CONTROL), ("<fim_prefix>", gguf.TokenType.CONTROL),
                  ("<fim_middle>", gguf.TokenType.CONTROL), ("<fim_suffix>", gguf.TokenType.CONTROL),
                  ("<my_tag>", gguf.TokenType.USER_DEFINED)]
BPE_TEXTS = TEXTS + ["<fim_prefix>a<fim_suffix>b<fim_middle>", "<my_tag>z</my_tag>", "\u00a0\u3000 nbsp\u2028",
                     "...!!!??? ,,;; $$$ @@@", "x1 = y22 + 333 * 4444\n\n\n   \n"]
DISTINGUISHING = "x = 12345\n\n    return f(path)\n"


def llamacpp_ids(path: Path, texts: list[str]) -> list[list[int]]:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return [llm.tokenize(t.encode(), add_bos=False, special=False) for t in texts]
    finally:
        llm.close()


def llamacpp_splits(path: Path, texts: list[str]) -> tuple[list[list[int]], list[str]]:
    """The llama.cpp engine's splitter (``llamacpp.tokenize``/``detokenize``) on the file's vocabulary:
    each text's ids, and the text decoded back from them."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from codellama_lsp.engine.llamacpp import detokenize, tokenize

    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        ids = [tokenize(llama_cpp, llm._model.vocab, t) for t in texts]
        return ids, [detokenize(llama_cpp, llm._model.vocab, i) for i in ids]
    finally:
        llm.close()


@pytest.mark.parametrize("pre", sorted(PRE_TOKENIZERS))
def test_bpe_ids_equal_llamacpp(pre: str, bpe_vocab: tuple[list[str], list[str]], tmp_path: Path) -> None:
    """Each supported pre-tokenizer, against llama.cpp on the same GGUF (special=False: plain text;
    llama.cpp still matches user-defined tokens, as we do)."""
    path = write_bpe_gguf(tmp_path / f"{pre}.gguf", bpe_vocab, pre, STARCODER_LIKE)
    tok = load_gguf_tokenizer(path)
    texts = BPE_TEXTS + [stdlib_text()[:4000], "a ? b : c; from . import x; f(a , b); x = ' ' + y; it 's"]
    assert [tok.encode(t) for t in texts] == llamacpp_ids(path, texts)
    assert all(tok.decode(tok.encode(t)) == t for t in texts)
    # The llama.cpp engine splits with llama.cpp's copy of the vocabulary: the same ids, and the
    # same text back (llama_detokenize would take out the spaces before "?", "." and "," here).
    ids, back = llamacpp_splits(path, texts)
    assert ids == [tok.encode(t) for t in texts] and back == texts
    n = len(bpe_vocab[0])
    assert (tok.eot_id, tok.prefix_id, tok.middle_id, tok.suffix_id) == (n, n + 1, n + 2, n + 3)
    assert tok.special_tokens["<my_tag>"] == n + 4 and tok.encode("<my_tag>") == [n + 4]
    assert n + 4 not in tok.special_ids and {n, n + 1, n + 2, n + 3} <= tok.special_ids
    assert tok.decode([n + 1, *tok.encode("ab"), n]) == "ab"


def test_the_pre_tokenizers_really_differ(bpe_vocab: tuple[list[str], list[str]], tmp_path: Path) -> None:
    """So that agreeing with llama.cpp above says something about each regex."""
    ids = {pre: tuple(load_gguf_tokenizer(write_bpe_gguf(tmp_path / f"{pre}.gguf", bpe_vocab, pre, []))
                      .encode(DISTINGUISHING)) for pre in ("qwen2", "gpt-2", "starcoder", "deepseek-coder")}
    assert len(set(ids.values())) == len(ids)


def test_a_vocabulary_without_fim_tokens(bpe_vocab: tuple[list[str], list[str]], tmp_path: Path) -> None:
    tok = load_gguf_tokenizer(write_bpe_gguf(tmp_path / "plain.gguf", bpe_vocab, "gpt-2", []))
    assert isinstance(tok, GgufBpeTokenizer)
    assert (tok.prefix_id, tok.suffix_id, tok.middle_id) == (None, None, None)
    assert not tok.supports_fim and tok.missing_fim == ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]
    assert tok.eot_id == tok.eos_id  # no <|endoftext|>: the file's EOS ends a completion
    with pytest.raises(FimUnsupported, match="plain.gguf"):
        tok.require_fim()


def test_deepseek_style_fim_names(bpe_vocab: tuple[list[str], list[str]], tmp_path: Path) -> None:
    added = [("<｜fim▁begin｜>", gguf.TokenType.CONTROL), ("<｜fim▁hole｜>", gguf.TokenType.CONTROL),
             ("<｜fim▁end｜>", gguf.TokenType.CONTROL)]
    tok = load_gguf_tokenizer(write_bpe_gguf(tmp_path / "ds.gguf", bpe_vocab, "deepseek-coder", added))
    n = len(bpe_vocab[0])
    assert (tok.prefix_id, tok.suffix_id, tok.middle_id) == (n, n + 1, n + 2) and tok.supports_fim


def test_unsupported_pre_tokenizer_and_model(bpe_vocab: tuple[list[str], list[str]], tmp_path: Path) -> None:
    l3 = write_bpe_gguf(tmp_path / "l3.gguf", bpe_vocab, "llama-bpe", [])
    with pytest.raises(CheckpointError, match="pre-tokenizer 'llama-bpe' is not supported"):
        load_gguf_tokenizer(l3)
    with pytest.raises(CheckpointError, match="pre-tokenizer 'llama-bpe' is not supported"):
        read_bpe_vocabulary(l3)  # the llama.cpp engine's path refuses it too, before llama.cpp splits anything
    with pytest.raises(CheckpointError, match="tokenizer model 'bert' is not supported"):
        load_gguf_tokenizer(write_bpe_gguf(tmp_path / "bert.gguf", bpe_vocab, "gpt-2", [], model="bert"))
    with pytest.raises(CheckpointError, match="is not a GGUF file"):
        load_gguf_tokenizer(BUNDLED_MODEL / "tokenizer.model")


# --- the real default model (Qwen2.5-Coder-0.5B-Instruct) -----------------------------------------


@pytest.fixture(scope="module")
def real_tok(real_gguf: Path) -> GgufBpeTokenizer:
    """About 10 s on one core, nearly all of it gguf's GGUFReader parsing the vocabulary."""
    tok = load_gguf_tokenizer(real_gguf)
    assert isinstance(tok, GgufBpeTokenizer)
    return tok


def test_real_tokenizer_ids(real_tok: GgufBpeTokenizer) -> None:
    assert real_tok.vocab_size == 151_936 and real_tok.pre == "qwen2"
    assert (real_tok.prefix_id, real_tok.suffix_id, real_tok.middle_id) == (151659, 151661, 151660)
    assert real_tok.eot_id == 151643 == real_tok.special_tokens["<|endoftext|>"]
    assert (real_tok.bos_id, real_tok.eos_id, real_tok.add_bos) == (151643, 151645, False)
    assert real_tok.special_tokens["<|fim_pad|>"] == 151662 and real_tok.special_tokens["<|im_end|>"] == 151645
    assert {151643, 151645, 151659, 151660, 151661} <= real_tok.special_ids


def test_real_tokenizer_equals_transformers_and_llamacpp(real_gguf: Path, real_tok: GgufBpeTokenizer) -> None:
    """transformers' GGUF tokenizer (25-50 s to build on one core) and llama.cpp's, on held-out text."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(real_gguf.parent), gguf_file=real_gguf.name)
    ours = [real_tok.encode(t) for t in TEXTS]
    assert ours == [hf.encode(t, add_special_tokens=False) for t in TEXTS]
    assert ours == llamacpp_ids(real_gguf, TEXTS)
    assert all(real_tok.decode(ids) == t for ids, t in zip(ours, TEXTS))
    fim_text = real_tok.encode("<|fim_prefix|>")
    assert len(fim_text) > 1 and not set(fim_text) & real_tok.special_ids


def test_real_tokenizer_where_transformers_differs_follows_llamacpp(
        real_gguf: Path, real_tok: GgufBpeTokenizer) -> None:
    """transformers NFC-normalizes, parses <|endoftext|> in text and does not know <tool_call>;
    llama.cpp and we keep the text as it is, and match the user-defined <tool_call>."""
    texts = ["cafe\u0301 e\u0301\u0302", "<|endoftext|><|im_start|>", "<tool_call>{}</tool_call>"]
    ours = [real_tok.encode(t) for t in texts]
    assert ours == llamacpp_ids(real_gguf, texts)
    assert all(real_tok.decode(ids) == t for ids, t in zip(ours, texts))
    assert real_tok.special_tokens["<tool_call>"] in ours[2] and 151643 not in ours[1]
