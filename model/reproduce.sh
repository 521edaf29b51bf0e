#!/usr/bin/env bash
# Rebuild the bundled model (codellama_lsp/demo_model) and its evaluation from this machine's packages:
# about four hours on two CPU cores. Each phase starts from the previous phase's checkpoint
# with a new learning-rate schedule; see model/README.md ("The runs that produced codellama_lsp/demo_model").
# Interrupted? Re-run the phase's line with --resume added.
set -euo pipefail
cd "$(dirname "$0")/.."

python model/corpus.py --out model/data
python model/train_tokenizer.py --data model/data --out codellama_lsp/demo_model/tokenizer.model

# Phase 1: Code Llama's objective (uniform character splits), 1600 steps x 4 x 1024 tokens.
python model/train.py --name default --tokens 6553600 --dim 192 --layers 4 --heads 4 --kv-heads 2 \
    --export model/runs/default/export
# Phase 2: half of the infilling middles line-shaped; ended at step 1317 of its 3752-step schedule.
python model/train.py --name phase2 --init-from model/runs/default/ckpt.pt --line-fim-rate 0.5 \
    --tokens 15368192 --stop-at-step 1317 --lr 1.5e-3 --warmup-steps 30 --export model/runs/phase2/export
# Phase 3: 80 % of the middles line-shaped, examples of 128-1024 tokens (several per row).
python model/train.py --name phase3 --init-from model/runs/phase2/ckpt.pt --line-fim-rate 0.8 --min-window 128 \
    --tokens 11137024 --lr 1.2e-3 --warmup-steps 10 --export model/runs/phase3/export
# Phase 4: the same mix at a lower learning rate; the shipped weights, declared to infill best in SPM.
python model/train.py --name phase4 --init-from model/runs/phase3/ckpt.pt --line-fim-rate 0.8 --min-window 128 \
    --tokens 3391488 --lr 6e-4 --warmup-steps 10 --infilling-format spm --export codellama_lsp/demo_model

python model/evaluate.py --json model/eval.json
