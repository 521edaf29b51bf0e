"""``codellama-lsp export-gguf``: write a checkpoint the engine loads as a GGUF file for llama.cpp and Ollama.

The GGUF holds llama-architecture metadata, the sentencepiece vocabulary (pieces, scores,
token types, BOS/EOS and Code Llama's infilling ids, so llama.cpp's ``/infill`` and its
end-of-generation check know them) and the weights under llama.cpp's tensor names.

Two details make llama.cpp compute exactly what the engine computes:

* Rotary layout. The engine keeps Hugging Face's rotate-half layout of ``q_proj`` and
  ``k_proj``; llama.cpp expects Meta's interleaved one, so those rows are permuted back
  (the inverse of ``checkpoint._permute_rotary``), per KV head for ``k_proj``.
* ``add_space_prefix`` is written as false. llama.cpp otherwise puts a space before the
  text after every special token, which would turn the infilling suffix's first token
  into a different one; codellama-lsp sends prompts with their spaces already in place
  (``backends.prompt_text``), so nothing is lost. A plain prompt given to llama.cpp by
  hand then needs its own leading space to match sentencepiece exactly.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import torch
from sentencepiece import sentencepiece_model_pb2

from codellama_lsp.engine.config import ModelArgs

from codellama_lsp.engine.tokenizer import Tokenizer

from codellama_lsp.engine.checkpoint import load_model

OUT_TYPES = {"f32": (torch.float32, gguf.LlamaFileType.ALL_F32), "f16": (torch.float16, gguf.LlamaFileType.MOSTLY_F16)}

_T = gguf.MODEL_TENSOR
# Hugging Face name (inside model.layers.N. for per-layer tensors) -> GGUF tensor kind
_GLOBAL = {"model.embed_tokens.weight": _T.TOKEN_EMBD, "model.norm.weight": _T.OUTPUT_NORM, "lm_head.weight": _T.OUTPUT}
_LAYER = {
    "input_layernorm.weight": _T.ATTN_NORM,
    "self_attn.q_proj.weight": _T.ATTN_Q,
    "self_attn.k_proj.weight": _T.ATTN_K,
    "self_attn.v_proj.weight": _T.ATTN_V,
    "self_attn.o_proj.weight": _T.ATTN_OUT,
    "post_attention_layernorm.weight": _T.FFN_NORM,
    "mlp.gate_proj.weight": _T.FFN_GATE,
    "mlp.up_proj.weight": _T.FFN_UP,
    "mlp.down_proj.weight": _T.FFN_DOWN,
}


def to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Hugging Face's rotate-half rows of a q/k projection back to Meta's interleaved pairs."""
    out, inp = w.shape
    return w.view(n_heads, 2, out // n_heads // 2, inp).transpose(1, 2).reshape(out, inp)


def gguf_name(hf_name: str) -> str:
    if hf_name in _GLOBAL:
        return gguf.TENSOR_NAMES[_GLOBAL[hf_name]] + ".weight"
    _, _, layer, rest = hf_name.split(".", 3)
    return gguf.TENSOR_NAMES[_LAYER[rest]].format(bid=int(layer)) + ".weight"


def _write_hparams(w: gguf.GGUFWriter, args: ModelArgs, name: str, file_type: gguf.LlamaFileType) -> None:
    w.add_name(name)
    w.add_context_length(args.max_position_embeddings)
    w.add_embedding_length(args.hidden_size)
    w.add_block_count(args.num_hidden_layers)
    w.add_feed_forward_length(args.intermediate_size)
    w.add_rope_dimension_count(args.head_dim)
    w.add_head_count(args.num_attention_heads)
    w.add_head_count_kv(args.num_key_value_heads)
    w.add_layer_norm_rms_eps(args.rms_norm_eps)
    w.add_rope_freq_base(args.rope_theta)
    if args.rope_scaling_factor != 1.0:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(args.rope_scaling_factor)
    w.add_vocab_size(args.vocab_size)
    w.add_file_type(file_type)


def _write_vocab(w: gguf.GGUFWriter, tok: Tokenizer, vocab_size: int) -> None:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tok.path.read_bytes())
    # sentencepiece's piece types use the same numbers as GGUF's token types (NORMAL=1 ... BYTE=6).
    pieces = [p.piece.encode("utf-8") for p in proto.pieces]
    scores = [p.score for p in proto.pieces]
    types = [int(p.type) for p in proto.pieces]
    for i in range(len(pieces), vocab_size):  # embedding rows the tokenizer never produces
        pieces.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(tok.bos_id)
    w.add_eos_token_id(tok.eos_id)
    w.add_unk_token_id(tok.sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    keys = gguf.Keys.Tokenizer
    for key, token in ((keys.FIM_PRE_ID, tok.prefix_id), (keys.FIM_SUF_ID, tok.suffix_id),
                       (keys.FIM_MID_ID, tok.middle_id)):
        if token is not None:
            w.add_uint32(key, token)
    if tok.eot_id is not None:
        w.add_eot_token_id(tok.eot_id)


def export_gguf(model_dir: str | Path, out: str | Path, out_type: str = "f32") -> Path:
    """Write the checkpoint in ``model_dir`` (either layout) to ``out`` as GGUF; returns ``out``."""
    dtype, file_type = OUT_TYPES[out_type]
    model, tok = load_model(model_dir, device="cpu", dtype="float32")
    args = model.args
    out = Path(out)
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _write_hparams(writer, args, Path(model_dir).resolve().name, file_type)
    _write_vocab(writer, tok, args.vocab_size)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and args.tie_word_embeddings:
            continue  # llama.cpp uses token_embd for the output when output.weight is absent
        t = t.detach()
        if name.endswith("q_proj.weight"):
            t = to_interleaved(t, args.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            t = to_interleaved(t, args.num_key_value_heads)
        # Norm vectors stay float32: llama.cpp requires it, and they are tiny.
        writer.add_tensor(gguf_name(name), t.to(dtype if t.dim() > 1 else torch.float32).contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
