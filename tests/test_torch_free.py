"""The completion pipeline imports and runs without torch: only the local engine needs it."""

import subprocess
import sys

import pytest

# A meta-path finder that refuses torch, installed before anything else is imported.
BLOCK_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, NoTorch())
"""

PIPELINE = """
from codellama_lsp.completion import context, docstring, families, planning, postprocess, templates
from codellama_lsp.documents import Document
from codellama_lsp.generation import StopRule, GenerationRequest
from codellama_lsp.lsp import server
from codellama_lsp.service import lifecycle
from codellama_lsp import positions, settings
from codellama_lsp.backends import remote, wire

class Chars:
    bos_id, eos_id, eot_id = 1, 2, 6
    special_tokens = {"<|fim_prefix|>": 3, "<|fim_suffix|>": 4, "<|fim_middle|>": 5}
    def require_fim(self): pass
    def encode(self, text): return [ord(c) for c in text]
    encode_infilling = encode

doc = Document.from_text("file:///a.py", "def add(a, b):\\n    return \\n")
p = planning.plan(doc, doc.cursor(1, 11), settings.Settings(format="psm"), families.detect(Chars()), Chars(), len)
assert p.token_ids[0] == 3 and p.token_ids[-1] == 5, p.token_ids  # Qwen2.5-Coder's PSM: no BOS
assert planning.suggestion("a + b\\n", p) == "a + b"
assert StopRule(GenerationRequest([1], stop_strings=("\\n",))).text("x\\ny") == ("x", "stop_string")
assert "torch" not in sys.modules
print("ok")
"""


def test_the_completion_pipeline_works_with_torch_blocked() -> None:
    """About 1 s: a subprocess, so the block cannot leak into other tests."""
    out = subprocess.run([sys.executable, "-c", BLOCK_TORCH + PIPELINE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_block_is_real() -> None:
    """The same subprocess fails when the torch engine is imported, so the tests above and below can fail."""
    out = subprocess.run([sys.executable, "-c", BLOCK_TORCH + "import codellama_lsp.engine.torch_runner"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "torch is blocked" in out.stderr


LLAMACPP = """
import sys
from pathlib import Path
from codellama_lsp.backends import open_backend
from codellama_lsp.generation import GenerationRequest
engine = open_backend("local", Path(sys.argv[1]))  # engine auto: llama.cpp for a GGUF on this CPU
assert engine.kind == "llamacpp", engine.kind
ids = engine.tokenizer.encode("def add(a, b):\\n    return")
greedy = engine.generate(GenerationRequest(prompt=ids, max_new_tokens=4))
sampled = engine.generate(GenerationRequest(prompt=ids, max_new_tokens=4, temperature=0.8, seed=7))
again = engine.generate(GenerationRequest(prompt=ids, max_new_tokens=4, temperature=0.8, seed=7))
assert greedy.generated_tokens == 4 and sampled.token_ids == again.token_ids, (greedy, sampled, again)
assert "torch" not in sys.modules
print("ok")
"""


def test_the_llamacpp_engine_loads_and_generates_with_torch_blocked(real_gguf) -> None:
    """The default model's engine never imports torch (about 200 MB of memory it does not use); a few seconds."""
    pytest.importorskip("llama_cpp", reason="the llamacpp engine needs llama-cpp-python")
    out = subprocess.run([sys.executable, "-c", BLOCK_TORCH + LLAMACPP, str(real_gguf)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"
