"""Confidence of a suggestion: the engine reports each token's log-probability, and ``minConfidence``
hides the suggestions the model wrote with little of it.

The engine's log-probabilities are checked against a fresh forward pass of the same model
(not against the engine's own logits), with lookup drafts on and off, since drafted tokens
take their probability from the batch that checked them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.completion.confidence import confidence, first_line_tokens, mean_confidence
from codellama_lsp.completion.templates import infilling_tokens
from codellama_lsp.engine.checkpoint import load_model
from codellama_lsp.engine.engine import Engine
from codellama_lsp.generation import GenerationRequest


def chars(ids: list[int]) -> str:
    """A tokenizer whose token ``i`` is the character ``chr(i)``."""
    return "".join(map(chr, ids))


@pytest.mark.parametrize("text, n", [
    ("abc\ndef", 4),  # the token that ends the line counts
    ("\n\n  x = 1\ny", 10),  # blank lines before the first line with something on it
    ("abc", 3),  # no line end: all of it
    ("  \n", 3),
])
def test_first_line_tokens(text: str, n: int) -> None:
    assert first_line_tokens([ord(c) for c in text], chars) == n


def test_confidence_is_the_first_lines_least_probable_token() -> None:
    ids = [ord(c) for c in "ab\ncd"]
    logprobs = [math.log(0.5), math.log(0.125), math.log(1.0), math.log(1e-9), math.log(1e-9)]
    assert confidence(ids, logprobs, chars) == pytest.approx(0.125)  # the second line's tokens do not count
    assert mean_confidence(ids, logprobs, chars) == pytest.approx((0.5 * 0.125 * 1.0) ** (1 / 3))
    assert confidence(ids, [], chars) is None and mean_confidence(ids, [], chars) is None  # none reported: never judged
    assert confidence([], [], chars) is None


PREFIX = "import os\n\ndef read_config(path):\n    with open(path) as f:\n        "
SUFFIX = "\n    return config\n"


@pytest.mark.parametrize("draft_tokens", [0, 8])
def test_logprobs_are_those_of_a_fresh_forward_pass(draft_tokens: int) -> None:
    """Typing through the first suggestion makes the drafting engine keep draft tokens; either way each
    token's log-probability equals log-softmax of a fresh pass over the prompt and the tokens before it."""
    engine = Engine.load(BUNDLED_MODEL, device="cpu", context_length=1024, draft_tokens=draft_tokens)
    model, tok = load_model(BUNDLED_MODEL, device="cpu")
    model.setup_cache(1024)
    first = engine.generate(GenerationRequest(infilling_tokens(tok, PREFIX, SUFFIX, "spm"), max_new_tokens=16))
    prompt = infilling_tokens(tok, PREFIX + first.text[:3], SUFFIX, "spm")
    got = engine.generate(GenerationRequest(prompt, max_new_tokens=16))
    assert got.token_ids and len(got.logprobs) == len(got.token_ids)
    if draft_tokens:
        assert got.accepted_tokens > 0, "no draft was kept, so the drafted path was not exercised"
    with torch.no_grad():
        logits = model(torch.tensor([prompt + got.token_ids]), start=0)[0].float()
    want = torch.log_softmax(logits, -1)[len(prompt) - 1:-1].gather(1, torch.tensor(got.token_ids)[:, None])[:, 0]
    assert got.logprobs == pytest.approx(want.tolist(), abs=1e-4)
    assert all(lp <= 0 for lp in got.logprobs)


def test_a_healed_token_has_its_probability_among_the_tokens_that_keep_to_the_text(tiny_model_dir: Path) -> None:
    engine = Engine.load(tiny_model_dir, device="cpu", context_length=512)
    model, tok = load_model(tiny_model_dir, device="cpu")
    prompt = infilling_tokens(tok, "import textwrap\n\nprint(", ")\n", "psm")
    free = engine.generate(GenerationRequest(prompt, max_new_tokens=4))
    kept = engine.generate(GenerationRequest(prompt, max_new_tokens=4, heal=" textwrap.fill"))
    assert not free.text.startswith(" textwrap.fill")  # the random model would not write it by itself
    model.setup_cache(512)
    with torch.no_grad():
        row = torch.log_softmax(model(torch.tensor([prompt]), start=0)[0, -1].float(), -1)
    # Renormalised over the tokens that keep to the text: more than its probability among all of them.
    assert float(row[kept.token_ids[0]]) < kept.logprobs[0] <= 0


@pytest.mark.parametrize("draft_tokens", [0, 8])
def test_generation_stops_at_the_first_line_token_that_hides_the_suggestion(draft_tokens: int) -> None:
    """With ``min_confidence`` the engine ends at the first token of the first line below it (the suggestion
    will be hidden), and writes on where only later lines have such tokens."""
    engine = Engine.load(BUNDLED_MODEL, device="cpu", context_length=1024, draft_tokens=draft_tokens)
    prompt = infilling_tokens(engine.tokenizer, "def add(a, b):\n    ", "\n", "psm")
    free = engine.generate(GenerationRequest(prompt, max_new_tokens=32))
    n = first_line_tokens(free.token_ids, engine.tokenizer.decode_infilling)
    probs = [math.exp(lp) for lp in free.logprobs]
    least = min(probs[:n])
    at = probs.index(least)
    assert 0 < at < n < len(probs), "the demo model's answer no longer has a first line and more"
    # Thresholds well clear of the probabilities: a cached prompt's last token is computed again, in
    # another batch, and its logits may differ in the last bits.
    below, above = least / 2, (least + min(probs[:at])) / 2
    assert min(probs[n:]) < below and above > least * 1.1, "the demo model's answer no longer tests both cases"

    sure = engine.generate(GenerationRequest(prompt, max_new_tokens=32, min_confidence=below))
    assert (sure.token_ids, sure.stop_reason) == (free.token_ids, free.stop_reason)  # later lines do not count

    unsure = engine.generate(GenerationRequest(prompt, max_new_tokens=32, min_confidence=above))
    assert unsure.stop_reason == "unsure" and unsure.token_ids == free.token_ids[:at + 1]
    assert confidence(unsure.token_ids, unsure.logprobs, engine.tokenizer.decode_infilling) == pytest.approx(least)
