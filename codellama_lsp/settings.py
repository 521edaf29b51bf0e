"""Server settings: one schema, and validation of what clients send.

Each setting is declared once, as a field of ``Settings`` with its ``Spec`` (description,
accepted values, the CPU's default where it differs, whether a change reloads the model,
whether it has a command-line flag). Validation, the CLI's flags and, through
``scripts/generate_settings.py``, the editors' settings and the docs' tables all come from it.

Settings arrive as ``initializationOptions``, in ``workspace/didChangeConfiguration``
and as the answer to ``workspace/configuration`` (section ``codellama``), always as
camelCase JSON. An invalid value never replaces a valid one: it is reported with a
message naming the key, the value and what is accepted, and the previous value stays.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

from codellama_lsp.generation import (ACCELERATOR_CONTEXT_LENGTH, CPU_CONTEXT_LENGTH, MIN_CONTEXT_LENGTH,
                                      PROMPT_CACHE_MB, Backend)

SECTION = "codellama"

# The vocabularies of the settings with choices. The modules that act on a value (backends,
# families, the torch engine) import them from here, so that settings import nothing above them.
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
FORMAT_CHOICES = ("auto", "psm", "spm")
BACKEND_CHOICES = ("local", "openai", "vllm", "tgi", "llamacpp")
ENGINE_CHOICES = ("auto", "torch", "llamacpp")
COMPILE_CHOICES = ("auto", "on", "off")
QUANTIZE_CHOICES = ("auto", "none", "int8", "int4")
FAMILY_CHOICES = ("auto", "codellama", "qwen2.5-coder", "deepseek-coder", "starcoder2", "plain")
CHAT_CHOICES = ("auto", "chatml", "codellama", "off")
DOCSTRING_CHOICES = ("infill", "instruct")


@dataclass(frozen=True)
class Spec:
    """What a setting means and accepts, beyond its Python type and default."""

    description: str  # one line, for the editors' settings UI, the docs and ``--help``
    choices: tuple[str, ...] = ()
    choice_notes: tuple[str, ...] = ()  # one per choice, for VS Code's enumDescriptions
    bounds: tuple[float, float] | None = None  # inclusive, for numbers
    pattern: str | None = None  # what a string must match whole (after stripping spaces)
    accepts: str = ""  # a string's accepted values in words, when they are not choices
    cpu: float | None = None  # the default for a local engine on the CPU, where it differs (``for_device``)
    reloads: bool = False  # a change reloads the engine or reconnects (``Settings.load_key``)
    flag: bool = False  # also a command-line flag, --kebab-case, for the server and ``complete``
    default_text: str = ""  # the default in words, where the value alone would not say it


T = TypeVar("T")


def setting(default: T, description: str, **spec: Any) -> T:
    """A ``Settings`` field: ``default`` and its ``Spec`` (typed as the default, for the dataclass)."""
    return field(default=default, metadata={"spec": Spec(description, **spec)})  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Settings:
    """Every server setting; a field with a ``Spec`` is one the client can set, under its camelCase key.

    Adding a setting is adding a field here, then running ``python scripts/generate_settings.py``.
    Defaults are those of a GPU or a server; ``cpu`` gives a local engine on the CPU its own.
    """

    model: str | None = setting(
        None, "The checkpoint directory or `.gguf` file (local backend), or the served model's name (remote backends).",
        accepts="a path or a model name", reloads=True, flag=True,
        default_text="the server's `--model`, else the real default model (Qwen2.5-Coder-0.5B) when installed, "
                     "else the demo model")
    device: str = setting("auto", "Where the model runs: `auto` is CUDA when available, else the CPU.",
                          pattern=r"auto|cpu|cuda(:\d+)?", accepts="`auto`, `cpu`, `cuda`, `cuda:N`",
                          reloads=True, flag=True)
    dtype: str = setting("auto", "The torch engine's weights: `auto` is bfloat16 on a GPU, float32 on the CPU.",
                         choices=DTYPE_CHOICES, reloads=True, flag=True)
    format: str = setting("auto", "Infilling prompt layout, prefix-suffix-middle or suffix-prefix-middle: "
                                  "`auto` is the one the model declares, else `psm`.",
                          choices=FORMAT_CHOICES, flag=True)
    max_new_tokens: int = setting(64, "Most tokens generated for one suggestion.", bounds=(1, 1024), flag=True)
    prefix_tokens: int = setting(1024, "Token budget for the text before the cursor.", bounds=(16, 16384), cpu=512)
    suffix_tokens: int = setting(256, "Token budget for the text after the cursor, recomputed at each keystroke in PSM.",
                                 bounds=(0, 16384), cpu=64)
    context_tokens: int = setting(
        1024, "Token budget for snippets from other files (open documents, recent edits, imported files), "
              "put first in the prompt; 0 turns them off.", bounds=(0, 16384), cpu=512)
    temperature: float = setting(0.0, "Sampling temperature; 0 is greedy, the same context the same suggestion.",
                                 bounds=(0, 2))
    time_budget_ms: float = setting(1000.0, "Longest time one suggestion's generation may take, from the end of "
                                            "its prompt; what is ready by then is shown, in whole lines.",
                                    bounds=(10, 600_000), cpu=1500.0)
    enabled: bool = setting(True, "Suggestions while typing; `false` answers every completion request with nothing.")
    backend: str = setting("local", "Where generation runs: this process's engine, or an inference server at `url`.",
                           choices=BACKEND_CHOICES, reloads=True,
                           choice_notes=("The resident engine in the server process.",
                                         "Any OpenAI-compatible /v1/completions: llama.cpp's server, llama-cpp-python, "
                                         "Ollama.",
                                         "vLLM's /v1/completions, prompts as token ids.",
                                         "Text Generation Inference's /generate.",
                                         "llama.cpp's /infill, prompts as token ids."))
    url: str | None = setting(None, "The inference server's URL, for a remote `backend`.",
                              pattern=r"https?://[^\s/]+(/\S*)?", accepts="an http:// or https:// URL", reloads=True)
    api_key_env: str | None = setting(
        None, "The name of the environment variable holding the remote server's API key (never the key itself).",
        pattern=r"[A-Za-z_][A-Za-z0-9_]*",
        accepts="the name of an environment variable (the key itself never goes in settings)", reloads=True)
    tokenizer: str | None = setting(None, "The served model's `tokenizer.model` (or its directory), for a remote "
                                          "`backend`; none: the bundled Code Llama tokenizer.",
                                    accepts="a path", reloads=True)
    family: str = setting("auto", "How the model is prompted for infilling (FIM tokens, layouts, stop tokens): "
                                  "`auto` recognises it by its vocabulary.", choices=FAMILY_CHOICES, reloads=True)
    engine: str = setting("auto", "What computes for the local backend: `auto` is llama.cpp for a `.gguf` file on the "
                                  "CPU when llama-cpp-python is installed, else torch.",
                          choices=ENGINE_CHOICES, reloads=True, flag=True,
                          choice_notes=("llama.cpp for a .gguf model on the CPU (when llama-cpp-python is installed), "
                                        "else torch.",
                                        "Our PyTorch model: any checkpoint, any device, weights in the dtype setting.",
                                        "llama.cpp's CPU kernels on a .gguf file's own quantization "
                                        "(needs llama-cpp-python)."))
    compile: str = setting("auto", "Torch engine: compile the one-token decode step (a CUDA graph on a GPU); "
                                   "`auto` is on for CUDA, off on the CPU.",
                           choices=COMPILE_CHOICES, reloads=True, flag=True,
                           choice_notes=("On for CUDA, off on the CPU (where compiling is not faster).",
                                         "Compile the one-token decode step with torch.compile (a CUDA graph on a GPU).",
                                         "Run the model eagerly."))
    quantize: str = setting("auto", "Torch engine: the linear layers' weights in int8 or int4; `auto` is int8 on CUDA, "
                                    "none on the CPU.",
                            choices=QUANTIZE_CHOICES, reloads=True, flag=True,
                            choice_notes=("int8 on CUDA, none on the CPU (where PyTorch's int kernels are slower than "
                                          "float32).",
                                          "Weights in the dtype setting.",
                                          "Linear layers' weights in int8, one scale per output channel.",
                                          "Linear layers' weights in 4 bits, a scale and zero per group "
                                          "(needs dtype bfloat16 on CUDA)."))
    reuse_suffix: bool = setting(False, "Reuse the suffix's KV cache, moved, while typing in front of it: fewer tokens "
                                        "per keystroke, but approximate, and it costs exact matches.", reloads=True)
    prefetch: bool = setting(True, "Compute the next suggestion, at the end of the one shown, while you read or "
                                   "type it.")
    chat: str = setting("auto", "Chat layout of the Instruct actions: `auto` is the model's own chat template "
                                "(none: no Instruct actions); `off` turns them off.", choices=CHAT_CHOICES)
    instruct_max_tokens: int = setting(512, "Longest answer of an Instruct action, in tokens.", bounds=(1, 4096))
    instruct_time_budget_ms: float = setting(120_000.0, "Longest time an Instruct action's answer may take; what was "
                                                        "written by then is used.", bounds=(100, 600_000))
    prompt_cache_mb: int = setting(PROMPT_CACHE_MB, "Host memory (MB) for the KV sequences of places left behind, so "
                                                    "that a return computes only what changed; 0 keeps none.",
                                   bounds=(0, 1 << 20))
    token_healing: bool = setting(True, "With the cursor inside a word or after a symbol, the prompt leaves out the "
                                        "unfinished token and the model's answer must start by writing it again "
                                        "(local engine).")
    min_confidence: float = setting(0.3, "Hide a suggestion whose first line has a token the model chose with a "
                                         "lower probability (0 to 1; 0 shows all; local engine).",
                                    bounds=(0.0, 1.0), flag=True)
    context_length: int | None = setting(
        None, "Positions the engine's KV cache holds, up to what the model supports, planned in memory before "
              "loading; for a remote backend, the server's window, which the budgets are cut to.",
        bounds=(MIN_CONTEXT_LENGTH, 1 << 20), reloads=True, flag=True,
        default_text="auto: 4096 on the CPU, 16384 on a GPU (halved until it fits); for a remote server, the window "
                     "it says it has (llama.cpp, vLLM, TGI)")
    docstrings: str = setting("infill", "How docstrings are written (hover, Generate docstring): infilled between the "
                                        "signature and the body, or asked of the chat model.",
                              choices=DOCSTRING_CHOICES)
    # The fields the client set; the budgets it did not set follow the device (``for_device``).
    given: frozenset[str] = frozenset()

    @property
    def load_key(self) -> tuple[Any, ...]:
        """What the loaded engine (or server connection) depends on: a change reloads it."""
        return tuple(getattr(self, s.name) for s in SCHEMA if s.spec.reloads)


@dataclass(frozen=True)
class Setting:
    """One setting of the schema: a ``Settings`` field, its camelCase key, its type and ``Spec``."""

    name: str  # the Python field
    key: str  # as clients send it
    kind: type  # bool, int, float or str
    nullable: bool  # whether null (None) is a value: "not set", with the meaning ``default_text`` gives
    default: Any
    spec: Spec

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not accepted, or None when it is."""
        if value is None and self.nullable:
            return None
        s = self.spec
        if self.kind is bool:
            return None if isinstance(value, bool) else "expected true or false"
        if self.kind in (int, float):
            lo, hi = s.bounds or (float("-inf"), float("inf"))
            number = (int,) if self.kind is int else (int, float)
            if isinstance(value, bool) or not isinstance(value, number) or not lo <= value <= hi:
                return f"expected {self.accepted_words()}"
            return None
        if s.choices:
            return None if value in s.choices else f"expected one of {', '.join(s.choices)}"
        ok = isinstance(value, str) and (re.fullmatch(s.pattern, value.strip()) if s.pattern else value.strip())
        return None if ok else f"expected {s.accepts.replace('`', '')}"

    def convert(self, value: Any) -> Any:
        """An accepted ``value`` as the field holds it."""
        if self.kind is float and value is not None:
            return float(value)
        return value.strip() if isinstance(value, str) and not self.spec.choices else value

    def default_words(self) -> str:
        """The default as the docs and ``--help`` say it, with the CPU's where it differs."""
        if self.spec.default_text:
            return self.spec.default_text
        text = "none" if self.default is None else f"`{_words(self.default)}`"
        return text + (f"; `{_words(self.spec.cpu)}` for a local engine on the CPU" if self.spec.cpu is not None else "")

    def accepted_words(self) -> str:
        """What is accepted, in words, for error messages and the docs."""
        s = self.spec
        if s.choices:
            return ", ".join(f"`{c}`" for c in s.choices)
        if self.kind is bool:
            return "`true`, `false`"
        if s.bounds is not None:
            lo, hi = (int(b) for b in s.bounds) if self.kind is int else s.bounds
            return f"an integer from {lo} to {hi}" if self.kind is int else f"a number from {lo:g} to {hi:g}"
        return s.accepts


def _words(value: Any) -> str:
    """A value as JSON writes it, but strings bare and whole floats without their ".0"."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value)


def _kind(hint: Any) -> tuple[type, bool]:
    """The value type of a field's hint, and whether it also takes None (``X | None``)."""
    if get_origin(hint) is Union or type(hint).__name__ == "UnionType":
        args = [a for a in get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def _schema() -> tuple[Setting, ...]:
    hints = get_type_hints(Settings)
    out = []
    for f in fields(Settings):
        if "spec" in f.metadata:
            kind, nullable = _kind(hints[f.name])
            key = re.sub(r"_(\w)", lambda m: m.group(1).upper(), f.name)
            out.append(Setting(f.name, key, kind, nullable, f.default, f.metadata["spec"]))
    return tuple(out)


SCHEMA: tuple[Setting, ...] = _schema()
BY_KEY: dict[str, Setting] = {s.key: s for s in SCHEMA}

# Budgets for a local engine on the CPU, where they are the latency: in PSM (the only layout
# Qwen2.5-Coder has) every keystroke recomputes the suffix, a changed choice of other files'
# snippets recomputes the whole prompt after them, and a new place computes its window, which
# a warm-up must finish while the cursor rests. Measured in docs/measurements.md.
CPU_BUDGETS: dict[str, Any] = {s.name: s.spec.cpu for s in SCHEMA if s.spec.cpu is not None}


# The budgets that grow with the window where filling it is cheap (``for_device``): their defaults
# are sized for a CPU_CONTEXT_LENGTH window.
WINDOW_BUDGETS = ("prefix_tokens", "suffix_tokens", "context_tokens")


def for_device(s: Settings, on_cpu: bool, context_length: int | None = None) -> Settings:
    """``s`` with the budgets the client did not set made those of the device and the window.

    On the CPU (``on_cpu``, a local engine) they are ``CPU_BUDGETS``, whatever the window: the
    defaults in ``Settings`` are for a GPU or a server, where a 256-token suffix costs
    milliseconds; on the CPU it costs seconds per keystroke, and a 1 s time budget would end
    most suggestions before their first line. Elsewhere the prefix, suffix and other files'
    context grow in proportion to a ``context_length`` window longer than CPU_CONTEXT_LENGTH, so
    a 16k window holds four times the repository context; the long prefix is computed once and
    stays in the KV cache while the user types, and the suffix, recomputed per keystroke in
    PSM, costs milliseconds there. The growth stops at ACCELERATOR_CONTEXT_LENGTH (Code Llama's
    training length): past it, a server's 128k window would recompute an 8k-token suffix at
    every keystroke; larger budgets are the client's to set.
    """
    if on_cpu:
        return replace(s, **{k: v for k, v in CPU_BUDGETS.items() if k not in s.given})
    if context_length is None or context_length <= CPU_CONTEXT_LENGTH:
        return s
    window = min(context_length, ACCELERATOR_CONTEXT_LENGTH)
    return replace(s, **{k: getattr(s, k) * window // CPU_CONTEXT_LENGTH for k in WINDOW_BUDGETS if k not in s.given})


# Tokens a prompt holds beyond its prefix and suffix budgets: BOS, <PRE>, <SUF>, <MID>, and the
# difference between counting lines one by one (as the context cut does) and encoding them joined.
PROMPT_RESERVE = 16


def fit_to_context(s: Settings, context_length: int | None) -> tuple[Settings, str | None]:
    """``s`` with its prefix, suffix and new-token budgets cut to fit a ``context_length``-token context.

    Each budget is valid alone, but together they can exceed the model's context, and then
    every completion in a long file would fail. Cutting both sides in proportion keeps
    completions working; the message (None when nothing was cut) tells the user why their
    setting is not used as given. ``context_length`` None (a remote server that says no window) cuts nothing.
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


def resolve_format(s: Settings, preferred: str | None) -> Settings:
    """``s`` with format "auto" made concrete: the model's ``preferred`` layout, else PSM (Code Llama's)."""
    return replace(s, format=preferred if preferred in ("psm", "spm") else "psm") if s.format == "auto" else s


def for_backend(s: Settings, backend: Backend) -> tuple[Settings, str | None]:
    """The settings a request to ``backend`` uses: its device's budgets where the client set none, format
    "auto" resolved for its model, and the budgets cut to fit its context (with the message saying so)."""
    own = for_device(s, on_cpu=str(backend.device) == "cpu", context_length=backend.context_length)
    return fit_to_context(resolve_format(own, backend.preferred_format), backend.context_length)


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
        known = BY_KEY.get(key)
        if known is None:
            errors.append(f"unknown setting codellama.{key}; known settings: {', '.join(BY_KEY)}")
            continue
        problem = known.problem(value)
        if problem:
            errors.append(f"invalid value {value!r} for codellama.{key}: {problem}; keeping "
                          f"{getattr(current, known.name)!r}")
            continue
        changes[known.name] = known.convert(value)
    return replace(current, **changes, given=current.given | changes.keys()), errors
