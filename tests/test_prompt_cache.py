"""Several KV sequences (engine.prompt_cache): a return to a place computes only what changed.

The bookkeeping is tested alone; the engine is tested on the tiny torch model and, when it
is installed, on the real default model in llama.cpp: a request served from a kept sequence
decodes exactly what a fresh computation decodes, and computes only the prompt's new tail.
Also here: the time budget's clock starts after the prompt (generation.StopRule).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch

from codellama_lsp.engine.engine import KEEP_MIN_TOKENS, Engine
from codellama_lsp.engine.prompt_cache import Entry, PromptCache
from codellama_lsp.generation import GenerationRequest


# -- the bookkeeping ---------------------------------------------------------------------------------------

def entry(tokens: list[int], typing: bool = True, nbytes: int = 10) -> Entry:
    return Entry(tokens, state=None, nbytes=nbytes, typing=typing)


def test_best_is_the_longest_common_prefix() -> None:
    cache = PromptCache(100)
    a, b = entry([1, 2, 3, 4]), entry([1, 2, 9])
    cache.put(a)
    cache.put(b)
    assert cache.best([1, 2, 3, 7]) == (a, 3)
    assert cache.best([1, 2, 9, 9]) == (b, 3)
    assert cache.best([5]) == (None, 0)


def test_a_sequence_that_extends_a_kept_one_replaces_it() -> None:
    cache = PromptCache(100)
    cache.put(entry([1, 2]))
    cache.put(entry([1, 2, 3]))
    assert [e.tokens for e in cache.entries] == [[1, 2, 3]]


def test_taking_an_entry_counts_a_hit_and_removes_it() -> None:
    cache = PromptCache(100)
    a = entry([1, 2, 3])
    cache.put(a)
    assert cache.take(a) is a and a.hits == 1 and cache.hits == 1 and cache.entries == []


def test_eviction_spares_the_typing_place_before_other_requests() -> None:
    """Budget for three: other requests' sequences go first, the newest typing sequence last."""
    cache = PromptCache(30)
    typing_old, typing_new = entry([1]), entry([2])
    hover, warm = entry([3], typing=False), entry([4], typing=False)
    for e in (typing_old, typing_new, hover):
        cache.put(e)
    cache.put(warm)  # over budget: the oldest of the others (the hover) goes, not the older typing place
    assert cache.entries == [typing_old, typing_new, warm] and cache.evicted == 1
    cache.put(entry([5], typing=False))
    cache.put(entry([6], typing=False))
    assert typing_new in cache.entries and typing_old in cache.entries
    only_typing = PromptCache(20)
    for e in (entry([1]), entry([2]), entry([3])):
        only_typing.put(e)
    assert [e.tokens for e in only_typing.entries] == [[2], [3]]  # least recently used typing place goes


def test_a_sequence_larger_than_the_budget_is_not_kept() -> None:
    cache = PromptCache(5)
    cache.put(entry([1, 2, 3], nbytes=6))
    assert cache.entries == [] and cache.kept == 0
    assert cache.describe()["sequences"] == []


# -- the engine --------------------------------------------------------------------------------------------

def prompts(engine: Engine) -> dict[str, list[int]]:
    """Three prompts longer than ``KEEP_MIN_TOKENS`` that share only their first token."""
    tok = engine.tokenizer
    texts = {
        "a": "".join(f"def alpha_{i}(x):\n    return x * {i}\n\n" for i in range(40)),
        "b": "".join(f"class Beta{i}:\n    value = '{i}'\n\n" for i in range(40)),
        "c": "".join(f"gamma[{i}] = compute({i}, {i + 1})\n" for i in range(60)),
    }
    out = {k: [tok.bos_id, *tok.encode(v)] for k, v in texts.items()}
    assert all(len(p) > 2 * KEEP_MIN_TOKENS for p in out.values())
    return out


def generate(engine: Engine, prompt: list[int], typing: bool = True) -> tuple[list[int], int, bool]:
    r = engine.generate(GenerationRequest(prompt=prompt, max_new_tokens=6, typing=typing))
    return r.token_ids, r.computed_tokens, r.restored


@pytest.fixture(scope="module")
def torch_engines(tiny_model_dir: Path) -> tuple[Engine, Engine]:
    torch.set_num_threads(1)
    return Engine.load(tiny_model_dir, device="cpu"), Engine.load(tiny_model_dir, device="cpu", reuse=False)


@pytest.fixture(scope="module")
def llamacpp_engines(real_gguf: Path) -> Iterator[tuple[Engine, Engine]]:
    pytest.importorskip("llama_cpp", reason="the llamacpp engine needs llama-cpp-python")
    from codellama_lsp.engine.llamacpp import open_llamacpp

    cached, plain = open_llamacpp(real_gguf, 2048, threads=1), open_llamacpp(real_gguf, 2048, threads=1, reuse=False)
    yield cached, plain
    cached.runner.close()
    plain.runner.close()


@pytest.fixture(params=["torch", "llamacpp"])
def engines(request: pytest.FixtureRequest) -> tuple[Engine, Engine]:
    return request.getfixturevalue(f"{request.param}_engines")


def test_a_return_is_served_from_its_kept_sequence_and_decodes_the_same(engines: tuple[Engine, Engine]) -> None:
    engine, plain = engines
    engine.reset_cache()
    p = prompts(engine)
    first_a = generate(engine, p["a"])
    generate(engine, p["b"])
    generate(engine, p["c"], typing=False)  # a hover in between
    # Back at a, one line typed at its end: only that line's tokens are computed.
    typed = p["a"][:-3] + engine.tokenizer.encode("zz = 1\n")
    ids, computed, restored = generate(engine, typed)
    assert restored and computed < 16
    assert ids == generate(plain, typed)[0]
    assert generate(engine, p["a"])[0] == first_a[0] == generate(plain, p["a"])[0]
    # Back at b: its sequence was kept too.
    ids, computed, restored = generate(engine, p["b"])
    assert restored and computed == 1 and ids == generate(plain, p["b"])[0]
    described = engine.prompt_cache.describe()
    assert described["hits"] >= 2 and described["bytes"] <= described["budget_bytes"]
    assert all(s["tokens"] > 0 and s["bytes"] > 0 for s in described["sequences"])


@contextmanager
def room_for_one(engine: Engine) -> Iterator[dict[str, list[int]]]:
    """The prompts, with a computed live and the prompt cache's budget cut to hold one such sequence."""
    engine.reset_cache()
    p = prompts(engine)
    generate(engine, p["a"])
    size = engine.runner.save()[1]
    budget, engine.prompt_cache.budget_bytes = engine.prompt_cache.budget_bytes, size * 3 // 2
    try:
        yield p
    finally:
        engine.prompt_cache.budget_bytes = budget


def test_other_requests_never_evict_the_typing_place(torch_engines: tuple[Engine, Engine]) -> None:
    engine, _ = torch_engines
    with room_for_one(engine) as p:
        generate(engine, p["b"], typing=False)  # keeps a
        generate(engine, p["c"], typing=False)  # would keep b; the budget holds one: b goes, a stays
        assert [e.typing for e in engine.prompt_cache.entries] == [True]
        _, computed, restored = generate(engine, p["a"])
        assert restored and computed == 1


def test_a_return_is_served_even_when_keeping_the_place_it_leaves_fills_the_budget(
        torch_engines: tuple[Engine, Engine]) -> None:
    """Back at a with b live and room for one sequence: a is taken out before b is kept, so keeping b
    cannot evict the sequence being returned to (it did, and the request failed)."""
    engine, plain = torch_engines
    with room_for_one(engine) as p:
        generate(engine, p["b"])  # keeps a
        ids, computed, restored = generate(engine, p["a"])  # keeps b, which needs a's room
        assert restored and computed == 1 and ids == generate(plain, p["a"])[0]
        assert len(engine.prompt_cache.entries) == 1 and engine.prompt_cache.nbytes <= engine.prompt_cache.budget_bytes


def test_typing_at_one_place_keeps_no_copies(torch_engines: tuple[Engine, Engine]) -> None:
    """A keystroke throws away less than ``KEEP_MIN_TOKENS`` (the suffix and the last suggestion)."""
    engine, _ = torch_engines
    engine.reset_cache()
    prompt = prompts(engine)["a"]
    tail = engine.tokenizer.encode("return value + 1\n")
    for i in range(1, len(tail)):
        generate(engine, prompt + tail[:i])
    assert engine.prompt_cache.entries == []


# -- the time budget ---------------------------------------------------------------------------------------

def test_the_time_budget_starts_after_the_prompt(tiny_model_dir: Path) -> None:
    """A prefill slower than the whole budget still leaves the budget for generation.

    Counting the prompt, the first token would end this request; the budget is generous
    for the tiny model's eight tokens, so the count does not depend on the machine's speed.
    """
    engine = Engine.load(tiny_model_dir, device="cpu", draft_tokens=0)
    forward = engine.runner.forward

    def slow_prefill(tokens: list[int], start: int, last_only: bool) -> torch.Tensor:
        if len(tokens) > 1:
            time.sleep(1.5)
        return forward(tokens, start, last_only)

    engine.runner.forward = slow_prefill  # type: ignore[method-assign]
    tok = engine.tokenizer
    result = engine.generate(GenerationRequest(prompt=[tok.bos_id, *tok.encode("def f(x):\n    return")],
                                               max_new_tokens=8, time_budget_ms=1000.0))
    assert result.prefill_ms >= 1500
    assert result.stop_reason != "time" and result.generated_tokens == 8 or result.stop_reason in ("eos", "eot")
