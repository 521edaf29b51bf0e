"""The completion pipeline imports and runs without torch: only the local engine needs it."""

import subprocess
import sys

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
from codellama_lsp.completion import context, docstring, planning, postprocess, templates
from codellama_lsp.documents import Document
from codellama_lsp.generation import StopRule, GenerationRequest
from codellama_lsp.lsp import lifecycle, server
from codellama_lsp import positions, settings
from codellama_lsp.backends import remote, wire

class Chars:
    bos_id, eos_id, prefix_id, suffix_id, middle_id, eot_id = 1, 2, 3, 4, 5, 6
    def require_fim(self): pass
    def encode(self, text): return [ord(c) for c in text]
    encode_infilling = encode

doc = Document.from_text("file:///a.py", "def add(a, b):\\n    return \\n")
p = planning.plan(doc, doc.cursor(1, 11), settings.Settings(format="psm"), Chars(), len)
assert p.token_ids[:2] == [1, 3] and p.token_ids[-1] == 5, p.token_ids
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
    """The same subprocess fails when the pipeline imports the engine, so the test above can fail."""
    out = subprocess.run([sys.executable, "-c", BLOCK_TORCH + "import codellama_lsp.engine.engine"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "torch is blocked" in out.stderr
