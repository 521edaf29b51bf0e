"""Long windows on the real default model: speed at 8k/16k/32k tokens, and a "far definition" task set.

Speed (``--part speed``): for each engine and each length L, the engine is opened with a window
of L + ``--decode`` + 16 positions (``contextLength``, planned by engine.memory_plan), a prompt of
exactly L tokens of real code (this machine's standard library sources, in sorted order) is
computed, then ``--decode`` greedy tokens one per pass (lookup drafts off, so the decode speed is
the plain one-token step's). Reported: prefill tok/s, decode tok/s, and the planned KV bytes. A
length whose prefill is predicted to take more than ``--max-seconds`` (the previous length's
prefill time scaled by the square of the length ratio: attention's share grows with the
position) is skipped, with that reason, as is one the memory plan refuses.

Far definition (``--part far``): tasks from the cross-file lines of benchmarks/repo_context.py
(a name first used in module M, defined at top level in another module of M's package), kept
only where the name appears nowhere in M before the cursor, so M's own text cannot give it away.
The prompt is laid out as a repository: the defining module's lines around the definition first,
then other standard-library files as filler, then M's window (the product's ``plan``: 1024
prefix and 128 suffix tokens), in the model family's repository layout; the filler puts the
definition about ``--distance`` tokens before the cursor. With a ``contextLength`` of 4096 the
prompt keeps what fits nearest the cursor (other files give way first, as ``fit_to_context``
does), which drops the definition; with ``--long-window`` it all fits. Scored: the suggestion's
first line starts with the name (``name``), and equals the rest of the line (``exact``).

    nice -n 19 python benchmarks/long_context.py --part speed --engines llamacpp,torch --lengths 8192,16384,32768
    nice -n 19 python benchmarks/long_context.py --part far --tasks 4
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import sys
import sysconfig
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from codellama_lsp.completion.families import Template, detect
from codellama_lsp.completion.planning import generation_request, plan, shown
from codellama_lsp.completion.context import TokenCounter
from codellama_lsp.completion.repo_layout import RepoContext
from codellama_lsp.completion.snippets import Snippet
from codellama_lsp.documents import Document
from codellama_lsp.engine.engine import Engine
from codellama_lsp.engine.memory_plan import ContextTooLong
from codellama_lsp.generation import GenerationRequest
from codellama_lsp.engine.default_model import default_gguf
from codellama_lsp.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))
import repo_context as rc  # noqa: E402  (a sibling script: its cross-file task set)

STDLIB = Path(sysconfig.get_paths()["stdlib"])
RESULTS = Path(__file__).parent / "results"
SEED = 28
DEFINITION_LINES_BEFORE, DEFINITION_LINES_AFTER = 10, 50  # the defining module's lines around the definition
FAR_SETTINGS = Settings(format="psm", prefix_tokens=1024, suffix_tokens=128, max_new_tokens=24, context_tokens=0,
                        time_budget_ms=600_000.0)


def source_files(exclude: Path | None = None) -> Iterator[Path]:
    """The standard library's .py files in sorted order (test folders left out)."""
    for p in sorted(STDLIB.rglob("*.py")):
        parts = set(p.relative_to(STDLIB).parts)
        if not parts & rc.SKIP_DIRS and "site-packages" not in parts and (exclude is None or p.parent != exclude):
            yield p


def code_tokens(encode: Callable[[str], list[int]], n: int) -> list[int]:
    """Exactly ``n`` token ids of real code."""
    ids: list[int] = []
    for p in source_files():
        ids += encode(p.read_text(encoding="utf-8", errors="replace"))
        if len(ids) >= n:
            return ids[:n]
    raise SystemExit(f"the standard library has fewer than {n} tokens")


def open_engine(kind: str, model: Path, context_length: int, threads: int, device: str) -> Engine:
    """The engine as the server opens it, with lookup drafts and the prompt cache off (plain one-token decode)."""
    if kind == "llamacpp":
        from codellama_lsp.engine.llamacpp import open_llamacpp

        return open_llamacpp(model, context_length, threads, draft_tokens=0, prompt_cache_bytes=0)
    return Engine.load(model, device=device, context_length=context_length, draft_tokens=0, prompt_cache_bytes=0)


def speed(engines: list[str], lengths: list[int], model: Path, threads: int, decode: int,
          max_seconds: float, device: str, rows: list[dict[str, Any]], save: Callable[[], None]) -> None:
    """Each row appended to ``rows`` and ``save``d as it is measured, so a run cut short keeps what it measured."""
    for kind in engines:
        previous: tuple[int, float] | None = None
        for n in sorted(lengths):
            row: dict[str, Any] = {"engine": kind, "tokens": n}
            rows.append(row)
            if previous is not None and (predicted := previous[1] * (n / previous[0]) ** 2) > max_seconds:
                row["skipped"] = (f"predicted prefill {predicted:.0f} s > --max-seconds {max_seconds:.0f} "
                                  f"({previous[0]} tokens took {previous[1]:.0f} s)")
                print(row, flush=True)
                continue
            t0 = time.perf_counter()
            try:
                engine = open_engine(kind, model, n + decode + 16, threads, device)
            except ContextTooLong as exc:
                row["skipped"] = str(exc)
                print(row, flush=True)
                continue
            load_s = time.perf_counter() - t0
            try:
                prompt = code_tokens(engine.tokenizer.encode, n)
                result = engine.generate(GenerationRequest(prompt, max_new_tokens=decode, infilling=False))
            finally:
                engine.close()
            row.update(load_s=round(load_s, 1), kv_bytes=engine.memory.kv_bytes if engine.memory else None,
                       prefill_s=round(result.prefill_ms / 1000, 1),
                       prefill_tok_s=round(result.computed_tokens / result.prefill_ms * 1000, 1),
                       decoded=result.generated_tokens,
                       decode_tok_s=round(result.generated_tokens / result.decode_ms * 1000, 2))
            previous = (n, result.prefill_ms / 1000)
            print(row, flush=True)
            save()


def defining_module(t: rc.Task) -> Path | None:
    """The module of ``t``'s package that defines ``t.name`` at top level."""
    for m in sorted(t.package.glob("*.py")):
        if m != t.module and rc._defines(m, t.name):
            return m
    return None


def definition_snippet(path: Path, name: str, root: Path) -> Snippet:
    """The lines of ``path`` around its top-level definition of ``name``."""
    text = path.read_text(encoding="utf-8")
    line = next(n.lineno - 1 for n in ast.parse(text).body if name in _bound(n))
    lines = text.splitlines(keepends=True)
    start, end = max(0, line - DEFINITION_LINES_BEFORE), min(len(lines), line + DEFINITION_LINES_AFTER)
    return Snippet(str(path.relative_to(root)), start, end, "".join(lines[start:end]), "open")


def _bound(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {x.id for x in targets if isinstance(x, ast.Name)}
    return set()


def far_tasks(limit: int) -> list[rc.Task]:
    """Cross-file tasks of the standard library whose name M does not show before the cursor, in a seeded order."""
    tasks = [t for ts in rc.build_tasks([STDLIB]).values() for t in ts]
    random.Random(SEED).shuffle(tasks)
    out = []
    for t in tasks:
        lines = t.module.read_text(encoding="utf-8").splitlines(keepends=True)
        if t.name not in "".join(lines[:t.line]) + lines[t.line][:t.column] and defining_module(t) is not None:
            out.append(t)
        if len(out) >= limit:
            break
    return out


def filler(t: rc.Task, count: Callable[[str], int], tokens: int) -> list[Snippet]:
    """Whole files from other folders of the standard library, about ``tokens`` in all, none naming ``t.name``."""
    out: list[Snippet] = []
    total = 0
    for p in source_files(exclude=t.package):
        text = p.read_text(encoding="utf-8", errors="replace")
        if t.name in text or len(text) > 40_000:
            continue
        n = count(text)
        if total + n > tokens:
            continue
        out.append(Snippet(str(p.relative_to(STDLIB)), 0, text.count("\n"), text, "open"))
        total += n
        if total > tokens * 0.97:
            break
    return out


def far_prompt(t: rc.Task, template: Template, tok: Any, count: Callable[[str], int], distance: int,
               window: int) -> tuple[list[int], Any, bool]:
    """The task's prompt within ``window`` positions, its plan, and whether the definition is in it."""
    text = rc.cut(t.module.read_text(encoding="utf-8"), t)
    doc = Document.from_text(t.module.as_uri(), text)
    p = plan(doc, doc.cursor(t.line, t.column), FAR_SETTINGS, template, tok, count)
    definition = definition_snippet(defining_module(t), t.name, STDLIB)  # type: ignore[arg-type]
    snippets = [definition, *filler(t, count, distance - count(p.prefix))]
    room = window - FAR_SETTINGS.max_new_tokens
    while True:  # other files give way, farthest first, until the prompt fits the window
        ctx = RepoContext(t.package.name, str(t.module.relative_to(STDLIB)), "#", snippets)
        ids = template.prompt(tok, p.prefix, p.suffix, "psm", ctx if snippets else None)
        if len(ids) <= room or not snippets:
            return ids, p, definition in snippets
        snippets = snippets[1:]


def far(tasks: int, model: Path, kind: str, threads: int, distance: int, long_window: int,
        device: str) -> dict[str, Any]:
    chosen = far_tasks(tasks)
    out: dict[str, Any] = {"distance": distance, "engine": kind, "windows": {}}
    for window in (4096, long_window):
        engine = open_engine(kind, model, window, threads, device)
        tok, template = engine.tokenizer, detect(engine.tokenizer)
        count = TokenCounter(tok.encode)
        rows = []
        try:
            for t in chosen:
                ids, p, seen = far_prompt(t, template, tok, count, distance, window)
                result = engine.generate(generation_request(replace(p, token_ids=ids), FAR_SETTINGS, typing=False))
                got = shown(result, p)
                first = got.split("\n", 1)[0]
                rows.append({"module": str(t.module.relative_to(STDLIB)), "line": t.line + 1, "name": t.name,
                             "expected": t.expected, "suggestion": first, "prompt_tokens": len(ids),
                             "definition_in_prompt": seen, "name_used": first.startswith(t.name),
                             "exact": rc.exact(t, got), "prefill_s": round(result.prefill_ms / 1000, 1)})
                print(window, rows[-1], flush=True)
        finally:
            engine.close()
        n = len(rows)
        out["windows"][str(window)] = {"n": n, "name_used": sum(r["name_used"] for r in rows),
                                        "exact": sum(r["exact"] for r in rows),
                                        "definition_in_prompt": sum(r["definition_in_prompt"] for r in rows),
                                        "rows": rows}
    return out


def table(report: dict[str, Any]) -> str:
    lines = []
    if report.get("speed"):
        lines += ["| engine | prompt tokens | prefill tok/s | decode tok/s | KV bytes (planned) | note |",
                  "|---|---:|---:|---:|---:|---|"]
        for r in report["speed"]:
            if "skipped" in r:
                lines.append(f"| {r['engine']} | {r['tokens']} | – | – | – | skipped: {r['skipped']} |")
            else:
                lines.append(f"| {r['engine']} | {r['tokens']} | {r['prefill_tok_s']} | {r['decode_tok_s']} | "
                             f"{r['kv_bytes'] / 2**20:,.0f} MiB | prefill {r['prefill_s']} s, {r['decoded']} tokens decoded |")
    if report.get("far"):
        f = report["far"]
        lines += ["", f"Far definition ({f['engine']} engine, definition ~{f['distance']} tokens before the cursor):", "",
                  "| contextLength | tasks | definition in prompt | name used | exact line |", "|---:|---:|---:|---:|---:|"]
        for window, w in f["windows"].items():
            lines.append(f"| {window} | {w['n']} | {w['definition_in_prompt']} | {w['name_used']} | {w['exact']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--part", choices=["speed", "far", "both"], default="both")
    ap.add_argument("--model", type=Path, default=None, help="a .gguf (default: the real default model)")
    ap.add_argument("--engines", default="llamacpp,torch")
    ap.add_argument("--lengths", default="8192,16384,32768")
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-seconds", type=float, default=300.0, help="skip a length whose prefill is predicted longer")
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--distance", type=int, default=10_000, help="tokens from the definition to the cursor")
    ap.add_argument("--long-window", type=int, default=16384)
    ap.add_argument("--far-engine", default="torch", help="the engine of the far-definition tasks (the faster prefill here)")
    ap.add_argument("--device", default="cpu", help="the torch engine's device (llamacpp runs on the CPU)")
    ap.add_argument("--json", type=Path, default=RESULTS / "long_context.json")
    ap.add_argument("--table", type=Path, default=None, help="only print the table of this earlier run's JSON")
    opts = ap.parse_args()
    if opts.table is not None:
        print(table(json.loads(opts.table.read_text())))
        return
    torch.set_num_threads(opts.threads)
    model = opts.model or default_gguf()
    report: dict[str, Any] = {"model": str(model), "threads": opts.threads, "decode": opts.decode,
                              "machine": f"{torch.get_num_threads()} threads, torch {torch.__version__}"}
    opts.json.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        opts.json.write_text(json.dumps(report, indent=1))

    if opts.part in ("speed", "both"):
        report["speed"] = []
        speed(opts.engines.split(","), [int(x) for x in opts.lengths.split(",")], model, opts.threads, opts.decode,
              opts.max_seconds, opts.device, report["speed"], save)
    if opts.part in ("far", "both"):
        report["far"] = far(opts.tasks, model, opts.far_engine, opts.threads, opts.distance, opts.long_window,
                            opts.device)
    save()
    print(table(report))


if __name__ == "__main__":
    main()
