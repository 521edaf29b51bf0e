"""Chat layouts and Instruct prompts without a model: ChatML id-exact against transformers'
``apply_chat_template`` on the default model's own GGUF template, layout detection, and the
answers' post-processing."""

from __future__ import annotations

from pathlib import Path

import pytest

from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.completion import instruct_prompts as prompts
from codellama_lsp.completion.chat import QWEN_DEFAULT_SYSTEM, detect_chat
from codellama_lsp.completion.templates import Message
from codellama_lsp.engine.tokenizer import Tokenizer

DIALOGS = [
    [Message("user", "hi")],
    [Message("system", "Be brief."), Message("user", "Explain:\n```python\ndef f(a):\n    return a  # é 😀\n```\n")],
    prompts.dialog("fix", prompts.Code("x = 1 /\n", "python", "file:///a.py"), ["line 1: invalid syntax"]),
    [Message("user", "a"), Message("assistant", "b"), Message("user", "  c\n\n")],
]


@pytest.fixture(scope="module")
def qwen(real_gguf: Path):
    from codellama_lsp.engine.gguf_tokenizer import load_gguf_tokenizer

    return load_gguf_tokenizer(real_gguf)


def test_chatml_is_id_exact_with_the_models_own_template(qwen, real_gguf: Path) -> None:
    """About 40 s: transformers builds its tokenizer and chat template from the same GGUF."""
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(str(real_gguf.parent), gguf_file=real_gguf.name)
    assert reference.chat_template == qwen.chat_template
    chat = detect_chat(qwen)
    assert chat.layout == "chatml" and chat.default_system == QWEN_DEFAULT_SYSTEM
    assert chat.stop_ids == {qwen.special_tokens["<|im_end|>"], qwen.special_tokens["<|endoftext|>"]}
    for dialog in DIALOGS:
        want = reference.apply_chat_template([{"role": m.role, "content": m.content} for m in dialog],
                                             add_generation_prompt=True, tokenize=True)
        assert chat.prompt(qwen, dialog) == want, dialog


def test_detection_and_the_setting(qwen) -> None:
    demo = Tokenizer(BUNDLED_MODEL / "tokenizer.model")
    none = detect_chat(demo)
    assert not none.available and none.describe().startswith("none: the model has no chat template")
    forced = detect_chat(demo, "codellama")
    assert forced.layout == "codellama" and forced.stop_ids == {demo.eos_id} | ({demo.eot_id} - {None, -1})
    assert forced.prompt(demo, [Message("user", "x")])[:1] == [demo.bos_id]
    assert not detect_chat(demo, "chatml").available  # no <|im_start|> in a sentencepiece vocabulary
    assert detect_chat(qwen, "off").describe() == "none: turned off by the chat setting"
    with pytest.raises(ValueError, match="no chat layout"):
        none.prompt(demo, [Message("user", "x")])


def test_code_in_an_answer() -> None:
    assert prompts.code_in("Here:\n```python\ndef f():\n    return 1\n```\nDone.") == "def f():\n    return 1"
    assert prompts.code_in("```\nx = 1\ny = 2") == "x = 1\ny = 2"  # cut off by the token limit
    assert prompts.code_in("x = 1\n") == "x = 1"  # no fence: all of it
    assert prompts.code_in("~~~~js\na\n```\nb\n~~~~\n") == "a\n```\nb"


def test_placed_keeps_the_replaced_codes_indentation() -> None:
    like = "    def f(self):\n        return 1\n"
    assert prompts.placed("def g(self):\n    return 2", like) == "    def g(self):\n        return 2\n"
    assert prompts.placed("x", "y") == "x"


def test_prompts_carry_what_each_action_needs() -> None:
    code = prompts.Code("    return a / b\n", "python", "file:///m.py")
    (system, user) = prompts.dialog("edit", code, instruction="use floor division")
    assert system.role == "system" and "```python\nreturn a / b\n```" in user.content
    assert "file:///m.py" in user.content and "use floor division" in user.content
    assert "- line 3: x" in prompts.dialog("fix", code, ["line 3: x"])[1].content
    assert "`area`" in prompts.docstring_dialog(code, "area")[1].content
    assert prompts.docstring_text('```\n"""Area of a box."""\n```') == "Area of a box."
    whole = '```python\ndef area(w, h):\n    """\n    Area of a box.\n\n    w: width\n    """\n    return w * h\n```'
    assert prompts.docstring_text(whole) == "Area of a box.\n\n    w: width"
    assert prompts.docstring_text('def f():\n    """Cut off by the limit') == "Cut off by the limit"
