"""The resident engine: one loaded model, one KV-cached sequence, one worker thread.

Each request reuses the KV of the longest token prefix it shares with the previous
sequence (prompt and generated tokens alike) and computes only the rest. Editors send
a request per keystroke whose prompt differs from the last one by a few tokens, so this
is what keeps suggestions fast.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch

from .checkpoint import load_model
from .lookup import LookupDrafter
from .model import Transformer
from .sampling import next_token
from .tokenizer import Tokenizer

StopReason = Literal["eot", "eos", "length", "stop_string", "callback", "time", "cancelled"]


class PromptTooLong(ValueError):
    """The prompt does not fit in the engine's preallocated context."""


@dataclass
class GenerationRequest:
    prompt: Sequence[int]
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop_strings: tuple[str, ...] = ()
    time_budget_ms: float | None = None
    infilling: bool = True  # decode as a middle (no implicit leading space) rather than plain text
    # Streaming: called with the text generated so far after every token; returning True stops.
    on_text: Callable[[str], bool | None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    stop_reason: StopReason
    prompt_tokens: int
    reused_tokens: int
    computed_tokens: int
    prefill_ms: float
    decode_ms: float
    drafted_tokens: int = 0  # proposed by lookup and checked in batches (greedy only)
    accepted_tokens: int = 0  # of those, the ones the model agreed with

    @property
    def generated_tokens(self) -> int:
        return len(self.token_ids)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Engine:
    """Serialises requests onto one worker thread so callers (an asyncio server) never block."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, context_length: int = 4096, reuse: bool = True,
                 compile_decode: bool = False, draft_tokens: int = 8, prefill_chunk: int = 512) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = model.lm_head.weight.device
        self.dtype = model.lm_head.weight.dtype
        self.context_length = min(context_length, model.args.max_position_embeddings)
        self.reuse = reuse
        # Greedy requests check up to this many looked-up draft tokens per forward pass (0: off).
        self.draft_tokens = draft_tokens
        self.prefill_chunk = prefill_chunk  # tokens per prefill pass; cancellation is checked between passes
        model.setup_cache(self.context_length)
        self._stop_ids = {i for i in (tokenizer.eot_id, tokenizer.eos_id) if i is not None}
        # GPU only (not exercised on this CPU-only project machine): compile the one-token step.
        self._forward = torch.compile(model, dynamic=True) if compile_decode else model
        self._cached: list[int] = []  # tokens whose keys/values sit in the cache, in order
        self.generated_tokens = 0  # by all requests, stopped ones included: codellama.status shows it
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codellama-engine")

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", dtype: str | None = None, **options: Any) -> "Engine":
        """Load a checkpoint directory; ``options`` are the constructor's (context_length, reuse, ...)."""
        model, tokenizer = load_model(path, device=device, dtype=dtype)
        return cls(model, tokenizer, **options)

    @property
    def preferred_format(self) -> str | None:
        """The infilling layout the checkpoint declares it does best in (None: PSM), for format "auto"."""
        return self.model.args.infilling_format

    def reset_cache(self) -> None:
        with self._lock:
            self._cached = []

    def submit(self, request: GenerationRequest) -> "Future[GenerationResult]":
        """Queue a request on the worker thread."""
        return self._executor.submit(self.generate, request)

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        """Await a request from asyncio; cancelling the awaiting task stops the engine within one step."""
        future = self.submit(request)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            request.cancel.set()
            raise

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @torch.inference_mode()
    def generate(self, req: GenerationRequest) -> GenerationResult:
        """Run one request to completion on the calling thread (the worker, normally)."""
        prompt = list(req.prompt)
        n = len(prompt)
        if n == 0:
            raise ValueError("empty prompt")
        if n >= self.context_length:
            raise PromptTooLong(f"the prompt has {n} tokens but the engine's context holds {self.context_length}")
        with self._lock:
            if req.cancel.is_set():
                return GenerationResult("", [], "cancelled", n, 0, 0, 0.0, 0.0)
            try:
                result = self._run(prompt, req)
            except BaseException:
                self._cached = []  # the cache may be half-written; never trust it after a failure
                raise
            self.generated_tokens += result.generated_tokens
            return result

    def _logits(self, tokens: list[int], start: int, last_only: bool) -> torch.Tensor:
        """Logits [T or 1, vocab] for ``tokens`` placed at ``start``, extending the KV cache."""
        x = torch.tensor([tokens], dtype=torch.long, device=self.device)
        return self._forward(x, start=start, last_only=last_only)[0]

    def _run(self, prompt: list[int], req: GenerationRequest) -> GenerationResult:
        n = len(prompt)
        previous = self._cached if self.reuse else []  # without reuse, nothing survives a request
        # Always compute at least the last prompt token: its logits start the decode.
        reused = min(common_prefix_length(previous, prompt), n - 1) if self.reuse else 0
        self._cached = prompt[:reused]
        t0 = time.perf_counter()
        # Prefill in chunks, checking the cancel flag between them: a superseded request on a
        # big model stops within one chunk, and the chunks it finished stay cached for the next.
        done = reused
        while True:
            end = min(n, done + self.prefill_chunk)
            logits = self._logits(prompt[done:end], done, last_only=True)[-1]
            self._cached, done = prompt[:end], end
            if done == n:
                break
            if req.cancel.is_set():
                return GenerationResult("", [], "cancelled", n, reused, done - reused,
                                        (time.perf_counter() - t0) * 1000, 0.0)
        prefill_ms = (time.perf_counter() - t0) * 1000
        deadline = None if req.time_budget_ms is None else t0 + req.time_budget_ms / 1000
        generator = None
        if req.temperature > 0:
            generator = torch.Generator(device=self.device).manual_seed(req.seed)
        # Drafts only for greedy decoding, where checking them cannot change the output.
        drafter = LookupDrafter(prompt, previous[reused:]) if self.draft_tokens and generator is None else None
        decode = self.tokenizer.decode_infilling if req.infilling else self.tokenizer.decode
        watch_text = bool(req.stop_strings) or req.on_text is not None
        out: list[int] = []
        text = ""
        drafted = accepted = 0
        t1 = time.perf_counter()

        def emit(tok: int) -> StopReason | None:
            """Take ``tok`` as the next output token, or say why generation ends here."""
            nonlocal text
            if req.cancel.is_set():
                return "cancelled"
            if tok in self._stop_ids:
                return "eot" if tok == self.tokenizer.eot_id else "eos"
            out.append(tok)
            if watch_text:
                text = decode(out)
                hit = min((i for i in (text.find(s) for s in req.stop_strings if s) if i >= 0), default=-1)
                if hit >= 0:
                    text = text[:hit]
                    return "stop_string"
                if req.on_text is not None and req.on_text(text):
                    return "callback"
            if len(out) >= req.max_new_tokens or len(self._cached) + 1 >= self.context_length:
                return "length"
            if deadline is not None and time.perf_counter() >= deadline:
                return "time"
            return None

        tok = next_token(logits, req.temperature, req.top_p, generator)
        while (reason := emit(tok)) is None:
            position = len(self._cached)
            draft: list[int] = []
            if drafter is not None:
                drafter.append(tok)
                room = min(self.draft_tokens, req.max_new_tokens - len(out), self.context_length - position - 2)
                draft = drafter.propose(room)
            rows = self._logits([tok, *draft], position, last_only=not draft)
            self._cached.append(tok)
            if not draft:
                tok = next_token(rows[-1], req.temperature, req.top_p, generator)
                continue
            # The model's own choice after tok and after each draft token: keep the draft while they agree.
            choices = rows.argmax(-1).tolist()
            drafted += len(draft)
            kept = 0
            while kept < len(draft) and draft[kept] == choices[kept]:
                self._cached.append(draft[kept])  # its keys/values were computed on the right history
                drafter.append(draft[kept])
                kept += 1
                if (reason := emit(draft[kept - 1])) is not None:
                    break
            accepted += kept
            if reason is not None:
                break
            tok = choices[kept]
        if not watch_text:
            text = decode(out)
        return GenerationResult(
            text=text,
            token_ids=out,
            stop_reason=reason,
            prompt_tokens=n,
            reused_tokens=reused,
            computed_tokens=n - reused,
            prefill_ms=prefill_ms,
            decode_ms=(time.perf_counter() - t1) * 1000,
            drafted_tokens=drafted,
            accepted_tokens=accepted,
        )
