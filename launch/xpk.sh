#!/usr/bin/env bash
# A tpt command as an XPK workload on a GKE cluster of TPU slices (XPK makes the JobSet: one
# pod per TPU VM host, the same command in each; jax.distributed.initialize() finds the others
# through GKE's environment).
#
#   TPT_IMAGE_REPO=REGISTRY launch/xpk.sh CLUSTER WORKLOAD TPU_TYPE -- COMMAND...
#   TPT_IMAGE_REPO=gcr.io/my-project launch/xpk.sh my-cluster gemma9b v5p-32 -- \
#       tpt run configs/gemma2_9b_gsm8k.yaml \
#       --run-dir gs://my-bucket/runs/gemma2_9b
#
# Needs `pip install xpk`, gcloud and kubectl set up for the cluster, and docker. The image is
# launch/Dockerfile (the package, configs, the versions CI tests), built here, tagged with the
# commit and pushed to TPT_IMAGE_REPO. The run directory must be storage every pod reaches (a gs:// bucket the
# workload's service account may write, or a Filestore volume), since process 0 writes it and all
# read it. `xpk workload
# delete --cluster CLUSTER --workload WORKLOAD` stops it; submitting the same command again
# resumes the run. One slice per workload: tpt's mesh has no DCN axis across slices yet.
# Not exercised in CI (no cluster there): launch/local.sh runs the same multi-process code
# paths on one machine, and that is tested.
set -euo pipefail
if [[ $# -lt 5 || $4 != "--" || -z ${TPT_IMAGE_REPO:-} ]]; then
  echo "usage: TPT_IMAGE_REPO=REGISTRY $0 CLUSTER WORKLOAD TPU_TYPE -- COMMAND..." >&2
  exit 2
fi
cluster=$1 workload=$2 tpu_type=$3
shift 4
here=$(cd "$(dirname "$0")/.." && pwd)
image="$TPT_IMAGE_REPO/tpt-jax-tpu:$(git -C "$here" rev-parse --short HEAD)"
docker build -f "$here/launch/Dockerfile" -t "$image" "$here"
docker push "$image"
xpk workload create --cluster "$cluster" --workload "$workload" --tpu-type "$tpu_type" \
  --num-slices 1 --docker-image "$image" \
  --command "cd /tpt_jax && TPT_MULTIHOST=1 $(printf '%q ' "$@")"
