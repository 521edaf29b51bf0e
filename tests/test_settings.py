"""Settings validation: invalid values are reported with a clear message and never applied."""

from __future__ import annotations

import pytest

from codellama_lsp.settings import PROMPT_RESERVE, Settings, apply, fit_to_context, resolve_format


def test_defaults() -> None:
    s = Settings()
    assert (s.format, s.max_new_tokens, s.prefix_tokens, s.suffix_tokens, s.temperature, s.enabled) == \
        ("auto", 64, 1024, 256, 0.0, True)


def test_auto_format_is_the_models_preference_else_psm() -> None:
    assert resolve_format(Settings(), "spm").format == "spm"
    assert resolve_format(Settings(), None).format == "psm"  # Code Llama's checkpoints declare nothing
    assert resolve_format(Settings(format="psm"), "spm").format == "psm"  # an explicit choice wins


def test_valid_values_apply_from_the_section_or_flat() -> None:
    s, errors = apply(Settings(), {"codellama": {"format": "spm", "maxNewTokens": 32, "temperature": 1}})
    assert errors == [] and (s.format, s.max_new_tokens, s.temperature) == ("spm", 32, 1.0)
    s, errors = apply(s, {"prefixTokens": 512, "enabled": False, "model": " /m ", "device": "cuda:1"})
    assert errors == [] and (s.prefix_tokens, s.enabled, s.model, s.device) == (512, False, "/m", "cuda:1")
    assert apply(s, None) == (s, [])


def test_invalid_values_are_reported_and_kept() -> None:
    before = Settings()
    after, errors = apply(before, {"maxNewTokens": 0, "format": "fim", "temperature": "hot", "enabled": "yes",
                                   "dtype": "int4", "device": "tpu", "suffixTokens": True, "colour": 1})
    assert after == before
    text = "\n".join(errors)
    assert len(errors) == 8
    assert "invalid value 0 for codellama.maxNewTokens: expected an integer from 1 to 1024; keeping 64" in text
    assert "codellama.format: expected one of auto, psm, spm" in text
    assert "unknown setting codellama.colour" in text


def test_engine_setting() -> None:
    assert Settings().engine == "auto"
    for value in ("torch", "llamacpp", "auto"):
        s, errors = apply(Settings(), {"engine": value})
        assert errors == [] and s.engine == value
    before = Settings(engine="torch")
    for bad in ("llama.cpp", "LLAMACPP", "", None, 1):
        after, errors = apply(before, {"engine": bad})
        assert after == before
        assert errors == [f"invalid value {bad!r} for codellama.engine: expected one of auto, torch, llamacpp; keeping 'torch'"]
    assert Settings(engine="llamacpp").load_key != Settings().load_key  # a change reloads the model


@pytest.mark.parametrize("key, values, bad", [
    ("compile", ("auto", "on", "off"), (True, "yes", "ON", None)),
    ("quantize", ("auto", "none", "int8", "int4"), ("int3", "fp8", "", None)),
])
def test_torch_engine_settings(key: str, values: tuple[str, ...], bad: tuple) -> None:
    assert getattr(Settings(), key) == "auto"
    for value in values:
        s, errors = apply(Settings(), {key: value})
        assert errors == [] and getattr(s, key) == value
        assert (s.load_key != Settings().load_key) == (value != "auto")  # a change reloads the model
    for value in bad:
        after, errors = apply(Settings(), {key: value})
        assert after == Settings()
        assert errors == [f"invalid value {value!r} for codellama.{key}: expected one of {', '.join(values)}; keeping 'auto'"]


def test_not_an_object() -> None:
    assert apply(Settings(), [1, 2])[1] == ["codellama settings must be an object, got list"]


def test_load_key_changes_only_with_model_device_dtype() -> None:
    assert Settings(format="spm").load_key == Settings().load_key != Settings(dtype="float16").load_key
    assert Settings(max_new_tokens=8, temperature=0.5).load_key == Settings().load_key


def test_budgets_are_cut_to_fit_the_context() -> None:
    s = Settings(prefix_tokens=8000, suffix_tokens=2000, max_new_tokens=64)
    fitted, note = fit_to_context(s, 4096)
    assert fitted.prefix_tokens + fitted.suffix_tokens + fitted.max_new_tokens + PROMPT_RESERVE == 4096
    assert abs(fitted.prefix_tokens - 4 * fitted.suffix_tokens) <= 5  # cut in proportion
    assert fitted.max_new_tokens == 64 and fitted.format == s.format
    assert note is not None and "prefixTokens 8000" in note and "4096-token context" in note
    assert fit_to_context(Settings(), 4096) == (Settings(), None)  # the defaults fit
    assert fit_to_context(s, None) == (s, None)  # a remote server's limit is its own
    small, _ = fit_to_context(Settings(max_new_tokens=1024), 1024)
    assert small.max_new_tokens == 256 and small.prefix_tokens + small.suffix_tokens == 1024 - 256 - PROMPT_RESERVE


def test_budgets_follow_the_device_unless_the_client_set_them() -> None:
    """A local engine on the CPU gets the CPU budgets; a client's own values, and other devices, keep theirs."""
    from codellama_lsp.settings import CPU_BUDGETS, for_device

    default = Settings()
    assert for_device(default, on_cpu=False) == default
    cpu = for_device(default, on_cpu=True)
    assert (cpu.suffix_tokens, cpu.time_budget_ms) == (CPU_BUDGETS["suffix_tokens"], CPU_BUDGETS["time_budget_ms"])
    assert cpu.suffix_tokens != default.suffix_tokens

    chosen, errors = apply(default, {"suffixTokens": 300})
    assert not errors and chosen.given == {"suffix_tokens"}
    mine = for_device(chosen, on_cpu=True)
    assert (mine.suffix_tokens, mine.time_budget_ms) == (300, CPU_BUDGETS["time_budget_ms"])


def test_the_schema_declares_each_setting_once() -> None:
    """Keys are the fields' camelCase names; what reloads and the CPU's budgets are read from the schema."""
    from codellama_lsp.settings import CPU_BUDGETS, SCHEMA

    assert [s.key for s in SCHEMA][:5] == ["model", "device", "dtype", "format", "maxNewTokens"]
    assert {s.key for s in SCHEMA} >= {"apiKeyEnv", "timeBudgetMs", "promptCacheMb", "instructTimeBudgetMs"}
    assert CPU_BUDGETS == {"prefix_tokens": 512, "suffix_tokens": 64, "context_tokens": 512, "time_budget_ms": 1500.0}
    reloading = {s.key for s in SCHEMA if s.spec.reloads}
    free = {"device": "cpu", "url": "http://h:1/v1", "apiKeyEnv": "KEY", "model": "m", "tokenizer": "t"}
    for s in SCHEMA:
        if s.kind is bool:
            other = not s.default
        elif s.kind in (int, float):
            other = s.spec.bounds[1]
        else:
            other = s.spec.choices[-1] if s.spec.choices else free[s.key]
        changed, errors = apply(Settings(), {s.key: other})
        assert not errors, errors
        assert (changed.load_key != Settings().load_key) == (s.key in reloading), s.key


def test_cli_flags_come_from_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """A flag is checked as a client's value is; given before or after ``complete``, it is ``given``."""
    from codellama_lsp.cli import flag_settings, parser

    args = parser().parse_args(["--device", "cuda:1", "--model", " /m ", "complete", "f.py", "--line", "1",
                                "--column", "1", "--max-new-tokens", "8", "--engine", "torch"])
    s = flag_settings(args)
    assert (s.device, s.model, s.max_new_tokens, s.engine) == ("cuda:1", "/m", 8, "torch")
    assert s.given == {"device", "model", "max_new_tokens", "engine"}
    assert flag_settings(parser().parse_args([])) == Settings()
    for argv, message in ((["--device", "tpu"], "argument --device: expected auto, cpu, cuda, cuda:N"),
                          (["--max-new-tokens", "2000"], "argument --max-new-tokens: expected an integer from 1 to 1024"),
                          (["--max-new-tokens", "many"], "argument --max-new-tokens: invalid int value: 'many'"),
                          (["--dtype", "int4"], "argument --dtype: expected one of auto, float32, bfloat16, float16")):
        with pytest.raises(SystemExit):
            parser().parse_args(argv)
        assert message in capsys.readouterr().err


def test_context_length_setting() -> None:
    """null is auto (the device's length); a length reloads the model; anything else is refused."""
    assert Settings().context_length is None
    for value in (None, 256, 16384, 100_000):
        s, errors = apply(Settings(), {"contextLength": value})
        assert errors == [] and s.context_length == value
        assert (s.load_key != Settings().load_key) == (value is not None)  # a change reloads the model
    for bad in (255, 0, "16k", 4096.5, True):
        after, errors = apply(Settings(), {"contextLength": bad})
        assert after == Settings()
        assert len(errors) == 1 and "codellama.contextLength" in errors[0] and "256 to 1048576" in errors[0], errors


def test_budgets_grow_with_the_window_off_the_cpu() -> None:
    """A GPU's or server's budgets scale with a window past 4096; the CPU's, and the client's own, do not."""
    from codellama_lsp.settings import CPU_BUDGETS, for_device

    default = Settings()
    for window in (None, 2048, 4096):
        assert for_device(default, on_cpu=False, context_length=window) == default
    long = for_device(default, on_cpu=False, context_length=16384)
    assert (long.prefix_tokens, long.suffix_tokens, long.context_tokens) == (4096, 1024, 4096)
    assert long.max_new_tokens == default.max_new_tokens and long.time_budget_ms == default.time_budget_ms
    assert fit_to_context(long, 16384) == (long, None)  # the scaled budgets fit their window
    assert for_device(default, on_cpu=False, context_length=131072) == long  # a server's 128k: no 8k suffix per keystroke
    cpu = for_device(default, on_cpu=True, context_length=16384)
    assert (cpu.prefix_tokens, cpu.context_tokens) == (CPU_BUDGETS["prefix_tokens"], CPU_BUDGETS["context_tokens"])
    mine, _ = apply(default, {"prefixTokens": 700})
    assert for_device(mine, on_cpu=False, context_length=16384).prefix_tokens == 700
