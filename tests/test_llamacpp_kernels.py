"""The llama.cpp kernel choice: tiled kernel off until this CPU was measured to round batches differently anyway.

llama.cpp reads the switch once per process, so the engine-level tests run in fresh Python
processes with their own environment and cache folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from codellama_lsp.engine import llamacpp_kernels as kernels

FLAGS = "fpu avx2 fma avx512f"


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process whose switch nobody set yet."""
    monkeypatch.delenv(kernels.SWITCH, raising=False)
    monkeypatch.setattr(kernels, "_chosen", None)


def test_cpu_identity_is_the_model_name_and_the_flags_in_any_order(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_text(f"processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: {FLAGS}\n")
    b.write_text(f"model name\t: Some CPU 9000\nflags\t\t: {' '.join(reversed(FLAGS.split()))}\n")
    c.write_text("model name\t: Some CPU 9000\nflags\t\t: fpu avx2 fma\n")
    assert kernels.cpu_identity(a) == kernels.cpu_identity(b)
    assert kernels.cpu_identity(a).startswith("Some CPU 9000 [")
    assert kernels.cpu_identity(a) != kernels.cpu_identity(c)  # other flags, other kernels
    assert kernels.cpu_identity(tmp_path / "missing") == "unknown cpu"


def test_unmeasured_cpu_keeps_the_tiled_kernel_off_and_keeps_the_measurement(fresh, tmp_path: Path) -> None:
    memo = tmp_path / "cache" / kernels.MEMO_FILE
    assert kernels.choose(memo, "cpu A") is False and os.environ[kernels.SWITCH] == "0"
    kernels.record(memo, "cpu A", False)
    assert json.loads(memo.read_text()) == {"cpu A": False}
    kernels.record(memo, "cpu B", True)  # another CPU's answer joins it
    assert json.loads(memo.read_text()) == {"cpu A": False, "cpu B": True}
    assert [p.name for p in memo.parent.iterdir()] == [kernels.MEMO_FILE]  # no scratch file left


def test_a_cpu_measured_not_invariant_gets_the_tiled_kernel(fresh, tmp_path: Path) -> None:
    memo = tmp_path / kernels.MEMO_FILE
    memo.write_text(json.dumps({"cpu A": False, "cpu B": True}))
    assert kernels.choose(memo, "cpu A") is True and os.environ[kernels.SWITCH] == "1"
    kernels.record(memo, "cpu A", True)  # measured with the kernel on: says nothing of it off
    assert json.loads(memo.read_text()) == {"cpu A": False, "cpu B": True}


def test_an_invariant_cpu_and_an_unreadable_memo_keep_it_off(fresh, tmp_path: Path) -> None:
    memo = tmp_path / kernels.MEMO_FILE
    memo.write_text(json.dumps({"cpu B": True}))
    assert kernels.choose(memo, "cpu B") is False
    memo.write_text("{not json")
    assert kernels.choose(memo, "cpu B") is False  # set already: the first choice stands
    assert os.environ[kernels.SWITCH] == "0"


def test_a_switch_set_by_the_user_is_left_alone_and_not_recorded(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(kernels, "_chosen", None)
    monkeypatch.setenv(kernels.SWITCH, "0")
    memo = tmp_path / kernels.MEMO_FILE
    memo.write_text(json.dumps({"cpu A": False}))
    assert kernels.choose(memo, "cpu A") is False and os.environ[kernels.SWITCH] == "0"
    kernels.record(memo, "cpu B", True)
    assert json.loads(memo.read_text()) == {"cpu A": False}


PROBE = """
import json, os, sys
from codellama_lsp.engine.llamacpp import open_llamacpp
from codellama_lsp.generation import GenerationRequest
engine = open_llamacpp(sys.argv[1], 256, 1)
ids = engine.tokenizer.encode("def add(a, b):\\n    return")
text = engine.generate(GenerationRequest(ids, max_new_tokens=6, infilling=False)).text
print(json.dumps({"switch": os.environ["GGML_CPU_TILED_MM"], "invariant": engine.runner.batch_invariant,
                  "drafts": engine.draft_tokens, "text": text}))
"""


def probe(real_gguf: Path, cache: Path) -> dict:
    """``open_llamacpp`` in a new process, with no switch in its environment and ``cache`` as its cache folder."""
    env = {k: v for k, v in os.environ.items() if k != kernels.SWITCH} | {"CODELLAMA_LSP_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-c", PROBE, str(real_gguf)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_first_process_measures_and_the_next_follows(real_gguf: Path, tmp_path: Path) -> None:
    """On the real model: the first process keeps the kernel off and records its measurement; a
    process on a CPU recorded as not invariant runs the tiled kernel, without drafts, and still
    completes the code."""
    first = probe(real_gguf, tmp_path)
    assert first["switch"] == "0"
    memo = json.loads((tmp_path / kernels.MEMO_FILE).read_text())
    assert list(memo.values()) == [first["invariant"]]
    assert first["drafts"] == (8 if first["invariant"] else 0)
    (key,) = memo
    assert "llama-cpp-python" in key and "Q4_K_M" in key

    (tmp_path / kernels.MEMO_FILE).write_text(json.dumps({key: False}))
    second = probe(real_gguf, tmp_path)
    assert second["switch"] == "1" and second["drafts"] == 0
    assert second["text"].strip().startswith("a + b"), second["text"]
