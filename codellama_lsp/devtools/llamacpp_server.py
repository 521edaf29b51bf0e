"""llama-cpp-python's OpenAI-compatible server on 127.0.0.1 for one GGUF file: the peer the tests and benchmarks compare with."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaCppServer:
    """``python -m llama_cpp.server`` (OpenAI-compatible) serving one GGUF file, logging to ``log``."""

    def __init__(self, gguf: Path, log: Path, *, api_key: str | None = None, n_ctx: int = 4096, threads: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.api_key = api_key
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(self.port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
               "--n_threads_batch", str(threads), "--logits_all", "false", "--verbose", "true"]
        if api_key:
            cmd += ["--api_key", api_key]
        with open(log, "wb") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 120.0) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode}:\n{self.read_log()[-3000:]}")
            try:
                if httpx.get(self.url + "/v1/models", headers=headers, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not answer within {timeout:g} s:\n{self.read_log()[-3000:]}")

    def read_log(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Kill it at once (a paused server too): whatever it was doing, its connections drop."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
