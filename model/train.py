"""Train the bundled Code Llama-style model on the CPU with Code Llama's infilling objective.

Each training document becomes, with probability 0.9, an infilling example (split at two
random character positions; half PSM, half SPM) tokenized exactly as codellama-lsp builds
its inference prompts, with EOT after the middle; otherwise a plain left-to-right example.
Examples are packed into 1024-token rows; a document longer than the room left in a row
contributes a random window of whole lines, so nothing is truncated mid-example.

    python model/train.py --name default --tokens 20e6
    python model/train.py --name default --tokens 20e6 --resume   # after an interruption
    python model/train.py --name line --init-from model/runs/default/ckpt.pt --line-fim-rate 0.5 \
        --tokens 2e6 --lr 4e-4 --warmup-steps 10                     # a second phase, new schedule
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from itertools import accumulate
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from codellama_lsp.engine.checkpoint import save_checkpoint
from codellama_lsp.engine.config import ModelArgs
from codellama_lsp.engine.model import Transformer
from codellama_lsp.engine.tokenizer import Tokenizer
from codellama_lsp.completion.templates import infilling_tokens

HERE = Path(__file__).resolve().parent
IGNORE = -100
CHARS_PER_TOKEN = 3.0  # first guess for window sizes; examples that overflow are rebuilt smaller
MIN_ROOM = 64  # a row with less room left than this is padded rather than filled


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; saved in the checkpoint so --resume cannot drift."""

    tokens: int
    context: int = 1024
    minutes: float = 0.0  # wall-time budget; 0 means the token count alone sets the schedule
    batch_size: int = 4
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    fim_rate: float = 0.9
    line_fim_rate: float = 0.0  # share of infilling examples whose middle is the rest of one line
    psm_rate: float = 0.5  # share of infilling examples in PSM (the rest SPM); Code Llama's is 0.5
    middle_weight: float = 1.0  # loss weight of the middle's tokens (and EOT) against all others' 1
    min_window: int = 0  # 0: each example fills its row; else its size is uniform in [min_window, context]
    seed: int = 1234

    @property
    def total_steps(self) -> int:
        return max(1, self.tokens // (self.batch_size * self.context))


def split_document(doc: str, rng: random.Random) -> tuple[str, str, str]:
    """Prefix/middle/suffix from two uniformly random character positions (Code Llama's split)."""
    a, b = sorted((rng.randint(0, len(doc)), rng.randint(0, len(doc))))
    return doc[:a], doc[a:b], doc[b:]


def split_at_line(doc: str, rng: random.Random) -> tuple[str, str, str]:
    """Prefix/middle/suffix where the middle is the rest of one random non-blank line, from its start or mid-line.

    This is what an editor asks for most (finish this line, or write the next one), and
    what uniform splits, whose middles average a third of the document, rarely teach: to
    stop with EOT at the newline. The middle is never empty: empty middles (blank lines)
    taught the model that a line-shaped gap is usually empty, so it answered with EOT.
    """
    starts = [0, *(i + 1 for i, c in enumerate(doc) if c == "\n" and i + 1 < len(doc))]
    lines = [(a, b if b >= 0 else len(doc)) for a in starts for b in [doc.find("\n", a)]]
    filled = [(a, b) for a, b in lines if doc[a:b].strip()]
    if not filled:
        return split_document(doc, rng)
    a, b = rng.choice(filled)
    if rng.random() < 0.5:
        a = rng.randint(a, b - 1)
    return doc[:a], doc[a:b], doc[b:]


@dataclass(frozen=True)
class Example:
    """A training example's tokens and, for infilling, the text parts and format they came from."""

    ids: list[int]
    fim: tuple[str, str, str, str] | None = None  # (prefix, middle, suffix, fmt)
    middle_at: int | None = None  # where in ``ids`` the middle starts: what the model generates at inference


def infilling_example(tok: Tokenizer, prefix: str, middle: str, suffix: str, fmt: str) -> Example:
    """The inference prompt for (prefix, suffix) followed by the middle as the model should generate it."""
    prompt = infilling_tokens(tok, prefix, suffix, fmt)
    return Example(prompt + tok.encode_infilling(middle) + [tok.eot_id], (prefix, middle, suffix, fmt), len(prompt))


def plain_example(tok: Tokenizer, text: str, ends_document: bool) -> Example:
    """[BOS] text [EOS]; no EOS when the window stops before the document does."""
    return Example([tok.bos_id, *tok.encode(text)] + ([tok.eos_id] if ends_document else []))


def line_window(doc: str, n_chars: int, rng: random.Random) -> tuple[str, bool]:
    """A random run of whole lines of about ``n_chars``; also whether it reaches the document's end."""
    if len(doc) <= n_chars:
        return doc, True
    start = rng.randint(0, len(doc) - n_chars)
    if start:
        nl = doc.find("\n", start - 1, start + n_chars // 2)
        start = nl + 1 if nl >= 0 else start
    end = start + n_chars
    nl = doc.rfind("\n", start, end)
    end = nl + 1 if nl > start else end
    return doc[start:end], end >= len(doc)


def build_example(tok: Tokenizer, doc: str, room: int, rng: random.Random, fim_rate: float,
                  line_fim_rate: float = 0.0, psm_rate: float = 0.5) -> Example | None:
    """One training example of at most ``room`` tokens from ``doc``, or None if it cannot fit."""
    n_chars = int(room * CHARS_PER_TOKEN)
    fim = rng.random() < fim_rate
    fmt = "psm" if rng.random() < psm_rate else "spm"
    split = split_at_line if fim and rng.random() < line_fim_rate else split_document
    for _ in range(4):
        text, ends = line_window(doc, n_chars, rng)
        example = infilling_example(tok, *split(text, rng), fmt) if fim else plain_example(tok, text, ends)
        if len(example.ids) <= room:
            return example
        n_chars = int(n_chars * room / len(example.ids) * 0.95)
    return None


class PackedExamples(IterableDataset):
    """Endless rows of ``context + 1`` tokens packed with fresh random examples, with loss targets.

    Built in the training process by default: a 1024-token row takes ~2 ms to build (about
    500k tokens/s against the model's few thousand), so a DataLoader worker (--workers)
    would only take a core from the training step on this 2-core machine. Documents are
    drawn with weight min(len, 8000) chars: long files are seen more often than tiny
    ``__init__.py`` files, but no single huge file dominates.
    """

    def __init__(self, data: Path, tokenizer: Path, cfg: TrainConfig, seed: int) -> None:
        self.data, self.tokenizer, self.cfg, self.seed = data, tokenizer, cfg, seed

    def _docs(self) -> tuple[list[str], list[int]]:
        with self.data.open(encoding="utf-8") as fh:
            docs = [json.loads(line)["text"] for line in fh]
        return docs, list(accumulate(min(len(d), 8000) for d in docs))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        tok = Tokenizer(self.tokenizer)
        rng = random.Random(self.seed)
        docs, cum = self._docs()
        cfg = self.cfg
        n = cfg.context + 1
        while True:
            row: list[int] = []
            starts: list[int] = []
            middles: list[tuple[int, int]] = []
            while n - len(row) >= MIN_ROOM:
                doc = docs[bisect.bisect_right(cum, rng.random() * cum[-1])]
                # Smaller windows put several examples (several middles to learn) in a row.
                room = n - len(row)
                if cfg.min_window:
                    room = min(room, rng.randint(cfg.min_window, n))
                example = build_example(tok, doc, room, rng, cfg.fim_rate, cfg.line_fim_rate, cfg.psm_rate)
                if example:
                    starts.append(len(row))
                    if example.middle_at is not None:
                        middles.append((len(row) + example.middle_at, len(row) + len(example.ids)))
                    row += example.ids
            yield pack_row(row, starts, middles, n, tok.eos_id, cfg.middle_weight)


def pack_row(row: list[int], starts: list[int], middles: list[tuple[int, int]], n: int, pad_id: int,
             middle_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, targets and loss weights for one packed row.

    No loss on padding, nor on guessing the next example's BOS. Targets that are a middle's
    tokens (row positions ``[a, b)`` of each of ``middles``, its EOT included) weigh
    ``middle_weight``: they are the few tokens per example that teach infilling itself, since
    the prefix and suffix around them are ordinary next-token prediction.
    """
    tokens = torch.tensor(row + [pad_id] * (n - len(row)), dtype=torch.long)
    targets = tokens[1:].clone()
    targets[len(row) - 1:] = IGNORE
    for s in starts[1:]:
        targets[s - 1] = IGNORE
    weights = torch.ones(n - 1)
    for a, b in middles:
        weights[a - 1:b - 1] = middle_weight
    weights[targets == IGNORE] = 0.0
    return tokens[:-1], targets, weights


def progress(step: int, elapsed: float, cfg: TrainConfig) -> float:
    """How far through the schedule we are: the larger of the token and wall-time fractions.

    The machine is shared, so throughput drifts; taking the larger fraction means the
    cosine decay always completes within the time budget, and within the token count
    when the machine turns out faster than measured.
    """
    by_tokens = step / cfg.total_steps
    return max(by_tokens, elapsed / (cfg.minutes * 60)) if cfg.minutes else by_tokens


def lr_at(step: int, frac: float, cfg: TrainConfig) -> float:
    """Linear warmup over the first steps, then cosine decay to ``min_lr_ratio`` of the peak at ``frac`` = 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def init_weights(model: Transformer) -> None:
    """Llama's N(0, 0.02) init, with residual output projections scaled by 1/sqrt(2·layers) (GPT-2).

    The module's PyTorch defaults give the tied embedding unit variance, which makes the
    initial logits huge (loss ~200 instead of ln V ~ 9).
    """
    scaled = 0.02 / math.sqrt(2 * model.args.num_hidden_layers)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            torch.nn.init.normal_(p, 0.0, scaled if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02)


def make_optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not norms), as Llama was trained."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def loss_fn(model: Transformer, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged with weights ``w`` (0 on masked targets)."""
    logits = model(x)
    losses = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1), ignore_index=IGNORE, reduction="none")
    return (losses * w.view(-1)).sum() / w.sum()


def save_state(path: Path, model: Transformer, opt: torch.optim.Optimizer, step: int, elapsed: float,
               cfg: TrainConfig, margs: ModelArgs) -> None:
    """Atomically write everything --resume needs: weights, optimizer, step and RNG states."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "train_config": asdict(cfg),
            "model_args": asdict(margs),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
        },
        tmp,
    )
    tmp.replace(path)


def setup_logging(run_dir: Path) -> logging.Logger:
    """Log to train.log (appending across resumes) without disturbing the progress bar."""
    log = logging.getLogger("train")
    log.setLevel(logging.INFO)
    for old in log.handlers[:]:  # a second run in one process (tests) logs to its own file only
        log.removeHandler(old)
        old.close()
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    return log


def model_args_from(ns: argparse.Namespace, vocab_size: int) -> ModelArgs:
    """Llama shape from the command line; FFN width follows Llama's 8/3·d rounded to 32."""
    ffn = ns.ffn or 32 * math.ceil(8 * ns.dim / 3 / 32)
    return ModelArgs(
        hidden_size=ns.dim,
        intermediate_size=ffn,
        num_hidden_layers=ns.layers,
        num_attention_heads=ns.heads,
        num_key_value_heads=ns.kv_heads,
        vocab_size=vocab_size,
        rope_theta=1e6,
        max_position_embeddings=ns.context * 4,
        tie_word_embeddings=True,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Train the bundled infilling model.")
    ap.add_argument("--name", default="default", help="run name: model/runs/<name>/")
    ap.add_argument("--runs", type=Path, default=HERE / "runs", help="where run directories go")
    ap.add_argument("--data", type=Path, default=HERE / "data" / "train.jsonl")
    ap.add_argument("--tokenizer", type=Path, default=HERE / "default" / "tokenizer.model")
    ap.add_argument("--export", type=Path, default=HERE / "default", help="where the final weights go")
    ap.add_argument("--tokens", type=float, required=True, help="total training tokens (fixes the schedule)")
    ap.add_argument("--minutes", type=float, default=0, help="wall-time budget the schedule must fit in (0: none)")
    ap.add_argument("--stop-at-step", type=int, default=-1,
                    help="end the run at this step (schedule unchanged), saving and exporting as at its end")
    ap.add_argument("--probe-minutes", type=float, default=0, help="measure throughput for this long, then stop")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (it costs ~2 min, gains ~2x)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=0, help="0: Llama's 8/3·dim")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers building examples (0: in-process)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init-from", type=Path, help="a ckpt.pt to continue from with a new schedule (a second phase)")
    ap.add_argument("--min-window", type=int, default=0,
                    help="example size uniform in [this, context] tokens, several per row (0: one fills a row)")
    ap.add_argument("--line-fim-rate", type=float, default=0.0, help="share of infilling middles that are one line")
    ap.add_argument("--psm-rate", type=float, default=0.5, help="share of infilling examples in PSM (the rest SPM)")
    ap.add_argument("--middle-weight", type=float, default=1.0,
                    help="loss weight of infilling middles' tokens against the others' 1")
    ap.add_argument("--infilling-format", choices=["psm", "spm"],
                    help="declare in the exported config.json the prompt layout the model does best in "
                         "(what the server's format \"auto\" then uses)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    ns = parse_args(argv)
    torch.set_num_threads(ns.threads)
    run_dir = ns.runs / ns.name
    run_dir.mkdir(parents=True, exist_ok=True)
    log = setup_logging(run_dir)
    ckpt_path = run_dir / "ckpt.pt"
    tok = Tokenizer(ns.tokenizer)
    state = torch.load(ckpt_path, weights_only=True) if ns.resume else None
    init = torch.load(ns.init_from, weights_only=True) if ns.init_from and not state else None
    if state:
        cfg, margs = TrainConfig(**state["train_config"]), ModelArgs(**state["model_args"])
    else:
        cfg = TrainConfig(tokens=int(ns.tokens), minutes=ns.minutes, context=ns.context, batch_size=ns.batch_size,
                          lr=ns.lr, warmup_steps=ns.warmup_steps, seed=ns.seed, line_fim_rate=ns.line_fim_rate,
                          min_window=ns.min_window, psm_rate=ns.psm_rate, middle_weight=ns.middle_weight)
        margs = ModelArgs(**init["model_args"]) if init else model_args_from(ns, tok.vocab_size)
        if ns.infilling_format:
            margs = replace(margs, infilling_format=ns.infilling_format)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model = Transformer(margs)
    init_weights(model)
    opt = make_optimizer(model, cfg)
    step, elapsed_before = 0, 0.0
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed_before = state["step"], state["elapsed"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
    elif init:
        model.load_state_dict(init["model"])
        opt.load_state_dict(init["optimizer"])  # keeps Adam's moment estimates; the schedule restarts
        log.info("initialised from %s (its step %d)", ns.init_from, init["step"])
    log.info("%s step %d/%d, %.2f M params, model %s, train %s", "resume" if state else "start", step,
             cfg.total_steps, margs.num_parameters() / 1e6, asdict(margs), asdict(cfg))
    # A resumed run draws a fresh example stream (seed + step) rather than replaying the old one.
    data = PackedExamples(ns.data, ns.tokenizer, cfg, cfg.seed + step)
    loader = DataLoader(data, batch_size=cfg.batch_size, num_workers=ns.workers, prefetch_factor=4 if ns.workers else None)
    batches = iter(loader)
    model.train()
    train_model = model if ns.no_compile else torch.compile(model)
    tokens_per_step = cfg.batch_size * cfg.context
    bar = tqdm(total=cfg.total_steps, initial=step, unit="step", dynamic_ncols=True, mininterval=2.0)
    t_start = last_save = time.time()
    start_step, ema, frac = step, None, progress(step, elapsed_before, cfg)
    while frac < 1.0 and step != ns.stop_at_step:
        x, y, w = next(batches)
        lr = lr_at(step, frac, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = loss_fn(train_model, x, y, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        run_time = time.time() - t_start
        frac = progress(step, elapsed_before + run_time, cfg)
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        tps = (step - start_step) * tokens_per_step / run_time
        bar.set_postfix_str(f"loss {ema:.3f} tok/s {tps:,.0f} schedule {frac:.1%}")
        bar.update(1)
        if step % 20 == 0 or frac >= 1.0:
            log.info("step %d loss %.4f ema %.4f lr %.2e gnorm %.2f tok/s %.0f tokens %.2fM schedule %.3f", step,
                     loss.item(), ema, lr, gnorm, tps, step * tokens_per_step / 1e6, frac)
        if time.time() - last_save > ns.ckpt_minutes * 60:
            save_state(ckpt_path, model, opt, step, elapsed_before + run_time, cfg, margs)
            last_save = time.time()
        if ns.probe_minutes and run_time > ns.probe_minutes * 60:
            log.info("probe: stopping after %.1f min at step %d, %.0f tokens/s", run_time / 60, step, tps)
            bar.close()
            return
    bar.close()
    elapsed = elapsed_before + time.time() - t_start
    save_state(ckpt_path, model, opt, step, elapsed, cfg, margs)
    out = save_checkpoint(model.eval(), ns.export, ns.tokenizer)
    log.info("done: %d steps, %.2f M tokens in %.1f min; exported to %s", step, step * tokens_per_step / 1e6,
             elapsed / 60, out)


if __name__ == "__main__":
    main()
