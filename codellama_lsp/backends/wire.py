"""Request and response shapes of each server API; no I/O here.

Each ``Wire`` turns a ``GenerationRequest`` into a JSON payload for one endpoint and
reads one JSON answer (a whole response, or one server-sent event of a stream) into a
``Chunk``. ``RemoteBackend`` does the HTTP, the stopping and the errors for all of them.
A malformed answer raises KeyError, TypeError or ValueError, which the caller reports.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from codellama_lsp.generation import GenerationRequest, TextTokenizer

from codellama_lsp.generation import StopReason
from codellama_lsp.backends.errors import BackendError
from codellama_lsp.backends.text_prompt import as_text, eot_text, split_infilling, stop_texts

MAX_STOP_STRINGS = 4  # OpenAI's limit, and TGI's default max_stop_sequences
# The engine applies no repetition penalty; llama.cpp's server and llama-cpp-python default to 1.1,
# which changes even greedy output, so servers of that family are told 1.0.
NO_REPEAT_PENALTY = {"repeat_penalty": 1.0}


@dataclass(frozen=True)
class Chunk:
    text: str  # new text, to append
    done: bool = False  # the server has finished generating
    reason: StopReason | None = None  # why, when done
    computed_tokens: int | None = None  # prompt tokens the server evaluated (the rest came from its cache), if it says


def _llamacpp_window(obj: Any) -> Any:
    """llama.cpp's server, ``GET /props``: a slot's context (its ``--ctx-size`` over ``--parallel``)."""
    return obj["default_generation_settings"]["n_ctx"]


def _vllm_window(obj: Any) -> Any:
    """vLLM, ``GET /v1/models``: the served model's ``max_model_len``."""
    return next(m["max_model_len"] for m in obj["data"] if "max_model_len" in m)


def _tgi_window(obj: Any) -> Any:
    """Text Generation Inference, ``GET /info``: prompt and generated tokens together."""
    return obj["max_total_tokens"]


class Wire(ABC):
    name: str
    # Where a server of this API says its window (a GET path under the server's root) and how to
    # read it from the JSON answer, tried in order. Servers that say none (llama-cpp-python, Ollama)
    # leave it unknown.
    windows: tuple[tuple[str, Callable[[Any], Any]], ...] = ()

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tok = tokenizer

    @abstractmethod
    def path(self, base: str, stream: bool) -> str: ...

    @abstractmethod
    def payload(self, req: GenerationRequest, stream: bool, model: str | None) -> dict[str, Any]: ...

    @abstractmethod
    def parse(self, obj: Any) -> Chunk: ...


def _stops(tok: TextTokenizer, req: GenerationRequest) -> list[str]:
    return stop_texts(tok, req)[:MAX_STOP_STRINGS]


def _object(obj: Any) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a JSON object, got {type(obj).__name__}")
    error = obj.get("error")
    if error:
        message = error.get("message", error) if isinstance(error, Mapping) else error
        raise BackendError(f"the server reported an error: {message}")
    return obj


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


class OpenAICompletions(Wire):
    """``POST /v1/completions`` (vLLM, llama.cpp's server, llama-cpp-python, Ollama): the prompt as text."""

    name = "openai"
    windows = (("/props", _llamacpp_window), ("/v1/models", _vllm_window))

    def path(self, base: str, stream: bool) -> str:
        # Both spellings of the base URL are common: ``http://host:8000`` and ``http://host:8000/v1``.
        return base + ("/completions" if base.endswith("/v1") else "/v1/completions")

    def prompt(self, req: GenerationRequest) -> Any:
        return as_text(self.tok, req.prompt)

    def payload(self, req: GenerationRequest, stream: bool, model: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": self.prompt(req),
            "max_tokens": req.max_new_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "seed": req.seed,
            "stream": stream,
            **NO_REPEAT_PENALTY,
        }
        if model:
            body["model"] = model
        if _stops(self.tok, req):
            body["stop"] = _stops(self.tok, req)
        return body

    def parse(self, obj: Any) -> Chunk:
        obj = _object(obj)
        choice = obj["choices"][0]
        finish = choice.get("finish_reason")
        usage = obj.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        computed = usage["prompt_tokens"] - cached if cached is not None and "prompt_tokens" in usage else None
        return Chunk(_str(choice["text"]), finish is not None, "length" if finish == "length" else "eot", computed)


class VllmCompletions(OpenAICompletions):
    """vLLM's ``/v1/completions`` with the prompt as token ids, and ``<EOT>`` as a stop token.

    vLLM skips special tokens when it detokenizes, so ``<EOT>`` never shows up as text and
    would not end generation (its EOS is ``</s>``) without ``stop_token_ids``.
    """

    name = "vllm"
    windows = (("/v1/models", _vllm_window),)

    def prompt(self, req: GenerationRequest) -> Any:
        return list(req.prompt)

    def payload(self, req: GenerationRequest, stream: bool, model: str | None) -> dict[str, Any]:
        body = super().payload(req, stream, model)
        del body["repeat_penalty"]  # not vLLM's parameter (its repetition_penalty defaults to 1.0)
        stop_ids = sorted(req.stop_ids) or ([self.tok.eot_id] if self.tok.eot_id is not None else [])
        if stop_ids:
            body["stop_token_ids"] = stop_ids
        return body


_TGI_FINISH: dict[str, StopReason] = {"length": "length", "eos_token": "eot", "stop_sequence": "stop_string"}


class TgiGenerate(Wire):
    """Text Generation Inference: ``POST /generate`` (one JSON answer) and ``/generate_stream`` (SSE)."""

    name = "tgi"
    windows = (("/info", _tgi_window),)

    def path(self, base: str, stream: bool) -> str:
        return base + ("/generate_stream" if stream else "/generate")

    def payload(self, req: GenerationRequest, stream: bool, model: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {
            "max_new_tokens": req.max_new_tokens,
            "do_sample": req.temperature > 0,
            "seed": req.seed,
            "details": True,
            "return_full_text": False,
        }
        if req.temperature > 0:  # TGI rejects temperature 0 and top_p 1; greedy is do_sample false
            params["temperature"] = req.temperature
            if 0 < req.top_p < 1:
                params["top_p"] = req.top_p
        if _stops(self.tok, req):
            params["stop"] = _stops(self.tok, req)
        return {"inputs": as_text(self.tok, req.prompt), "parameters": params}

    def parse(self, obj: Any) -> Chunk:
        if isinstance(obj, list):  # some TGI versions answer /generate with a one-element list
            obj = obj[0]
        obj = _object(obj)
        details = obj.get("details") or {}
        reason = _TGI_FINISH.get(details.get("finish_reason", ""), "eot") if details else None
        token = obj.get("token")
        if token is None:  # /generate: the whole answer
            return Chunk(_str(obj["generated_text"]), True, reason or "eot")
        if token["special"]:
            # A special token's text is its piece; only <EOT>/</s> end a middle, and none is shown.
            eot = eot_text(self.tok)
            end = token["id"] in (self.tok.eot_id, self.tok.eos_id) or bool(eot and eot in token["text"]) or reason is not None
            return Chunk("", end, reason or ("eot" if end else None))
        return Chunk(_str(token["text"]), reason is not None, reason)


_LLAMACPP_STOP: dict[str, StopReason] = {"limit": "length", "word": "stop_string", "eos": "eot"}


class LlamaCppInfill(Wire):
    """llama.cpp's ``POST /infill``: the server lays out the FIM prompt from the model's FIM tokens.

    ``input_prefix`` and ``input_suffix`` go as token ids (the server accepts ids or text),
    so they are exactly the ids of our prompt. ``cache_prompt`` keeps the server's KV of
    the shared prefix between keystrokes, like the local engine's cache.
    """

    name = "llamacpp"
    windows = (("/props", _llamacpp_window),)

    def path(self, base: str, stream: bool) -> str:
        return base + "/infill"

    def payload(self, req: GenerationRequest, stream: bool, model: str | None) -> dict[str, Any]:
        prefix, suffix = split_infilling(self.tok, req.prompt)
        body: dict[str, Any] = {
            "input_prefix": prefix,
            "input_suffix": suffix,
            "n_predict": req.max_new_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "seed": req.seed,
            "stream": stream,
            "cache_prompt": True,
            **NO_REPEAT_PENALTY,
        }
        if _stops(self.tok, req):
            body["stop"] = _stops(self.tok, req)
        return body

    def parse(self, obj: Any) -> Chunk:
        obj = _object(obj)
        done = bool(obj.get("stop", False))
        timings = obj.get("timings") or {}
        reason = _LLAMACPP_STOP.get(obj.get("stop_type", "eos"), "eot") if done else None
        return Chunk(_str(obj["content"]), done, reason, timings.get("prompt_n"))


PROTOCOLS: dict[str, type[Wire]] = {w.name: w for w in (OpenAICompletions, VllmCompletions, TgiGenerate, LlamaCppInfill)}
