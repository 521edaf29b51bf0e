"""Generation on an inference server over HTTP(S), with the local engine's stopping rules.

One ``httpx.AsyncClient`` per backend keeps connections alive between keystrokes. A
request streams (server-sent events) when it has an ``on_text`` callback, so a
multi-line suggestion ends as soon as its block does; otherwise the server's own stop
strings end it and one JSON answer comes back. Leaving the response early (stop, time
budget, superseded, cancelled) closes the HTTP request, which servers take as an abort.
Every failure becomes a ``BackendError`` whose message names the server and what went
wrong, never the API key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import httpx

from codellama_lsp.generation import GenerationRequest, GenerationResult, StopReason, StopRule, TextTokenizer
from codellama_lsp.backends.errors import BackendError
from codellama_lsp.backends.text_prompt import eot_text
from codellama_lsp.backends.wire import Chunk, Wire

# httpx logs every request at INFO: one line per keystroke.
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

CONNECT_TIMEOUT_S = 5.0
WINDOW_TIMEOUT_S = 3.0  # asking the server its window, once at load: an answer or none soon
READ_TIMEOUT_S = 60.0  # between two bytes of an answer; a time budget usually ends a request first
WATCH_INTERVAL_S = 0.01  # how often a running request looks at its cancel event and deadline


@dataclass
class _Progress:
    """What a request has received so far; read back when it is cut short."""

    text: str = ""
    reason: StopReason = "length"
    computed_tokens: int | None = None
    first_chunk_at: float | None = None
    done: bool = False


@dataclass
class _Stopper:
    """The shared ``StopRule`` applied to chunks as they arrive, recording what came so far."""

    rule: StopRule
    progress: _Progress = field(default_factory=_Progress)

    def add(self, chunk: Chunk) -> bool:
        """Take one chunk; True when generation is over."""
        p = self.progress
        if p.first_chunk_at is None:
            p.first_chunk_at = time.perf_counter()
            self.rule.generating()  # the server has computed the prompt: the time budget starts
        if chunk.computed_tokens is not None:
            p.computed_tokens = chunk.computed_tokens
        reason: StopReason | None = None
        if chunk.text:
            p.text, reason = self.rule.text(p.text + chunk.text)
        if reason is None and chunk.done:
            reason = chunk.reason or "eot"
        if reason is not None:
            p.reason, p.done = reason, True
        return p.done


class RemoteBackend:
    """A ``Backend`` that sends each request to an inference server speaking ``wire``."""

    preferred_format: str | None = None  # served models are Code Llama's: PSM unless set
    heals = False  # a server picks its tokens itself: no token healing

    def __init__(self, wire: Wire, url: str, tokenizer: TextTokenizer, *, served_model: str | None = None,
                 api_key_env: str | None = None, verify: Any = True, context_length: int | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise BackendError(f"codellama.url must start with http:// or https://, got {url!r}")
        self.wire = wire
        self.url = url.rstrip("/")
        self.tokenizer = tokenizer
        self.served_model = served_model
        # The server's window, as the contextLength setting gives it: budgets are cut and scaled to
        # fit it. None: unknown; the server enforces its own and answers an error beyond it.
        self.context_length = context_length
        self._eot = eot_text(tokenizer)
        self.generated_tokens = 0
        self._verify = verify
        headers = {"Accept": "application/json, text/event-stream"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise BackendError(f"the environment variable {api_key_env} (codellama.apiKeyEnv) is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(
            headers=headers, verify=verify, follow_redirects=False,
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        )

    def ask_window(self) -> tuple[int, str] | None:
        """The server's window in tokens and where it said so, for servers that say (``Wire.windows``);
        None otherwise. Blocking: called once, while the backend loads."""
        root = self.url[:-3] if self.url.endswith("/v1") else self.url
        with httpx.Client(headers=self._client.headers, verify=self._verify, follow_redirects=False,
                          timeout=WINDOW_TIMEOUT_S) as client:
            for path, read in self.wire.windows:
                try:
                    answer = client.get(root + path)
                    answer.raise_for_status()
                    n = read(answer.json())
                except (httpx.HTTPError, ValueError, KeyError, TypeError, IndexError, StopIteration):
                    continue  # not this kind of server, or it does not say
                if isinstance(n, int) and n > 0:
                    return n, path
        return None

    # What codellama.status shows in place of the local engine's device and dtype.
    @property
    def device(self) -> str:
        return f"{self.wire.name} server at {self.url}"

    @property
    def dtype(self) -> str:
        return "chosen by the server"

    def close(self) -> None:
        """Close pooled connections; callable from the event loop's thread, like ``Engine.close``."""
        try:
            asyncio.get_running_loop().create_task(self._client.aclose())
        except RuntimeError:  # no running loop: the process is ending and takes the sockets with it
            pass

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        """Generate, honouring ``request.cancel`` and ``time_budget_ms`` while waiting on the server."""
        stopper = _Stopper(StopRule(request, end_text=self._eot))
        progress, t0 = stopper.progress, stopper.rule.started
        if request.cancel.is_set():
            return self._result(request, progress, "cancelled", t0)
        run = asyncio.ensure_future(self._run(request, stopper))
        reason: StopReason | None = None
        try:
            while not run.done():
                if request.cancel.is_set():
                    reason = "cancelled"
                elif (deadline := self._deadline(stopper.rule)) is not None and time.perf_counter() >= deadline:
                    reason = "time"
                if reason is not None:
                    run.cancel()
                    break
                await asyncio.wait({run}, timeout=WATCH_INTERVAL_S)
        except asyncio.CancelledError:
            run.cancel()
            request.cancel.set()
            raise
        if reason is None:
            run.result()  # raises the request's BackendError
            reason = progress.reason
        else:
            await asyncio.gather(run, return_exceptions=True)  # let it close the connection
        return self._result(request, progress, reason, t0)

    @staticmethod
    def _deadline(rule: StopRule) -> float | None:
        """The time budget from the first chunk on; before it, from the request's start.

        A server computes the prompt before its first chunk, and the budget is for generation
        (``StopRule``); but a server that stays silent that long is given up on, not waited for.
        """
        budget = rule.request.time_budget_ms
        if rule.generation_started is not None or budget is None:
            return rule.deadline
        return rule.started + budget / 1000

    def _result(self, request: GenerationRequest, p: _Progress, reason: StopReason, t0: float) -> GenerationResult:
        n = len(request.prompt)
        computed = n if p.computed_tokens is None else min(n, p.computed_tokens)
        first = p.first_chunk_at or time.perf_counter()
        result = GenerationResult(
            text=p.text,
            # Servers that take text do not return ids; re-encoding gives the count the status shows.
            token_ids=self.tokenizer.encode_infilling(p.text) if p.text else [],
            stop_reason=reason,
            prompt_tokens=n,
            reused_tokens=n - computed,
            computed_tokens=computed,
            prefill_ms=(first - t0) * 1000,
            decode_ms=(time.perf_counter() - first) * 1000,
        )
        self.generated_tokens += result.generated_tokens
        return result

    async def _run(self, request: GenerationRequest, stopper: _Stopper) -> None:
        stream = request.on_text is not None
        endpoint = self.wire.path(self.url, stream)
        payload = self.wire.payload(request, stream, self.served_model)
        try:
            async with self._client.stream("POST", endpoint, json=payload) as response:
                if response.status_code >= 400:
                    body = (await response.aread()).decode("utf-8", "replace").strip()
                    raise BackendError(f"{endpoint} answered HTTP {response.status_code} "
                                       f"{response.reason_phrase}: {body[:300] or '(no body)'}")
                answers = _events(response) if stream else _whole(response)
                async for obj in answers:
                    try:
                        chunk = self.wire.parse(obj)
                    except (KeyError, IndexError, TypeError, ValueError) as exc:
                        raise BackendError(f"malformed answer from {endpoint} ({type(exc).__name__}: {exc}): "
                                           f"{json.dumps(obj)[:300]}") from None
                    if stopper.add(chunk):
                        return  # leaving the block closes the connection: the server stops generating
            if not stopper.progress.done:
                raise BackendError(f"{endpoint} ended the stream before the end of generation")
        except httpx.ConnectError as exc:
            raise BackendError(f"cannot connect to {self.url}: {str(exc) or 'connection failed'}") from None
        except httpx.TimeoutException:
            raise BackendError(f"{endpoint} did not answer within {READ_TIMEOUT_S:g} s") from None
        except httpx.HTTPError as exc:  # the connection broke, or the answer was not valid HTTP
            raise BackendError(f"{endpoint} broke off the answer: {str(exc) or type(exc).__name__}") from None


async def _whole(response: httpx.Response) -> AsyncIterator[Any]:
    body = await response.aread()
    try:
        yield json.loads(body)
    except ValueError:
        raise BackendError(f"malformed answer from {response.url}: not JSON: {body[:300]!r}") from None


async def _events(response: httpx.Response) -> AsyncIterator[Any]:
    """The JSON payloads of a server-sent event stream (``data: {...}`` lines); ``[DONE]`` ends it."""
    async for line in response.aiter_lines():
        field_name, _, value = line.partition(":")
        value = value.strip()
        if field_name == "error":  # llama.cpp reports a failure mid-stream this way
            raise BackendError(f"{response.url} reported an error mid-stream: {value[:300]}")
        if field_name != "data" or not value:
            continue
        if value == "[DONE]":
            return
        try:
            yield json.loads(value)
        except ValueError:
            raise BackendError(f"malformed event from {response.url}: not JSON: {value[:300]!r}") from None
