#!/usr/bin/env bash
# Delete the TPU VM (or the queued resource with --queued / --slices N).
source "$(dirname "$0")/common.sh"
usage() { echo "usage: $0 [--queued] [common flags]"; usage_common; }
parse_common "$@"
mapfile -t G < <(gcloud_common)
if [[ "$QUEUED" == 1 || "$SLICES" -gt 1 ]]; then
  run gcloud compute tpus queued-resources delete "$NAME" "${G[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$NAME" "${G[@]}" --quiet
fi
