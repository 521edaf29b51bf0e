"""Completion quality in six languages, with the cursor after a line's indentation or inside a line.

Sources, fetched once into ``~/.cache/codellama-lsp/bench-sources`` with the registries' own
clients (``apt-get download`` + ``dpkg -x``, ``npm pack``): real code the default model is
unlikely to have memorised verbatim. How the packages were chosen: for Go, Rust and Python,
a seeded draw (``random.Random(27).sample``) from ``apt-cache search`` of Debian's
``golang-github-*-dev``, ``librust-*-dev`` (feature packages left out) and ``python3-*`` names,
leaving out a few famous organisations and crates (google, kubernetes, hashicorp, serde,
tokio, ...); of the draw, the first packages that ship source code. For C, the same draw from
Debian's ``*-dkms`` packages (out-of-tree kernel modules, whose ``.c`` files ship); for C++,
two small header-only libraries with their implementation in the headers. For JavaScript,
TypeScript and Java, React Native modules with around 1k to 75k monthly downloads from the npm
registry (Java in their ``android/`` sources). ``SOURCES`` names them all.

Tasks, per language and seed (``--per`` of each kind): lines drawn uniformly from the code lines
of its files (6 to 120 characters, not a comment, at least two word characters; test files and
build outputs left out), each line once.

* ``single``: the line's content is removed, its indentation and newline kept; the cursor is at
  the end of the indentation; expected: the content.
* ``mid``: the cursor at a random character inside the line's content (one character at least
  on each side), the rest of the line removed; expected: the removed rest.

Exact match: the suggestion's first line equals the expected text, compared without
surrounding whitespace for ``single`` and without trailing whitespace for ``mid`` (where a
leading space is part of the answer).

Systems, each task in every one:

* ``ours``: the product's path at its defaults: the server's settings for the CPU
  (``for_backend``: 512 prefix and 64 suffix tokens, the 1,500 ms time budget in force), the
  default model on the local engine as the server loads it (``open_for``), ``plan`` with token
  healing as the server asks for it, ``generation_request``, ``shown``.
* ``ours_noheal`` (mid-line tasks): the same with ``tokenHealing`` off.
* ``bare``: the unhealed prompt's ids through the same llama.cpp model, greedy, with no time
  budget, up to the first newline, with no post-processing: the model's own answer.
* ``bare_post``: that generation through our stop rule and post-processing (``shown``).

``bare`` runs on the product's own llama.cpp engine rather than a second llama-cpp-python
instance, so that it starts from the unhealed prompt ``ours_noheal`` (or, at an indentation,
``ours``) left in the KV cache and costs only its decoding; an earlier run with a separate
llama-cpp-python instance (docs/measurements.md) differed from it in one answer of 96, from
the prompt's chunking.

Confidence gating: ``ours``' answers are scored before ``minConfidence``, with two statistics of
their first line's token probabilities: ``mean`` (geometric) and ``least`` (the least probable
token's: ``completion.confidence``, what ``minConfidence`` compares); the table after the EM
table gives, for each threshold, the share of exact answers kept and of wrong ones dropped.

For ``ours``, a multi-line suggestion is checked with tree-sitter where the language has a
grammar: ``complete``, the document with the suggestion has no more syntax errors than without
it. Run: ``nice -n 19 python benchmarks/languages.py --json benchmarks/results/languages.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


from codellama_lsp.completion.confidence import confidence, mean_confidence  # noqa: E402
from codellama_lsp.completion.context import TokenCounter  # noqa: E402
from codellama_lsp.completion.families import detect  # noqa: E402
from codellama_lsp.completion.planning import Plan, generation_request, plan, shown  # noqa: E402
from codellama_lsp.completion.syntax import errors, parser  # noqa: E402
from codellama_lsp.documents import Document  # noqa: E402
from codellama_lsp.settings import Settings, for_backend  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "codellama-lsp" / "bench-sources"
# language group -> (registry, package) pairs
SOURCES: dict[str, list[tuple[str, str]]] = {
    "python": [("deb", "python3-fhs"), ("deb", "python3-flaky"), ("deb", "python3-biplist")],
    "js/ts": [("npm", "react-native-advanced-input-mask@1.4.6"), ("npm", "react-native-a11y-slider@1.3.2"),
              ("npm", "react-native-add-calendar-event@5.0.0")],
    "go": [("deb", "golang-github-shurcool-graphql-dev"), ("deb", "golang-github-mgutz-minimist-dev"),
           ("deb", "golang-github-gocarina-gocsv-dev")],
    "rust": [("deb", "librust-rmp-dev"), ("deb", "librust-inflector-dev"), ("deb", "librust-i18n-config-dev")],
    "c/c++": [("deb", "langford-dkms"), ("deb", "dm-writeboost-dkms"), ("deb", "xtrx-dkms"),
              ("deb", "libtsl-hopscotch-map-dev"), ("deb", "libutfcpp-dev")],
    "java": [("npm", "react-native-add-calendar-event@5.0.0"), ("npm", "react-native-adjust-oaid@4.38.1"),
             ("npm", "react-native-advertising-id@1.0.11")],
}
# extension -> LSP language id, per group
EXTENSIONS: dict[str, dict[str, str]] = {
    "python": {".py": "python"},
    "js/ts": {".js": "javascript", ".ts": "typescript", ".tsx": "typescriptreact"},
    "go": {".go": "go"},
    "rust": {".rs": "rust"},
    "c/c++": {".c": "c", ".h": "cpp", ".hpp": "cpp"},
    "java": {".java": "java"},
}
SKIP = re.compile(r"(^|/)(tests?|build|__tests__|examples?|benches)/|_test\.go$|(^|/)test_|\.d\.ts$|\.min\.js$")
COMMENT = ("#", "//", "/*", "*", '"""', "'''")
MODES = ("single", "mid")


@dataclass(frozen=True)
class Task:
    group: str
    language: str
    path: str  # inside the package, for the log
    mode: str
    text: str  # the document as the user has it
    line: int
    column: int
    expected: str

    def matches(self, suggestion: str) -> bool:
        first = suggestion.split("\n", 1)[0]
        if self.mode == "single":
            return first.strip() == self.expected.strip()
        return first.rstrip() == self.expected.rstrip()


def fetch(registry: str, package: str) -> Path:
    """The package's files, unpacked under ``CACHE`` (downloaded the first time)."""
    name = package.split("@")[0]
    out = CACHE / name
    if out.is_dir():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f".{name}"
    tmp.mkdir(exist_ok=True)
    if registry == "deb":
        subprocess.run(["apt-get", "download", package], cwd=tmp, check=True, capture_output=True)
        archive = next(tmp.glob("*.deb"))
        subprocess.run(["dpkg", "-x", str(archive), str(out)], check=True)
    else:
        subprocess.run(["npm", "pack", package], cwd=tmp, check=True, capture_output=True)
        archive = next(tmp.glob("*.tgz"))
        out.mkdir()
        subprocess.run(["tar", "xzf", str(archive), "-C", str(out)], check=True)
    return out


def code_lines(text: str) -> list[int]:
    """The lines a task may be made of."""
    out = []
    for i, line in enumerate(text.split("\n")):
        s = line.strip()
        if 6 <= len(s) <= 120 and not s.startswith(COMMENT) and len(re.findall(r"\w", s)) >= 2:
            out.append(i)
    return out


def make_tasks(group: str, per: int, rng: random.Random) -> list[Task]:
    files: list[tuple[str, str, str]] = []  # (language, path, text)
    for registry, package in SOURCES[group]:
        root = fetch(registry, package)
        for path in sorted(root.rglob("*")):
            rel = str(path.relative_to(root))
            language = EXTENSIONS[group].get(path.suffix)
            if language is None or SKIP.search(rel) or not path.is_file():
                continue
            files.append((language, f"{package}/{rel}", path.read_text(encoding="utf-8", errors="replace")))
    pool = [(f, i) for f, (_, _, text) in enumerate(files) for i in code_lines(text)]
    drawn = rng.sample(pool, min(len(pool), 2 * per))
    tasks = []
    for k, (f, i) in enumerate(drawn):
        language, path, text = files[f]
        lines = text.split("\n")
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        mode = MODES[k % 2]
        if mode == "single":
            lines[i] = line[:indent]
            tasks.append(Task(group, language, path, mode, "\n".join(lines), i, indent, line.strip()))
        else:
            end = len(line.rstrip())
            cut = rng.randrange(indent + 1, end)
            lines[i] = line[:cut]
            tasks.append(Task(group, language, path, mode, "\n".join(lines), i, cut, line[cut:end]))
    return tasks


def complete(task: Task, text: str) -> bool | None:
    """Whether ``text`` inserted at the task's cursor adds no syntax error; None without a grammar."""
    grammar = parser(task.language)
    if grammar is None:
        return None
    lines = task.text.split("\n")
    before = "\n".join(lines[:task.line]) + "\n" + lines[task.line][:task.column]
    after = lines[task.line][task.column:] + "\n" + "\n".join(lines[task.line + 1:])
    return errors(grammar, before + text + after) <= errors(grammar, before + after)


class Systems:
    def __init__(self) -> None:
        """The default model as the server opens it, with its threads (physical cores)."""
        from codellama_lsp.loading import default_model_path, open_for

        self.loop = asyncio.new_event_loop()
        model = default_model_path()
        self.backend = open_for(model, Settings())
        self.template = detect(self.backend.tokenizer)
        self.settings, _ = for_backend(Settings(), self.backend)  # the server's path to the settings in force
        self.counter = TokenCounter(self.backend.tokenizer.encode)
        self.unbounded = replace(self.settings, time_budget_ms=600_000.0)

    def plan(self, task: Task, heal: bool) -> Plan:
        doc = Document.from_text(f"file:///{task.path}", task.text, language_id=task.language, encoding="utf-32")
        return plan(doc, doc.cursor(task.line, task.column), self.settings, self.template, self.backend.tokenizer,
                    self.counter, heal=heal and self.backend.heals)

    def ours(self, task: Task, heal: bool) -> tuple[str, float, float | None, float | None]:
        """(shown text, ms, the first line's geometric mean token probability, its least probable
        token's probability: ``confidence``), the text before ``minConfidence``: the benchmark
        scores every threshold of both."""
        p = self.plan(task, heal)
        t0 = time.perf_counter()
        result = self.loop.run_until_complete(self.backend.agenerate(generation_request(p, self.settings)))
        ms = (time.perf_counter() - t0) * 1000
        decode = self.backend.tokenizer.decode_infilling
        return (shown(result, p), ms, mean_confidence(result.token_ids, result.logprobs, decode),
                confidence(result.token_ids, result.logprobs, decode))

    def bare_call(self, task: Task) -> tuple[str, str]:
        """(raw first line, post-processed) from one greedy llama.cpp generation on the unhealed prompt,
        with no time budget: the same engine, so the prompt is the one ``ours_noheal`` left cached."""
        p = self.plan(task, heal=False)
        request = generation_request(p, self.unbounded)
        result = self.loop.run_until_complete(self.backend.agenerate(request))
        return result.text.split("\n", 1)[0], shown(result, p)


THRESHOLDS = tuple(i / 20 for i in range(20))  # 0, 0.05, ..., 0.95


def gating_curve(log: list[dict]) -> list[dict]:
    """For each statistic and threshold, what ``minConfidence`` would do to ``ours``' shown answers:
    the share of exact ones kept, of wrong ones dropped, and the exact match left."""
    shown_ = [e for e in log if e["ours"] and e["least"] is not None]
    exact = [e for e in shown_ if e["exact"]]
    wrong = [e for e in shown_ if not e["exact"]]
    rows = []
    print(f"\nconfidence gating over ours' {len(shown_)} shown answers ({len(exact)} exact, {len(wrong)} wrong):")
    print(f"{'statistic':10} {'min':>5} {'exact kept':>11} {'wrong dropped':>14} {'EM left':>8} {'shown':>6}")
    for stat in ("mean", "least"):
        for t in THRESHOLDS:
            kept = sum(e[stat] >= t for e in exact)
            dropped = sum(e[stat] < t for e in wrong)
            row = {"statistic": stat, "threshold": t, "exact_kept": kept / max(1, len(exact)),
                   "wrong_dropped": dropped / max(1, len(wrong)), "em_left": kept / max(1, len(log)),
                   "shown": (kept + len(wrong) - dropped) / max(1, len(log))}
            rows.append(row)
            print(f"{stat:10} {t:5.2f} {100 * row['exact_kept']:10.1f}% {100 * row['wrong_dropped']:13.1f}% "
                  f"{100 * row['em_left']:7.1f}% {100 * row['shown']:5.1f}%")
    return rows


def run_tasks(tasks: list[Task], systems: Systems, hits: dict[tuple[str, str, str], list[bool]],
              multi: dict[str, list[bool | None]], log: list[dict]) -> None:
    """Each task through every system: its scores into ``hits`` and ``multi``, its answers into ``log``."""
    for task in tasks:
        got: dict[str, str] = {}
        got["ours"], ms, mean, least = systems.ours(task, heal=True)
        if task.mode == "mid":
            got["ours_noheal"], *_ = systems.ours(task, heal=False)
        got["bare"], got["bare_post"] = systems.bare_call(task)
        for name, text in got.items():
            hits[(task.group, task.mode, name)].append(task.matches(text))
        if "\n" in got["ours"]:
            multi[task.group].append(complete(task, got["ours"]))
        log.append({"group": task.group, "language": task.language, "path": task.path, "mode": task.mode,
                    "line": task.line, "column": task.column, "expected": task.expected, "ms": round(ms),
                    "mean": mean, "least": least, "exact": task.matches(got["ours"]), **got})
        print(f"{task.group:6} {task.mode:6} {task.expected[:30]!r:34} ours {got['ours'][:30]!r}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per", type=int, default=8, help="tasks per language and kind of cut")
    ap.add_argument("--seed", type=int, default=27)
    ap.add_argument("--groups", default=",".join(SOURCES))
    ap.add_argument("--json", type=Path)
    ns = ap.parse_args(argv)
    groups = [g.strip() for g in ns.groups.split(",") if g.strip()]
    by_group = [make_tasks(g, ns.per, random.Random(f"{ns.seed}:{g}")) for g in groups]
    # Round robin over the languages, so that a run cut short (SIGTERM, Ctrl-C) still scores each alike.
    tasks = [t for row in itertools.zip_longest(*by_group) for t in row if t is not None]
    systems = Systems()
    hits: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    multi: dict[str, list[bool | None]] = defaultdict(list)
    log = []
    t_all = time.perf_counter()

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        run_tasks(tasks, systems, hits, multi, log)
    except KeyboardInterrupt:
        print(f"cut short after {len(log)} of {len(tasks)} tasks; scoring those", file=sys.stderr)
    tasks = tasks[:len(log)]
    seconds = time.perf_counter() - t_all
    names = ("ours", "ours_noheal", "bare", "bare_post")
    results: dict[str, object] = {"seconds": round(seconds), "per": ns.per, "seed": ns.seed, "sources": SOURCES}
    table = []
    print(f"\n{'language':8} {'cut':6} {'n':>3} " + " ".join(f"{n:>11}" for n in names))
    for g in groups:
        for mode in MODES:
            row = {n: hits[(g, mode, n)] for n in names if hits[(g, mode, n)]}
            if not row:
                continue
            n = len(row["ours"])
            cells = " ".join(f"{100 * sum(row[x]) / n:10.1f}%" if x in row else f"{'':>11}" for x in names)
            print(f"{g:8} {mode:6} {n:3} {cells}")
            table.append({"group": g, "mode": mode, "n": n, **{x: sum(v) / n for x, v in row.items()}})
    for mode in MODES:
        row = {n: [h for g in groups for h in hits[(g, mode, n)]] for n in names}
        n = len(row["ours"])
        cells = " ".join(f"{100 * sum(v) / n:10.1f}%" if v else f"{'':>11}" for x, v in row.items())
        print(f"{'all':8} {mode:6} {n:3} {cells}")
        table.append({"group": "all", "mode": mode, "n": n, **{x: sum(v) / n for x, v in row.items() if v}})
    checked = {g: [c for c in v if c is not None] for g, v in multi.items()}
    print("\nmulti-line suggestions of ours (complete: no syntax error added, where a grammar exists):")
    for g in groups:
        print(f"  {g:8} {len(multi[g]):3} multi-line, {len(checked.get(g, []))} with a grammar, "
              f"{sum(checked.get(g, []))} complete")
    curve = gating_curve(log)
    print(f"{len(tasks)} tasks in {seconds:.0f} s")
    results.update(table=table, gating=curve, multiline={g: {"n": len(multi[g]), "checked": len(checked.get(g, [])),
                                               "complete": sum(checked.get(g, []))} for g in groups}, log=log)
    if ns.json:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
