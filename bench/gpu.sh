#!/usr/bin/env bash
# The GPU figures of issues 9 and 11 in one call on a lent H200 (or any CUDA GPU):
#   bash bench/gpu.sh "$OUT"       (results as JSON and logs under $OUT)
# Runs from a checkout whose venv has the `gpu` set-up, or on an image with jax, flax, optax,
# orbax, transformers and torch installed (then with PYTHONPATH=.). JAX and torch share the card,
# so JAX must not preallocate.
set -uo pipefail
OUT=${1:-bench/results}
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=${PYTHONPATH:-.}
PY=${PY:-python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# 1. Gemma-2-2B shape, fixed workload, batch 256, prompt 128 + 256 new, bf16, vs transformers.
$PY bench/sampling.py --model preset:gemma2-2b --workload fixed --batch-sizes 256 \
  --prompt-len 128 --new-tokens 256 --baseline hf --out "$OUT/sampling-gemma2-2b.json" \
  2>&1 | tee "$OUT/sampling-gemma2-2b.log"
# 2. The shipped SmolLM2-135M, think and fixed workloads at 32 and 256 slots.
$PY bench/sampling.py --model smollm2 --workload think,fixed --batch-sizes 32,256 \
  --baseline hf --out "$OUT/sampling-smollm2.json" 2>&1 | tee "$OUT/sampling-smollm2.log"
# 3. The paper config's round-0 EVAL at full size (must not run out of memory), with the plan.
$PY -m tpt_jax.cli plan bench/configs/gemma2_2b_round0_eval.yaml --json > "$OUT/plan.json"
/usr/bin/time -v $PY -m tpt_jax.cli run bench/configs/gemma2_2b_round0_eval.yaml \
  --run-dir "$OUT/gemma2_2b_round0" 2>&1 | tail -40 | tee "$OUT/round0_eval.log"
# 4. Training steps (issue 11): Gemma-2-2B at 8 x 1024 and Llama-3.2-1B at 8 x 1024 against
#    transformers + torch AdamW (float32 masters, bf16 autocast), and SmolLM2-135M at 8 x 512;
#    Llama-3.2-1B again with XLA attention instead of cuDNN (Gemma 2's soft-cap is XLA anyway).
for spec in "gemma2-2b 1024 auto" "llama3.2-1b 1024 auto" "smollm2-135m 512 auto" \
  "llama3.2-1b 1024 xla"; do
  set -- $spec
  $PY bench/train_step.py --preset "$1" --batch 8 --seq "$2" --steps 8 --warmup 3 --attention "$3" \
    --baseline torch --out "$OUT/train_step-$1-$3.json" 2>&1 | tail -30 | tee "$OUT/train_step-$1-$3.log"
done
