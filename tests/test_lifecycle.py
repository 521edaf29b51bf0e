"""Per-document supersede and typed-through reuse; metrics."""

from __future__ import annotations

from codellama_lsp.lifecycle import Lifecycle, Shown
from codellama_lsp.metrics import Metrics, percentile


def test_a_new_request_cancels_the_previous_one_for_the_same_document() -> None:
    life = Lifecycle()
    first = life.begin("a.py")
    other = life.begin("b.py")
    second = life.begin("a.py")
    assert first.is_set() and not second.is_set() and not other.is_set()
    life.end("a.py", first)  # ending a superseded request does not drop the live one
    third = life.begin("a.py")
    assert second.is_set() and not third.is_set()


def test_typed_through() -> None:
    life = Lifecycle()
    life.remember("a.py", Shown(line=3, head="    return ", tail=")", text="a + b"))
    assert life.typed_through("a.py", 3, "    return a", ")") == " + b"
    assert life.typed_through("a.py", 3, "    return a +", ")") == " b"
    assert life.typed_through("a.py", 3, "    return ", ")") is None  # nothing typed yet
    assert life.typed_through("a.py", 3, "    return x", ")") is None  # typed something else
    assert life.typed_through("a.py", 3, "    return a + b", ")") is None  # typed it all
    assert life.typed_through("a.py", 4, "    return a", ")") is None  # another line
    assert life.typed_through("a.py", 3, "    return a", "") is None  # the rest of the line changed
    life.forget("a.py")
    assert life.typed_through("a.py", 3, "    return a", ")") is None


def test_forget_cancels_live_requests() -> None:
    life = Lifecycle()
    completion, docstring = life.begin("a.py"), life.begin("docstring a.py")
    life.forget("a.py")
    assert completion.is_set() and docstring.is_set()


def test_metrics() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5.0, 1.0, 3.0], 0.5) == 3.0
    m = Metrics()
    m.count("completion")
    m.count("typed_through")
    m.answered(10.0, prompt_tokens=100, reused_tokens=75)
    m.answered(30.0)
    snap = m.snapshot()
    assert snap["kv_reuse_ratio"] == 0.75 and snap["typed_through_hits"] == 1
    assert snap["latency_p50_ms"] in (10.0, 30.0) and snap["latency_p95_ms"] == 30.0
