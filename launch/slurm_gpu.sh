#!/usr/bin/env bash
# Submit dept_jax to a SLURM GPU cluster: one task per node, all its GPUs per task. jax detects
# SLURM (SLURM_NTASKS, SLURM_PROCID, the node list) in jax.distributed.initialize(), which every
# task calls (DEPT_JAX_DISTRIBUTED=1); task 0 coordinates, logs and writes metrics.
#   launch/slurm_gpu.sh --nodes 2 --gpus-per-node 8 --config configs/pile_125m.py:spec \
#       --workdir /shared/runs/x [--partition P] [--time 24:00:00] [--dry-run] [-- dept_jax flags]
# Resume: submit the same command again (same --workdir); --requeue lets SLURM do it after a
# preemption, and dept_jax saves a checkpoint on SIGTERM (sent 120 s before the kill).
set -euo pipefail
DRY_RUN=0; NODES=2; GPUS=8; PARTITION=""; TIME="24:00:00"; CONFIG="configs/pile_125m.py:spec"
WORKDIR=""; VENV="${DEPT_JAX_VENV:-$HOME/venv}"; EXTRA=()
REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --nodes) NODES="$2"; shift ;;
    --gpus-per-node) GPUS="$2"; shift ;;
    --partition) PARTITION="$2"; shift ;;
    --time) TIME="$2"; shift ;;
    --config) CONFIG="$2"; shift ;;
    --workdir) WORKDIR="$2"; shift ;;
    --venv) VENV="$2"; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown flag: $1" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$WORKDIR" ]] || { echo "--workdir is required (shared by all nodes)" >&2; exit 2; }
extra=""
if [[ ${#EXTRA[@]} -gt 0 ]]; then extra=" $(printf '%q ' "${EXTRA[@]}")"; extra="${extra% }"; fi
SCRIPT="$(cat <<SBATCH
#!/usr/bin/env bash
#SBATCH --job-name=dept_jax
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPUS
#SBATCH --time=$TIME
#SBATCH --requeue
#SBATCH --signal=TERM@120
#SBATCH --output=dept_jax-%j.out
${PARTITION:+#SBATCH --partition=$PARTITION}
cd $REPO_DIR
export DEPT_JAX_DISTRIBUTED=1
srun $VENV/bin/python -m dept_jax.main --config $CONFIG --workdir $WORKDIR$extra
SBATCH
)"
if [[ "$DRY_RUN" == 1 ]]; then
  echo "$SCRIPT"
  echo "+ sbatch <the script above>"
else
  echo "$SCRIPT" | sbatch
fi
