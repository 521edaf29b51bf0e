"""Model families: the one place that decides how a model is prompted for infilling.

A family is recognised from the special tokens its vocabulary has (the ``family`` setting
can name one instead) and fixes the FIM marker tokens, whether BOS starts the prompt,
the layouts it was trained on and the special tokens that end a middle. Facts, from each
family's published model card or technical report:

* Code Llama (Meta, codellama/llama/tokenizer.py and generation.py): sentencepiece pieces
  ``▁<PRE>`` ``▁<SUF>`` ``▁<MID>`` ``▁<EOT>``, BOS first, PSM and SPM.
* Qwen2.5-Coder (Qwen2.5-Coder technical report, §FIM; its tokenizer_config.json):
  ``<|fim_prefix|>`` ``<|fim_suffix|>`` ``<|fim_middle|>``, no BOS, PSM; a middle ends at
  ``<|endoftext|>``, ``<|fim_pad|>``, ``<|file_sep|>``, ``<|repo_name|>`` or ``<|im_end|>``.
  Other files go first in its repository layout (the report's Figure 4, "Repo-Level FIM
  format", and its README's "Repository-Level Code Completion"): ``<|repo_name|>`` name, a
  newline, then ``<|file_sep|>`` path, newline, content, newline for each file, and
  ``<|file_sep|>`` path, newline for the file being completed, before its FIM part.
* DeepSeek-Coder (its README, "Code Insertion"): ``<｜fim▁begin｜>`` prefix ``<｜fim▁hole｜>``
  suffix ``<｜fim▁end｜>``, BOS ``<｜begin▁of▁sentence｜>`` first, PSM; ends at
  ``<｜end▁of▁sentence｜>`` or ``<|EOT|>``.
* StarCoder2 (its model card and the StarCoder paper's FIM format): ``<fim_prefix>``
  ``<fim_suffix>`` ``<fim_middle>``, no BOS, PSM; ends at ``<|endoftext|>`` or ``<file_sep>``.

A vocabulary with none of these does plain left-to-right completion of the prefix.
Families without a repository layout see other files' snippets as comments headed by
their path, at the start of the prefix (``repo_layout.commented``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from codellama_lsp.completion.repo_layout import RepoContext, by_file, commented, repo_head
from codellama_lsp.completion.snippets import Snippet
from codellama_lsp.completion.templates import FORMATS, Format, infill_layout
from codellama_lsp.settings import FAMILY_CHOICES



@dataclass(frozen=True)
class Family:
    name: str
    markers: tuple[str, str, str] | None  # FIM token texts (prefix, suffix, middle); None: plain completion
    bos: bool  # whether the prompt starts with the tokenizer's BOS
    formats: tuple[Format, ...]  # the infilling layouts it was trained on, the main one first
    stops: tuple[str, ...]  # special tokens that end a middle, besides the tokenizer's EOS/EOT
    repo: tuple[str, str] | None = None  # repository layout tokens (repo name, file separator); None: comments


CODE_LLAMA = Family("codellama", ("▁<PRE>", "▁<SUF>", "▁<MID>"), bos=True, formats=FORMATS, stops=("▁<EOT>",))
QWEN_CODER = Family("qwen2.5-coder", ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"), bos=False,
                    formats=("psm",),
                    stops=("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|im_end|>"),
                    repo=("<|repo_name|>", "<|file_sep|>"))
DEEPSEEK_CODER = Family("deepseek-coder", ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"), bos=True,
                        formats=("psm",), stops=("<｜end▁of▁sentence｜>", "<|EOT|>"))
STARCODER2 = Family("starcoder2", ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"), bos=False, formats=("psm",),
                    stops=("<|endoftext|>", "<file_sep>"))
PLAIN = Family("plain", None, bos=True, formats=(), stops=())
FAMILIES = {f.name: f for f in (CODE_LLAMA, QWEN_CODER, DEEPSEEK_CODER, STARCODER2, PLAIN)}


class UnknownFamily(ValueError):
    """The family setting names a family whose tokens the model's vocabulary lacks."""


@dataclass(frozen=True)
class Template:
    """A family bound to one tokenizer's ids: what builds the model's prompts and stops its middles."""

    family: Family
    bos_id: int | None
    markers: tuple[int, int, int] | None
    stop_ids: frozenset[int]
    repo_ids: tuple[int, int] | None = None  # the family's repository layout tokens, when the vocabulary has them

    @property
    def infills(self) -> bool:
        return self.markers is not None

    def format_for(self, wanted: Format) -> Format:
        """``wanted`` if the family was trained on it, else its main layout."""
        return wanted if wanted in self.family.formats or not self.family.formats else self.family.formats[0]

    def prompt(self, tok: Any, prefix: str, suffix: str, fmt: Format, context: RepoContext | None = None) -> list[int]:
        """The ids whose continuation is the middle; without FIM markers, the prefix alone (plain completion).

        ``context`` (other files' snippets) goes first: in the family's repository layout
        when it has one, else as path-headed comments at the start of the prefix. Its header
        (the file's own imports above the window) opens the prefix, as the file opens.
        """
        head = [] if self.bos_id is None else [self.bos_id]
        if context is not None:
            prefix = context.header + prefix
        if context is not None and context.snippets:
            if self.repo_ids is not None and self.markers is not None:
                head += repo_head(tok, self.repo_ids, context)
                return [*head, *infill_layout(None, self.markers, tok.encode(prefix), tok.encode_infilling(suffix),
                                              self.format_for(fmt))]
            prefix = "".join(commented(path, text, context.comment) for path, text in by_file(context.snippets)) + prefix
        if self.markers is None:
            return [*head, *tok.encode(prefix)]
        return infill_layout(self.bos_id, self.markers, tok.encode(prefix), tok.encode_infilling(suffix),
                             self.format_for(fmt))

    def snippet_cost(self, count: Callable[[str], int], comment: str) -> Callable[[Snippet], int]:
        """A snippet's tokens as ``prompt`` renders it, counted by ``count`` (whose cache keeps the texts')."""
        if self.repo_ids is not None and self.markers is not None:
            return lambda s: 1 + count(s.path) + count(s.text) + 1  # separator, path, newline (about), text
        return lambda s: count(commented(s.path, s.text, comment))

    def describe(self) -> str:
        """For codellama.status: the family, and what it can do."""
        if self.markers is None:
            return f"{self.family.name}: no infilling tokens, plain prefix completion (the suffix is not seen)"
        return f"{self.family.name}: infilling in {', '.join(f.upper() for f in self.family.formats)}"


def _token_ids(tok: Any) -> dict[str, int]:
    """Text -> id of the tokenizer's special tokens (BPE vocabularies) or of Code Llama's pieces."""
    specials = dict(getattr(tok, "special_tokens", {}) or {})
    piece_id = getattr(tok, "piece_id", None)
    if piece_id is not None:  # sentencepiece: look the Code Llama pieces up by name
        for piece in (*(CODE_LLAMA.markers or ()), *CODE_LLAMA.stops):
            i = piece_id(piece)
            if i is not None:
                specials[piece] = i
    return specials


def bind(family: Family, tok: Any, ids: dict[str, int] | None = None) -> Template:
    """``family`` with ``tok``'s ids (``ids``: its special tokens, when already looked up); UnknownFamily
    if the vocabulary lacks the family's markers."""
    ids = _token_ids(tok) if ids is None else ids
    markers = None
    if family.markers is not None:
        missing = [m for m in family.markers if m not in ids]
        if missing:
            raise UnknownFamily(f"the model's vocabulary has no {', '.join(missing)}, so it is not {family.name}")
        markers = (ids[family.markers[0]], ids[family.markers[1]], ids[family.markers[2]])
    bos = getattr(tok, "bos_id", None)
    stops = {ids[s] for s in family.stops if s in ids}
    stops |= {i for i in (getattr(tok, "eos_id", None), getattr(tok, "eot_id", None)) if i is not None and i >= 0}
    repo = family.repo
    repo_ids = (ids[repo[0]], ids[repo[1]]) if repo is not None and all(t in ids for t in repo) else None
    return Template(family, bos if family.bos and bos is not None and bos >= 0 else None, markers, frozenset(stops),
                    repo_ids)


def detect(tok: Any, setting: str = "auto") -> Template:
    """The template for ``tok``'s model: the family the setting names, else the first whose markers it has."""
    if setting != "auto":
        if setting not in FAMILIES:
            raise UnknownFamily(f"unknown model family {setting!r}; expected one of {', '.join(FAMILY_CHOICES)}")
        return bind(FAMILIES[setting], tok)
    ids = _token_ids(tok)
    for family in (CODE_LLAMA, QWEN_CODER, DEEPSEEK_CODER, STARCODER2):
        if family.markers is not None and all(m in ids for m in family.markers):
            return bind(family, tok, ids)
    return bind(PLAIN, tok, ids)
