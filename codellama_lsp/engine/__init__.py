"""The inference engine: checkpoint loading, the Llama model, tokenizer, and the resident KV-cached generator."""

from .checkpoint import load_model, save_checkpoint
from .config import CheckpointError, ModelArgs
from .engine import Engine, GenerationRequest, GenerationResult, PromptTooLong
from .tokenizer import FimUnsupported, Tokenizer

__all__ = [
    "CheckpointError",
    "Engine",
    "FimUnsupported",
    "GenerationRequest",
    "GenerationResult",
    "ModelArgs",
    "PromptTooLong",
    "Tokenizer",
    "load_model",
    "save_checkpoint",
]
