# Shared by the launch/ scripts: flag parsing and a `run` that prints instead of running under
# --dry-run. Source it; do not run it.
set -euo pipefail

DRY_RUN=0
NAME="${DEPT_TPU_NAME:-dept-tpu}"
ZONE="${DEPT_TPU_ZONE:-us-central2-b}"
PROJECT="${DEPT_TPU_PROJECT:-}"
TYPE="${DEPT_TPU_TYPE:-v4-32}"
RUNTIME="${DEPT_TPU_RUNTIME:-tpu-ubuntu2204-base}"
SLICES=1
SPOT=0
QUEUED=0  # tpu_create/tpu_delete: a queued resource instead of a plain TPU VM
CONFIG="configs/pile_125m.py:spec"
WORKDIR=""
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRA=()

usage_common() {
  cat <<USAGE
common flags: --name NAME --zone ZONE --project P --type v4-32 --runtime VERSION --slices N
              --spot --config CONFIG --workdir /mnt/gcs/BUCKET/run --dry-run  [-- extra dept_jax flags]
USAGE
}

parse_common() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      --name) NAME="$2"; shift ;;
      --zone) ZONE="$2"; shift ;;
      --project) PROJECT="$2"; shift ;;
      --type) TYPE="$2"; shift ;;
      --runtime) RUNTIME="$2"; shift ;;
      --slices) SLICES="$2"; shift ;;
      --spot) SPOT=1 ;;
      --queued) QUEUED=1 ;;
      --config) CONFIG="$2"; shift ;;
      --workdir) WORKDIR="$2"; shift ;;
      --help|-h) usage; exit 0 ;;
      --) shift; EXTRA=("$@"); break ;;
      *) echo "unknown flag: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
  done
}

# One word as a shell would need it: bare when safe, else in single quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then
    printf '%s' "$1"
  else
    local sq="'\\''"
    printf "'%s'" "${1//\'/$sq}"
  fi
}

# Print the command (shell-quoted); run it unless --dry-run.
run() {
  local line="+" a
  for a in "$@"; do line+=" $(quote "$a")"; done
  echo "$line"
  if [[ "$DRY_RUN" == 0 ]]; then
    "$@"
  fi
}

# As run, but the command goes to the background (printed first, in order); `wait` for it.
run_bg() {
  local line="+" a
  for a in "$@"; do line+=" $(quote "$a")"; done
  echo "$line &"
  if [[ "$DRY_RUN" == 0 ]]; then
    "$@" &
  fi
}

gcloud_common() {
  local args=(--zone="$ZONE")
  [[ -n "$PROJECT" ]] && args+=(--project="$PROJECT")
  printf '%s\n' "${args[@]}"
}

# Node names: one TPU VM, or NAME-0 .. NAME-(SLICES-1) for a multi-slice queued resource.
nodes() {
  if [[ "$SLICES" -gt 1 ]]; then
    for ((i = 0; i < SLICES; i++)); do echo "${NAME}-${i}"; done
  else
    echo "$NAME"
  fi
}

# The training command every worker runs. jax.distributed.initialize() reads the TPU pod (and,
# on multi-slice, the MEGASCALE_* variables the queued resource sets) from the environment.
train_command() {
  if [[ -z "$WORKDIR" ]]; then
    echo "--workdir is required (a path every worker can read and write, e.g. a gcsfuse-mounted bucket; resume reads it)" >&2
    exit 2
  fi
  local extra=""
  if [[ ${#EXTRA[@]} -gt 0 ]]; then extra=" $(printf '%q ' "${EXTRA[@]}")"; extra="${extra% }"; fi
  echo "cd ~/dept_jax && DEPT_JAX_DISTRIBUTED=1 ~/venv/bin/python -m dept_jax.main --config $CONFIG --workdir $WORKDIR${extra} 2>&1 | tee -a ~/dept_jax_train.log"
}
