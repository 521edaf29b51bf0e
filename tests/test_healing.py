"""Token healing at the cursor, and suggestions that never repeat what is left of the cursor.

The pure parts (which text the prompt backs up over, the vocabulary lookup, the repeat of the
word's end) with real tokenizers; the engine's constraint on a tiny random model, whose
unconstrained text never starts with the healed text; and the server over stdio on the real
default model in llama.cpp, where a cursor after ``#`` or inside an identifier used to get
its left side written again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from codellama_lsp.completion.context import TokenCounter
from codellama_lsp.completion.families import detect
from codellama_lsp.completion.healing import heal_text, healed
from codellama_lsp.completion.planning import generation_request, plan, shown
from codellama_lsp.completion.postprocess import head_repeat
from codellama_lsp.documents import Document
from codellama_lsp.engine.engine import Engine
from codellama_lsp.engine.healing import HealingIndex
from codellama_lsp.generation import GenerationRequest
from codellama_lsp.settings import Settings


@pytest.fixture(scope="module")
def qwen(real_gguf: Path):
    from codellama_lsp.engine.gguf_tokenizer import load_gguf_tokenizer

    return load_gguf_tokenizer(real_gguf)


@pytest.mark.parametrize("head, removed", [
    ("        return self.conf", ".conf"),  # "self", ".conf": the symbol goes with the word
    ("        x = self.valid_up", ".valid_up"),  # ".valid" "_up": both tokens are in the word
    ("    retu", " retu"),  # "   " " ret" "u": the word token carries its space
    ("    #", " #"),  # " #" is one token: a symbol alone is healed with its space
    ("x = foo(", "("),
    ("    ", ""),  # at an indentation: nothing to heal
    ("x = 1 ", ""),  # after a space
    ("", ""),
])
def test_heal_text_backs_up_over_the_cursors_word(qwen, head: str, removed: str) -> None:
    got = heal_text(head, qwen.encode, qwen.decode_infilling)
    assert got == removed
    if got:  # the rest of the line, tokenized, ends before the removed text: the prompt backs up to a boundary
        assert head.endswith(got)


def test_heal_text_with_a_sentencepiece_vocabulary(tokenizer_path: Path) -> None:
    from codellama_lsp.engine.tokenizer import Tokenizer

    tok = Tokenizer(tokenizer_path)
    head = "    return self.wid"
    got = heal_text(head, tok.encode, tok.decode_infilling)
    assert got and head.endswith(got) and len(got) <= len(" self.wid")
    ids = tok.encode(head)
    assert tok.decode_infilling(ids[-1:]) in got  # at least the last token


def test_healed_strips_only_a_full_start() -> None:
    assert healed(".config)", ".conf") == "ig)"
    assert healed(".con", ".conf") is None  # stopped before it wrote all of the user's text
    assert healed("x", "") == "x"


def test_the_index_allows_prefixes_of_the_rest_and_tokens_that_start_with_it() -> None:
    index = HealingIndex([".", ".c", ".con", ".conf", ".config", ".conv", "conf", "", "\ufffd", ".confix", "x"])
    assert sorted(index.allowed(".conf")) == [0, 1, 2, 3, 4, 9]
    assert sorted(index.allowed("x")) == [10]
    assert index.allowed("q") == []


@pytest.mark.parametrize("head, text, n", [
    ("        x = self.valid_up", "_up_to,", 3),  # the case
    ("    retu", "return a", 4),  # the whole word again
    ("    isValid", "Valid()", 5),  # a camel-case part
    ("    x", "x + 1", 0),  # one letter may double
    ("    foo", "bar", 0),
    ("    #", "#[test]", 0),  # symbols are healing's business
    ("    ", "return", 0),
])
def test_head_repeat(head: str, text: str, n: int) -> None:
    assert head_repeat(head, text) == n


# -- the engine keeps to the healed text ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Engine:
    return Engine.load(tiny_model_dir, device="cpu", context_length=512)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_engine_starts_its_answer_with_the_healed_text(tiny: Engine, temperature: float) -> None:
    tok = tiny.tokenizer
    prompt = tok.encode("def wrap(text, width):\n    return")
    free = tiny.generate(GenerationRequest(prompt, max_new_tokens=12, temperature=temperature))
    heal = " textwrap.fill"
    assert not free.text.startswith(heal)  # the random model would not write it by itself
    kept = tiny.generate(GenerationRequest(prompt, max_new_tokens=12, temperature=temperature, heal=heal))
    assert kept.text.startswith(heal), kept.text
    assert tok.decode_infilling(kept.token_ids) == kept.text


# -- the server on the real model ----------------------------------------------------------------------------

RUST = "mod tests {\n    use super::*;\n\n    #\n    fn parses_empty() {\n        assert!(parse(\"\").is_none());\n    }\n}\n"
PYTHON = ("class Window:\n    def __init__(self, valid_up_to):\n        self.valid_up_to = valid_up_to\n\n"
          "    def clone(self):\n        return Window(self.valid_up)\n")
C = "#inc\n\nint main(void) {\n    printf(\"hi\\n\");\n}\n"
# (uri, language, text, line, index, what the suggestion must not start with, token healing)
PLACES = [("file:///lib.rs", "rust", RUST, 3, 5, "#", True), ("file:///window.py", "python", PYTHON, 5, 35, "_up", True),
          # Unhealed, the model writes "include <stdio.h>" here: the word's start again.
          ("file:///main.c", "c", C, 0, 4, "inc", False)]


@pytest.fixture(scope="module")
def llamacpp(real_gguf: Path) -> Iterator[Engine]:
    pytest.importorskip("llama_cpp", reason="the llamacpp engine needs llama-cpp-python")
    from codellama_lsp.engine.llamacpp import open_llamacpp

    e = open_llamacpp(real_gguf, 1024, threads=1)
    yield e
    e.runner.close()


async def test_the_server_never_repeats_the_text_left_of_the_cursor(llamacpp: Engine, real_gguf: Path,
                                                                    tmp_path: Path) -> None:
    """After ``#`` and inside ``self.valid_up`` (healed), and inside ``#inc`` (not), the suggestion is what
    follows them, as the in-process pipeline says."""
    from codellama_lsp.devtools.lsp_client import stop
    from lsp_harness import start

    client = await start(real_gguf, tmp_path / "server.log", options={"engine": "llamacpp", "maxNewTokens": 16, "minConfidence": 0.0})
    got = {}
    try:
        status = await client.wait_loaded(timeout=300)
        assert status["state"] == "ready", status
        for uri, language, text, line, index, _, heal in PLACES:
            await client.configure(tokenHealing=heal)
            client.open(uri, text, language_id=language)
            got[uri] = await client.inline(uri, line, index)
    finally:
        await stop(client)
    settings = Settings(format="psm", max_new_tokens=16, time_budget_ms=60000, context_tokens=0)
    for uri, language, text, line, index, repeat, heal in PLACES:
        doc = Document.from_text(uri, text, language_id=language)
        p = plan(doc, doc.cursor(line, index), settings, detect(llamacpp.tokenizer), llamacpp.tokenizer,
                 TokenCounter(llamacpp.tokenizer.encode), heal=heal)
        assert bool(p.heal) == heal and p.head.endswith(p.heal)  # the cursor is inside a token here
        want = shown(llamacpp.generate(generation_request(p, settings)), p)
        assert got[uri] == want and got[uri], (uri, got[uri], want)
        assert not got[uri].startswith(repeat), got[uri]
