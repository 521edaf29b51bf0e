"""sentencepiece tokenizer with Code Llama's infilling pieces.

The special ids are looked up by piece name, as Meta's reference tokenizer does
(codellama/llama/tokenizer.py): ``▁<PRE>``, ``▁<SUF>``, ``▁<MID>``, ``▁<EOT>``; in the
released Code Llama vocabulary they are 32007, 32008, 32009, 32010, with BOS 1 and EOS 2.
"""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

from codellama_lsp.engine.config import CheckpointError

FIM_PIECES = {"prefix": "▁<PRE>", "suffix": "▁<SUF>", "middle": "▁<MID>", "eot": "▁<EOT>"}
# Meta's encode_infilling prepends this character, a single piece in Llama's vocabulary,
# so that dropping its two ids ("▁", "☺") removes sentencepiece's implicit leading space.
SMILEY = "☺"


class FimUnsupported(Exception):
    """The tokenizer lacks the pieces infilling needs; plain completion still works."""


class InfillingCheck:
    """``supports_fim`` and ``require_fim`` from ``missing_fim``, for every tokenizer kind."""

    path: Path
    missing_fim: list[str]

    @property
    def supports_fim(self) -> bool:
        return not self.missing_fim

    def require_fim(self) -> None:
        """Raise a clear error when infilling is asked of a tokenizer without its tokens."""
        if self.missing_fim:
            raise FimUnsupported(
                f"{self.path} has no infilling tokens {', '.join(self.missing_fim)}; "
                "this model can only do plain left-to-right completion"
            )


class Tokenizer(InfillingCheck):
    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist")
        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(str(path))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"{path} is not a sentencepiece model: {exc}") from None
        self._setup(sp, path)

    @classmethod
    def from_proto(cls, model: bytes, path: str | Path) -> "Tokenizer":
        """A tokenizer from a serialized sentencepiece ``ModelProto`` (e.g. one rebuilt from a GGUF file).

        ``path`` is where the model came from; it only names the source in messages.
        """
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(model)
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: the sentencepiece model it holds does not load: {exc}") from None
        tok = cls.__new__(cls)
        tok._setup(sp, Path(path))
        return tok

    def _setup(self, sp: spm.SentencePieceProcessor, path: Path) -> None:
        self.sp = sp
        self.path = path
        self.vocab_size = self.sp.GetPieceSize()
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        ids = {name: self.piece_id(piece) for name, piece in FIM_PIECES.items()}
        self.missing_fim = [FIM_PIECES[n] for n, i in ids.items() if i is None]
        self.prefix_id, self.suffix_id, self.middle_id, self.eot_id = (
            ids["prefix"], ids["suffix"], ids["middle"], ids["eot"]
        )
        self._smiley_id = self.piece_id(SMILEY)
        # Ids that must never reach the user as text.
        self.special_ids = frozenset(i for i in [self.bos_id, self.eos_id, *ids.values()] if i is not None and i >= 0)

    def piece_id(self, piece: str) -> int | None:
        """The id of ``piece``, or None when the vocabulary lacks it (sentencepiece would answer unk)."""
        i = self.sp.PieceToId(piece)
        return None if i == self.sp.unk_id() and piece != self.sp.IdToPiece(i) else i


    def encode(self, text: str) -> list[int]:
        """Encode with sentencepiece's implicit leading space (no BOS/EOS)."""
        return self.sp.EncodeAsIds(text)

    def encode_infilling(self, text: str) -> list[int]:
        """Encode without the implicit leading space, as Meta's ``encode_infilling``."""
        if self._smiley_id is None:
            raise CheckpointError(f"{self.path} has no single piece for {SMILEY!r}, which infilling encoding needs")
        return self.sp.EncodeAsIds(SMILEY + text)[2:]

    def decode(self, ids: list[int]) -> str:
        return self.sp.DecodeIds([i for i in ids if i not in self.special_ids])

    def token_text(self, token_id: int) -> str:
        """The piece's own text (``▁<PRE>`` for a special piece), as servers that take text match it."""
        return self.sp.IdToPiece(token_id)

    def decode_infilling(self, ids: list[int]) -> str:
        """Decode generated middle text without dropping a leading space (Meta's ``decode_infilling``)."""
        if self._smiley_id is None:
            return self.decode(ids)
        return self.sp.DecodeIds([self._smiley_id] + [i for i in ids if i not in self.special_ids])[1:]
