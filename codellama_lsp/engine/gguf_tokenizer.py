"""Tokenizers rebuilt from a GGUF file's metadata, with the engine's ``Tokenizer`` interface.

A GGUF carries its vocabulary (``tokenizer.ggml.*``) but no tokenizer file, so one is
rebuilt from it:

* ``llama`` (sentencepiece; Code Llama): a sentencepiece ``ModelProto`` from the pieces,
  scores and types, loaded by sentencepiece itself through ``Tokenizer.from_proto``, so Code
  Llama GGUFs take the same token-exact path as a ``tokenizer.model``.
* ``gpt2`` (byte-level BPE; Qwen2.5-Coder, StarCoder2, DeepSeek-Coder): a Hugging Face
  ``tokenizers.Tokenizer`` from the tokens and merges, with the pre-tokenizer named by
  ``tokenizer.ggml.pre``.

``encode`` takes plain text only: text that looks like a control token (``<|fim_prefix|>``
in a user's file) is encoded as the characters it is, never as the control id. Prompts are
built from the special ids plus encoded text. Every tokenizer here also has
``special_tokens``, text -> id of each control and user-defined token, so a model-family
module can find its FIM and stop tokens by name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import gguf

from codellama_lsp.engine.config import CheckpointError
from codellama_lsp.engine.gguf_file import open_gguf
from codellama_lsp.engine.tokenizer import InfillingCheck, Tokenizer

if TYPE_CHECKING:  # tokenizers and sentencepiece's protobuf are imported where a vocabulary needs them:
    from tokenizers import Tokenizer as HFTokenizer  # the llama.cpp engine splits BPE text without them

TT = gguf.TokenType
_K = gguf.Keys.Tokenizer

# Byte-level BPE pre-tokenizers by ``tokenizer.ggml.pre``: regexes applied in turn, each
# splitting the pieces the previous one left, matches and the text between them kept as
# pieces. These are llama.cpp's definitions (src/llama-vocab.cpp, llm_tokenizer_bpe), which
# restate the models' tokenizer.json pre-tokenizers; Qwen2's is the Split regex of
# Qwen2.5's tokenizer.json, written there with (?i:...) for the contractions.
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "qwen2": (
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "gpt-2": (_GPT2_REGEX,),
    "starcoder": (r"\p{N}", _GPT2_REGEX),
    "refact": (r"\p{N}", _GPT2_REGEX),
    "deepseek-coder": (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}"),
}

# FIM tokens by name, for vocabularies whose GGUF lacks tokenizer.ggml.fim_*_token_id:
# Qwen2.5-Coder's <|fim_*|>, StarCoder/StarCoder2's <fim_*>, DeepSeek-Coder's
# <｜fim▁begin｜>prefix<｜fim▁hole｜>suffix<｜fim▁end｜> (from each model's tokenizer_config.json).
FIM_NAMES = {
    "prefix": ("<|fim_prefix|>", "<fim_prefix>", "<｜fim▁begin｜>"),
    "suffix": ("<|fim_suffix|>", "<fim_suffix>", "<｜fim▁hole｜>"),
    "middle": ("<|fim_middle|>", "<fim_middle>", "<｜fim▁end｜>"),
}
_FIM_KEYS = {"prefix": (_K.FIM_PRE_ID, _K.PREFIX_ID), "suffix": (_K.FIM_SUF_ID, _K.SUFFIX_ID),
             "middle": (_K.FIM_MID_ID, _K.MIDDLE_ID)}
# The end of an infilled middle in Qwen2.5-Coder and StarCoder: <|endoftext|>.
EOT_NAMES = ("<|endoftext|>",)


class _Metadata:
    """The ``tokenizer.ggml.*`` fields of one GGUF file, with errors that name it."""

    def __init__(self, reader: gguf.GGUFReader, path: Path) -> None:
        self.reader = reader
        self.path = path

    def get(self, key: str, default: Any = None) -> Any:
        f = self.reader.get_field(key)
        return default if f is None else f.contents()

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise CheckpointError(f"{self.path} lacks the GGUF tokenizer key {key!r}")
        return value

    def vocabulary(self) -> tuple[list[str], list[int]]:
        """Tokens and their types, checked to be the same length."""
        tokens = self.require(_K.LIST)
        types = self.get(_K.TOKEN_TYPE) or [int(TT.NORMAL)] * len(tokens)
        if len(types) != len(tokens):
            raise CheckpointError(f"{self.path}: {len(tokens)} tokens but {len(types)} token types")
        return tokens, [int(t) for t in types]


CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


def special_tokens_of(tokens: list[str], types: list[int]) -> dict[str, int]:
    """Text -> id of every control and user-defined token."""
    return {t: i for i, (t, k) in enumerate(zip(tokens, types)) if k in (TT.CONTROL, TT.USER_DEFINED)}


class Splitter(Protocol):
    """Text to a vocabulary's ids and back: the part of a BPE tokenizer that needs its tokens and merges."""

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...  # ``ids`` hold no special ids
    def token_text(self, token_id: int) -> str: ...


class HfSplitter:
    """A ``tokenizers.Tokenizer`` built from the GGUF's tokens and merges (``_build_bpe``)."""

    def __init__(self, tok: HFTokenizer) -> None:
        self._tok = tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def token_text(self, token_id: int) -> str:
        return self._tok.id_to_token(token_id) or ""


@dataclass(eq=False)  # a tokenizer is compared, and hashed, by identity
class BpeVocabulary:
    """What a ``gpt2`` GGUF says of its vocabulary besides the tokens and merges themselves.

    Kept apart from them so that a splitter holding its own copy of the vocabulary (llama.cpp's,
    in the llama.cpp engine) is the only copy in memory: for a 150k vocabulary each copy is
    40-50 MB (docs/measurements.md, "Memory of the server").
    """

    path: Path
    pre: str  # tokenizer.ggml.pre: the pre-tokenizer's name
    vocab_size: int
    special_tokens: dict[str, int]  # text -> id of each control and user-defined token
    bos_id: int
    eos_id: int
    add_bos: bool
    prefix_id: int | None
    suffix_id: int | None
    middle_id: int | None
    missing_fim: list[str]
    eot_id: int | None
    special_ids: frozenset[int]  # never shown as text: controls, BOS/EOS/EOT and the FIM ids
    chat_template: str | None

    @classmethod
    def read(cls, meta: _Metadata, tokens: list[str], types: list[int]) -> "BpeVocabulary":
        """The facts, for a pre-tokenizer we split as llama.cpp does (``PRE_TOKENIZERS``); any
        other is refused, whichever splitter would split it."""
        pre = str(meta.get(_K.PRE, "default"))
        if pre not in PRE_TOKENIZERS:
            raise CheckpointError(f"{meta.path}: pre-tokenizer {pre!r} is not supported "
                                  f"(supported: {', '.join(PRE_TOKENIZERS)})")
        index = {t: i for i, t in enumerate(tokens)}
        fim = {part: _fim_id(meta, index, part) for part in FIM_NAMES}
        bos_id, eos_id = int(meta.get(_K.BOS_ID, -1)), int(meta.get(_K.EOS_ID, -1))
        eot_id = _eot_id(meta, index, eos_id)
        controls = {i for i, k in enumerate(types) if k == TT.CONTROL}
        named = {bos_id, eos_id, eot_id, *fim.values()}
        return cls(path=meta.path, pre=pre, vocab_size=len(tokens),
                   special_tokens=special_tokens_of(tokens, types), bos_id=bos_id, eos_id=eos_id,
                   add_bos=bool(meta.get(_K.ADD_BOS, False)), prefix_id=fim["prefix"], suffix_id=fim["suffix"],
                   middle_id=fim["middle"], missing_fim=[FIM_NAMES[p][0] for p, i in fim.items() if i is None],
                   eot_id=eot_id, special_ids=frozenset(i for i in controls | named if i is not None and i >= 0),
                   chat_template=_chat_template(meta))


class GgufBpeTokenizer(BpeVocabulary, InfillingCheck):
    """Byte-level BPE from a ``gpt2`` GGUF vocabulary, duck-typed like ``Tokenizer``.

    gpt2-style vocabularies have no implicit leading space, so ``encode_infilling`` is
    ``encode`` and ``decode_infilling`` is ``decode``. ``eot_id`` (what ends an infilled
    middle) is ``<|endoftext|>`` when the vocabulary has it, else the file's EOT, else EOS;
    other stop tokens are the model family's business, found through ``special_tokens``.
    No Unicode normalisation is applied (llama.cpp applies none either), so
    ``decode(encode(text)) == text`` for every string. The ``splitter`` does the splitting:
    ours (``HfSplitter``), or llama.cpp's on the vocabulary it loaded with the model.
    """

    def __init__(self, vocabulary: BpeVocabulary, splitter: Splitter) -> None:
        super().__init__(**{f.name: getattr(vocabulary, f.name) for f in fields(BpeVocabulary)})
        self.splitter = splitter

    def encode(self, text: str) -> list[int]:
        """Plain text to ids: no BOS, no leading space, control-token text stays text."""
        return self.splitter.encode(text)

    def encode_infilling(self, text: str) -> list[int]:
        return self.encode(text)

    def decode(self, ids: list[int]) -> str:
        """Ids to text, dropping special ids (they must never reach the user as text)."""
        return self.splitter.decode([i for i in ids if i not in self.special_ids])

    def decode_infilling(self, ids: list[int]) -> str:
        return self.decode(ids)

    def token_text(self, token_id: int) -> str:
        """The token's own text (``<|fim_prefix|>`` for a special token), as servers that take text match it."""
        return self.splitter.token_text(token_id)


def _fim_id(meta: _Metadata, index: dict[str, int], part: str) -> int | None:
    """A FIM token's id from the GGUF's key, else by its name in the vocabulary."""
    for key in _FIM_KEYS[part]:
        value = meta.get(key)
        if value is not None and 0 <= int(value) < len(index):
            return int(value)
    return next((index[name] for name in FIM_NAMES[part] if name in index), None)


def _eot_id(meta: _Metadata, index: dict[str, int], eos_id: int) -> int | None:
    for name in EOT_NAMES:
        if name in index:
            return index[name]
    value = meta.get(_K.EOT_ID)
    if value is not None:
        return int(value)
    return eos_id if eos_id >= 0 else None


def _build_bpe(tokens: list[str], merges: list[str], types: list[int], pre: str, path: Path) -> HFTokenizer:
    """A byte-level BPE ``tokenizers.Tokenizer`` whose ids are the GGUF's token indices (``pre``: checked by ``BpeVocabulary.read``)."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    pairs = []
    for m in merges:
        left, sep, right = m.partition(" ")
        if not sep:
            raise CheckpointError(f"{path}: merge {m!r} is not two tokens separated by a space")
        pairs.append((left, right))
    vocab = {t: i for i, t in enumerate(tokens)}
    try:
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, dropout=None, unk_token=None,
                                     continuing_subword_prefix="", end_of_word_suffix="",
                                     fuse_unk=False, byte_fallback=False))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises its own Exception type for a bad merge
        raise CheckpointError(f"{path}: the BPE vocabulary does not build: {exc}") from None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in PRE_TOKENIZERS[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    # Control tokens are special: never matched in input (encode_special_tokens below) and
    # dropped by decode. User-defined ones are matched in text, as llama.cpp and the models'
    # own tokenizers do: they are text the model saw as one token.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, k in zip(tokens, types) if k == TT.CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, k in zip(tokens, types) if k == TT.USER_DEFINED])
    tok.encode_special_tokens = True
    return tok


class GgufSentencePieceTokenizer(Tokenizer):
    """The engine's sentencepiece ``Tokenizer`` on a model rebuilt from a ``llama`` GGUF."""

    special_tokens: dict[str, int]


def sentencepiece_proto(meta: _Metadata) -> bytes:
    """A serialized sentencepiece ``ModelProto`` for a ``llama`` GGUF's vocabulary.

    GGUF token types use sentencepiece's piece-type numbers (NORMAL=1 … BYTE=6), and the
    pieces and scores are sentencepiece's own, so the BPE model is the original one. What
    GGUF does not record is set as in Llama's and Code Llama's ``tokenizer.model``: the
    identity normalizer with whitespace escaped as ``▁``, ``add_dummy_prefix`` (the implicit
    leading space that ``Tokenizer.encode_infilling`` removes; a GGUF's ``add_space_prefix``
    describes llama.cpp's runtime behaviour, and our own exporter writes it false for that
    reason) and ``allow_whitespace_only_pieces`` (runs of spaces stay one word).
    """
    tokens, types = meta.vocabulary()
    scores = meta.require(_K.SCORES)
    if len(scores) != len(tokens):
        raise CheckpointError(f"{meta.path}: {len(tokens)} tokens but {len(scores)} scores")
    bad = next((i for i, k in enumerate(types) if k not in range(TT.NORMAL, TT.BYTE + 1)), None)
    if bad is not None:
        raise CheckpointError(f"{meta.path}: token {bad} has type {types[bad]}, not a sentencepiece piece type")
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    for piece, score, kind in zip(tokens, scores, types):
        p = proto.pieces.add()
        p.piece, p.score, p.type = piece, float(score), kind
    spec = proto.trainer_spec
    spec.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = TT.BYTE in types
    spec.allow_whitespace_only_pieces = True
    _set_special(spec, "unk", meta.get(_K.UNK_ID, types.index(TT.UNKNOWN) if TT.UNKNOWN in types else None), tokens)
    _set_special(spec, "bos", meta.get(_K.BOS_ID), tokens)
    _set_special(spec, "eos", meta.get(_K.EOS_ID), tokens)
    spec.pad_id = -1  # the engine never pads; a GGUF's pad is often the unk or eos piece
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = True
    norm.escape_whitespaces = True
    norm.remove_extra_whitespaces = bool(meta.get(_K.REMOVE_EXTRA_WS, False))
    charsmap = meta.get(_K.PRECOMPILED_CHARSMAP)
    if charsmap:
        norm.precompiled_charsmap = bytes(charsmap)
    return proto.SerializeToString()


def _set_special(spec: Any, role: str, token_id: int | None, tokens: list[str]) -> None:
    """Set ``{role}_id`` and ``{role}_piece``: sentencepiece finds BOS/EOS/PAD by piece text."""
    if token_id is None or not 0 <= int(token_id) < len(tokens):
        setattr(spec, f"{role}_id", -1)
        return
    setattr(spec, f"{role}_id", int(token_id))
    setattr(spec, f"{role}_piece", tokens[int(token_id)])


def _llama_tokenizer(meta: _Metadata) -> GgufSentencePieceTokenizer:
    tok = GgufSentencePieceTokenizer.from_proto(sentencepiece_proto(meta), meta.path)
    tok.special_tokens = special_tokens_of(*meta.vocabulary())
    return tok


def _metadata(source: str | Path | gguf.GGUFReader) -> _Metadata:
    if isinstance(source, gguf.GGUFReader):
        return _Metadata(source, Path(str(source.data.filename)))
    path = Path(source)
    return _Metadata(open_gguf(path), path)


def _chat_template(meta: _Metadata) -> str | None:
    """The model's own chat template (jinja, GGUF key tokenizer.chat_template): which chat layout
    it was tuned on, if any (completion/chat.py reads it; it is never rendered)."""
    template = meta.get(CHAT_TEMPLATE_KEY)
    return template if isinstance(template, str) else None


def _tokenizer_model(meta: _Metadata) -> str:
    kind = meta.require(_K.MODEL)
    if kind not in ("gpt2", "llama"):
        raise CheckpointError(f"{meta.path}: tokenizer model {kind!r} is not supported (supported: gpt2, llama)")
    return str(kind)


def load_gguf_tokenizer(source: str | Path | gguf.GGUFReader) -> GgufBpeTokenizer | GgufSentencePieceTokenizer:
    """The tokenizer of a GGUF file (a path, or a reader already open on it, e.g. ``GgufCheckpoint.reader``)."""
    meta = _metadata(source)
    if _tokenizer_model(meta) == "llama":
        tok = _llama_tokenizer(meta)
        tok.chat_template = _chat_template(meta)
        return tok
    tokens, types = meta.vocabulary()
    vocabulary = BpeVocabulary.read(meta, tokens, types)
    return GgufBpeTokenizer(vocabulary, HfSplitter(_build_bpe(tokens, meta.require(_K.MERGES), types, vocabulary.pre,
                                                              meta.path)))


def read_bpe_vocabulary(source: str | Path | gguf.GGUFReader) -> BpeVocabulary | None:
    """A ``gpt2`` GGUF's ``BpeVocabulary``, to be split by a splitter that has the tokens already; None
    for a ``llama`` (sentencepiece) vocabulary, whose tokenizer ``load_gguf_tokenizer`` gives whole."""
    meta = _metadata(source)
    if _tokenizer_model(meta) == "llama":
        return None
    return BpeVocabulary.read(meta, *meta.vocabulary())
