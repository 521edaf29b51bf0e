"""Load and save checkpoints: Hugging Face safetensors (single or sharded) and Meta's layout.

Weights are read tensor by tensor from memory-mapped files into a model built on the
``meta`` device, so loading never holds more than the final weights plus one tensor.
Nothing here unpickles arbitrary objects: Meta's ``.pth`` files go through
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from safetensors import safe_open
from safetensors.torch import save_file

from codellama_lsp.engine.config import CheckpointError, ModelArgs, read_json
from codellama_lsp.engine.model import Transformer
from codellama_lsp.engine.tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Older HF checkpoints store RoPE's inverse frequencies; we compute them.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rope.freqs")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"device {device!r} was asked for but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise CheckpointError(f"unknown device {device!r}; expected cpu, cuda or auto")
    return torch.device(device)


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """bfloat16 on a GPU, float32 on the CPU unless asked otherwise."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def read_args(path: Path) -> ModelArgs:
    """Hyperparameters of the checkpoint in ``path`` (either layout), without loading weights."""
    if (path / "config.json").is_file():
        return ModelArgs.from_hf_config(read_json(path / "config.json"))
    if (path / "params.json").is_file():
        return ModelArgs.from_meta_params(read_json(path / "params.json"), Tokenizer(path / "tokenizer.model").vocab_size)
    raise CheckpointError(f"{path} has neither config.json (Hugging Face layout) nor params.json (Meta layout)")


def checkpoint_args(path: str | Path) -> ModelArgs:
    """Hyperparameters of a checkpoint directory (either layout) or ``.gguf`` file, without reading weights."""
    path = Path(path).expanduser()
    if path.is_file():
        from codellama_lsp.engine.gguf_file import gguf_args, open_gguf

        return gguf_args(open_gguf(path), path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory with a checkpoint, nor a .gguf file")
    return read_args(path)


def _hf_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(read_json(index).get("weight_map", {}).values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{path} has no model.safetensors or model.safetensors.index.json")
    for name in files:
        file = str(path / name)
        try:
            with safe_open(file, framework="pt", device="cpu") as f:
                keys = list(f.keys())
            for key in keys:
                # One mapping per tensor: when a dtype conversion copies it, the source pages are
                # unmapped at once instead of staying resident until the whole file is done.
                with safe_open(file, framework="pt", device="cpu") as f:
                    tensor = f.get_tensor(key)
                yield key, tensor
                del tensor
        except Exception as exc:  # noqa: BLE001 - SafetensorError has no stable import path
            raise CheckpointError(f"{path / name} is not a readable safetensors file: {exc}") from None


def _permute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's interleaved rotary layout to Hugging Face's rotate-half layout (as HF's converter does)."""
    out, inp = w.shape
    return w.view(n_heads, out // n_heads // 2, 2, inp).transpose(1, 2).reshape(out, inp)


# Meta name -> (HF name, dim along which model-parallel shards are split, or None if replicated)
_META_NAMES = {
    "tok_embeddings.weight": ("model.embed_tokens.weight", 1),
    "norm.weight": ("model.norm.weight", None),
    "output.weight": ("lm_head.weight", 0),
}
_META_LAYER_NAMES = {
    "attention.wq.weight": ("self_attn.q_proj.weight", 0),
    "attention.wk.weight": ("self_attn.k_proj.weight", 0),
    "attention.wv.weight": ("self_attn.v_proj.weight", 0),
    "attention.wo.weight": ("self_attn.o_proj.weight", 1),
    "feed_forward.w1.weight": ("mlp.gate_proj.weight", 0),
    "feed_forward.w2.weight": ("mlp.down_proj.weight", 1),
    "feed_forward.w3.weight": ("mlp.up_proj.weight", 0),
    "attention_norm.weight": ("input_layernorm.weight", None),
    "ffn_norm.weight": ("post_attention_layernorm.weight", None),
}


def _meta_name(key: str) -> tuple[str, int | None]:
    if key in _META_NAMES:
        return _META_NAMES[key]
    parts = key.split(".", 2)
    if parts[0] == "layers" and len(parts) == 3 and parts[2] in _META_LAYER_NAMES:
        name, dim = _META_LAYER_NAMES[parts[2]]
        return f"model.layers.{parts[1]}.{name}", dim
    raise CheckpointError(f"unexpected tensor {key!r} in a Meta-layout checkpoint")


def _meta_tensors(path: Path, args: ModelArgs) -> Iterator[tuple[str, torch.Tensor]]:
    shards = sorted(path.glob("consolidated.*.pth"))
    if not shards:
        raise CheckpointError(f"{path} has params.json but no consolidated.*.pth")
    try:
        states = [torch.load(s, map_location="cpu", weights_only=True, mmap=True) for s in shards]
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a bad file
        raise CheckpointError(f"cannot load {path}/consolidated.*.pth safely (weights only): {exc}") from None
    for key in states[0]:
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        name, dim = _meta_name(key)
        parts = [s[key] for s in states]
        t = parts[0] if dim is None or len(parts) == 1 else torch.cat(parts, dim=dim)
        if name.endswith("q_proj.weight"):
            t = _permute_rotary(t, args.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            t = _permute_rotary(t, args.num_key_value_heads)
        yield name, t


@contextmanager
def _no_init() -> Iterator[None]:
    """Build modules without initialising their weights, which loading overwrites anyway.

    On the meta device the initialisers cost nothing to run but, through torch's reference
    implementations, import torch._dynamo: seconds of start-up and tens of MB for nothing.
    """
    saved = nn.Linear.reset_parameters, nn.Embedding.reset_parameters
    nn.Linear.reset_parameters = nn.Embedding.reset_parameters = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Linear.reset_parameters, nn.Embedding.reset_parameters = saved  # type: ignore[method-assign]


def load_model(path: str | Path, device: str = "auto", dtype: str | None = None) -> tuple[Transformer, Tokenizer]:
    """Load a checkpoint: a directory (Hugging Face or Meta layout, with ``tokenizer.model``) or a ``.gguf`` file."""
    path = Path(path).expanduser()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if path.is_file():
        return _load_gguf(path, dev, dt)
    args = checkpoint_args(path)
    tokenizer = Tokenizer(path / "tokenizer.model")
    if tokenizer.vocab_size > args.vocab_size:
        raise CheckpointError(
            f"{path}/tokenizer.model has {tokenizer.vocab_size} pieces but the model's vocab_size is {args.vocab_size}"
        )
    meta = (path / "params.json").is_file() and not (path / "config.json").is_file()
    tensors = _meta_tensors(path, args) if meta else _hf_tensors(path)
    return _assemble(path, args, ((n, t.to(device=dev, dtype=dt)) for n, t in tensors)), tokenizer


def _load_gguf(path: Path, dev: torch.device, dt: torch.dtype) -> tuple[Transformer, Any]:
    """A GGUF file: hyperparameters and tokenizer from its metadata, each tensor dequantized on its own."""
    from codellama_lsp.engine.gguf_reader import read_gguf
    from codellama_lsp.engine.gguf_tokenizer import load_gguf_tokenizer

    ckpt = read_gguf(path)
    tokenizer = load_gguf_tokenizer(ckpt.reader)
    if tokenizer.vocab_size > ckpt.args.vocab_size:
        raise CheckpointError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model "
                              f"{ckpt.args.vocab_size} embeddings")
    return _assemble(path, ckpt.args, ((n, t.to(dev)) for n, t in ckpt.tensors(dt))), tokenizer


def _assemble(path: Path, args: ModelArgs, tensors: Iterator[tuple[str, torch.Tensor]]) -> Transformer:
    """A model built on the meta device and filled one tensor at a time, each checked by name and shape.

    The tensors arrive already on the target device and dtype, so loading never holds more
    than the finished weights plus the tensor being converted.
    """
    with torch.device("meta"), _no_init():
        model = Transformer(args)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if args.tie_word_embeddings:
        expected.pop("lm_head.weight")
    state: dict[str, torch.Tensor] = {}
    for name, t in tensors:
        if name.endswith(_IGNORED_SUFFIXES) or (args.tie_word_embeddings and name == "lm_head.weight"):
            continue
        if name not in expected:
            raise CheckpointError(f"{path}: unexpected tensor {name!r}")
        if t.shape != expected[name]:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(expected[name])}")
        state[name] = t
        del t
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{path}: missing tensors {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
    model.load_state_dict(state, strict=False, assign=True)
    if args.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def save_checkpoint(model: Transformer, out_dir: str | Path, tokenizer_path: str | Path) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``tokenizer.model`` in the Hugging Face layout."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.args.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # safetensors refuses shared storage; HF re-ties on load
    config = model.args.to_hf_config()
    config["torch_dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    if Path(tokenizer_path).resolve() != (out / "tokenizer.model").resolve():
        shutil.copyfile(tokenizer_path, out / "tokenizer.model")
    return out
