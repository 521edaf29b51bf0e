"""Drive the real ``codellama-lsp --stdio`` subprocess with pygls' LanguageClient."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from codellama_lsp.devtools import lsp_client
from codellama_lsp.devtools.lsp_client import Client
from codellama_lsp.engine.tokenizer import Tokenizer


# Length-limited, not time-limited, so answers do not depend on how busy the machine is; and
# short, because reused and recomputed KV differ in the last float bits, which can flip a
# near-tie between a random model's logits after many tokens.
# Without other files' snippets: these tests compare answers with a one-document plan, and each
# module's server has many similar documents open (tests/test_repo_context.py covers the snippets).
# Every suggestion shown (minConfidence 0): these tests compare the server's text with the engine's, and
# a random model is never confident (tests/test_confidence.py and test_lsp_server cover the gating).
TEST_SETTINGS = {"timeBudgetMs": 60000, "maxNewTokens": 8, "contextTokens": 0, "minConfidence": 0.0}


async def start(model: Path | None, log_file: Path, *, options: Any = None, **kwargs: Any) -> Client:
    """The server on ``model`` with the tests' settings under ``options``."""
    return await lsp_client.start(model, log_file, options={**TEST_SETTINGS, **(options or {})}, **kwargs)


def endless_copy(model_dir: Path, out: Path) -> Path:
    """A copy of ``model_dir`` that never emits EOS or EOT, so a request runs until stopped.

    Zeroing their logits is not enough: at temperature 1 a logit of 0 among small random
    ones is still drawn about once in 10k tokens. So residual dimension 0 is made constant
    (every embedding has 1 there; no layer reads or writes it), which makes the final norm's
    output there positive at every position, and EOS/EOT read only that dimension, with a
    large negative weight: their logits are always far below every other token's.
    """
    shutil.copytree(model_dir, out, dirs_exist_ok=True)
    tok = Tokenizer(out / "tokenizer.model")
    weights = load_file(str(out / "model.safetensors"))
    weights["model.embed_tokens.weight"][:, 0] = 1.0
    for name, w in weights.items():
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            w[0, :] = 0.0  # writes
        elif name.endswith(("_proj.weight")):
            w[:, 0] = 0.0  # reads: q, k, v, gate, up
    weights["model.norm.weight"][0] = 1.0
    head = weights["lm_head.weight"]
    head[:, 0] = 0.0  # the constant dimension favours no other token
    for i in (tok.eos_id, tok.eot_id):
        head[i] = 0.0
        head[i, 0] = -1000.0
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
