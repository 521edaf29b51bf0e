"""Editing sessions at the product's default settings: what a user meets outside one typing burst.

The real ``codellama-lsp --stdio`` runs on its default model with every setting at its
default (nothing is sent in ``initializationOptions``), driven as an editor drives it,
with a user's pauses. Each session takes two source files nobody here wrote (installed
packages' and the standard library's), with a few of their lines emptied to their
indentation (the lines the user will write):

1. open file A and read for ``--read-s`` seconds, the cursor resting at place A1
   (``codellama/cursorRest``, as both clients send it after 300 ms);
2. ask at A1 (``new place, rested``), then type the start of its real line, one request
   per keystroke (``typing``);
3. move to A2, rest ``--rest-s`` seconds, ask and type there;
4. back to A1 (``return: other place``); hover an undocumented function (``hover``), back to
   A1 (``return: after hover``); Explain a function (``instruct``), back to A1
   (``return: after instruct``);
5. open file B and ask at once (``first in a file just opened``), type there; back to A1
   and back to B1 (``return: other file``).

For every suggestion request: its latency, the prompt tokens the engine computed for it,
how it was served (the model; a warm-up or prefetch computed before it was asked; typed
through the suggestion shown), whether the engine started from a kept sequence, and whether
the time budget ended its generation. Then the same sessions run again, step for step, on a
second server whose time budget is lifted: each request's twin comes after the same edits,
places and snippets, so whether the shown text equals the twin's is the budget's cost to
quality alone. p50/p95 by kind of step; the server's RSS as the sessions left it, and
again once new places in other files have filled the prompt cache to its budget. Writes JSON (``--out``).

    python benchmarks/session.py [--sessions 2] [--out benchmarks/results/session.json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lsprotocol import types

from codellama_lsp.devtools.lsp_client import Client, start, stop
from codellama_lsp.service.metrics import percentile

ROOT = Path(__file__).resolve().parent.parent
UNBOUNDED_MS = 600_000.0
MODEL_KINDS = ("new place, rested", "first in a file just opened", "return: other place", "return: after hover",
               "return: after instruct", "return: other file")


def source(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise SystemExit(f"session.py: {module} is not installed")
    return Path(spec.origin)


# (file A, file B) per session: packages' and the standard library's code, none of it written here.
SESSIONS = [("shlex", "httpx._urls"), ("textwrap", "tqdm.utils"), ("fnmatch", "httpx._multipart")]


def places(lines: list[str], count: int) -> list[int]:
    """``count`` code lines inside function bodies, spread over the file: the lines the user writes."""
    found = [i for i, line in enumerate(lines)
             if line.startswith("        ") and 20 <= len(line.strip()) <= 70 and line.strip()[0].isalpha()
             and not line.strip().startswith(("return", "def ", "class ", "#", "raise", "elif", "else"))
             and lines[i - 1].strip() and not lines[i - 1].rstrip().endswith(("\\", ",", "(", "["))]
    if len(found) < count:
        raise SystemExit(f"session.py: only {len(found)} candidate lines")
    step = len(found) // count
    return [found[step * k + step // 2] for k in range(count)]


def undocumented(lines: list[str]) -> int | None:
    """The line of a ``def`` whose body has no docstring."""
    for i, line in enumerate(lines[:-1]):
        if line.lstrip().startswith("def ") and line.rstrip().endswith(":"):
            nxt = lines[i + 1].strip()
            if nxt and not nxt.startswith(('"""', "'''", 'r"""')):
                return i
    return None


@dataclass
class Doc:
    """One open document as the editor holds it, and the places being written in it."""

    uri: str
    lines: list[str]
    truth: dict[int, str]  # place line -> its real text (indentation excluded)
    version: int = 1

    @classmethod
    def emptied(cls, path: Path, n_places: int) -> "Doc":
        lines = path.read_text(encoding="utf-8").split("\n")
        truth = {}
        for i in places(lines, n_places):
            indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
            truth[i], lines[i] = lines[i].strip(), indent
        return cls(path.as_uri(), lines, truth)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def end_of(self, line: int) -> int:
        return len(self.lines[line].encode("utf-16-le")) // 2


@dataclass
class Request:
    session: int
    kind: str
    file: str
    line: int
    character: int
    latency_ms: float
    served: str  # model, warm-up/prefetch, typed through, typed ahead, superseded
    shown: str
    computed_tokens: int | None = None
    prompt_tokens: int | None = None
    restored: bool | None = None
    stop_reason: str | None = None
    document: str = field(default="", repr=False)
    unbounded: str | None = None

    @property
    def same_as_unbounded(self) -> bool | None:
        return None if self.unbounded is None else self.shown == self.unbounded


SERVED = {"answered": "model", "empty": "model", "prefetched": "warm-up/prefetch", "revisited": "answered before",
          "typed_through": "typed through",
          "typed_ahead": "typed ahead", "superseded": "superseded"}


class Session:
    def __init__(self, client: Client, number: int) -> None:
        self.client, self.number = client, number
        self.requests: list[Request] = []
        self.other: list[dict[str, Any]] = []

    async def rest(self, doc: Doc, line: int, seconds: float) -> None:
        self.client.protocol.notify("codellama/cursorRest", {"textDocument": {"uri": doc.uri},
                                                             "position": {"line": line, "character": doc.end_of(line)}})
        await asyncio.sleep(seconds)

    async def ask(self, doc: Doc, line: int, kind: str) -> Request:
        before = (await self.client.status())
        character = doc.end_of(line)
        t0 = time.perf_counter()
        shown = await self.client.inline(doc.uri, line, character)
        ms = (time.perf_counter() - t0) * 1000
        after = await self.client.status()
        outcome = next((k for k in SERVED if after["requests"].get(k, 0) > before["requests"].get(k, 0)), "answered")
        r = Request(self.number, kind, Path(doc.uri).name, line, character, ms, SERVED[outcome], shown,
                    document=doc.text)
        gen = after.get("last_generation")
        if outcome in ("answered", "empty") and gen and gen is not before.get("last_generation") \
                and gen != before.get("last_generation") and gen["what"].startswith("completion"):
            r.computed_tokens, r.prompt_tokens = gen["computed_tokens"], gen["prompt_tokens"]
            r.restored, r.stop_reason = gen["restored"], gen["stop_reason"]
        elif outcome == "prefetched":
            r.computed_tokens = 0
        self.requests.append(r)
        print(f"  {kind:28s} {Path(doc.uri).name}:{line + 1:<5d} {ms:7.0f} ms  {r.served:16s} "
              f"computed {r.computed_tokens!s:>5s}  {shown[:50]!r}", flush=True)
        return r

    async def type_at(self, doc: Doc, line: int, n: int, pause_s: float = 0.15) -> None:
        """Type the first ``n`` characters of the place's real line, asking after each keystroke."""
        for ch in doc.truth[line][:n]:
            at = doc.end_of(line)
            doc.version += 1
            doc.lines[line] += ch
            self.client.change(doc.uri, doc.version, ch, (line, at), (line, at))
            await asyncio.sleep(pause_s)
            await self.ask(doc, line, "typing")

    async def hover(self, doc: Doc, line: int) -> None:
        t0 = time.perf_counter()
        result = await self.client.text_document_hover_async(types.HoverParams(
            text_document=types.TextDocumentIdentifier(uri=doc.uri), position=types.Position(line, 6)))
        ms = (time.perf_counter() - t0) * 1000
        text = result.contents.value if result is not None and hasattr(result.contents, "value") else ""
        self.other.append({"session": self.number, "kind": "hover", "latency_ms": ms, "shown": text})
        print(f"  {'hover':28s} {Path(doc.uri).name}:{line + 1:<5d} {ms:7.0f} ms  {text[:60]!r}", flush=True)

    async def explain(self, doc: Doc, line: int) -> None:
        at = {"line": line, "character": 4}
        found = await self.client.raw_request("textDocument/codeAction", {
            "textDocument": {"uri": doc.uri}, "range": {"start": at, "end": at}, "context": {"diagnostics": []}})
        action = next((a for a in found or [] if a["title"] == "codellama: Explain"), None)
        if action is None:
            print("  (no Explain offered)")
            return
        t0 = time.perf_counter()
        answer = await self.client.instruct(dict(action["command"]["arguments"][0]))
        ms = (time.perf_counter() - t0) * 1000
        text = answer.get("markdown", "") if isinstance(answer, dict) else ""
        self.other.append({"session": self.number, "kind": "instruct", "latency_ms": ms, "shown": text})
        print(f"  {'instruct (Explain)':28s} {Path(doc.uri).name}:{line + 1:<5d} {ms:7.0f} ms  {text[:60]!r}", flush=True)

    async def run(self, a: Doc, b: Doc, read_s: float, rest_s: float) -> None:
        (a1, a2), (b1,) = sorted(a.truth), sorted(b.truth)
        self.client.open(a.uri, a.text)
        await self.rest(a, a1, read_s)
        await self.ask(a, a1, "new place, rested")
        await self.type_at(a, a1, 6)
        await self.rest(a, a2, rest_s)
        await self.ask(a, a2, "new place, rested")
        await self.type_at(a, a2, 4)
        await self.rest(a, a1, 0.4)
        await self.ask(a, a1, "return: other place")
        d = undocumented(a.lines)
        if d is not None:
            await self.hover(a, d)
            await self.rest(a, a1, 0.4)
            await self.ask(a, a1, "return: after hover")
            await self.explain(a, d + 1)
            await self.rest(a, a1, 0.4)
            await self.ask(a, a1, "return: after instruct")
        self.client.open(b.uri, b.text)
        await asyncio.sleep(0.4)
        await self.ask(b, b1, "first in a file just opened")
        await self.type_at(b, b1, 4)
        await self.rest(a, a1, 0.4)
        await self.ask(a, a1, "return: other file")
        await self.rest(b, b1, 0.4)
        await self.ask(b, b1, "return: other file")


# Files visited after the sessions, one new place each, until the prompt cache is full.
FILL = ("difflib", "argparse", "calendar", "configparser", "tarfile", "zipfile", "smtplib", "imaplib", "ftplib",
        "pydoc", "inspect", "dataclasses", "enum", "csv", "gettext", "optparse", "pickletools", "pprint", "random",
        "statistics", "tempfile", "threading", "traceback", "typing", "uuid", "mailbox", "plistlib", "selectors",
        "tokenize", "trace", "webbrowser", "http.cookiejar", "urllib.parse", "asyncio.tasks", "shutil", "subprocess",
        "ipaddress", "fractions", "decimal", "pathlib", "platform", "socket", "ssl", "codecs", "locale")


async def fill_cache(client: Client) -> dict[str, Any]:
    """Ask at new places in other files until one more kept sequence would pass the cache's budget; its status then."""
    s = Session(client, -1)
    for module in FILL:
        cache = (await client.status())["prompt_cache"]
        largest = max((seq["bytes"] for seq in cache["sequences"]), default=0)
        if cache["bytes"] + largest >= cache["budget_bytes"]:
            break
        doc = Doc.emptied(source(module), 1)
        client.open(doc.uri, doc.text)
        await s.ask(doc, next(iter(doc.truth)), "filling the prompt cache")
    return (await client.status())["prompt_cache"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def unbounded(requests: list[Request], sessions: list[tuple[str, str]], log: Path, args: argparse.Namespace) -> None:
    """The same sessions again, step for step, on a second server whose time budget is lifted.

    Each request is paired with its twin: the same place, after the same edits, pauses, places,
    snippets and suggestions before it, so the only difference is the budget. Its shown text is
    what the user would have seen without the budget.
    """
    client = await start(None, log, threads=args.threads, options={"timeBudgetMs": UNBOUNDED_MS})
    twins: list[Request] = []
    try:
        await client.wait_loaded(timeout=600)
        for number, (a, b) in enumerate(sessions):
            s = Session(client, number)
            await s.run(Doc.emptied(source(a), 2), Doc.emptied(source(b), 1), args.read_s, args.rest_s)
            twins += s.requests
    finally:
        await stop(client)
    for r, twin in zip(requests, twins):
        if (r.kind, r.file, r.line, r.character) == (twin.kind, twin.file, twin.line, twin.character):
            r.unbounded = twin.shown


def table(requests: list[Request], other: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    kinds = [*MODEL_KINDS[:1], "typing", *MODEL_KINDS[1:]]
    groups: list[tuple[str, list[float], list[Request]]] = []
    for kind in kinds:
        rs = [r for r in requests if r.kind == kind]
        groups.append((kind, [r.latency_ms for r in rs], rs))
        if kind == "typing":
            model = [r for r in rs if r.served == "model"]
            groups.append(("typing, reached the model", [r.latency_ms for r in model], model))
    for kind in ("hover", "instruct"):
        groups.append((kind, [o["latency_ms"] for o in other if o["kind"] == kind], []))
    groups.append(("all suggestion requests", [r.latency_ms for r in requests], requests))
    for kind, ms, rs in groups:
        computed = [r.computed_tokens for r in rs if r.computed_tokens is not None]
        compared = [r.same_as_unbounded for r in rs if r.same_as_unbounded is not None]
        rows.append({
            "kind": kind, "n": len(ms), "p50_ms": percentile(ms, 0.5), "p95_ms": percentile(ms, 0.95),
            "max_computed_tokens": max(computed) if computed else None,
            "from_kept_sequence": sum(1 for r in rs if r.restored),
            "warm_or_prefetched": sum(1 for r in rs if r.served == "warm-up/prefetch"),
            "cut_by_budget": sum(1 for r in rs if r.stop_reason == "time"),
            "same_as_unbounded": f"{sum(compared)}/{len(compared)}" if compared else "",
        })
    return rows


def fmt(v: Any) -> str:
    return "" if v is None else f"{v:.0f}" if isinstance(v, float) else str(v)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--read-s", type=float, default=10.0, help="reading time after opening the first file")
    ap.add_argument("--rest-s", type=float, default=3.0, help="the cursor's rest before asking at a new place")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-unbounded", action="store_true", help="skip the comparison with unbounded suggestions")
    ap.add_argument("--no-fill", action="store_true", help="skip filling the prompt cache before RSS is read")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "session.json")
    args = ap.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="session-"))
    client = await start(None, logs / "server.log", threads=args.threads)
    requests: list[Request] = []
    other: list[dict[str, Any]] = []
    try:
        status = await client.wait_loaded(timeout=600)
        print(f"model {status['model']} on {status['engine']}, {args.threads} threads; defaults: "
              f"{status['budgets']}, prompt cache {status['prompt_cache']['budget_bytes'] >> 20} MB", flush=True)
        for number, (a, b) in enumerate(SESSIONS[: args.sessions]):
            print(f"session {number + 1}: {a}, {b}", flush=True)
            s = Session(client, number)
            await s.run(Doc.emptied(source(a), 2), Doc.emptied(source(b), 1), args.read_s, args.rest_s)
            requests += s.requests
            other += s.other
        status = await client.status()
        rss = rss_mb(client.process.pid)
        full: dict[str, Any] | None = None
        if not args.no_fill:
            print("filling the prompt cache: a new place in each of several other files", flush=True)
            full = await fill_cache(client)
            full_rss = rss_mb(client.process.pid)
    finally:
        await stop(client)
    if not args.no_unbounded:
        print("unbounded: the same sessions again, the time budget lifted", flush=True)
        await unbounded(requests, SESSIONS[: args.sessions], logs / "unbounded.log", args)
    rows = table(requests, other)
    cache = status["prompt_cache"]
    model_mb = Path(status["model"]).stat().st_size / 2**20
    head = ["kind", "n", "p50_ms", "p95_ms", "max_computed_tokens", "from_kept_sequence", "warm_or_prefetched",
            "cut_by_budget", "same_as_unbounded"]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(fmt(row[h]) for h in head) + " |")
    print(f"\nRSS {rss:.0f} MB; prompt cache {cache['bytes'] / 2**20:.0f} MB of {cache['budget_bytes'] >> 20} MB in "
          f"{len(cache['sequences'])} sequences, {cache['hits']} hits; model file {model_mb:.0f} MB; "
          f"RSS - cache - model = {rss - cache['bytes'] / 2**20 - model_mb:.0f} MB")
    memory: dict[str, Any] = {"after_sessions_mb": rss, "model_mb": model_mb}
    if full is not None:
        budget = full["budget_bytes"] / 2**20
        print(f"with the prompt cache full ({full['bytes'] / 2**20:.0f} MB in {len(full['sequences'])} sequences): "
              f"RSS {full_rss:.0f} MB against budget {budget:.0f} + model {model_mb:.0f} + 300 = "
              f"{budget + model_mb + 300:.0f} MB; RSS - cache - model = {full_rss - full['bytes'] / 2**20 - model_mb:.0f} MB")
        memory.update(full_mb=full_rss, full_cache_bytes=full["bytes"], full_sequences=len(full["sequences"]),
                      budget_mb=budget)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "settings": "the product's defaults", "threads": args.threads, "budgets": status["budgets"],
        "table": rows, "rss_mb": rss, "prompt_cache": cache, "model_mb": model_mb, "memory": memory,
        "requests": [{**{k: v for k, v in asdict(r).items() if k != "document"}, "same_as_unbounded": r.same_as_unbounded}
                     for r in requests],
        "other": other,
    }, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
