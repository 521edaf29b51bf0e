"""KV-cache reuse, generation controls, the worker thread, and loading errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.engine.checkpoint import load_model
from codellama_lsp.engine.config import CheckpointError
from codellama_lsp.engine.engine import Engine
from codellama_lsp.engine.tokenizer import FimUnsupported, Tokenizer
from codellama_lsp.generation import GenerationRequest, PromptTooLong
from codellama_lsp.completion.templates import infilling_tokens
from conftest import make_random_checkpoint, train_test_tokenizer

PREFIX = "import os\n\ndef read_config(path):\n    with open(path) as f:\n        "
SUFFIX = "\n    return config\n"


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    return Engine.load(tiny_model_dir, device="cpu", context_length=512)


@pytest.fixture(scope="module")
def fresh(tiny_model_dir: Path) -> Engine:
    return Engine.load(tiny_model_dir, device="cpu", context_length=512, reuse=False)


def keystroke_prompts(tok: Tokenizer, fmt: str) -> list[list[int]]:
    """The prompts an editor sends while typing 'data = f.read()' at the cursor."""
    typed = "data = f.read()"
    return [infilling_tokens(tok, PREFIX + typed[:i], SUFFIX, fmt) for i in range(len(typed) + 1)]


@pytest.mark.parametrize("fmt", ["psm", "spm"])
def test_reuse_gives_the_same_tokens_as_fresh_computation(engine: Engine, fresh: Engine, fmt: str) -> None:
    engine.reset_cache()
    reused_total = 0
    for prompt in keystroke_prompts(engine.tokenizer, fmt):
        got = engine.generate(GenerationRequest(prompt, max_new_tokens=12))
        want = fresh.generate(GenerationRequest(prompt, max_new_tokens=12))
        assert got.token_ids == want.token_ids
        assert got.text == want.text
        assert got.reused_tokens + got.computed_tokens == got.prompt_tokens == len(prompt)
        assert want.reused_tokens == 0
        reused_total += got.reused_tokens
    assert reused_total > 0


def test_typing_through_a_suggestion_accepts_drafts_and_changes_nothing() -> None:
    """Each keystroke that follows the last suggestion is answered from checked drafts.

    The bundled (trained) model, so suggestions are real code; the reference decodes one
    token per pass with a fresh cache. Drafted greedy output must equal it token for token.
    """
    drafting = Engine.load(BUNDLED_MODEL, device="cpu", context_length=1024)
    plain = Engine.load(BUNDLED_MODEL, device="cpu", context_length=1024, reuse=False, draft_tokens=0)
    tok = drafting.tokenizer
    first = drafting.generate(GenerationRequest(infilling_tokens(tok, PREFIX, SUFFIX, "spm"), max_new_tokens=24))
    assert first.text.strip(), "the bundled model suggested nothing here; pick a prompt it completes"
    typed = first.text[:8]
    accepted = 0
    for i in range(1, len(typed) + 1):
        prompt = infilling_tokens(tok, PREFIX + typed[:i], SUFFIX, "spm")
        got = drafting.generate(GenerationRequest(prompt, max_new_tokens=24))
        want = plain.generate(GenerationRequest(prompt, max_new_tokens=24))
        assert (got.token_ids, got.text, got.stop_reason) == (want.token_ids, want.text, want.stop_reason)
        assert want.drafted_tokens == 0
        assert got.accepted_tokens <= got.drafted_tokens
        accepted += got.accepted_tokens
    assert accepted > 0


def test_reuse_logits_equal_recompute(tiny_model_dir: Path) -> None:
    """The cache after an edit holds exactly what a fresh pass computes (not just the same argmax)."""
    model, tok = load_model(tiny_model_dir, device="cpu")
    model.setup_cache(256)
    a = torch.tensor([infilling_tokens(tok, PREFIX, SUFFIX)])
    b = torch.tensor([infilling_tokens(tok, PREFIX + "x = 1", SUFFIX)])
    common = int((a[0, : b.shape[1]] == b[0, : a.shape[1]]).long().cumprod(0).sum())
    with torch.no_grad():
        model(a, start=0)
        reused = model(b[:, common:], start=common)[0, -1]
        fresh = model(b, start=0)[0, -1]
    assert torch.allclose(reused, fresh, atol=1e-5)


def test_spm_keystrokes_reuse_almost_everything(engine: Engine) -> None:
    engine.reset_cache()
    prompts = keystroke_prompts(engine.tokenizer, "spm")
    engine.generate(GenerationRequest(prompts[0], max_new_tokens=4))
    results = [engine.generate(GenerationRequest(p, max_new_tokens=4)) for p in prompts[1:]]
    assert all(r.computed_tokens <= 4 for r in results), [r.computed_tokens for r in results]


def test_prompt_longer_than_context_is_a_clear_error(engine: Engine) -> None:
    with pytest.raises(PromptTooLong, match="512"):
        engine.generate(GenerationRequest([1] * 600))
    # ...and the engine still answers afterwards.
    assert engine.generate(GenerationRequest([1, 5, 6], max_new_tokens=2)).generated_tokens <= 2


def test_generation_stops_at_the_end_of_the_context(tiny_model_dir: Path) -> None:
    small = Engine.load(tiny_model_dir, device="cpu", context_length=40)
    small._stop_ids = frozenset()  # random weights may emit EOT; this test is about the context bound
    result = small.generate(GenerationRequest([1] + list(range(10, 40)), max_new_tokens=100, infilling=False))
    assert result.stop_reason == "length"
    assert result.prompt_tokens + result.generated_tokens <= 40


def test_stop_strings_cut_the_text(engine: Engine) -> None:
    prompt = infilling_tokens(engine.tokenizer, PREFIX, SUFFIX)
    full = engine.generate(GenerationRequest(prompt, max_new_tokens=24))
    assert len(full.text) > 3
    stop = full.text[2:4]
    cut = engine.generate(GenerationRequest(prompt, max_new_tokens=24, stop_strings=(stop,)))
    assert cut.stop_reason == "stop_string"
    assert cut.text == full.text[: full.text.find(stop)]


def test_streaming_callback_sees_growing_text_and_can_stop(engine: Engine) -> None:
    seen: list[str] = []
    prompt = infilling_tokens(engine.tokenizer, PREFIX, SUFFIX)
    result = engine.generate(GenerationRequest(prompt, max_new_tokens=20, on_text=lambda t: seen.append(t) or len(seen) == 3))
    assert result.stop_reason == "callback"
    assert len(seen) == 3 and result.generated_tokens == 3
    assert seen[-1] == result.text


def test_cancel_stops_within_one_decode_step(engine: Engine) -> None:
    req = GenerationRequest(infilling_tokens(engine.tokenizer, PREFIX, SUFFIX), max_new_tokens=50)
    steps: list[int] = []

    def on_text(text: str) -> None:
        steps.append(1)
        if len(steps) == 2:
            req.cancel.set()  # as another thread would; the next check is before the next step

    req.on_text = on_text
    result = engine.generate(req)
    assert result.stop_reason == "cancelled"
    assert result.generated_tokens == 2


def test_cancel_during_prefill_stops_within_one_chunk_and_keeps_its_work(tiny_model_dir: Path) -> None:
    small = Engine.load(tiny_model_dir, device="cpu", context_length=512, prefill_chunk=8)
    reference = Engine.load(tiny_model_dir, device="cpu", context_length=512, reuse=False)
    prompt = infilling_tokens(small.tokenizer, PREFIX, SUFFIX)
    assert len(prompt) > 24
    req = GenerationRequest(prompt, max_new_tokens=8)
    passes: list[int] = []
    forward = small.runner.model.forward  # the dynamic pass, which every prefill chunk runs

    def counting_forward(x: torch.Tensor, **kwargs: object) -> torch.Tensor:
        passes.append(x.shape[1])
        if len(passes) == 2:
            req.cancel.set()  # as the server would when the next keystroke arrives
        return forward(x, **kwargs)

    small.runner.model.forward = counting_forward
    cancelled = small.generate(req)
    assert cancelled.stop_reason == "cancelled" and cancelled.generated_tokens == 0
    assert passes == [8, 8] and cancelled.computed_tokens == 16
    # The next request starts from the 16 tokens the cancelled one computed, and decodes the same.
    again = small.generate(GenerationRequest(prompt, max_new_tokens=8))
    assert again.reused_tokens == 16 and again.computed_tokens == len(prompt) - 16
    assert again.token_ids == reference.generate(GenerationRequest(prompt, max_new_tokens=8)).token_ids


def test_time_budget(engine: Engine) -> None:
    result = engine.generate(GenerationRequest(infilling_tokens(engine.tokenizer, PREFIX, SUFFIX), max_new_tokens=400,
                                               time_budget_ms=0.0))
    assert result.stop_reason == "time" and result.generated_tokens == 1


def test_seeded_sampling_is_reproducible(engine: Engine) -> None:
    prompt = infilling_tokens(engine.tokenizer, PREFIX, SUFFIX)
    runs = [engine.generate(GenerationRequest(prompt, max_new_tokens=16, temperature=0.9, top_p=0.95, seed=s)).token_ids
            for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_async_requests_run_off_the_event_loop(engine: Engine) -> None:
    async def main() -> tuple[int, list]:
        ticks = 0
        req = GenerationRequest(infilling_tokens(engine.tokenizer, PREFIX, SUFFIX), max_new_tokens=40)
        task = asyncio.ensure_future(engine.agenerate(req))
        while not task.done():
            ticks += 1
            await asyncio.sleep(0.001)
        return ticks, await task

    ticks, result = asyncio.run(main())
    assert result.generated_tokens > 0
    assert ticks > 1  # the loop kept running while the engine worked


def test_cancelling_the_awaiting_task_cancels_the_engine(tiny_model_dir: Path) -> None:
    engine = Engine.load(tiny_model_dir, device="cpu", context_length=2048)
    engine._stop_ids = frozenset()  # keep generating until cancelled, whatever the random weights say
    req = GenerationRequest(infilling_tokens(engine.tokenizer, PREFIX, SUFFIX), max_new_tokens=10_000,
                            on_text=lambda _: time.sleep(0.005))

    async def main() -> None:
        task = asyncio.ensure_future(engine.agenerate(req))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert req.cancel.is_set()
    # The worker is free again right away: a new request completes.
    done = threading.Event()
    engine.submit(GenerationRequest([1, 5], max_new_tokens=1)).add_done_callback(lambda _: done.set())
    assert done.wait(10)


def test_tokenizer_without_fim_pieces(tmp_path: Path) -> None:
    tok_path = train_test_tokenizer(tmp_path, fim=False)
    ckpt = make_random_checkpoint(tmp_path / "plain", tok_path)
    engine = Engine.load(ckpt, device="cpu", context_length=256)
    assert not engine.tokenizer.supports_fim
    with pytest.raises(FimUnsupported, match=r"▁<PRE>.*▁<SUF>.*▁<MID>.*▁<EOT>"):
        infilling_tokens(engine.tokenizer, "a", "b")
    prompt = [engine.tokenizer.bos_id, *engine.tokenizer.encode("def main():")]
    assert engine.generate(GenerationRequest(prompt, max_new_tokens=5, infilling=False)).generated_tokens > 0


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_loads_and_generates(tiny_model_dir: Path, dtype: str) -> None:
    engine = Engine.load(tiny_model_dir, device="cpu", dtype=dtype, context_length=256)
    assert str(engine.dtype) == f"torch.{dtype}"
    result = engine.generate(GenerationRequest(infilling_tokens(engine.tokenizer, PREFIX, SUFFIX), max_new_tokens=4))
    assert result.prompt_tokens > 0


def test_loading_errors_name_the_path_and_problem(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a directory"):
        load_model(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(CheckpointError, match="neither config.json"):
        load_model(bad)
    for name in ("config.json", "tokenizer.model"):
        (bad / name).write_bytes((tiny_model_dir / name).read_bytes())
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="model.safetensors is not a readable safetensors file"):
        load_model(bad)
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    (bad / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes())
    (bad / "config.json").write_text(json.dumps({**cfg, "hidden_size": 128}))
    with pytest.raises(CheckpointError, match="has shape"):
        load_model(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match="missing tensors model.layers.2"):
        load_model(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not readable JSON"):
        load_model(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "rope_scaling": {"type": "yarn", "factor": 4}}))
    with pytest.raises(CheckpointError, match="yarn"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="unknown dtype"):
        load_model(tiny_model_dir, dtype="int3")
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="CUDA is not available"):
            load_model(tiny_model_dir, device="cuda")


def test_sharded_safetensors(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(tiny_model_dir / "model.safetensors")
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for fname, keys in halves.items():
        save_file({k: state[k] for k in keys}, tmp_path / fname)
    index = {"weight_map": {k: f for f, keys in halves.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    for name in ("config.json", "tokenizer.model"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    a, _ = load_model(tmp_path, device="cpu")
    b, _ = load_model(tiny_model_dir, device="cpu")
    tokens = torch.arange(3, 30).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(a(tokens), b(tokens))


PEAK_SCRIPT = """
import sys
import torch
from codellama_lsp.engine.checkpoint import load_model

def kib(field):  # VmRSS: resident now; VmHWM: the peak so far
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field))

with torch.device("meta"):
    torch.nn.Embedding(2, 2)  # torch imports its meta kernels (~70 MB of code) on first use: library, not weights
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current RSS, so import-time peaks don't count
base = kib("VmRSS")
model, _ = load_model(sys.argv[1], device="cpu", dtype=sys.argv[2])
assert all(torch.isfinite(p.sum()) for p in model.parameters())  # touch every page of every weight
size = sum(p.numel() * p.element_size() for p in model.parameters())
print((kib("VmHWM") - base) * 1024 / size)
"""


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_loading_peak_memory_is_bounded(tmp_path_factory: pytest.TempPathFactory, tokenizer_path: Path, dtype: str) -> None:
    """Peak RSS growth while loading stays within 1.2x the weights in the target dtype (about 200 MB here)."""
    ckpt = make_random_checkpoint(tmp_path_factory.mktemp("big"), tokenizer_path, hidden_size=1024,
                                  intermediate_size=2816, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=8)
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(ckpt), dtype], capture_output=True, text=True, check=True)
    ratio = float(out.stdout.strip())
    assert ratio <= 1.2, ratio
