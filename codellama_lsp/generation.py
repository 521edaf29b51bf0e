"""The generation contract: what is asked of a backend, what it answers, and when it stops.

Everything above the backends (context, prompt building, completion planning,
post-processing, the server) talks to generation through these types only, so that it
imports and tests without torch. The local engine and the remote backends share one
``StopRule``, so a stop string or a streaming callback ends a suggestion the same way
wherever it is generated.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, Sequence

# Tokens a prompt and its completion may span, for the contextLength setting's "auto"
# (engine.memory_plan.auto_context_length): on the CPU the default budgets (1024 prefix + 256
# suffix + 64 new tokens) fit with room and the KV cache stays small; on a GPU, Code Llama's
# training length, where a long repository context costs milliseconds to fill.
CPU_CONTEXT_LENGTH = 4096
ACCELERATOR_CONTEXT_LENGTH = 16384
# contextLength's least value: the budgets are cut to fit the window (settings.fit_to_context), and
# below this too little of the prefix would be left to complete from.
MIN_CONTEXT_LENGTH = 256
# Host memory for the engine's kept KV sequences (engine.prompt_cache), the promptCacheMb setting's default.
PROMPT_CACHE_MB = 512

# "unsure": a token of the first line was less probable than the request's ``min_confidence``.
StopReason = Literal["eot", "eos", "length", "stop_string", "callback", "time", "cancelled", "unsure"]


def first_line_ended(text: str) -> bool:
    """Whether ``text`` holds a whole first line: one with something on it, ended (blank lines before it
    do not count). A suggestion's confidence is that of the tokens that wrote it (completion.confidence)."""
    end = text.find("\n", len(text) - len(text.lstrip()))
    return end >= 0 and bool(text[:end].strip())


@dataclass
class GenerationRequest:
    prompt: Sequence[int]
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop_strings: tuple[str, ...] = ()
    time_budget_ms: float | None = None  # for generation, from the prompt's end (``StopRule``)
    infilling: bool = True  # decode as a middle (no implicit leading space) rather than plain text
    # Streaming: called with the text generated so far after every token; returning True stops.
    on_text: Callable[[str], bool | None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    # Token ids that end generation besides the tokenizer's end markers (a model family's stops).
    stop_ids: frozenset[int] = frozenset()
    # For the place being typed at: its KV sequence is the last a prompt cache evicts. Hovers,
    # Instruct actions, prefetches and warm-ups are not.
    typing: bool = False
    # Token healing (completion.healing): the text the answer must start with, which the prompt
    # was backed up over; the engine keeps the first tokens to it. "" for none.
    heal: str = ""
    # A suggestion whose first line has a token less probable than this is hidden (minConfidence):
    # generation stops at that token ("unsure") rather than write the rest. 0: never.
    min_confidence: float = 0.0


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    stop_reason: StopReason  # "time": the budget ended it, so its last line may be unfinished
    prompt_tokens: int
    reused_tokens: int
    computed_tokens: int
    prefill_ms: float
    decode_ms: float
    drafted_tokens: int = 0  # proposed by lookup and checked in batches (greedy only)
    restored: bool = False  # its prompt started from a sequence the prompt cache kept
    accepted_tokens: int = 0  # of those, the ones the model agreed with
    # The natural log of each output token's probability, aligned with ``token_ids``, from the
    # distribution it was chosen from (kept to the healed text while healing). Empty where the
    # backend does not report them (the remote ones).
    logprobs: list[float] = field(default_factory=list)

    @property
    def generated_tokens(self) -> int:
        return len(self.token_ids)


class PromptTooLong(ValueError):
    """The prompt does not fit in the backend's context."""


class TextTokenizer(Protocol):
    """What prompt building and the backends need of a tokenizer (sentencepiece or byte-level BPE)."""

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    prefix_id: int | None
    suffix_id: int | None
    middle_id: int | None
    eot_id: int | None
    special_ids: frozenset[int]

    @property
    def supports_fim(self) -> bool: ...
    def require_fim(self) -> None: ...
    def encode(self, text: str) -> list[int]: ...
    def encode_infilling(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def decode_infilling(self, ids: list[int]) -> str: ...
    def token_text(self, token_id: int) -> str: ...


class Backend(Protocol):
    """What the server needs from whatever generates: a tokenizer for prompts, and generation."""

    tokenizer: TextTokenizer
    context_length: int | None  # tokens a prompt and its completion may span; None: the server's own limit
    preferred_format: str | None  # the infilling layout the model does best in; None: PSM
    heals: bool  # whether it honours ``GenerationRequest.heal`` (only the local engine sees the logits)
    generated_tokens: int  # by all requests so far, for codellama.status

    @property
    def device(self) -> object: ...  # shown in codellama.status

    @property
    def dtype(self) -> object: ...

    async def agenerate(self, request: GenerationRequest) -> GenerationResult: ...

    def close(self) -> None: ...


@dataclass
class StopRule:
    """When a request's generation ends, applied to its text as it grows.

    ``text`` takes the whole text so far: the earliest stop string (or ``end_text``, the end
    marker as text, which servers that answer in text may write) cuts it and ends
    generation; otherwise the request's streaming callback may end it. ``budget`` is
    checked after every token: cancellation, the new-token limit, the time budget.

    The time budget bounds generation, not the prompt (llama.vim's ``t_max_predict_ms`` has the
    same meaning): its clock starts at ``generating``, once the prompt is computed. Counting
    the prefill too would cut the first suggestion at every new place after a token or two,
    since a cold prompt alone takes longer than the budget on a CPU. A prompt's cost is bounded
    instead by the next keystroke, which cancels it between prefill chunks and keeps the
    chunks computed.
    """

    request: GenerationRequest
    end_text: str | None = None
    started: float = field(default_factory=time.perf_counter)  # the request's arrival
    generation_started: float | None = None  # the prompt's end: the time budget's clock

    def generating(self) -> None:
        """The prompt is computed and the first token is being chosen: the time budget starts now."""
        if self.generation_started is None:
            self.generation_started = time.perf_counter()

    @property
    def deadline(self) -> float | None:
        budget, began = self.request.time_budget_ms, self.generation_started
        return None if budget is None or began is None else began + budget / 1000

    def text(self, text: str) -> tuple[str, StopReason | None]:
        """``text`` cut at the first stop, and why generation ends there (None: it goes on)."""
        stops = [s for s in (self.end_text, *self.request.stop_strings) if s]
        hits = [(i, s) for s in stops if (i := text.find(s)) >= 0]
        if hits:
            at, which = min(hits)
            return text[:at], "eot" if which == self.end_text else "stop_string"
        if self.request.on_text is not None and self.request.on_text(text):
            return text, "callback"
        return text, None

    @property
    def watches_text(self) -> bool:
        """Whether ``text`` can end generation; if not, a backend need not decode until the end."""
        return bool(self.end_text or self.request.stop_strings or self.request.on_text)

    def budget(self, generated: int) -> StopReason | None:
        """Why generation ends after ``generated`` tokens, or None."""
        if self.request.cancel.is_set():
            return "cancelled"
        if generated >= self.request.max_new_tokens:
            return "length"
        deadline = self.deadline
        if deadline is not None and time.perf_counter() >= deadline:
            return "time"
        return None
