"""llama-cpp-python's OpenAI-compatible server on 127.0.0.1 for one GGUF file: the peer the tests and benchmarks compare with.

Run as a module (``python -m codellama_lsp.devtools.llamacpp_server ARGS``) it is llama-cpp-python's
own server, with one change on CPUs that advertise AMX: its extra weight buffers are off, as
the llamacpp engine has them (``cpu_advertises_amx``: there the AMX kernels die of SIGILL at
the first quantized decode). The server has no flag for that buffer switch.
"""

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
        cmd = [sys.executable, "-m", __name__, "--model", str(gguf), "--host", "127.0.0.1",
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


def serve() -> None:
    """llama-cpp-python's server main, every model loaded without extra buffers where they fault."""
    import llama_cpp.llama_cpp as lib
    from llama_cpp.server.__main__ import main

    from codellama_lsp.engine.llamacpp import cpu_advertises_amx

    if cpu_advertises_amx():
        defaults = lib.llama_model_default_params

        def without_extra_buffers() -> object:
            params = defaults()
            params.use_extra_bufts = False
            return params

        lib.llama_model_default_params = without_extra_buffers
    main()


if __name__ == "__main__":
    serve()
