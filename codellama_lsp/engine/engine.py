"""The resident engine: one loaded model, one live KV-cached sequence, one worker thread.

Each request reuses the KV of the longest token prefix it shares with the live sequence
(prompt and generated tokens alike) and computes only the rest. Editors send a request
per keystroke whose prompt differs from the last one by a few tokens, so this is what keeps
suggestions fast. Sequences the live one replaces are kept in host memory
(``prompt_cache``), so a return to a place, a file or a hover computed before starts from
its own sequence again.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from codellama_lsp.generation import (PROMPT_CACHE_MB, GenerationRequest, GenerationResult, PromptTooLong,
                                      StopReason, StopRule, TextTokenizer, first_line_ended)
from codellama_lsp.engine.healing import HealingIndex
from codellama_lsp.engine.host_memory import tune_allocator
from codellama_lsp.engine.lookup import LookupDrafter
from codellama_lsp.engine.memory_plan import MemoryPlan, available_memory, plan_memory
from codellama_lsp.engine.prompt_cache import Entry, PromptCache, common_prefix_length
from codellama_lsp.engine.runner import Runner
from codellama_lsp.engine.sampling import generator as seeded, keep_only, log_probability, next_token


def common_suffix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[-1 - i] != b[-1 - i]:
            return i
    return n


# Suffix reuse (``reuse_suffix``): a cached tail block shorter than this is recomputed (moving it
# saves little), and once this many tokens in front of a moved block have changed since it was
# last computed, it is computed afresh, so its keys/values never drift far from the text
# before it. 32 tokens is about a line of code typed.
MIN_SUFFIX_BLOCK = 16
MAX_STALE_TOKENS = 32
_NONE_MOVED = 1 << 62  # no cached position holds moved keys/values
# The live sequence is kept (``PromptCache``) before a request throws away at least this many of
# its tokens: more than a keystroke discards (the suffix and the suggestion after the cursor),
# so typing at one place keeps nothing, and leaving it keeps it.
KEEP_MIN_TOKENS = 192
# A kept sequence replaces the live one when it shares at least this many more tokens with the
# prompt: copying it in costs about as much as computing a few tokens.
RESTORE_MIN_GAIN = 16


# Tokens per prefill pass (``Engine.prefill_chunk``): the llama.cpp runner sizes its batch to it.
PREFILL_CHUNK = 128
# Looked-up draft tokens a greedy request checks per forward pass (``Engine.draft_tokens``); the
# llama.cpp runner sizes its rows of logits to one more.
DRAFT_TOKENS = 8

class Engine:
    """Serialises requests onto one worker thread so callers (an asyncio server) never block."""

    heals = True  # the logits are ours, so the first tokens can be kept to a request's ``heal`` text

    def __init__(self, runner: Runner, tokenizer: TextTokenizer, reuse: bool = True, draft_tokens: int = DRAFT_TOKENS,
                 prefill_chunk: int = PREFILL_CHUNK, reuse_suffix: bool = False,
                 prompt_cache_bytes: int = PROMPT_CACHE_MB << 20, memory: MemoryPlan | None = None) -> None:
        self.runner = runner
        self.memory = memory  # the window's plan (engine.memory_plan), for codellama.status; None: not planned
        self.tokenizer = tokenizer
        self.device, self.dtype = runner.device, runner.dtype
        self.context_length = runner.context_length
        self.reuse = reuse
        # Also reuse the previous prompt's tail (an infilling prompt's suffix) when only the text in
        # front of it changed: its keys/values move to the new positions (``Runner.splice``), as
        # llama.cpp's --cache-reuse shifts chunks. Approximate: they attended the old text.
        self.reuse_suffix = reuse and reuse_suffix
        # 0: drafts off
        self.draft_tokens = draft_tokens
        # Tokens per prefill pass; cancellation is checked between passes, so this bounds how long a
        # superseded prompt (or a warm-up) holds up the next request.
        self.prefill_chunk = prefill_chunk
        # Sequences replaced by the live one, in host memory (0 bytes: none kept; needs reuse).
        self.prompt_cache = PromptCache(prompt_cache_bytes if reuse else 0)
        tune_allocator()  # the server did it at its start; a script that builds an engine gets it here
        self._live_typing, self._live_hits = False, 0  # who made the live sequence, and its hits so far
        self._stop_ids = frozenset(i for i in (tokenizer.eot_id, tokenizer.eos_id) if i is not None)
        self._cached: list[int] = []  # tokens whose keys/values sit in the cache, in order
        self._prompt_end = 0  # how many of them the last request's prompt was (the rest: its output)
        # Suffix reuse: cached positions from ``_moved_from`` on hold moved keys/values, and
        # ``_stale`` tokens in front of them have changed since they were computed.
        self._moved_from, self._stale = _NONE_MOVED, 0
        self.generated_tokens = 0  # by all requests, stopped ones included: codellama.status shows it
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codellama-engine")
        # The first job of the worker, so it is ready before any request runs there, rather than
        # built during the first keystroke inside a word.
        self._healing: Future[HealingIndex] = self._executor.submit(HealingIndex.of, tokenizer.vocab_size,
                                                                    tokenizer.decode_infilling)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", dtype: str | None = None,
             context_length: int | str = "auto", compile: str = "auto", quantize: str = "auto",
             **options: Any) -> "Engine":
        """Our PyTorch model from a checkpoint; ``options`` are the constructor's (reuse, draft_tokens, ...).

        ``compile`` (auto, on, off: torch_runner.resolve_compile) and ``quantize`` (auto, none, int8,
        int4: quantize.resolve_quantize) are checked before the weights are read, and the
        ``context_length`` window (a length or "auto") is planned against the device's memory
        (engine.memory_plan), so a bad value or a window that cannot fit fails at once.
        """
        # Imported here: the llama.cpp engine builds an Engine too, and never needs torch.
        from codellama_lsp.engine.checkpoint import checkpoint_args, load_model, resolve_device, resolve_dtype
        from codellama_lsp.engine.quantize import resolve_quantize
        from codellama_lsp.engine.torch_runner import TorchRunner, resolve_compile

        dev = resolve_device(device)
        compiled, quantized = resolve_compile(compile, dev), resolve_quantize(quantize, dev)
        itemsize = resolve_dtype(dtype, dev).itemsize
        args = checkpoint_args(path)
        memory = plan_memory(args, context_length, dev.type, kv_itemsize=itemsize,
                             weights_bytes=args.num_parameters() * itemsize,
                             available_bytes=available_memory(dev.type, dev.index),
                             prompt_cache_bytes=options.get("prompt_cache_bytes", PROMPT_CACHE_MB << 20))
        model, tokenizer = load_model(path, device=device, dtype=dtype)
        return cls(TorchRunner(model, memory.context_length, compiled, quantized), tokenizer, memory=memory, **options)

    @property
    def model(self) -> Any:
        """The PyTorch model, when the runner is ours (tests and benchmarks look inside it)."""
        return getattr(self.runner, "model", None)

    @property
    def kind(self) -> str:
        """Which engine computes ("torch", "llamacpp"): codellama.status shows it."""
        return self.runner.kind

    @property
    def preferred_format(self) -> str | None:
        """The infilling layout the checkpoint declares it does best in (None: PSM), for format "auto"."""
        return self.runner.preferred_format

    def reset_cache(self) -> None:
        """Start cold: no live sequence and no kept ones (a failed request forgets only the live one)."""
        with self._lock:
            self._forget()
            self.prompt_cache.entries.clear()

    def _forget(self) -> None:
        self._cached, self._prompt_end, self._moved_from, self._stale = [], 0, _NONE_MOVED, 0
        self._live_hits = 0

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
        """Drop queued requests; the runner is released once the running one has stopped."""
        self._executor.shutdown(wait=False, cancel_futures=True)

        def release() -> None:
            self._executor.shutdown(wait=True)
            self.runner.close()

        threading.Thread(target=release, name="codellama-engine-close", daemon=True).start()

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
                self._forget()  # the cache may be half-written; never trust it after a failure
                raise
            self.generated_tokens += result.generated_tokens
            return result


    # -- the steps of one request ---------------------------------------------------------------------------
    def _switch(self, prompt: list[int], typing: bool) -> bool:
        """Make the live sequence the best start for ``prompt``; whether a kept one was taken.

        The live sequence is kept first when it is about to lose ``KEEP_MIN_TOKENS`` or more, or
        to be replaced. Sequences with moved keys/values (suffix reuse) are not kept: they are
        approximate, and only the typing place's next keystroke should build on them.
        """
        cache = self.prompt_cache
        if cache.budget_bytes <= 0:
            return False
        head = common_prefix_length(self._cached, prompt)
        entry, shared = cache.best(prompt)
        restore = entry is not None and shared >= head + RESTORE_MIN_GAIN
        replaced = restore or len(self._cached) - head >= KEEP_MIN_TOKENS
        # Out of the cache before the live sequence goes in: keeping it may evict what is taken.
        taken = cache.take(entry) if entry is not None and restore else None
        if replaced and self._moved_from == _NONE_MOVED:
            state, nbytes = self.runner.save()
            cache.put(Entry(list(self._cached), state, nbytes, self._live_typing, hits=self._live_hits))
        if taken is not None:
            self.runner.restore(taken.state)
            self._cached, self._prompt_end, self._moved_from, self._stale = taken.tokens, 0, _NONE_MOVED, 0
            self._live_typing, self._live_hits = taken.typing or typing, taken.hits
        elif replaced:
            self._live_typing, self._live_hits = typing, 0
        else:
            self._live_typing = self._live_typing or typing
        return restore

    def _reuse(self, prompt: list[int]) -> tuple[int, int]:
        """Make the cache hold what ``prompt`` can reuse: (tokens of its head reused, of its tail reused).

        The head is the longest common prefix with the cached tokens. With ``reuse_suffix``, the
        previous prompt's tail that ``prompt`` also ends with (its last token aside, whose logits
        start the decode) is moved into place and the changed tokens in front of it computed.
        """
        n = len(prompt)
        # Always compute at least the last prompt token: its logits start the decode.
        head = min(common_prefix_length(self._cached, prompt), n - 1) if self.reuse else 0
        if self.reuse_suffix:  # else no tail is looked for: the common case costs nothing more
            previous = self._cached[:self._prompt_end]
            tail = common_suffix_length(previous[head:], prompt[head:]) - 1
            start, end = len(previous) - 1 - tail, len(previous) - 1  # the block in the cache
            inserted = prompt[head:n - 1 - tail]
            changed = len(inserted) + start - head
            if tail >= MIN_SUFFIX_BLOCK and self._stale + changed <= MAX_STALE_TOKENS:
                self.runner.splice(head, start, end, n - len(previous), inserted)
                if head <= self._moved_from:  # else the kept head itself holds moved positions, from earlier on
                    self._moved_from = n - 1 - tail
                self._stale += changed
                self._cached = prompt[:n - 1]
                return head, tail
        if head <= self._moved_from:  # every moved position is recomputed now
            self._moved_from, self._stale = _NONE_MOVED, 0
        self.runner.truncate(head)
        self._cached = prompt[:head]
        return head, 0

    def _prefill(self, prompt: list[int], reused: int, cancel: threading.Event) -> Any | None:
        """Compute the prompt past its ``reused`` tokens; the last position's logits, or None if cancelled.

        Chunks of ``prefill_chunk`` tokens, with the cancel flag checked between them: a
        superseded request on a big model stops within one chunk, and the chunks it finished
        stay cached for the next request.
        """
        done, n = reused, len(prompt)
        while True:
            end = min(n, done + self.prefill_chunk)
            logits = self.runner.forward(prompt[done:end], done, last_only=True)[-1]
            self._cached, done = prompt[:end], end
            if done == n:
                return logits
            if cancel.is_set():
                return None

    def _decode_step(self, tok: int, draft: list[int]) -> Any:
        """Feed ``tok`` and the draft after it in one pass: the logits after each of them."""
        rows = self.runner.forward([tok, *draft], len(self._cached), last_only=not draft)
        self._cached.append(tok)
        return rows

    def _accept_draft(self, draft: list[int], rows: Any, state: "_Decoding",
                      drafter: LookupDrafter) -> tuple[int, float, StopReason | None]:
        """Keep draft tokens while they equal the model's own choice; the next token and its
        log-probability, or why it ends.

        ``rows[i]`` is the model's distribution after the fed token and ``i`` draft tokens,
        so a kept draft token's keys/values were computed on the right history.
        """
        choices = rows.argmax(-1).tolist()
        state.drafted += len(draft)
        kept = 0
        while kept < len(draft) and draft[kept] == choices[kept]:
            self._cached.append(draft[kept])
            drafter.append(draft[kept])
            kept += 1
            tok = draft[kept - 1]
            if (reason := state.take(tok, log_probability(rows[kept - 1], tok), len(self._cached))) is not None:
                state.accepted += kept
                return -1, 0.0, reason
        state.accepted += kept
        tok = choices[kept]
        return tok, log_probability(rows[kept], tok), None

    def _next(self, logits: Any, state: "_Decoding", rng: np.random.Generator | None) -> tuple[int, float]:
        """The next token from ``logits`` and its log-probability; while the answer must still write
        ``state.heal``, one that keeps to it (its probability among the tokens that do)."""
        if state.heal:
            allowed = self._healing.result().allowed(state.heal)
            if allowed:
                logits = keep_only(logits, allowed)
        tok = next_token(logits, state.req.temperature, state.req.top_p, rng)
        return tok, log_probability(logits, tok)

    def _decode(self, first: Any, state: "_Decoding", drafter: LookupDrafter | None,
                rng: np.random.Generator | None) -> StopReason:
        """Generate from the prompt's last logits until a stop; drafts only when greedy, and not while healing
        (a draft is checked against the unconstrained argmax)."""
        req = state.req
        tok, logprob = self._next(first, state, rng)
        while (reason := state.take(tok, logprob, len(self._cached))) is None:
            draft: list[int] = []
            if drafter is not None:
                drafter.append(tok)
                room = min(self.draft_tokens, req.max_new_tokens - len(state.out),
                           self.context_length - len(self._cached) - 2)
                draft = [] if state.heal else drafter.propose(room)
            rows = self._decode_step(tok, draft)
            if not draft:
                tok, logprob = self._next(rows[-1], state, rng)
                continue
            assert drafter is not None
            tok, logprob, reason = self._accept_draft(draft, rows, state, drafter)
            self.runner.truncate(len(self._cached))  # the rejected draft tokens' keys/values go
            if reason is not None:
                return reason
        return reason

    def _run(self, prompt: list[int], req: GenerationRequest) -> GenerationResult:
        n = len(prompt)
        rule = StopRule(req)
        restored = self._switch(prompt, req.typing) if self.reuse else False
        previous = self._cached if self.reuse else []  # without reuse, nothing survives a request
        head, tail = self._reuse(prompt)
        self._prompt_end = n
        reused = head + tail
        logits = self._prefill(prompt, len(self._cached), req.cancel)
        prefill_ms = (time.perf_counter() - rule.started) * 1000
        if logits is None:
            return GenerationResult("", [], "cancelled", n, reused, len(self._cached) - reused, prefill_ms, 0.0,
                                    restored=restored)
        rng = seeded(req.seed) if req.temperature > 0 else None
        # Drafts only for greedy decoding, where checking them cannot change the output.
        drafter = LookupDrafter(prompt, previous[head:]) if self.draft_tokens and rng is None else None
        state = _Decoding(req, rule, self.tokenizer.decode_infilling if req.infilling else self.tokenizer.decode,
                          self._stop_ids | req.stop_ids, self.tokenizer.eot_id, self.context_length)
        t1 = time.perf_counter()
        rule.generating()
        reason = self._decode(logits, state, drafter, rng)
        return GenerationResult(
            text=state.final_text(),
            token_ids=state.out,
            stop_reason=reason,
            prompt_tokens=n,
            reused_tokens=reused,
            computed_tokens=n - reused,
            prefill_ms=prefill_ms,
            decode_ms=(time.perf_counter() - t1) * 1000,
            drafted_tokens=state.drafted,
            accepted_tokens=state.accepted,
            restored=restored,
            logprobs=state.logprobs,
        )


@dataclass
class _Decoding:
    """One request's output as it grows: the tokens taken, their text, and the draft counts."""

    req: GenerationRequest
    rule: StopRule
    decode: Callable[[list[int]], str]
    stop_ids: frozenset[int]
    eot_id: int | None
    context_length: int
    out: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # aligned with ``out``
    text: str = ""
    drafted: int = 0
    accepted: int = 0
    heal: str = ""  # what the answer must still write of the request's ``heal`` text
    first_line_done: bool = False  # the output holds its first line whole (generation.first_line_ended)

    def __post_init__(self) -> None:
        self.heal = self.req.heal

    def take(self, tok: int, logprob: float, cached: int) -> StopReason | None:
        """Take ``tok`` (chosen with log-probability ``logprob``) as the next output token (``cached``
        tokens precede it), or say why generation ends."""
        if self.req.cancel.is_set():
            return "cancelled"
        if tok in self.stop_ids:
            return "eot" if tok == self.eot_id else "eos"
        self.out.append(tok)
        self.logprobs.append(logprob)
        if self.heal:  # the token is a prefix of the rest, or starts with all of it
            self.heal = self.heal[len(self.decode([tok])):]
        reason = None
        if self.rule.watches_text:
            self.text, reason = self.rule.text(self.decode(self.out))
        # Before the text's own stop: the token that ends the first line counts too, so "unsure" says
        # all there is to say about minConfidence (completion.confidence has the same first line).
        if self.req.min_confidence > 0 and not self.first_line_done:  # the token writes the first line
            if math.exp(logprob) < self.req.min_confidence:
                return "unsure"  # the suggestion will be hidden: writing the rest is time lost
            self.first_line_done = first_line_ended(self.text if self.rule.watches_text else self.decode(self.out))
        if reason is not None:
            return reason
        if cached + 1 >= self.context_length:
            return "length"
        return self.rule.budget(len(self.out))

    def final_text(self) -> str:
        """The text of the output: already decoded (and cut) when the stop rule watched it."""
        return self.text if self.rule.watches_text else self.decode(self.out)
