"""Server settings: defaults, and validation of what clients send.

Settings arrive as ``initializationOptions``, in ``workspace/didChangeConfiguration``
and as the answer to ``workspace/configuration`` (section ``codellama``), always as
camelCase JSON. An invalid value never replaces a valid one: it is reported with a
message naming the key, the value and what is accepted, and the previous value stays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Literal, Mapping

from codellama_lsp.completion.chat import CHAT_SETTINGS
from codellama_lsp.completion.families import FAMILY_SETTINGS
from codellama_lsp.completion.templates import Format
from codellama_lsp.generation import COMPILE_CHOICES, PROMPT_CACHE_MB, QUANTIZE_CHOICES

SECTION = "codellama"
FormatSetting = Literal["auto", "psm", "spm"]


@dataclass(frozen=True)
class Settings:
    model: str | None = None  # None: the --model flag, else the bundled model
    device: str = "auto"
    dtype: str = "auto"
    format: FormatSetting = "auto"  # "auto": the model's own preference (ModelArgs.infilling_format), else PSM
    max_new_tokens: int = 64
    prefix_tokens: int = 1024
    suffix_tokens: int = 256
    # Tokens of snippets from other files (open documents, recent edits, imported files) put
    # first in the prompt (codellama_lsp.completion.snippets); 0 turns them off. Measured by
    # benchmarks/repo_context.py (README, "Context from other files").
    context_tokens: int = 1024
    temperature: float = 0.0
    time_budget_ms: float = 1000.0
    enabled: bool = True
    # Where generation runs (see codellama_lsp.backends): the local engine, or a server at ``url``,
    # for which ``model`` is the served model's name and ``tokenizer`` its tokenizer.model.
    backend: str = "local"
    url: str | None = None
    api_key_env: str | None = None  # the name of the environment variable holding the API key
    tokenizer: str | None = None
    # How the model is prompted (codellama_lsp.completion.families): "auto" recognises it by its tokens.
    family: str = "auto"
    # What computes for the local backend (codellama_lsp.backends.ENGINES): our PyTorch model, or
    # llama.cpp on a .gguf file; "auto" is llama.cpp for a .gguf on the CPU (see choose_engine).
    engine: str = "auto"
    # The torch engine only. compile: the one-token decode step through torch.compile (a CUDA graph
    # on a GPU); auto is on for CUDA, off on the CPU (engine.runner.resolve_compile). Three values,
    # not a bool, because the default depends on the device, as device and dtype's "auto" does.
    compile: str = "auto"
    # Weights of the linear layers in int8 or int4 (engine.quantize); auto is int8 on CUDA, none on the CPU.
    quantize: str = "auto"
    # Reuse the suffix's KV cache, moved to its new position, while typing in front of it
    # (codellama_lsp.engine.engine, ``reuse_suffix``). Off: it is approximate, and on the default
    # model it cost most exact matches (benchmarks/quality.py, ours_typed; README).
    reuse_suffix: bool = False
    # Compute the next suggestion, at the end of the one shown, while the user types it or before
    # they accept it (codellama_lsp.lsp.lifecycle); measured by benchmarks/peer.py (README).
    prefetch: bool = True
    # Token healing (completion.healing): with the cursor inside a word or after a symbol, the prompt
    # leaves out the partial token and the engine's answer starts with it. The local engine only.
    token_healing: bool = True
    # Instruct actions (completion/chat.py, instruct.py): the chat layout ("auto": the model's own chat
    # template, if it has one), and the budgets of one answer. 512 tokens holds an explanation or a
    # 40-line function; 120 s is what 512 tokens take on 2 CPU cores at the default model's ~5 tok/s.
    chat: str = "auto"
    instruct_max_tokens: int = 512
    instruct_time_budget_ms: float = 120_000.0
    # Host memory for KV sequences of places left behind (engine.prompt_cache), so that a return
    # to a place, a file or after a hover computes only what changed; 0 keeps none.
    prompt_cache_mb: int = PROMPT_CACHE_MB
    # How docstrings are written (hover, "Generate docstring"): "infill" between the signature and
    # the body, or "instruct", asked of the chat model; infill, as measured (DOCSTRINGS_MEASURED in completion/docstring.py).
    docstrings: str = "infill"
    # The fields the client set; the budgets it did not set follow the device (``for_device``).
    given: frozenset[str] = frozenset()

    @property
    def load_key(self) -> tuple[str | None, ...]:
        """What the loaded engine (or server connection) depends on: a change reloads it."""
        return (self.model, self.device, self.dtype, self.backend, self.url, self.api_key_env, self.tokenizer,
                self.family, self.engine, self.compile, self.quantize, self.reuse_suffix)


# Tokens a prompt holds beyond its prefix and suffix budgets: BOS, <PRE>, <SUF>, <MID>, and the
# difference between counting lines one by one (as the context cut does) and encoding them joined.
PROMPT_RESERVE = 16


def fit_to_context(s: Settings, context_length: int | None) -> tuple[Settings, str | None]:
    """``s`` with its prefix, suffix and new-token budgets cut to fit a ``context_length``-token context.

    Each budget is valid alone, but together they can exceed the model's context, and then
    every completion in a long file would fail. Cutting both sides in proportion keeps
    completions working; the message (None when nothing was cut) tells the user why their
    setting is not used as given. ``context_length`` None (a remote server's) cuts nothing.
    """
    wanted = s.prefix_tokens + s.suffix_tokens + s.max_new_tokens + PROMPT_RESERVE
    if context_length is None or wanted + s.context_tokens <= context_length:
        return s, None
    if wanted <= context_length:  # other files' snippets give way first: the local window matters more
        return replace(s, context_tokens=context_length - wanted), None
    s = replace(s, context_tokens=0)
    max_new = min(s.max_new_tokens, context_length // 4)
    room = context_length - max_new - PROMPT_RESERVE
    prefix = room * s.prefix_tokens // (s.prefix_tokens + s.suffix_tokens)
    fitted = replace(s, prefix_tokens=prefix, suffix_tokens=room - prefix, max_new_tokens=max_new)
    return fitted, (f"codellama-lsp: prefixTokens {s.prefix_tokens} + suffixTokens {s.suffix_tokens} + maxNewTokens "
                    f"{s.max_new_tokens} exceed the model's {context_length}-token context; using {prefix} + "
                    f"{room - prefix} + {max_new}")


# Budgets for a local engine on the CPU, where they are the latency: in PSM (the only layout
# Qwen2.5-Coder has) every keystroke recomputes the suffix, a changed choice of other files'
# snippets recomputes the whole prompt after them, and a new place computes its window, which
# a warm-up must finish while the cursor rests. Measured (docs/measurements.md, README).
CPU_BUDGETS: dict[str, Any] = {"prefix_tokens": 512, "suffix_tokens": 64, "time_budget_ms": 2000.0,
                               "context_tokens": 512}


def for_device(s: Settings, on_cpu: bool) -> Settings:
    """``s`` with the budgets the client did not set made those of a local engine on the CPU (``on_cpu``).

    The defaults in ``Settings`` are for a GPU or a server, where a 256-token suffix costs
    milliseconds; on the CPU it costs seconds per keystroke, and a 1 s time budget would end
    most suggestions before their first line.
    """
    if not on_cpu:
        return s
    return replace(s, **{k: v for k, v in CPU_BUDGETS.items() if k not in s.given})


def resolve_format(s: Settings, preferred: str | None) -> Settings:
    """``s`` with format "auto" made concrete: the model's ``preferred`` layout, else PSM (Code Llama's)."""
    return replace(s, format=preferred if preferred in ("psm", "spm") else "psm") if s.format == "auto" else s


def prompt_format(s: Settings) -> Format:
    """The concrete layout of settings already resolved by ``resolve_format``."""
    if s.format == "auto":
        raise ValueError("format 'auto' must be resolved for the model first (resolve_format)")
    return s.format


def _int_range(lo: int, hi: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            return f"expected an integer from {lo} to {hi}"
        return None
    return check


def _number_range(lo: float, hi: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            return f"expected a number from {lo:g} to {hi:g}"
        return None
    return check


def _choice(*options: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in options else f"expected one of {', '.join(options)}"
    return check


def _device(v: Any) -> str | None:
    if isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
        return None
    return "expected auto, cpu, cuda or cuda:N"


def _model(v: Any) -> str | None:
    return None if v is None or (isinstance(v, str) and v.strip()) else "expected a checkpoint directory (local backend) or the served model's name"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "expected true or false"


def _url(v: Any) -> str | None:
    if v is None or (isinstance(v, str) and re.fullmatch(r"https?://[^\s/]+(/\S*)?", v.strip())):
        return None
    return "expected an http:// or https:// URL"


def _env_name(v: Any) -> str | None:
    if v is None or (isinstance(v, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v)):
        return None
    return "expected the name of an environment variable (the key itself never goes in settings)"


def _path(v: Any) -> str | None:
    return None if v is None or (isinstance(v, str) and v.strip()) else "expected a path"


def _strip(v: Any) -> Any:
    return v.strip() if isinstance(v, str) else v


def _same(v: Any) -> Any:
    return v


# camelCase key -> (field, check returning an error message or None, converter of a valid value)
_KEYS: dict[str, tuple[str, Callable[[Any], str | None], Callable[[Any], Any]]] = {
    "model": ("model", _model, _strip),
    "device": ("device", _device, _same),
    "dtype": ("dtype", _choice("auto", "float32", "bfloat16", "float16"), _same),
    "format": ("format", _choice("auto", "psm", "spm"), _same),
    "maxNewTokens": ("max_new_tokens", _int_range(1, 1024), _same),
    "prefixTokens": ("prefix_tokens", _int_range(16, 16384), _same),
    "suffixTokens": ("suffix_tokens", _int_range(0, 16384), _same),
    "contextTokens": ("context_tokens", _int_range(0, 16384), _same),
    "temperature": ("temperature", _number_range(0.0, 2.0), float),
    "timeBudgetMs": ("time_budget_ms", _number_range(10, 600_000), float),
    "enabled": ("enabled", _bool, _same),
    "backend": ("backend", _choice("local", "openai", "vllm", "tgi", "llamacpp"), _same),
    "url": ("url", _url, _strip),
    "apiKeyEnv": ("api_key_env", _env_name, _same),
    "tokenizer": ("tokenizer", _path, _strip),
    "family": ("family", _choice(*FAMILY_SETTINGS), _same),
    "engine": ("engine", _choice("auto", "torch", "llamacpp"), _same),
    "compile": ("compile", _choice(*COMPILE_CHOICES), _same),
    "quantize": ("quantize", _choice(*QUANTIZE_CHOICES), _same),
    "reuseSuffix": ("reuse_suffix", _bool, _same),
    "prefetch": ("prefetch", _bool, _same),
    "tokenHealing": ("token_healing", _bool, _same),
    "chat": ("chat", _choice(*CHAT_SETTINGS), _same),
    "instructMaxTokens": ("instruct_max_tokens", _int_range(1, 4096), _same),
    "instructTimeBudgetMs": ("instruct_time_budget_ms", _number_range(100, 600_000), float),
    "docstrings": ("docstrings", _choice("infill", "instruct"), _same),
    "promptCacheMb": ("prompt_cache_mb", _int_range(0, 1 << 20), _same),
}
assert {f for f, _, _ in _KEYS.values()} == {f.name for f in fields(Settings)} - {"given"}


def section_of(raw: Any) -> Any:
    """The ``codellama`` section when the client sent the whole configuration object."""
    if isinstance(raw, Mapping) and isinstance(raw.get(SECTION), Mapping):
        return raw[SECTION]
    return raw


def apply(current: Settings, raw: Any) -> tuple[Settings, list[str]]:
    """``current`` updated with the valid entries of ``raw``, and one message per invalid entry."""
    raw = section_of(raw)
    if raw is None:
        return current, []
    if not isinstance(raw, Mapping):
        return current, [f"codellama settings must be an object, got {type(raw).__name__}"]
    changes: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in raw.items():
        if key not in _KEYS:
            errors.append(f"unknown setting codellama.{key}; known settings: {', '.join(_KEYS)}")
            continue
        name, check, convert = _KEYS[key]
        problem = check(value)
        if problem:
            errors.append(f"invalid value {value!r} for codellama.{key}: {problem}; keeping {getattr(current, name)!r}")
            continue
        changes[name] = convert(value)
    return replace(current, **changes, given=current.given | changes.keys()), errors
