"""The training script on a tiny model and corpus: examples are built as inference prompts, loss falls, export reloads."""

from __future__ import annotations

import json
import random
import sys
from itertools import islice
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "model"))

from codellama_lsp.engine.checkpoint import load_model, save_checkpoint  # noqa: E402
from codellama_lsp.engine.config import ModelArgs  # noqa: E402
from codellama_lsp.engine.model import Transformer  # noqa: E402
from codellama_lsp.engine.tokenizer import Tokenizer  # noqa: E402
from codellama_lsp.completion.templates import infilling_tokens  # noqa: E402
import train  # noqa: E402
from train import (  # noqa: E402
    IGNORE, PackedExamples, TrainConfig, build_example, init_weights, loss_fn, lr_at, make_optimizer, split_at_line,
    split_document,
)
from train_tokenizer import train_tokenizer  # noqa: E402

DOCS = [
    f"def add_{i}(a, b):\n    \"\"\"Add two numbers.\"\"\"\n    return a + b + {i}\n\n\n"
    f"class Thing{i}:\n    def __init__(self, x):\n        self.x = x  # é ☺\n\n    def get(self):\n        return self.x\n"
    for i in range(40)
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tokenizer]:
    """A tiny jsonl corpus and a ~360-piece tokenizer (256 bytes + specials + ~40 learned) trained on it with the real trainer."""
    tmp = tmp_path_factory.mktemp("corpus")
    data = tmp / "train.jsonl"

    data.write_text("".join(json.dumps({"path": f"f{i}.py", "text": d}) + "\n" for i, d in enumerate(DOCS)))
    model = train_tokenizer(DOCS, tmp / "tokenizer.model", vocab_size=360)
    return data, Tokenizer(model)


def tiny_args(vocab: int) -> ModelArgs:
    return ModelArgs(hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=vocab, rope_theta=1e6, max_position_embeddings=256,
                     tie_word_embeddings=True)


def test_split_reconstructs_document() -> None:
    rng = random.Random(0)
    for doc in ["", "x", *DOCS[:5]]:
        for _ in range(50):
            assert "".join(split_document(doc, rng)) == doc


def test_infilling_examples_are_inference_prompts(corpus: tuple[Path, Tokenizer]) -> None:
    _, tok = corpus
    rng = random.Random(1)
    formats = set()
    for i in range(200):
        doc = DOCS[i % len(DOCS)]
        ex = build_example(tok, doc, 1025, rng, fim_rate=1.0)
        assert ex is not None and ex.fim is not None
        prefix, middle, suffix, fmt = ex.fim
        formats.add(fmt)
        assert prefix + middle + suffix == doc  # the whole document fits, so no window is taken
        assert ex.ids == infilling_tokens(tok, prefix, suffix, fmt) + tok.encode_infilling(middle) + [tok.eot_id]
    assert formats == {"psm", "spm"}


def test_psm_rate_sets_the_format_mix(corpus: tuple[Path, Tokenizer]) -> None:
    _, tok = corpus
    rng = random.Random(3)

    def psm_share(psm_rate: float) -> float:
        examples = [build_example(tok, DOCS[0], 1025, rng, fim_rate=1.0, psm_rate=psm_rate) for _ in range(300)]
        return sum(ex.fim[3] == "psm" for ex in examples if ex and ex.fim) / len(examples)
    assert 0.4 < psm_share(0.5) < 0.6
    assert psm_share(0.8) > 0.7


def test_plain_examples_and_windows(corpus: tuple[Path, Tokenizer]) -> None:
    _, tok = corpus
    rng = random.Random(2)
    long_doc = "".join(DOCS)
    for _ in range(50):
        whole = build_example(tok, DOCS[0], 1025, rng, fim_rate=0.0)
        assert whole is not None and whole.fim is None
        assert whole.ids == [tok.bos_id, *tok.encode(DOCS[0]), tok.eos_id]
        window = build_example(tok, long_doc, 100, rng, fim_rate=0.5)
        assert window is not None and len(window.ids) <= 100
        if window.fim:
            assert "".join(window.fim[:3]) in long_doc


def test_packed_rows_mask_padding_and_boundaries(corpus: tuple[Path, Tokenizer]) -> None:
    data, tok = corpus
    x, y, w = next(iter(PackedExamples(data, tok.path, TrainConfig(tokens=1, context=128), seed=0)))
    assert x.shape == y.shape == w.shape == (128,)
    assert ((w == 0) == (y == IGNORE)).all()
    assert (y[x == tok.bos_id][1:] != tok.bos_id).all()  # no target is the start of the next example
    assert not (y == tok.bos_id).any()


def test_min_window_packs_several_examples_per_row(corpus: tuple[Path, Tokenizer], tmp_path: Path) -> None:
    _, tok = corpus
    data = tmp_path / "long.jsonl"  # documents longer than a row: without min_window one fills it
    data.write_text(json.dumps({"path": "long.py", "text": "\n".join(DOCS) * 40}) + "\n")

    def examples_per_row(min_window: int) -> float:
        rows = iter(PackedExamples(data, tok.path, TrainConfig(tokens=1, context=512, min_window=min_window), seed=0))
        return sum(int((next(rows)[0] == tok.bos_id).sum()) for _ in range(10)) / 10
    assert examples_per_row(64) > 1.5 * examples_per_row(0)


def test_middle_weight_weighs_exactly_the_generated_tokens(corpus: tuple[Path, Tokenizer]) -> None:
    data, tok = corpus
    cfg = TrainConfig(tokens=1, context=512, fim_rate=1.0, middle_weight=5.0)
    for x, y, w in islice(iter(PackedExamples(data, tok.path, cfg, seed=0)), 5):
        weighted = (w == 5.0).nonzero().flatten().tolist()
        assert weighted, "every row holds at least one infilling example"
        # The weighted targets are runs that each end at an EOT and start right after a <MID>
        # (PSM) or after the prefix (SPM), i.e. exactly what the model generates at inference.
        ends = [i for i in weighted if y[i] == tok.eot_id]
        assert ends and all(i + 1 not in weighted for i in ends)
        assert y[weighted[0]] != tok.middle_id
        assert set(w.unique().tolist()) <= {0.0, 1.0, 5.0}
    plain = TrainConfig(tokens=1, context=512)
    _, y, w = next(iter(PackedExamples(data, tok.path, plain, seed=0)))
    assert set(w.unique().tolist()) <= {0.0, 1.0}  # weight 1: the plain mean over unmasked targets


def test_weighted_loss_is_the_weighted_mean() -> None:
    logits = torch.randn(1, 6, 11)
    y = torch.tensor([[1, 2, IGNORE, 4, 5, 6]])
    model = lambda x: logits  # noqa: E731 - loss_fn only calls the model
    per_token = F.cross_entropy(logits[0], y[0], ignore_index=IGNORE, reduction="none")
    w = torch.tensor([[1.0, 1.0, 0.0, 3.0, 3.0, 1.0]])
    assert loss_fn(model, None, y, w).item() == pytest.approx(((per_token * w[0]).sum() / 9).item())
    ones = (y != IGNORE).float()
    assert loss_fn(model, None, y, ones).item() == pytest.approx(F.cross_entropy(logits[0], y[0], ignore_index=IGNORE).item())


def test_schedule_warms_up_and_decays() -> None:
    cfg = TrainConfig(tokens=100 * 1024, batch_size=1, warmup_steps=10)
    assert lr_at(0, 0.0, cfg) < lr_at(9, 0.09, cfg) == pytest.approx(cfg.lr)
    assert lr_at(99, 1.0, cfg) == pytest.approx(cfg.lr * cfg.min_lr_ratio)


def test_few_steps_lower_loss_and_export_reloads(corpus: tuple[Path, Tokenizer], tmp_path: Path) -> None:
    data, tok = corpus
    torch.manual_seed(0)
    cfg = TrainConfig(tokens=10 * 256, context=128, batch_size=2, lr=3e-3, warmup_steps=2)
    model = Transformer(tiny_args(tok.vocab_size))
    init_weights(model)
    opt = make_optimizer(model, cfg)
    rows = iter(PackedExamples(data, tok.path, cfg, seed=0))
    x, y, w = (torch.stack(t) for t in zip(*(next(rows) for _ in range(cfg.batch_size))))
    assert (y != IGNORE).any()
    with torch.no_grad():
        before = loss_fn(model, x, y, w).item()
    for step in range(15):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, step / 15, cfg)
        loss = loss_fn(model, x, y, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = loss_fn(model, x, y, w).item()
    assert after < before - 0.5

    out = save_checkpoint(model.eval(), tmp_path / "export", tok.path)
    reloaded, tok2 = load_model(out, device="cpu", dtype="float32")
    assert tok2.vocab_size == tok.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x), rtol=0, atol=0)


def test_an_interrupted_run_resumes_where_its_checkpoint_stopped(corpus: tuple[Path, Tokenizer], tmp_path: Path) -> None:
    data, tok = corpus
    args = ["--name", "r", "--runs", str(tmp_path), "--data", str(data), "--tokenizer", str(tok.path),
            "--export", str(tmp_path / "export"), "--tokens", str(6 * 2 * 64), "--context", "64", "--batch-size", "2",
            "--dim", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--threads", "1", "--no-compile",
            "--ckpt-minutes", "0"]
    train.main([*args, "--probe-minutes", "1e-9"])  # stops after its first step, as an interruption would
    first = torch.load(tmp_path / "r" / "ckpt.pt", weights_only=True)
    assert first["step"] == 1 and not (tmp_path / "export").exists()
    train.main([*args, "--resume", "--stop-at-step", "4"])  # a phase that ends early, on purpose
    assert torch.load(tmp_path / "r" / "ckpt.pt", weights_only=True)["step"] == 4
    assert (tmp_path / "export" / "model.safetensors").is_file()
    train.main([*args, "--resume"])
    done = torch.load(tmp_path / "r" / "ckpt.pt", weights_only=True)
    assert done["step"] == 6 and done["train_config"] == first["train_config"]
    log = (tmp_path / "r" / "train.log").read_text()
    assert "resume step 1/6" in log and "resume step 4/6" in log and "done: 6 steps" in log
    reloaded, _ = load_model(tmp_path / "export", device="cpu", dtype="float32")
    for name, weight in reloaded.state_dict().items():
        torch.testing.assert_close(weight, done["model"][name], rtol=0, atol=0)


def test_line_split_middle_is_rest_of_one_line() -> None:
    rng = random.Random(3)
    for doc in ["x", "a = 1\nb = 2\n", "a = 1\n\n\n    \nb = 2", *DOCS[:3]]:
        for _ in range(50):
            prefix, middle, suffix = split_at_line(doc, rng)
            assert prefix + middle + suffix == doc
            assert "\n" not in middle and (suffix == "" or suffix.startswith("\n"))
            assert middle.strip(), "a blank or empty middle teaches the model to answer nothing"
