#!/usr/bin/env bash
# Start the same dept_jax command on all workers of all nodes. Every worker calls
# jax.distributed.initialize() (DEPT_JAX_DISTRIBUTED=1); process 0 logs and writes metrics.
# With --slices N (multi-slice), sources go one per slice: the `source` mesh axis spans slices
# (DCN) and only the outer step crosses it. Pass dept_jax overrides after `--`.
#   launch/tpu_run.sh --name dept --config configs/pile_125m.py:spec --workdir /mnt/gcs/B/runs/x [-- --config.steps=100]
source "$(dirname "$0")/common.sh"
usage() { echo "usage: $0 --workdir /mnt/gcs/... [common flags] [-- dept_jax flags]"; usage_common; }
parse_common "$@"
mapfile -t G < <(gcloud_common)
CMD="$(train_command)"
if [[ "$SLICES" -gt 1 ]]; then
  # One source per slice: mesh.source = number of slices (dept_jax orders devices slice by slice).
  CMD="${CMD/--workdir/--config.mesh.source=$SLICES --workdir}"
fi
for node in $(nodes); do
  # Background ssh per node so all slices start together; each reaches every worker of its node.
  if [[ "$SLICES" -gt 1 ]]; then
    run_bg gcloud compute tpus tpu-vm ssh "$node" "${G[@]}" --worker=all --command="$CMD"
  else
    run gcloud compute tpus tpu-vm ssh "$node" "${G[@]}" --worker=all --command="$CMD"
  fi
done
wait
