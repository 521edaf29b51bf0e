"""Counters and latencies behind ``codellama.status``."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque

from codellama_lsp.generation import Backend, GenerationRequest, GenerationResult

log = logging.getLogger("codellama_lsp")


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Metrics:
    def __init__(self, window: int = 1000) -> None:
        self.counts: Counter[str] = Counter()
        self.latencies_ms: deque[float] = deque(maxlen=window)  # answered completions, last ``window``
        self.prompt_tokens = 0
        self.reused_tokens = 0
        self.drafted_tokens = 0
        self.accepted_tokens = 0
        self.last_generation: dict[str, object] | None = None  # what the last engine request was and cost

    def count(self, outcome: str) -> None:
        self.counts[outcome] += 1

    def answered(self, latency_ms: float) -> None:
        self.latencies_ms.append(latency_ms)

    def generated(self, result: GenerationResult, what: str) -> None:
        """One engine request (``what`` it was for): how much of its prompt the KV cache already
        held, whether a kept sequence served it, and how many looked-up draft tokens decoding
        checked and kept."""
        self.last_generation = {
            "what": what, "prompt_tokens": result.prompt_tokens, "computed_tokens": result.computed_tokens,
            "restored": result.restored, "generated_tokens": result.generated_tokens,
            "stop_reason": result.stop_reason, "prefill_ms": round(result.prefill_ms, 1),
            "decode_ms": round(result.decode_ms, 1)}
        self.prompt_tokens += result.prompt_tokens
        self.reused_tokens += result.reused_tokens
        self.drafted_tokens += result.drafted_tokens
        self.accepted_tokens += result.accepted_tokens

    def snapshot(self) -> dict[str, object]:
        latencies = list(self.latencies_ms)
        return {
            "requests": dict(self.counts),
            "latency_p50_ms": percentile(latencies, 0.5),
            "latency_p95_ms": percentile(latencies, 0.95),
            "kv_reuse_ratio": self.reused_tokens / self.prompt_tokens if self.prompt_tokens else None,
            "typed_through_hits": self.counts["typed_through"],
            "draft_acceptance": self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else None,
            "last_generation": self.last_generation,
        }


async def counted_generation(backend: Backend, request: GenerationRequest, metrics: Metrics,
                             what: str) -> GenerationResult | None:
    """``backend``'s result for ``request``, or None when it failed (logged); cancellation propagates."""
    try:
        result = await backend.agenerate(request)
    except asyncio.CancelledError:
        log.debug("%s stopped: superseded or cancelled", what)
        raise
    except Exception as exc:  # noqa: BLE001 - a failed request is logged and answered empty
        log.warning("%s failed: %s", what, exc)
        metrics.count("failed")
        return None
    metrics.generated(result, what)
    return result
