#!/usr/bin/env bash
# Preemption-safe training on a SLURM cluster: one task per node runs torchrun (through
# tools/torchrun.py) with one process per GPU; 120 s before the time limit SLURM sends SIGUSR1,
# the run saves a mid-epoch checkpoint and stops (exit status 75), and the job is requeued; the
# requeued job runs the same command, which resumes from the run folder's ckpt.pth.tar.
# A preemption's SIGTERM is handled the same way.
#   sbatch scripts/slurm_train.sh --dataset somethingv1 --arch resnet50 --num_segments 8 \
#       --store_name MAS_Net_v1_8 --lr 0.02 --batch-size 64 ...      (main.py's flags)
#   sbatch --nodes 2 --gpus-per-node 8 scripts/slurm_train.sh ...     (more nodes / GPUs)
#   DRY_RUN=1 bash scripts/slurm_train.sh ...   prints the srun command instead of running it
# Submit from the repository root. Give a --store_name: the requeued job must find the same
# run folder.
#SBATCH --job-name=masnet
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -uo pipefail
PYTHON=${PYTHON:-python}
PREEMPTED=75  # ops.preemption.PREEMPTED_EXIT
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"

NNODES=${SLURM_NNODES:-1}
GPUS=${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "${GPUS:-0}" -ge 1 ] 2>/dev/null || GPUS=1
if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  MASTER=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
else
  MASTER=127.0.0.1
fi
JOB=${SLURM_JOB_ID:-0}
PORT=$((29500 + JOB % 1000))

CMD=(srun --ntasks-per-node=1 --kill-on-bad-exit=0
     "$PYTHON" tools/torchrun.py --nnodes "$NNODES" --nproc_per_node "$GPUS"
     --rdzv_backend c10d --rdzv_endpoint "$MASTER:$PORT" --rdzv_id "$JOB"
     main.py "$@")
if [ -n "${DRY_RUN:-}" ]; then
  printf '%q ' "${CMD[@]}"
  echo
  exit 0
fi

# the signal reaches this shell (--signal=B:...): srun forwards it to the torchrun tasks,
# which forward it to every training process
STOPPING= PID=
forward() { STOPPING=$1; echo "slurm_train.sh: $1: stopping the run for a requeue"; kill -"$1" "$PID" 2>/dev/null; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
"${CMD[@]}" &
PID=$!
STATUS=0
while kill -0 "$PID" 2>/dev/null; do
  wait "$PID"
  STATUS=$?
done
if [ "$STATUS" -eq "$PREEMPTED" ] || { [ -n "$STOPPING" ] && [ "$STATUS" -ne 0 ]; }; then
  echo "slurm_train.sh: the run stopped to be resumed (exit status $STATUS): requeueing job $JOB"
  scontrol requeue "$JOB"
fi
exit "$STATUS"
