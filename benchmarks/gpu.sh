#!/usr/bin/env bash
# The GPU path verified in one go, on a machine with one CUDA GPU (issue #13, item 6); about 10 minutes.
#
#   bash benchmarks/gpu.sh [OUT_DIR]        # default OUT_DIR: benchmarks/results/gpu
#
# 1. installs what it needs (the package with the real model's extra, pytest) unless importable;
# 2. tests/test_cuda.py: bf16, int8, int4 and the compiled (CUDA-graph) decode against CPU float32
#    logits (the script stops first if torch sees no GPU: then there is nothing to verify);
# 3. benchmarks/engine.py on the real default model, torch configurations bf16 and int8, compile off
#    and on, decode tok/s and the fraction of the GPU's measured copy bandwidth (HBM);
# 4. benchmarks/scale.py on CodeLlama-7B's shape, bf16 and int8, compile off and on (8 layers of the
#    32 keep the four runs inside the time; decode reads per layer, so the fraction is the same);
# 5. benchmarks/long_context.py: 8k/16k/32k-token prompts through the torch engine on the GPU (the llamacpp
#    engine is CPU-only), and the far-definition tasks at contextLength 4096 against 32768;
# 6. one table of every configuration, written to OUT_DIR/gpu.md, each run's JSON beside it.
# Each step has its own time limit and a failed step does not stop the others; the exit status is
# the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu}
mkdir -p "$OUT"
failed=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit} s)"
    if ! timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
        echo "   FAILED, see $OUT/$name.log"; tail -5 "$OUT/$name.log"; failed=$((failed + 1))
    else
        tail -3 "$OUT/$name.log"
    fi
}

python -c "import codellama_lsp, pytest, torch" 2>/dev/null \
    || pip install -q -e '.[qwen]' pytest pytest-asyncio >"$OUT/install.log" 2>&1 \
    || echo "install failed (offline?): using what is installed; see $OUT/install.log"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "no CUDA GPU visible to torch: nothing to verify"; exit 1; }
python -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

step test_cuda 150 python -m pytest -q -rs tests/test_cuda.py
for config in torch:bfloat16:none:off torch:bfloat16:none:on torch:bfloat16:int8:off torch:bfloat16:int8:on; do
    name=engine_${config//:/_}
    step "$name" 100 python benchmarks/engine.py --device cuda --engines "$config" --keystrokes 6 --json "$OUT/$name.json"
done
for q in none int8; do
    for c in off on; do
        step "scale_${q}_${c}" 120 python benchmarks/scale.py --device cuda --dtype bfloat16 --layers 8 \
            --quantize "$q" --compile "$c" --context-length 4096 --json "$OUT/scale_${q}_${c}.json"
    done
done
step long_context 240 python benchmarks/long_context.py --device cuda --engines torch --lengths 8192,16384,32768 \
    --tasks 8 --long-window 32768 --max-seconds 120 --json "$OUT/long_context.json"

python - "$OUT" <<'EOF' | tee "$OUT/gpu.md"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print("| run | configuration | prefill tok/s | decode tok/s | bytes/step GB | HBM GB/s | fraction of HBM |")
print("|---|---|---:|---:|---:|---:|---:|")
for f in sorted(out.glob("*.json")):
    r = json.loads(f.read_text())
    if "speed" in r:  # benchmarks/long_context.py: its own table, below
        continue
    if "configurations" in r:  # benchmarks/engine.py
        for name, c in r["configurations"].items():
            print(f"| real model | {name} | {c['prefill_tok_s']:.0f} | {c['decode_tok_s']:.1f} | "
                  f"{c['bytes_per_step'] / 1e9:.3f} | {r['memory_bandwidth_gb_s']:.0f} | {c['decode_bandwidth_fraction']:.2f} |")
    else:  # benchmarks/scale.py
        print(f"| 7B shape, {r['layers']} layers | bf16, quantize {r['quantize']}, compile {r['compile']} | "
              f"{r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} | {r['bytes_per_step'] / 1e9:.3f} | "
              f"{r['memory_bandwidth_gb_s']:.0f} | {r['decode_bandwidth_fraction']:.2f} |")
EOF
python benchmarks/long_context.py --table "$OUT/long_context.json" | tee -a "$OUT/gpu.md"
echo "failed steps: $failed"
exit "$failed"
