"""Train the bundled sentencepiece BPE tokenizer, shaped like Code Llama's.

Same conventions as Llama's tokenizer (unk 0 / bos 1 / eos 2, no pad, byte fallback,
identity normalisation, implicit leading space, digits split) plus Code Llama's four
infilling control pieces and ``☺`` as one piece for ``encode_infilling``.

Vocabulary 8192: the model is ~5-10 M parameters, so a 32k vocabulary would spend most
of them on embeddings; 8k still covers Python keywords, common identifiers and the
indentation runs, keeping sequences reasonably short for a 1024-token context.

    python model/train_tokenizer.py --data model/data --out codellama_lsp/demo_model/tokenizer.model
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

HERE = Path(__file__).resolve().parent
FIM_CONTROL = ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]
SMILEY = "☺"


def train_tokenizer(docs: Iterable[str], out_path: Path, vocab_size: int = 8192, max_lines: int = 2_000_000) -> Path:
    """Train on the lines of ``docs`` (sentencepiece learns per line) and write ``out_path``."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "lines.txt"
        with corpus.open("w", encoding="utf-8") as fh:
            for doc in docs:
                for line in doc.split("\n"):
                    if line.strip():
                        fh.write(line + "\n")
        prefix = Path(tmp) / "sp"
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(prefix),
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=0.9999,
            byte_fallback=True,
            normalization_rule_name="identity",
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            max_sentence_length=4096,
            input_sentence_size=max_lines,
            shuffle_input_sentence=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            control_symbols=FIM_CONTROL,
            user_defined_symbols=[SMILEY],
            num_threads=2,
            minloglevel=2,
        )
        out_path.write_bytes(prefix.with_suffix(".model").read_bytes())
    return out_path


def sample_docs(train_jsonl: Path, fraction: float, seed: int = 0) -> Iterable[str]:
    """A seeded sample of training documents; the whole corpus is more than BPE needs."""
    rng = random.Random(seed)
    with train_jsonl.open(encoding="utf-8") as fh:
        for line in fh:
            if rng.random() < fraction:
                yield json.loads(line)["text"]


def main() -> None:
    ap = argparse.ArgumentParser(description="Train the bundled BPE tokenizer.")
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--out", type=Path, default=HERE / "default" / "tokenizer.model")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--fraction", type=float, default=0.25, help="share of training files to learn from")
    args = ap.parse_args()
    path = train_tokenizer(sample_docs(args.data / "train.jsonl", args.fraction), args.out, args.vocab_size)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
