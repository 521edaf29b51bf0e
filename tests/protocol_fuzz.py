"""A seeded protocol fuzzer for the stdio server: used by tests/test_protocol_fuzz.py and scripts/fuzz_protocol.py.

It sends a stream of well-formed and malformed messages (mutated params, broken
envelopes, batches, look-alike nested messages, framing faults that must not swallow
the frames after them) and checks what the server promises: it stays up, every request
in a well-delimited frame with a usable id gets exactly one response with that id,
nothing answers an id that was never sent, and every byte it writes is strictly framed,
standard JSON.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raw_lsp import RawServer, frame

SOURCE = "import os\n\n\ndef add(a, b):\n    return a + b\n\n\nclass Greeter:\n    def greet(self, name):\n        return name\n"
JS = "function add(a, b) {\n  return a + b;\n}\n"
ODD_VALUES: list[Any] = [None, True, False, 0, -1, 2**31, 2**63, 1.5, -0.0, 1e308, "", "x", "\u0000", "😀", "\ud800",
                         [], [None], {}, {"jsonrpc": "2.0", "id": "lookalike", "method": "shutdown"},
                         {"jsonrpc": "2.0", "method": "exit"}, "a" * 10000, [[[[[[[[[[[]]]]]]]]]]]]


@dataclass
class Report:
    seed: int
    messages: int = 0  # frames (and framing faults) sent
    expected: int = 0  # requests that must get exactly one response
    responses: int = 0  # responses received, all ids
    errors: int = 0  # error responses among them
    rss_start_kib: int = 0
    rss_end_kib: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"seed {self.seed}: {self.messages} messages, {self.expected} requests expecting an answer, "
                f"{self.responses} responses ({self.errors} errors), RSS {self.rss_start_kib / 1024:.0f} -> "
                f"{self.rss_end_kib / 1024:.0f} MiB, {self.seconds:.1f} s, {len(self.problems)} problems")


def _mutate(value: Any, rng: random.Random) -> Any:
    """``value`` with one randomly chosen node replaced by an odd value."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        return {**value, key: _mutate(value[key], rng)}
    if isinstance(value, list) and value and rng.random() < 0.8:
        i = rng.randrange(len(value))
        return value[:i] + [_mutate(value[i], rng)] + value[i + 1:]
    return rng.choice(ODD_VALUES)


class Fuzzer:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.n = 0
        self.versions: dict[str, int] = {}
        self.lines: dict[str, int] = {}

    def _id(self) -> Any:
        self.n += 1
        return self.n if self.rng.random() < 0.5 else f"fz-{self.n}"

    def _uri(self) -> str:
        return self.rng.choice(list(self.versions) or ["file:///none.py"])

    def _position(self, uri: str) -> dict[str, int]:
        lines = self.lines.get(uri, 3)
        return {"line": self.rng.randrange(lines + 2), "character": self.rng.randrange(40)}

    def request(self) -> tuple[str, Any]:
        uri = self._uri()
        pos = self._position(uri)
        rng = {"start": pos, "end": pos}
        r = self.rng.random()
        if r < 0.3:
            return "workspace/executeCommand", {"command": "codellama.status",
                                                "arguments": [self.rng.choice(ODD_VALUES)]}
        if r < 0.5:
            return "textDocument/hover", {"textDocument": {"uri": uri}, "position": pos}
        if r < 0.7:
            return "textDocument/codeAction", {"textDocument": {"uri": uri}, "range": rng,
                                               "context": {"diagnostics": [], "only": ["refactor"]}}
        if r < 0.8:
            return "codeAction/resolve", {"title": "Generate docstring",
                                          "data": {"uri": uri, "line": pos["line"], "character": 0,
                                                   "version": self.versions.get(uri, 0)}}
        if r < 0.9:
            return "textDocument/completion", {"textDocument": {"uri": uri}, "position": pos}
        return "textDocument/inlineCompletion", {"textDocument": {"uri": uri}, "position": pos,
                                                 "context": {"triggerKind": 2}}

    def notification(self) -> tuple[str, Any]:
        r = self.rng.random()
        if r < 0.15 or not self.versions:
            uri = f"file:///doc{self.rng.randrange(6)}.{self.rng.choice(['py', 'js', 'txt'])}"
            text = self.rng.choice([SOURCE, JS, SOURCE * 50, "", "x\r\ny\rz\n", "\ud800\x00"])
            self.versions[uri], self.lines[uri] = 1, text.count("\n") + 1
            return "textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": self.rng.choice(
                ["python", "javascript", "", "plaintext"]), "version": 1, "text": text}}
        uri = self._uri()
        if r < 0.2:
            self.versions.pop(uri, None)
            return "textDocument/didClose", {"textDocument": {"uri": uri}}
        if r < 0.25:
            return "$/cancelRequest", {"id": self.rng.randrange(self.n + 1)}
        self.versions[uri] = self.versions.get(uri, 0) + 1
        a, b = self._position(uri), self._position(uri)
        text = self.rng.choice(["x", "\n", "def f():\n    ", "", "😀", "\r\n\r\n", "    return 1\n"])
        self.lines[uri] = self.lines.get(uri, 3) + text.count("\n")
        return "textDocument/didChange", {"textDocument": {"uri": uri, "version": self.versions[uri]},
                                          "contentChanges": [{"range": {"start": a, "end": b}, "text": text}]}

    def item(self) -> tuple[bytes, Any, Any]:
        """(bytes to send, the id that must be answered exactly once, an id that may be answered at most once)."""
        r = self.rng.random()
        if r < 0.35:  # a good request
            msg_id = self._id()
            method, params = self.request()
            return frame({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}), msg_id, None
        if r < 0.6:  # a good notification
            method, params = self.notification()
            return frame({"jsonrpc": "2.0", "method": method, "params": params}), None, None
        if r < 0.75:  # a request with mutated params: still one answer
            msg_id = self._id()
            method, params = self.request()
            return frame({"jsonrpc": "2.0", "id": msg_id, "method": method,
                          "params": _mutate(params, self.rng)}), msg_id, None
        if r < 0.82:  # a notification with mutated params: no answer (a window/logMessage at most)
            method, params = self.notification()
            return frame({"jsonrpc": "2.0", "method": method, "params": _mutate(params, self.rng)}), None, None
        if r < 0.87:  # envelopes
            msg_id = self._id()
            variants = [
                ({"jsonrpc": "1.0", "id": msg_id, "method": "shutdown"}, msg_id),
                ({"jsonrpc": "2.0", "id": msg_id, "method": self.rng.choice([None, 5, [], {}])}, msg_id),
                ({"jsonrpc": "2.0", "id": msg_id, "method": "textDocument/didOpen", "params": {}}, msg_id),
                ({"jsonrpc": "2.0", "id": msg_id, "method": "no/such/" + "m" * self.rng.randrange(5000)}, msg_id),
                ({"jsonrpc": "2.0", "id": self.rng.choice([None, 1.5, True, [], {}]), "method": "shutdown"}, None),
                ([{"jsonrpc": "2.0", "id": msg_id, "method": "shutdown"}], msg_id),
                ({"jsonrpc": "2.0", "id": f"nobody-{msg_id}", "result": 1}, None),
                ({"jsonrpc": "2.0", "method": "textDocument/hover", "params": {}}, None),
            ]
            payload, expect = self.rng.choice(variants)
            return frame(payload), expect, None
        if r < 0.92:  # bodies that are not JSON
            body = self.rng.choice([b"{", b"", b"\xff", b'{"a": NaN}', b"[1e999]", b"nul", b"{" * 5000,
                                    b'{"jsonrpc": "2.0", "id": 1e999, "method": "shutdown"}'])
            return frame(body), None, None
        # framing faults that leave the following frame readable
        good_id = self._id()
        good = json.dumps({"jsonrpc": "2.0", "id": good_id, "method": "workspace/executeCommand",
                           "params": {"command": "codellama.status"}}).encode()
        faults = [
            (b"garbage\r\n" + frame(good), good_id, None),
            (b"Content-Length: 99999999999999\r\n\r\n" + frame(good), good_id, None),
            (b"content-length:%d\r\n\r\n" % len(good) + good, good_id, None),
            (b"Content-Length: %d\n\n" % len(good) + good, None, None),
            (b"Content-Length: %d\r\n\r\n" % (len(good) - 3) + good, None, None),
            (b"Content-Length: %d\r\n\r\n" % (len(good) + 7) + good, None, good_id),  # overrun: -32600 by its id
            (b"Content-Length: x\r\n\r\n" + good, None, None),
        ]
        return self.rng.choice(faults)


def run_fuzz(model: Path, log_dir: Path, seed: int, count: int, batch: int = 50) -> Report:
    """Send ``count`` fuzzed messages to a fresh server; the report lists every broken promise."""
    report = Report(seed)
    fuzzer = Fuzzer(seed)
    t0 = time.monotonic()
    with RawServer(model, log_dir / f"fuzz-{seed}.log") as server:
        server.initialize({"workspace": {"workspaceEdit": {"documentChanges": True}},
                           "textDocument": {"codeAction": {"resolveSupport": {"properties": ["edit"]}}}})
        server.wait_loaded()
        report.rss_start_kib = server.rss_kib()
        must: list[Any] = []
        may: set[Any] = set()
        sent_ids: set[Any] = set()
        while report.messages < count:
            chunk = []
            pending = []
            for _ in range(min(batch, count - report.messages)):
                data, expect, maybe = fuzzer.item()
                chunk.append(data)
                report.messages += 1
                if expect is not None:
                    pending.append(expect)
                if maybe is not None:
                    may.add(maybe)
            sent_ids.update(range(1, fuzzer.n + 1))
            sent_ids.update(f"fz-{i}" for i in range(1, fuzzer.n + 1))
            final = f"sync-{report.messages}"  # a last good request, so no fault is left waiting at the end
            chunk.append(frame({"jsonrpc": "2.0", "id": final, "method": "workspace/executeCommand",
                                "params": {"command": "codellama.status"}}))
            pending.append(final)
            sent_ids.add(final)
            server.send(b"".join(chunk))
            for msg_id in pending:
                try:
                    server.response(msg_id, timeout=120)
                except TimeoutError:
                    report.problems.append(f"no response to {msg_id!r}")
            must.extend(pending)
            if not server.alive():
                report.problems.append("the server exited")
                break
        report.expected = len(must)
        time.sleep(0.2)  # late duplicates, if any, arrive
        responses = [m for m in list(server.messages) if "method" not in m]
        report.responses = len(responses)
        report.errors = sum("error" in m for m in responses)
        internal = [m for m in responses if "error" in m and m["error"].get("code") == -32603]
        if internal:  # malformed input is the client's error (-326xx), never the server's
            report.problems.append(f"{len(internal)} internal errors, e.g. {internal[0]}")
        counts: dict[str, int] = {}
        for m in responses:
            key = json.dumps(m.get("id"))
            counts[key] = counts.get(key, 0) + 1
        for msg_id in must:
            if counts.get(json.dumps(msg_id), 0) != 1:
                report.problems.append(f"{msg_id!r} answered {counts.get(json.dumps(msg_id), 0)} times")
        for msg_id in may:
            if counts.get(json.dumps(msg_id), 0) > 1:
                report.problems.append(f"{msg_id!r} answered {counts[json.dumps(msg_id)]} times")
        known = {json.dumps(i) for i in sent_ids | may} | {"null"}
        init_ids = {json.dumps(m.get("id")) for m in responses if str(m.get("id", "")).startswith("r")}
        strangers = set(counts) - known - init_ids
        if strangers:
            report.problems.append(f"responses to ids never sent: {sorted(strangers)[:5]}")
        if any("id" in m and m.get("id") in ("lookalike",) for m in responses):
            report.problems.append("a nested look-alike message was answered")
        report.problems.extend(server.violations)
        report.rss_end_kib = server.rss_kib()
        if not server.alive():
            report.problems.append(f"the server exited with {server.proc.returncode}")
    report.seconds = time.monotonic() - t0
    return report
