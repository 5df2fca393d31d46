#!/usr/bin/env bash
# Start N processes of one command on this machine, joined by jax.distributed over CPU: the
# multi-host code paths of a pod slice or GPU cluster, without one (tests, development).
#
#   launch/local.sh N [--devices D] [--logs DIR] -- COMMAND...
#   launch/local.sh 2 --devices 2 -- tpt run configs/smoke.yaml --run-dir runs/smoke2
#
# Each process gets D fake CPU devices (default 1), so N x D devices in all. Process 0 prints to
# this terminal; every process also logs to DIR/process-I.log (default: a new temp directory,
# printed). When one process fails the others are stopped; the exit status is the first
# failure's (0 when all succeed).
set -uo pipefail
usage() { echo "usage: $0 N [--devices D] [--logs DIR] -- COMMAND..." >&2; exit 2; }
[[ $# -ge 3 && $1 =~ ^[1-9][0-9]*$ ]] || usage
n=$1 devices=1 logs=""
shift
while [[ $# -gt 0 && $1 != "--" ]]; do
  case $1 in
    --devices) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || usage; devices=$2; shift 2 ;;
    --logs) [[ -n ${2:-} ]] || usage; logs=$2; shift 2 ;;
    *) usage ;;
  esac
done
[[ ${1:-} == "--" && $# -ge 2 ]] || usage
shift
logs=${logs:-$(mktemp -d -t tpt-local-XXXXXX)}
mkdir -p "$logs"
echo "launch/local.sh: $n processes x $devices CPU devices, logs in $logs" >&2
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
flags=$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g' <<<"${XLA_FLAGS:-}")

pids=()
for ((i = 0; i < n; i++)); do
  env TPT_MULTIHOST=1 TPT_COORDINATOR="127.0.0.1:$port" TPT_NUM_PROCESSES="$n" \
    TPT_PROCESS_ID="$i" JAX_PLATFORMS=cpu \
    XLA_FLAGS="$flags --xla_force_host_platform_device_count=$devices" \
    "$@" >"$logs/process-$i.log" 2>&1 &
  pids+=($!)
done
tail -n +1 -f "$logs/process-0.log" --pid "${pids[0]}" &
tailer=$!

status=0
live=("${pids[@]}")
while ((${#live[@]} > 0)); do
  wait -n -p done_pid "${live[@]}"
  rc=$?
  rest=()
  for p in "${live[@]}"; do [[ $p == "$done_pid" ]] || rest+=("$p"); done
  live=("${rest[@]}")
  if ((rc != 0 && status == 0)); then
    status=$rc
    for ((i = 0; i < n; i++)); do
      [[ ${pids[i]} == "$done_pid" ]] && echo "launch/local.sh: process $i exited with $rc;" \
        "stopping the others (log: $logs/process-$i.log)" >&2
    done
    ((${#live[@]} == 0)) || kill "${live[@]}" 2>/dev/null
  fi
done
wait "$tailer" 2>/dev/null
exit $status
