#!/usr/bin/env bash
# Keep a (spot/preemptible) run going: while the queued resource is not ACTIVE (preempted,
# suspended, failed), delete it, re-create it, install, and start the same command again.
# Resume is automatic: dept_jax restores the latest checkpoint under the same --workdir.
#   launch/tpu_resume.sh --name dept --type v4-32 --spot --config ... --workdir /mnt/gcs/B/runs/x [--dry-run]
source "$(dirname "$0")/common.sh"
usage() { echo "usage: $0 --workdir /mnt/gcs/... [--max-restarts N] [common flags]"; usage_common; }
MAX_RESTARTS=20
args=()
while [[ $# -gt 0 ]]; do
  if [[ "$1" == "--max-restarts" ]]; then MAX_RESTARTS="$2"; shift; else args+=("$1"); fi; shift
done
parse_common "${args[@]+"${args[@]}"}"
train_command >/dev/null  # fail early without --workdir
mapfile -t G < <(gcloud_common)
HERE="$(dirname "$0")"
pass=("${args[@]}")
for ((attempt = 0; attempt <= MAX_RESTARTS; attempt++)); do
  state=PREEMPTED  # dry run: show the re-create path
  if [[ "$DRY_RUN" == 0 ]]; then
    state="$(gcloud compute tpus queued-resources describe "$NAME" "${G[@]}" \
             --format='value(state.state)' 2>/dev/null || echo MISSING)"
  fi
  echo "# attempt $attempt: queued resource $NAME is ${state}"
  if [[ "$state" != ACTIVE ]]; then
    if [[ "$state" != MISSING ]]; then
      run gcloud compute tpus queued-resources delete "$NAME" "${G[@]}" --force --quiet
    fi
    bash "$HERE/tpu_create.sh" --queued "${pass[@]}"
    if [[ "$DRY_RUN" == 0 ]]; then
      until [[ "$(gcloud compute tpus queued-resources describe "$NAME" "${G[@]}" \
                  --format='value(state.state)')" == ACTIVE ]]; do sleep 60; done
    fi
    bash "$HERE/tpu_install.sh" "${pass[@]}"
  fi
  # Same command, same workdir: training continues from the last checkpoint. A clean exit means
  # the run finished (or stopped on SIGTERM after saving, which the next attempt resumes).
  if bash "$HERE/tpu_run.sh" "${pass[@]}" && [[ "$DRY_RUN" == 0 ]]; then
    state="$(gcloud compute tpus queued-resources describe "$NAME" "${G[@]}" \
             --format='value(state.state)' 2>/dev/null || echo MISSING)"
    [[ "$state" == ACTIVE ]] && { echo "# run finished"; exit 0; }
  fi
  [[ "$DRY_RUN" == 1 ]] && exit 0
done
echo "gave up after $MAX_RESTARTS restarts" >&2
exit 1
