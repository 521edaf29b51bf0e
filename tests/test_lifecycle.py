"""Per-document supersede, typed-through reuse and prefetch; metrics."""

from __future__ import annotations

import asyncio

import pytest

from codellama_lsp.generation import GenerationResult
from codellama_lsp.service.lifecycle import Ahead, Anchor, Lifecycle, Shown, rest_after_typing, typed_since
from codellama_lsp.service.metrics import Metrics, percentile


async def _slow(result: str, started: list[str], stopped: list[str]) -> str:
    started.append(result)
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        stopped.append(result)
        raise
    return result


async def _quick(result: str) -> str:
    await asyncio.sleep(0.01)
    return result


async def test_a_request_for_a_new_place_supersedes_the_running_one() -> None:
    life, started, stopped = Lifecycle(), [], []
    first = asyncio.ensure_future(life.run(("completion", "a.py"), 1, lambda _: _slow("one", started, stopped)))
    other = asyncio.ensure_future(life.run(("completion", "b.py"), 1, lambda _: _quick("other")))
    await asyncio.sleep(0.02)
    second = await life.run(("completion", "a.py"), 2, lambda _: _quick("two"))
    assert (await first, second, await other) == (None, (2, "two"), (1, "other"))
    assert stopped == ["one"]


async def test_a_request_for_the_same_place_shares_the_running_computation() -> None:
    life, calls = Lifecycle(), []

    async def once() -> str:
        calls.append(1)
        return await _quick("same")

    results = await asyncio.gather(*(life.run(("completion", "a.py"), 7, lambda _: once()) for _ in range(5)))
    assert results == [(7, "same")] * 5 and len(calls) == 1 and life.shared == 4


async def test_cancelling_a_request_cancels_its_computation_unless_shared() -> None:
    life, started, stopped = Lifecycle(grace_s=0.02), [], []
    alone = asyncio.ensure_future(life.run(("completion", "a.py"), 1, lambda _: _slow("x", started, stopped)))
    await asyncio.sleep(0.01)
    alone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await alone
    assert stopped == []  # left running for the grace period, in case the next request joins it
    await asyncio.sleep(0.05)
    assert stopped == ["x"]
    started, stopped = [], []
    first = asyncio.ensure_future(life.run(("completion", "b.py"), 1, lambda _: _slow("y", started, stopped)))
    second = asyncio.ensure_future(life.run(("completion", "b.py"), 1, lambda _: _slow("y", started, stopped)))
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.sleep(0.05)
    assert stopped == [] and not second.done()
    life.forget("b.py")  # closing the document stops it
    assert await second is None and stopped == ["y"]


def test_typed_through() -> None:
    life = Lifecycle()
    at = Anchor(line=3, head="    return ", tail=")")
    life.remember("a.py", Shown(at, "a + b"))
    assert life.typed_through("a.py", Anchor(3, "    return a", ")")) == " + b"
    assert life.typed_through("a.py", Anchor(3, "    return a +", ")")) == " b"
    assert life.typed_through("a.py", at) is None  # nothing typed yet
    assert life.typed_through("a.py", Anchor(3, "    return x", ")")) is None  # typed something else
    assert life.typed_through("a.py", Anchor(3, "    return a + b", ")")) is None  # typed it all
    assert life.typed_through("a.py", Anchor(4, "    return a", ")")) is None  # another line
    assert life.typed_through("a.py", Anchor(3, "    return a", "")) is None  # the rest of the line changed
    life.forget("a.py")
    assert life.typed_through("a.py", Anchor(3, "    return a", ")")) is None


async def test_a_keystroke_matching_the_running_generation_joins_it() -> None:
    life, started, stopped = Lifecycle(), [], []
    at, typed = Anchor(0, "x = ", ""), Anchor(0, "x = f", "")

    def start(flight):
        flight.partial = "foo("  # what the model has written so far
        return _slow("foo(1)", started, stopped)

    def joins(flight):
        return rest_after_typing(flight.partial, typed_since(flight.ident, typed)) is not None

    first = asyncio.ensure_future(life.run(("completion", "a.py"), at, start))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(life.run(("completion", "a.py"), typed, lambda f: _quick("new"), joins))
    await asyncio.sleep(0.01)
    assert started == ["foo(1)"] and not second.done() and life.shared == 1
    life.forget("a.py")
    assert await second is None and await first is None


def test_metrics() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5.0, 1.0, 3.0], 0.5) == 3.0
    m = Metrics()
    m.count("completion")
    m.count("typed_through")
    m.answered(10.0)
    m.generated(GenerationResult("x", [1], "eot", prompt_tokens=100, reused_tokens=75, computed_tokens=25,
                                 prefill_ms=1.0, decode_ms=1.0, drafted_tokens=8, accepted_tokens=6), "completion at 1:2")
    m.answered(30.0)
    snap = m.snapshot()
    assert snap["kv_reuse_ratio"] == 0.75 and snap["typed_through_hits"] == 1 and snap["draft_acceptance"] == 0.75
    assert snap["last_generation"]["what"] == "completion at 1:2" and snap["last_generation"]["computed_tokens"] == 25
    assert snap["latency_p50_ms"] in (10.0, 30.0) and snap["latency_p95_ms"] == 30.0


# -- prefetch ----------------------------------------------------------------------------------------------

END = Anchor(0, "x = foo(1)", "")  # where the shown suggestion "foo(1)" ends once it is typed or accepted


async def test_a_finished_prefetch_answers_that_place_in_that_text_only() -> None:
    life, calls = Lifecycle(), []

    async def fresh(_) -> str:
        calls.append(1)
        return "fresh"

    life.prefetch("a.py", lambda: (Ahead(END, "text-1"), lambda _: _quick(" + 2")), 0)
    await asyncio.sleep(0.05)
    assert await life.suggest("a.py", END, 5, fresh, lambda: "text-2") == ("fresh", "answered")  # other text
    # A request elsewhere (an editor asking again where the suggestion is shown) leaves it for later.
    assert await life.suggest("a.py", Anchor(0, "x = ", ""), 6, fresh, lambda: "text-0") == ("fresh", "answered")
    assert await life.suggest("a.py", END, 7, fresh, lambda: "text-1") == (" + 2", "prefetched")
    assert calls == [1, 1] and life.prefetches == 1
    # Remembered as shown: typing its start is typed through.
    assert await life.suggest("a.py", Anchor(0, "x = foo(1) +", ""), 8, fresh, lambda: "x") == (" 2", "typed_through")


async def test_a_request_joins_a_running_prefetch_of_its_place() -> None:
    life, started, stopped = Lifecycle(), [], []
    life.prefetch("a.py", lambda: (Ahead(END, "t"), lambda _: _slow(" + 2", started, stopped)), 0)
    await asyncio.sleep(0.01)
    joined = asyncio.ensure_future(life.suggest("a.py", END, 5, lambda _: _quick("fresh"), lambda: "t"))
    await asyncio.sleep(0.01)
    assert not joined.done() and life.shared == 1 and started == [" + 2"]
    life.forget("a.py")
    assert await joined == ("", "superseded") and stopped == [" + 2"]


async def test_any_other_computation_cancels_a_running_prefetch() -> None:
    life, started, stopped = Lifecycle(), [], []
    life.prefetch("a.py", lambda: (Ahead(END, "t"), lambda _: _slow("a", started, stopped)), 0)
    life.prefetch("b.py", lambda: (Ahead(END, "t"), lambda _: _slow("b", started, stopped)), 0)
    await asyncio.sleep(0.01)
    # Elsewhere in a.py: supersedes a.py's prefetch; and b.py's, which would hold the engine.
    assert await life.suggest("a.py", Anchor(0, "y", ""), 5, lambda _: _quick("y"), lambda: "t") == ("y", "answered")
    await asyncio.sleep(0.01)
    assert sorted(stopped) == ["a", "b"]
    # And a prefetch does not displace a computation already running for the document.
    running = asyncio.ensure_future(life.run(("completion", "a.py"), 1, lambda _: _slow("real", started, stopped)))
    await asyncio.sleep(0.01)
    life.prefetch("a.py", lambda: (Ahead(END, "t"), lambda _: _quick("guess")), 0)
    await asyncio.sleep(0.01)
    assert life.prefetches == 2 and not running.done()
    life.forget("a.py")
    assert await running is None


async def test_a_prefetch_whose_document_changed_during_the_pause_computes_nothing() -> None:
    life = Lifecycle()
    life.prefetch("a.py", lambda: None, 0)
    await asyncio.sleep(0.01)
    assert life.prefetches == 0 and life.running() == {}
    assert await life.suggest("a.py", END, 5, lambda _: _quick("fresh"), lambda: "t") == ("fresh", "answered")


async def test_a_prefetch_waits_for_a_pause_that_every_keystroke_restarts() -> None:
    life, started, stopped = Lifecycle(), [], []
    shown = Shown(Anchor(0, "x = ", ""), "foo(1)")
    life.remember("a.py", shown)
    life.prefetch("a.py", lambda: (Ahead(END, "t"), lambda _: _slow("ahead", started, stopped)), 0.05)
    for typed in ("f", "fo", "foo"):  # typing through the suggestion, faster than the pause
        await asyncio.sleep(0.03)
        assert (await life.suggest("a.py", Anchor(0, "x = " + typed, ""), 5, None))[1] == "typed_through"
        assert started == [] and life.prefetches == 0  # each keystroke cancelled the wait
        life.prefetch("a.py", lambda: (Ahead(END, "t"), lambda _: _slow("ahead", started, stopped)), 0.05)
    await asyncio.sleep(0.08)  # the user paused
    assert started == ["ahead"] and life.prefetches == 1
    # Typing through goes on without stopping it: it needs no engine.
    assert (await life.suggest("a.py", Anchor(0, "x = foo(", ""), 6, None))[1] == "typed_through"
    assert stopped == [] and life.running() == {"a.py": 0}
    life.forget("a.py")


async def test_a_warm_up_replaces_a_prefetch_the_user_left_and_skips_what_is_computed() -> None:
    life, started, stopped = Lifecycle(), [], []
    elsewhere = Anchor(5, "    ", "")
    life.prefetch("a.py", lambda: (Ahead(END, "t"), lambda _: _slow("ahead", started, stopped)), 0)
    await asyncio.sleep(0.02)
    assert life.warm("a.py", elsewhere, lambda: (Ahead(elsewhere, "t"), lambda _: _slow("warm", started, stopped)))
    await asyncio.sleep(0.02)
    assert stopped == ["ahead"] and started == ["ahead", "warm"]
    # Where it is already warming, and where a request computes, nothing more starts.
    assert not life.warm("a.py", elsewhere, lambda: (Ahead(elsewhere, "t"), lambda _: _quick("again")))
    task = asyncio.ensure_future(life.suggest("a.py", Anchor(9, "z", ""), 3, lambda _: _slow("asked", started, stopped)))
    await asyncio.sleep(0.02)
    assert not life.warm("a.py", elsewhere, lambda: (Ahead(elsewhere, "t"), lambda _: _quick("again")))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # Where the shown suggestion was asked for, it is computed already.
    life.remember("b.py", Shown(elsewhere, "shown"))
    assert not life.warm("b.py", elsewhere, lambda: (Ahead(elsewhere, "t"), lambda _: _quick("again")))


async def test_a_return_to_a_place_in_unchanged_text_is_answered_as_before() -> None:
    """The answer at a place, and the rest of it typed through, are kept by place and text: back there in the
    same text (after another place, a hover, another file) the suggestion comes at once; in other text it is computed."""
    life, calls = Lifecycle(), []

    def start(text: str):
        async def run(_flight) -> str:
            calls.append(text)
            return await _quick(text)
        return run

    here, there = Anchor(3, "    if n", ""), Anchor(9, "    ", "")
    assert await life.suggest("a.py", here, 1, start("ewfile:"), lambda: "T1") == ("ewfile:", "answered")
    typed = Anchor(3, "    if new", "")
    assert await life.suggest("a.py", typed, 2, start("never"), lambda: "T2") == ("file:", "typed_through")
    assert await life.suggest("a.py", there, 3, start("x = 1"), lambda: "T2") == ("x = 1", "answered")
    assert await life.suggest("a.py", typed, 4, start("never"), lambda: "T2") == ("file:", "revisited")
    assert await life.suggest("a.py", here, 5, start("never"), lambda: "T1") == ("ewfile:", "revisited")
    assert calls == ["ewfile:", "x = 1"]
    # The same place in a text changed since: computed again.
    assert await life.suggest("a.py", there, 6, start("y = 2"), lambda: "T3") == ("y = 2", "answered")
    assert await life.suggest("a.py", typed, 6, start("file2:"), lambda: "T3") == ("file2:", "answered")
    life.forget("a.py")
    assert await life.suggest("a.py", typed, 7, start("file3:"), lambda: "T3") == ("file3:", "answered")


async def test_nothing_to_show_is_kept_and_no_answer_is_not() -> None:
    """An empty answer (the model wrote nothing worth showing) is known at that place in that text; a failed
    computation (None: the backend failed) is asked again."""
    life, calls = Lifecycle(), []

    def start(text: str | None):
        async def run(_flight) -> str | None:
            calls.append(text)
            return await _quick(text)
        return run

    here, there = Anchor(3, "    ", ""), Anchor(9, "    ", "")
    assert await life.suggest("a.py", here, 1, start(""), lambda: "T") == ("", "empty")
    assert await life.suggest("a.py", there, 1, start(None), lambda: "T") == ("", "empty")
    assert await life.suggest("a.py", here, 1, start("never"), lambda: "T") == ("", "revisited")
    assert await life.suggest("a.py", there, 1, start("x = 1"), lambda: "T") == ("x = 1", "answered")
    assert calls == ["", None, "x = 1"]


async def test_kept_answers_and_warm_ups_follow_the_text_and_the_settings() -> None:
    life, started, stopped = Lifecycle(), [], []
    here = Anchor(3, "    ", "")
    assert await life.suggest("a.py", here, 1, lambda _: _quick("x = 1"), lambda: "T1") == ("x = 1", "answered")
    life.remember("a.py", Shown(Anchor(0, "", ""), "other"))  # the shown suggestion is elsewhere now

    def warming(digest: str):
        return lambda: (Ahead(here, digest), lambda _: _slow("warm " + digest, started, stopped))

    assert not life.warm("a.py", here, warming("T1"), lambda: "T1")  # kept for this place in this text
    assert life.warm("a.py", here, warming("T2"), lambda: "T2")  # the text changed elsewhere: warm it again
    await asyncio.sleep(0.02)
    assert started == ["warm T2"]
    life.forget_answers()  # new settings: the guess made under the old ones stops, and nothing is kept
    await asyncio.sleep(0.02)
    assert stopped == ["warm T2"] and life.running() == {}
    assert await life.suggest("a.py", here, 2, lambda _: _quick("y = 2"), lambda: "T1") == ("y = 2", "answered")

    # An answer is kept under the text it was asked in, not under edits made while it was computed.
    text = ["T3"]

    async def edited_meanwhile(_flight) -> str:
        text[0] = "T4"
        return "z = 3"

    assert await life.suggest("a.py", here, 3, edited_meanwhile, lambda: text[0]) == ("z = 3", "answered")
    assert await life.suggest("a.py", here, 4, lambda _: _quick("fresh"), lambda: "T4") == ("fresh", "answered")
    assert await life.suggest("a.py", here, 5, lambda _: _quick("never"), lambda: "T3") == ("z = 3", "revisited")
