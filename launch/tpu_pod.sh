#!/usr/bin/env bash
# One tpt command on every worker of a Cloud TPU VM slice (multi-host JAX: one process per
# worker, joined by jax.distributed.initialize(), which finds the slice's workers by itself).
#
#   launch/tpu_pod.sh setup    TPU ZONE            copy the package and configs, install once
#   launch/tpu_pod.sh run      TPU ZONE -- CMD...  start CMD on every worker, follow worker 0
#   launch/tpu_pod.sh status   TPU ZONE            each worker: running, stopped or its exit code
#   launch/tpu_pod.sh logs     TPU ZONE [WORKER]   a worker's log (default 0)
#   launch/tpu_pod.sh stop     TPU ZONE            stop the command on every worker
#   launch/tpu_pod.sh teardown TPU ZONE            delete the TPU VM (asks gcloud to confirm)
#
# Example, Gemma-2-9B on a v5p-32 slice (4 workers); the run directory must be storage every
# worker sees (a bucket here; a Filestore/NFS mount works too), since process 0 writes it and
# all processes read it:
#   launch/tpu_pod.sh setup my-v5p europe-west4-b
#   launch/tpu_pod.sh run my-v5p europe-west4-b -- tpt run configs/gemma2_9b_gsm8k.yaml \
#       --run-dir gs://my-bucket/runs/gemma2_9b
#
# `setup` ships only what a run needs (tpt_jax/, configs/, launch/, scripts/, pyproject.toml,
# README.md; never checkpoints or runs) and installs the versions CI tests
# (launch/constraints.txt) into ~/tpt_jax/.venv, once per package version: a later `setup`
# with nothing changed installs nothing. `run` starts the command in the background on every
# worker (it survives the ssh session; logs in ~/tpt_jax/logs/worker.log on each), then polls:
# when a worker's command fails, it stops the others, so no worker waits forever on a
# collective; Ctrl-C stops following, not the run. Rerunning the same `run` after a failure or a
# preemption resumes the run from its last finished stage, THINK chunk or saved TRAIN step.
# Needs the gcloud CLI, authenticated. Not exercised in CI (no TPU there): launch/local.sh runs
# the same multi-process code paths on one machine, and that is tested.
set -euo pipefail
usage() { sed -n '5,10p' "$0" | sed 's/^# */usage: /' >&2; exit 2; }
[[ $# -ge 3 ]] || usage
action=$1 tpu=$2 zone=$3
shift 3
here=$(cd "$(dirname "$0")/.." && pwd)
ssh_all() { gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$1"; }
ssh_one() { gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker="$1" --command "$2"; }

worker_states() {  # one line per worker: "HOST running", "HOST exit N" or "HOST stopped"
  ssh_all 'cd ~/tpt_jax/logs; if [[ -f worker.rc ]]; then echo "$(hostname) exit $(cat worker.rc)"
    elif kill -0 "$(cat worker.pid)" 2>/dev/null; then echo "$(hostname) running"
    else echo "$(hostname) stopped"; fi' 2>/dev/null
}

case $action in
  setup)
    archive=$(mktemp -t tpt_jax_src-XXXXXX.tgz)
    git -C "$here" archive --format=tar.gz -o "$archive" HEAD \
      tpt_jax configs launch scripts pyproject.toml README.md
    stamp=$(cat "$here/pyproject.toml" "$here/launch/constraints.txt" | sha256sum | cut -c1-16)
    gcloud compute tpus tpu-vm scp "$archive" "$tpu":/tmp/tpt_jax_src.tgz --zone "$zone" --worker=all
    ssh_all "set -e; mkdir -p ~/tpt_jax && tar -C ~/tpt_jax -xzf /tmp/tpt_jax_src.tgz
      cd ~/tpt_jax && if [[ ! -f .venv/installed-$stamp ]]; then
        python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip
        .venv/bin/pip install -q -c launch/constraints.txt -e '.[tpu,gcs]'
        rm -f .venv/installed-* && touch .venv/installed-$stamp; fi
      .venv/bin/python -c 'import jax; print(jax.process_count(), jax.devices()[0].device_kind)'"
    ;;
  run)
    [[ ${1:-} == "--" && $# -ge 2 ]] || usage
    shift
    command=$(printf '%q ' "$@")
    ssh_all "mkdir -p ~/tpt_jax/logs && rm -f ~/tpt_jax/logs/worker.rc && cd ~/tpt_jax &&
      nohup setsid bash -c 'echo \$\$ > ~/tpt_jax/logs/worker.pid
        export TPT_MULTIHOST=1 PATH=\$PWD/.venv/bin:\$PATH; $command
        echo \$? > ~/tpt_jax/logs/worker.rc' > ~/tpt_jax/logs/worker.log 2>&1 < /dev/null &"
    echo "tpu_pod.sh: started on every worker of $tpu; following (Ctrl-C stops following only)" >&2
    while sleep "${TPT_POLL_S:-30}"; do  # TPT_POLL_S: the tests poll faster
      states=$(worker_states)
      if grep -Eq 'exit [1-9]|stopped' <<<"$states"; then
        echo "tpu_pod.sh: a worker failed; stopping the others:" >&2
        echo "$states" >&2
        "$0" stop "$tpu" "$zone"
        exit 1
      fi
      if ! grep -q running <<<"$states"; then
        echo "tpu_pod.sh: every worker finished" >&2
        ssh_one 0 'tail -n 20 ~/tpt_jax/logs/worker.log'
        exit 0
      fi
      ssh_one 0 'tail -n 1 ~/tpt_jax/logs/worker.log' 2>/dev/null || true
    done
    ;;
  status) worker_states ;;
  logs) ssh_one "${1:-0}" 'cat ~/tpt_jax/logs/worker.log' ;;
  stop)  # the command's whole process group (setsid made it one): tpt and what it started
    ssh_all 'pid=~/tpt_jax/logs/worker.pid; [[ -f $pid ]] && kill -TERM -- -"$(cat $pid)" 2>/dev/null
      true' ;;
  teardown) gcloud compute tpus tpu-vm delete "$tpu" --zone "$zone" ;;
  *) usage ;;
esac
