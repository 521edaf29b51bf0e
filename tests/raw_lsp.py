"""A byte-level client for the real ``python -m codellama_lsp --stdio``: sends anything, reads strictly.

pygls' LanguageClient cannot send malformed frames and is itself lenient about what it
reads; this one writes raw bytes and checks every frame the server writes: exact
``Content-Length`` framing and standard JSON (NaN and Infinity rejected).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
# How long to wait for an answer: generous, as a no-hang bound (lower it to see failures sooner).
TIMEOUT = float(os.environ.get("RAW_LSP_TIMEOUT", "30"))


def strict_json(text: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text.decode("utf-8"), parse_constant=refuse)


def frame(payload: Any) -> bytes:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class RawServer:
    """The server process; ``messages`` fills with every message it writes, ``violations`` with bad output."""

    def __init__(self, model: Path, log_file: Path, *extra: str, python: tuple[str, ...] = ("-m", "codellama_lsp")) -> None:
        self.log_file = log_file
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.stderr = open(log_file.with_suffix(".stderr"), "wb")  # a pipe nobody reads could fill and block it
        self.proc = subprocess.Popen(
            [sys.executable, *python, "--stdio", "--model", str(model), "--log-file", str(log_file),
             "--log-level", "DEBUG", "--threads", "1", *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env)
        self.messages: list[Any] = []
        self.violations: list[str] = []
        self.bytes_out = 0
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._next_id = 0

    # -- reading ----------------------------------------------------------------------------------------
    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            header = b""
            while not header.endswith(b"\r\n\r\n"):
                byte = out.read(1)
                if not byte:
                    return
                header += byte
            fields = dict(line.split(b": ", 1) for line in header[:-4].split(b"\r\n"))
            if set(fields) - {b"Content-Length", b"Content-Type"} or b"Content-Length" not in fields:
                self.violations.append(f"bad header {header!r}")
                return
            body = out.read(int(fields[b"Content-Length"]))
            self.bytes_out += len(header) + len(body)
            try:
                message = strict_json(body)
            except ValueError as exc:
                self.violations.append(f"not JSON ({exc}): {body[:200]!r}")
                continue
            with self._new:
                self.messages.append(message)
                self._new.notify_all()

    def wait_for(self, pred: Callable[[Any], bool], timeout: float | None = None) -> Any:
        """The first message (already received or not) that ``pred`` accepts."""
        timeout = TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                for m in self.messages:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self._reader.is_alive():
                    raise TimeoutError(f"no such message within {timeout} s; got {self.messages[-5:]!r}")
                self._new.wait(min(left, 0.5))

    def responses(self, msg_id: Any) -> list[Any]:
        with self._new:
            return [m for m in self.messages if "method" not in m and m.get("id") == msg_id]

    def response(self, msg_id: Any, timeout: float | None = None) -> Any:
        return self.wait_for(lambda m: "method" not in m and m.get("id") == msg_id and ("result" in m or "error" in m),
                             timeout)

    # -- writing ----------------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def notify(self, method: str, params: Any = None) -> None:
        self.send(frame({"jsonrpc": "2.0", "method": method, **({} if params is None else {"params": params})}))

    def request(self, method: str, params: Any = None, msg_id: Any = None, timeout: float | None = None) -> Any:
        """Send a request and wait for its response."""
        if msg_id is None:
            self._next_id += 1
            msg_id = f"r{self._next_id}"
        self.send(frame({"jsonrpc": "2.0", "id": msg_id, "method": method,
                         **({} if params is None else {"params": params})}))
        return self.response(msg_id, timeout)

    def initialize(self, capabilities: dict[str, Any] | None = None, options: dict[str, Any] | None = None) -> Any:
        result = self.request("initialize", {"processId": None, "rootUri": None, "capabilities": capabilities or {},
                                             "initializationOptions": {"timeBudgetMs": 60000, "maxNewTokens": 8,
                                                                       **(options or {})}})
        self.notify("initialized", {})
        return result

    def status(self) -> dict[str, Any]:
        return self.request("workspace/executeCommand", {"command": "codellama.status"})["result"]

    def wait_loaded(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status["state"] in ("ready", "failed") or time.monotonic() > deadline:
                return status
            time.sleep(0.05)

    def open(self, uri: str, text: str, language_id: Any = "python", version: int = 1) -> None:
        self.notify("textDocument/didOpen",
                    {"textDocument": {"uri": uri, "languageId": language_id, "version": version, "text": text}})

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def close(self) -> int:
        """Close stdin (the server exits) and return the exit code."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self._reader.join(5)
        return code

    def __enter__(self) -> "RawServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()
