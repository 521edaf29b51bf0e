"""Cross-file completion: single-line exact match with and without snippets from other files, through the LSP.

Construction of the task set, so that anyone can rebuild it:

* Packages: every directory under this machine's standard library and its site-packages
  (``sysconfig``'s ``stdlib`` and ``purelib``) that has an ``__init__.py`` and between
  ``MIN_MODULES`` and ``MAX_MODULES`` other ``.py`` modules directly in it (test folders and
  vendored copies left out). Each module that ``ast`` parses gives its top-level names:
  functions, classes and assigned names of at least four characters, dunders left out.
* Lines: a line of module M qualifies where a NAME token (``tokenize``) is the first use in M
  (import statements aside) of a name M imports from another module of its own package:
  either imported itself (``from .io import FileInput`` ... ``FileInput``; an absolute import
  must name the package), or reached through an imported module of the package
  (``from . import io`` ... ``io.FileInput``), and defined at top level in that module, not in
  M. The local file shows at most the import; the definition is in the other module.
  Comments, strings and import lines do not count.
  The cursor goes just before that token; the expected text is the rest of the line,
  trailing whitespace stripped (the layout of CrossCodeEval, Ding et al. 2023: complete the
  statement from the cross-file API on). At most ``PER_MODULE`` lines per module.
* ``--limit N`` takes the tasks of whole modules, in a seeded order of the packages and of
  their modules, at most ``PER_PACKAGE`` from each package, until there are N; they run
  grouped by module in line order, as a user works through a file, so that consecutive
  prompts share their prefix.

Every task goes through the real ``codellama-lsp --stdio`` on the default model, as an editor
drives it: the workspace root is the package's parent folder (so the package's relative
and absolute imports resolve), the package's other modules are opened with didOpen (an
editor with the package's files open), and the module is opened with the expected text cut
from its line; the request is ``textDocument/inlineCompletion`` at the cursor. The cursor
ends its line, so the server asks for a multi-line suggestion; its first line is scored
(exact match after stripping trailing whitespace). Two servers run the same tasks, each
task to one and then the other: ``contextTokens`` at the server's default (with context)
and 0 (without).
Both use the server's CPU budgets (``contextTokens`` 512 for the one with context) except
that the time budget is lifted (60 s), so that the machine's load is not scored,
``maxNewTokens`` is ``MAX_NEW_TOKENS`` (only the first line is scored), and ``prefixTokens`` is
``PREFIX_TOKENS`` (512, half the default), which halves the prefill of every task whose
snippets changed: at about 60 prompt tokens/s per core, 200 tasks at the defaults take
hours here. The smaller window shows fewer of the file's own lines (its imports, earlier
uses), so read the gain as measured at this window.

Latency: a typing trace (``--keystrokes`` characters of one task's line typed from the
cursor, one didChange and one inlineCompletion per keystroke, each awaited) in one of the
task files, with context on and off, at the server's own settings (its CPU time budget
included). After the first request: p50/p95 latency, and prompt tokens computed per keystroke
(the rest came from the KV cache), from the server's log.

    python benchmarks/repo_context.py --limit 200 --threads 2 --json benchmarks/results/repo_context.json
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import io
import json
import random
import sys
import sysconfig
import tempfile
import time
import tokenize
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from lsprotocol import types

from codellama_lsp.devtools.lsp_client import Client, start, stop
from codellama_lsp.loading import default_model_path
from codellama_lsp.service.metrics import percentile

sys.path.insert(0, str(Path(__file__).parent))
from peer import LogTail, lsp_computed  # noqa: E402  (a sibling script)

SEED = 14
MIN_MODULES, MAX_MODULES = 3, 12
PER_MODULE = 6
PER_PACKAGE = 16
MIN_NAME = 4
MAX_FILE_BYTES = 200_000
MAX_NEW_TOKENS = 16
PREFIX_TOKENS = 512
TIME_BUDGET_MS = 60000
SKIP_DIRS = {"tests", "test", "_vendor", "vendor", "idle_test", "__pycache__"}


@dataclass(frozen=True)
class Task:
    package: Path  # the package folder
    module: Path
    line: int  # 0-based
    column: int  # where the cursor stands (string index)
    expected: str
    name: str  # the cross-file name the expected text starts with

    @property
    def root(self) -> Path:
        return self.package.parent


def top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return {n for n in names if len(n) >= MIN_NAME and not n.startswith("__")}


def packages(roots: list[Path]) -> Iterator[tuple[Path, dict[Path, str]]]:
    """(package folder, module -> text) for each qualifying package under ``roots``."""
    for base in roots:
        for init in sorted(base.rglob("__init__.py")):
            pkg = init.parent
            if SKIP_DIRS & set(pkg.relative_to(base).parts) or "site-packages" in pkg.relative_to(base).parts:
                continue
            modules = sorted(p for p in pkg.glob("*.py") if p.name != "__init__.py")
            if not MIN_MODULES <= len(modules) <= MAX_MODULES:
                continue
            texts = {}
            for m in modules:
                try:
                    if m.stat().st_size <= MAX_FILE_BYTES:
                        texts[m] = m.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
            if len(texts) >= MIN_MODULES:
                yield pkg, texts


def import_lines(tree: ast.Module) -> set[int]:
    return {n for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
            for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)}


def package_imports(tree: ast.Module, pkg: Path, names: dict[str, set[str]]) -> tuple[dict[str, str], dict[str, str]]:
    """What module M imports from its own package: {name bound in M: the module defining it} for names,
    and {alias bound in M: module} for the package's modules imported as such (``from . import io``)."""
    direct: dict[str, str] = {}
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = node.module or ""
        if node.level == 0 and module.split(".")[-1] != pkg.name and not module.startswith(pkg.name + "."):
            continue  # not this package (an absolute import must name it)
        last = module.split(".")[-1] if module else ""
        for a in node.names:
            bound = a.asname or a.name
            if last in names and last != pkg.name and a.name in names[last]:
                direct[bound] = last  # from .io import FileInput
            elif a.name in names:
                aliases[bound] = a.name  # from . import io
    return direct, aliases


def module_tasks(pkg: Path, module: Path, text: str, tree: ast.Module, names: dict[str, set[str]]) -> list[Task]:
    """The qualifying lines of ``module`` (see the docstring): first uses of names it imports from
    another module of its package, directly or as ``module.name``."""
    direct, aliases = package_imports(tree, pkg, names)
    own = names.get(module.stem, set())
    imports_at = import_lines(tree)
    out: list[Task] = []
    seen: set[str] = set()
    lines = text.splitlines()
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return []
    for i, tok in enumerate(tokens):
        if tok.type != tokenize.NAME or tok.start[0] in imports_at:
            continue
        name, (row, col) = tok.string, tok.start
        if name in seen or name in own:
            continue
        seen.add(name)
        via_alias = (i >= 2 and tokens[i - 1].string == "." and tokens[i - 2].string in aliases
                     and name in names[aliases[tokens[i - 2].string]])
        if name not in direct and not via_alias:
            continue
        expected = lines[row - 1][col:].rstrip()
        if tok.end[0] != row or not expected:
            continue
        out.append(Task(pkg, module, row - 1, col, expected, name))
        if len(out) >= PER_MODULE:
            break
    return out


def build_tasks(roots: list[Path]) -> dict[Path, list[Task]]:
    by_package: dict[Path, list[Task]] = {}
    for pkg, texts in packages(roots):
        trees = {}
        for m, t in texts.items():
            try:
                trees[m] = ast.parse(t)
            except (SyntaxError, ValueError):
                continue
        names = {m.stem: top_level_names(tree) for m, tree in trees.items()}
        tasks = [t for m, tree in trees.items() for t in module_tasks(pkg, m, texts[m], tree, names)]
        if tasks:
            by_package[pkg] = tasks
    return by_package


def pick(by_package: dict[Path, list[Task]], limit: int, seed: int = SEED) -> list[Task]:
    rng = random.Random(seed)
    order = sorted(by_package)
    rng.shuffle(order)
    picked: list[Task] = []
    for p in order:
        modules = sorted({t.module for t in by_package[p]})
        rng.shuffle(modules)
        tasks = [t for m in modules for t in by_package[p] if t.module == m]
        picked += tasks[:min(PER_PACKAGE, limit - len(picked))]
        if len(picked) >= limit:
            break
    return sorted(picked, key=lambda t: (str(t.package), str(t.module), t.line))


def cut(text: str, t: Task) -> str:
    lines = text.splitlines(keepends=True)
    line = lines[t.line]
    end = line[len(line.rstrip("\r\n")):]
    lines[t.line] = line[:t.column] + end
    return "".join(lines)


class Pass:
    """One server over the tasks, in their order; each package's other modules opened when it comes up."""

    def __init__(self, name: str, settings: dict[str, Any], model: Path, threads: int, logs: Path) -> None:
        self.name, self.settings, self.model, self.threads, self.logs = name, settings, model, threads, logs
        self.client: Client | None = None
        self.root: Path | None = None
        self.package: Path | None = None
        self.opened: list[str] = []
        self.versions: dict[str, int] = {}
        self.current: str | None = None  # the module the last task was in

    async def ensure(self, t: Task) -> Client:
        if self.client is None or self.root != t.root:
            if self.client is not None:
                await stop(self.client)
            self.client = await start(self.model, self.logs / f"{self.name}-{t.root.name}.log",
                                      options=self.settings, threads=self.threads, root=t.root)
            status = await self.client.wait_loaded(300)
            if status["state"] != "ready":
                raise RuntimeError(f"{self.name}: the server did not get ready: {status['error']}")
            self.root, self.package, self.opened, self.current = t.root, None, [], None
        client = self.client
        if self.package != t.package:
            for uri in self.opened:
                client.text_document_did_close(_close(uri))
            self.opened, self.current = [], None
            for m in sorted(t.package.glob("*.py")):
                if m != t.module and m.name != "__init__.py":
                    self._open(client, m, m.read_text(encoding="utf-8"))
            self.package = t.package
        return client

    def _open(self, client: Client, path: Path, text: str) -> None:
        uri = path.as_uri()
        if uri in self.opened:
            client.text_document_did_close(_close(uri))
            self.opened.remove(uri)
        client.open(uri, text)
        self.opened.append(uri)

    async def run(self, t: Task) -> tuple[str, float, dict[str, Any]]:
        """The suggestion at ``t``'s cursor, its latency, and the status's ``context`` (what the prompt had)."""
        client = await self.ensure(t)
        text = cut(t.module.read_text(encoding="utf-8"), t)
        uri = t.module.as_uri()
        if self.current == uri:  # the next task in the same module: an edit, so the server keeps its state
            self.versions[uri] += 1
            client.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
                content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)]))
        else:
            self._open(client, t.module, text)
            self.current, self.versions[uri] = uri, 1
        t0 = time.perf_counter()
        got = await client.inline(t.module.as_uri(), t.line, t.column)
        ms = (time.perf_counter() - t0) * 1000
        return got, ms, (await client.status())["context"]

    async def close(self) -> None:
        if self.client is not None:
            await stop(self.client)


def _close(uri: str) -> Any:
    return types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))


def exact(t: Task, suggestion: str) -> bool:
    return suggestion.split("\n", 1)[0].rstrip() == t.expected


async def quality(tasks: list[Task], model: Path, threads: int, logs: Path, context_tokens: int | None,
                  report: Any) -> dict[str, Any]:
    """Both passes over ``tasks``; ``report`` is called with the partial results after each task."""
    base = {"timeBudgetMs": TIME_BUDGET_MS, "maxNewTokens": MAX_NEW_TOKENS, "prefixTokens": PREFIX_TOKENS}
    with_ctx = {**base, **({"contextTokens": context_tokens} if context_tokens is not None else {})}
    rows: list[dict[str, Any]] = [{"module": str(t.module), "line": t.line + 1, "name": t.name,
                                   "expected": t.expected} for t in tasks]
    # Two servers side by side, each task to both in turn: each keeps its own KV cache, and the
    # partial report compares the two on the same tasks as it goes.
    passes = [Pass("without", {**base, "contextTokens": 0}, model, threads, logs),
              Pass("with", with_ctx, model, threads, logs)]
    try:
        for row, t in zip(rows, tasks):
            for p in passes:
                got, ms, context = await p.run(t)
                row[p.name] = {"suggestion": got, "exact": exact(t, got), "ms": round(ms, 1),
                               "snippets": [(s["path"], s["lines"], s["source"]) for s in context["snippets"]],
                               "header_lines": context["header_lines"]}
            report(rows)
    finally:
        for p in passes:
            await p.close()
    return summarize(rows)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in rows if "with" in r and "without" in r]
    n = len(done)
    out: dict[str, Any] = {"n": n, "rows": rows}
    if not n:
        return out
    for name in ("with", "without"):
        out[f"em_{name}_context"] = sum(r[name]["exact"] for r in done) / n
        out[f"p50_task_ms_{name}_context"] = percentile([r[name]["ms"] for r in done], 0.5)
    out["gained"] = sum(r["with"]["exact"] and not r["without"]["exact"] for r in done)
    out["lost"] = sum(r["without"]["exact"] and not r["with"]["exact"] for r in done)
    out["with_snippets"] = sum(bool(r["with"]["snippets"]) for r in done)
    out["with_header"] = sum(r["with"].get("header_lines", 0) > 0 for r in done)
    found = [r for r in done if any(Path(r["module"]).parent.joinpath(Path(s[0]).name).exists() and
                                    _defines(Path(r["module"]).parent / Path(s[0]).name, r["name"])
                                    for s in r["with"]["snippets"])]
    out["definition_file_in_context"] = len(found)
    return out


def _defines(path: Path, name: str) -> bool:
    try:
        return name in top_level_names(ast.parse(path.read_text(encoding="utf-8")))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return False


async def typing_latency(t: Task, model: Path, threads: int, logs: Path, keystrokes: int,
                         context_tokens: int | None) -> dict[str, Any]:
    """The typing trace in ``t``'s module with context on and off: latency and tokens computed per keystroke."""
    typed = t.expected[:keystrokes]
    out: dict[str, Any] = {"module": str(t.module), "line": t.line + 1, "typed": typed}
    on = {} if context_tokens is None else {"contextTokens": context_tokens}
    for name, settings in (("without", {"contextTokens": 0}), ("with", on)):
        p = Pass(f"typing-{name}", settings, model, threads, logs)
        try:
            client = await p.ensure(t)
            uri = t.module.as_uri()
            p._open(client, t.module, cut(t.module.read_text(encoding="utf-8"), t))
            tail = LogTail(client.log_file)  # type: ignore[arg-type]
            latencies, computed = [], []
            for i, ch in enumerate(["", *typed]):
                if ch:
                    client.change(uri, i + 1, ch, (t.line, t.column + i - 1), (t.line, t.column + i - 1))
                t0 = time.perf_counter()
                await client.inline(uri, t.line, t.column + i)
                latencies.append((time.perf_counter() - t0) * 1000)
                await asyncio.sleep(0.05)  # let the log lines land
                computed.append(lsp_computed(tail.new()))
            snippets = (await client.status())["context"]["snippets"]
        finally:
            await p.close()
        out[name] = {"first_ms": round(latencies[0], 1), "first_computed": computed[0],
                     "p50_ms": percentile(latencies[1:], 0.5), "p95_ms": percentile(latencies[1:], 0.95),
                     "computed_per_keystroke": sum(computed[1:]) / len(computed[1:]),
                     "snippet_tokens": sum(s["tokens"] for s in snippets),
                     "latencies_ms": [round(x, 1) for x in latencies], "computed": computed}
    return out


def table(q: dict[str, Any], lat: dict[str, Any] | None) -> str:
    rows = [f"{q['n']} cross-file lines; the definition's file was among the snippets for "
            f"{q.get('definition_file_in_context', 0)}, some snippet for {q.get('with_snippets', 0)}; the file's "
            f"imports above the window were put back for {q.get('with_header', 0)}", "",
            "| context | EM | p50 per task |", "|---|---:|---:|"]
    for name in ("without", "with"):
        if f"em_{name}_context" in q:
            rows.append(f"| {name} | {q[f'em_{name}_context']:.1%} | {q[f'p50_task_ms_{name}_context']:.0f} ms |")
    if "gained" in q:
        rows.append(f"\nwith context: {q['gained']} lines gained, {q['lost']} lost")
    if lat:
        rows += ["", f"typing {len(lat['typed'])} keystrokes in {Path(lat['module']).name}:{lat['line']}", "",
                 "| context | first ms (tokens) | p50 ms | p95 ms | tokens computed / keystroke | snippet tokens |",
                 "|---|---:|---:|---:|---:|---:|"]
        for name in ("without", "with"):
            s = lat[name]
            rows.append(f"| {name} | {s['first_ms']:.0f} ({s['first_computed']}) | {s['p50_ms']:.0f} | "
                        f"{s['p95_ms']:.0f} | {s['computed_per_keystroke']:.1f} | {s['snippet_tokens']} |")
        rows.append(f"\np50 with / without: {lat['with']['p50_ms'] / lat['without']['p50_ms']:.2f}x")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="default: the server's default model")
    ap.add_argument("--limit", type=int, default=200, help="tasks (default 200)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--context-tokens", type=int, default=None, help="contextTokens with context (default: the server's)")
    ap.add_argument("--keystrokes", type=int, default=20, help="keystrokes of the typing trace (0: no trace)")
    ap.add_argument("--skip-quality", action="store_true", help="only the typing trace")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--logs", type=Path, help="keep the servers' logs here")
    args = ap.parse_args()
    model = args.model or default_model_path()
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    by_package = build_tasks(roots)
    tasks = pick(by_package, args.limit)
    print(f"{sum(map(len, by_package.values()))} cross-file lines in {len(by_package)} packages; "
          f"running {len(tasks)} from {len({t.package for t in tasks})} packages", flush=True)
    results: dict[str, Any] = {"model": str(model), "threads": args.threads, "limit": args.limit,
                               "context_tokens": args.context_tokens, "max_new_tokens": MAX_NEW_TOKENS}

    def write(data: dict[str, Any]) -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({**results, **data}, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        q: dict[str, Any] = {"n": 0}
        if not args.skip_quality:
            q = asyncio.run(quality(tasks, model, args.threads, logs, args.context_tokens,
                                    lambda rows: write(summarize(rows))))
        lat = None
        if args.keystrokes:
            trace_task = max(tasks, key=lambda t: (len(t.expected), str(t.module)))
            lat = asyncio.run(typing_latency(trace_task, model, args.threads, logs, args.keystrokes,
                                             args.context_tokens))
            results["typing"] = lat
            for name in ("with", "without"):
                results[f"p50_ms_{name}_context"] = lat[name]["p50_ms"]
                results[f"p95_ms_{name}_context"] = lat[name]["p95_ms"]
    write(q)
    print(table(q, lat))


if __name__ == "__main__":
    main()
