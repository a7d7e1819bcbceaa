#!/usr/bin/env bash
# Create the TPU: one TPU VM (default), or a queued resource (--queued; waits for capacity, can be
# --spot), or --slices N slices of --type in one queued resource (multi-slice over DCN).
#   launch/tpu_create.sh --name dept --zone us-central2-b --type v4-32 [--queued] [--spot] [--dry-run]
source "$(dirname "$0")/common.sh"
usage() { echo "usage: $0 [--queued] [common flags]"; usage_common; }
parse_common "$@"
mapfile -t G < <(gcloud_common)
if [[ "$QUEUED" == 1 || "$SLICES" -gt 1 ]]; then
  cmd=(gcloud compute tpus queued-resources create "$NAME" "${G[@]}"
       --accelerator-type="$TYPE" --runtime-version="$RUNTIME")
  if [[ "$SLICES" -gt 1 ]]; then
    cmd+=(--node-count="$SLICES" --node-prefix="$NAME")
  else
    cmd+=(--node-id="$NAME")
  fi
  [[ "$SPOT" == 1 ]] && cmd+=(--spot)
  run "${cmd[@]}"
  echo "# wait until ACTIVE:"
  run gcloud compute tpus queued-resources describe "$NAME" "${G[@]}" --format="value(state.state)"
else
  cmd=(gcloud compute tpus tpu-vm create "$NAME" "${G[@]}" --accelerator-type="$TYPE"
       --version="$RUNTIME")
  [[ "$SPOT" == 1 ]] && cmd+=(--spot)
  run "${cmd[@]}"
fi
