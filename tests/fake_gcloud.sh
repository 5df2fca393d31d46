#!/usr/bin/env bash
# A stand-in for `gcloud compute tpus tpu-vm {ssh,scp}` (tests/test_multiprocess.py): worker I of
# a FAKE_WORKERS-worker slice is a home directory $FAKE_ROOT/worker-I on this machine.
set -euo pipefail
verb=$4
worker=all command="" files=()
shift 5  # compute tpus tpu-vm VERB TPU
for arg in "$@"; do
  case $arg in
    --worker=*) worker=${arg#--worker=} ;;
    --zone | --command) ;;
    *) if [[ ${prev:-} == --command ]]; then command=$arg; elif [[ ${prev:-} != --zone ]]; then files+=("$arg"); fi ;;
  esac
  prev=$arg
done
if [[ $worker == all ]]; then ids=$(seq 0 $((FAKE_WORKERS - 1))); else ids=$worker; fi
for i in $ids; do
  home=$FAKE_ROOT/worker-$i
  mkdir -p "$home"
  if [[ $verb == ssh ]]; then HOME=$home bash -c "$command"; else cp "${files[0]}" "$home/"; fi
done
