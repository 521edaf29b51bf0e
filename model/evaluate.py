"""Evaluate a model on the held-out files: LM loss and single-line infilling exact match.

Single-line infilling: a random non-blank line is removed from a held-out file; the
model sees up to ~700 tokens of whole lines before it and ~250 after (the line's own
newline stays in the suffix), infills greedily up to 48 tokens, and scores if the first
line of its output equals the removed line, whitespace-trimmed. Both PSM and SPM.

    python model/evaluate.py --model model/default --json model/eval.json
    python model/evaluate.py --ckpt model/runs/default/ckpt.pt --lines 100   # mid-training
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from codellama_lsp.engine.checkpoint import load_model
from codellama_lsp.engine.config import ModelArgs
from codellama_lsp.engine.model import Transformer
from codellama_lsp.engine.tokenizer import Tokenizer
from codellama_lsp.completion.templates import infilling_tokens

HERE = Path(__file__).resolve().parent
PREFIX_TOKENS, SUFFIX_TOKENS, MAX_NEW = 700, 250, 48


@dataclass(frozen=True)
class LineTask:
    """One removed line: the text around it and the line itself (without its newline)."""

    path: str
    prefix: str
    middle: str
    suffix: str


def load_heldout(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def heldout_loss(model: Transformer, tok: Tokenizer, docs: list[dict[str, str]], n_windows: int, context: int,
                 rng: random.Random) -> float:
    """Mean next-token loss over random ``context``-token windows of [BOS] + file (plain LM)."""
    total, count = 0.0, 0
    for _ in range(n_windows):
        ids = [tok.bos_id, *tok.encode(rng.choice(docs)["text"]), tok.eos_id]
        start = rng.randint(0, max(0, len(ids) - context - 1))
        window = torch.tensor([ids[start:start + context + 1]])
        logits = model(window[:, :-1])
        total += F.cross_entropy(logits[0], window[0, 1:], reduction="sum").item()
        count += window.shape[1] - 1
    return total / count


def keep_lines(tok: Tokenizer, lines: list[str], budget: int) -> int:
    """How many of ``lines`` (in order) fit in ``budget`` tokens, counting each line alone."""
    used = 0
    for n, line in enumerate(lines):
        used += len(tok.encode_infilling(line))
        if used > budget:
            return n
    return len(lines)


def line_tasks(tok: Tokenizer, docs: list[dict[str, str]], n: int, rng: random.Random) -> list[LineTask]:
    """``n`` random non-blank lines (uniform over all held-out lines), each with its line-cut context."""
    candidates = [(d, i) for d, doc in enumerate(docs) for i, line in enumerate(doc["text"].split("\n")) if line.strip()]
    tasks = []
    for d, i in rng.sample(candidates, n):
        lines = docs[d]["text"].split("\n")
        before = [line + "\n" for line in lines[:i]]
        after = ["\n" + line for line in lines[i + 1:]]  # the removed line's newline opens the suffix
        kept_before = keep_lines(tok, before[::-1], PREFIX_TOKENS)
        kept_after = keep_lines(tok, after, SUFFIX_TOKENS)
        prefix = "".join(before[len(before) - kept_before:])
        tasks.append(LineTask(docs[d]["path"], prefix, lines[i], "".join(after[:kept_after])))
    return tasks


@torch.inference_mode()
def greedy_infill(model: Transformer, tok: Tokenizer, prompt: list[int], max_new: int) -> tuple[list[int], bool]:
    """Greedy decoding with the model's KV cache; returns the middle's ids and whether EOT ended it."""
    stop = {tok.eot_id, tok.eos_id}
    logits = model(torch.tensor([prompt]), start=0, last_only=True)
    out: list[int] = []
    pos = len(prompt)
    for _ in range(max_new):
        nxt = int(logits[0, -1].argmax())
        if nxt in stop:
            return out, True
        out.append(nxt)
        logits = model(torch.tensor([[nxt]]), start=pos, last_only=True)
        pos += 1
    return out, False


def first_line(text: str) -> str:
    return text.split("\n", 1)[0].strip()


def load(ns: argparse.Namespace) -> tuple[Transformer, Tokenizer]:
    """The exported model directory, or the weights in a training checkpoint (for mid-training looks)."""
    if ns.ckpt:
        state = torch.load(ns.ckpt, map_location="cpu", weights_only=True)
        model = Transformer(ModelArgs(**state["model_args"]))
        model.load_state_dict(state["model"])
        return model.eval(), Tokenizer(ns.tokenizer)
    return load_model(ns.model, device="cpu", dtype="float32")


def main() -> None:
    ap = argparse.ArgumentParser(description="Held-out loss and single-line infilling exact match.")
    ap.add_argument("--model", type=Path, default=HERE / "default")
    ap.add_argument("--ckpt", type=Path, help="a training checkpoint (ckpt.pt) instead of --model")
    ap.add_argument("--tokenizer", type=Path, default=HERE / "default" / "tokenizer.model", help="with --ckpt")
    ap.add_argument("--heldout", type=Path, default=HERE / "data" / "heldout.jsonl")
    ap.add_argument("--files", type=Path, default=HERE / "heldout_files.txt",
                    help="evaluate only these held-out files (the shipped model's list): a machine with more "
                         "packages holds out more, and the sample must not change with it")
    ap.add_argument("--lines", type=int, default=500)
    ap.add_argument("--windows", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=5, help="print this many PSM completions, and as many PSM and SPM exact matches")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ns = ap.parse_args()
    torch.set_num_threads(ns.threads)
    model, tok = load(ns)
    listed = set(ns.files.read_text(encoding="utf-8").split())
    docs = [d for d in load_heldout(ns.heldout) if d["path"] in listed]
    t0 = time.time()
    with torch.inference_mode():
        loss = heldout_loss(model, tok, docs, ns.windows, 1024, random.Random(ns.seed))
    tasks = line_tasks(tok, docs, ns.lines, random.Random(ns.seed))
    model.setup_cache(1024 + MAX_NEW + 16)
    results: dict[str, list[dict[str, object]]] = {"psm": [], "spm": []}
    for task in tasks:
        for fmt in results:
            ids, eot = greedy_infill(model, tok, infilling_tokens(tok, task.prefix, task.suffix, fmt), MAX_NEW)
            out = tok.decode_infilling(ids)
            results[fmt].append({"path": task.path, "expected": task.middle, "output": out, "eot": eot,
                                 "match": first_line(out) == task.middle.strip()})
    em = {fmt: sum(r["match"] for r in rs) / len(rs) for fmt, rs in results.items()}
    eot = {fmt: sum(r["eot"] for r in rs) / len(rs) for fmt, rs in results.items()}
    report = {
        "heldout_loss": loss,
        "heldout_ppl": math.exp(loss),
        "single_line_em_psm": em["psm"],
        "single_line_em_spm": em["spm"],
        "eot_rate": (eot["psm"] + eot["spm"]) / 2,
        "eot_rate_psm": eot["psm"],
        "eot_rate_spm": eot["spm"],
        "n_lines": len(tasks),
        "heldout_files": len(docs),
        "seconds": round(time.time() - t0, 1),
        "examples": results["psm"][: ns.show],
        "exact_matches": [r for r in results["psm"] if r["match"]][: ns.show],
        "exact_matches_spm": [r for r in results["spm"] if r["match"]][: ns.show],
    }
    print(f"{'metric':<22}{'value':>10}")
    for key in ("heldout_loss", "heldout_ppl", "single_line_em_psm", "single_line_em_spm", "eot_rate", "n_lines"):
        print(f"{key:<22}{report[key]:>10.4g}")
    for r in report["examples"] + report["exact_matches"] + report["exact_matches_spm"]:
        print(f"\n{r['path']}\n  expected: {r['expected'].strip()!r}\n  output:   {first_line(str(r['output']))!r}  "
              f"{'OK' if r['match'] else 'MISS'}")
    if ns.json:
        ns.json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
