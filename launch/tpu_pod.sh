#!/usr/bin/env bash
# Run one tpt command on every worker of a Cloud TPU VM slice at once (multi-host JAX).
#
#   launch/tpu_pod.sh TPU_NAME ZONE -- tpt top llama-hf-dir "What is 12 times 7?"
#
# Copies this checkout to each worker, installs it with the [tpu] extra into ~/tpt_jax/.venv,
# then starts the command on all workers with TPT_MULTIHOST=1, which makes `tpt` call
# jax.distributed.initialize() before touching a device. Needs the gcloud CLI, authenticated.
# Not exercised in CI (no TPU there); single-process limits are listed in README.md.
set -euo pipefail
if [[ $# -lt 4 || $3 != "--" ]]; then
  echo "usage: $0 TPU_NAME ZONE -- COMMAND..." >&2
  exit 2
fi
tpu=$1 zone=$2
shift 3
here=$(cd "$(dirname "$0")/.." && pwd)
ssh_all() { gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$1"; }

tar -C "$here" --exclude .venv --exclude .git -czf /tmp/tpt_jax_src.tgz .
gcloud compute tpus tpu-vm scp /tmp/tpt_jax_src.tgz "$tpu":/tmp/ --zone "$zone" --worker=all
ssh_all "mkdir -p ~/tpt_jax && tar -C ~/tpt_jax -xzf /tmp/tpt_jax_src.tgz && cd ~/tpt_jax \
  && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'"
ssh_all "cd ~/tpt_jax && TPT_MULTIHOST=1 PATH=\$PWD/.venv/bin:\$PATH $(printf '%q ' "$@")"
