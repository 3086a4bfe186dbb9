#!/usr/bin/env bash
# Train one or both stages; the same script runs on a workstation and, once per task, inside train.sbatch.
#
#   CONFIG=config/digits.json STAGE=both RUN=1 ./train.sh
#   CONFIG=config/ffhq-denoiser.json STAGE=denoiser VAE_CKPT=runs/ffhq-beta-vae-1/vae/checkpoints/last.ckpt ./train.sh
#   RESUME=runs/digits-1/vae/checkpoints/last.ckpt STAGE=vae ./train.sh
#   AUTO_RESUME=1 RUN=1 ./train.sh      (continue run 1 from each stage's last.ckpt; what train.sbatch sets)
#
# Extra arguments go to `python -m model.main` unchanged (e.g. --vae.trainer.max_steps 100).
set -euo pipefail
cd "$(dirname "$0")"

CONFIG="${CONFIG:-config/digits.json}"
STAGE="${STAGE:-both}"        # vae | denoiser | both
RUN="${RUN:-1}"               # run number: the run folder is runs/<config name>-<RUN>
VAE_CKPT="${VAE_CKPT:-}"      # stage-1 checkpoint for STAGE=denoiser
RESUME="${RESUME:-}"          # last.ckpt of the stage to resume (one stage only)
AUTO_RESUME="${AUTO_RESUME:-0}"  # 1: resume each stage from the run folder's last.ckpt when there is one

case "$STAGE" in
  vae) args=(--train-vae) ;;
  denoiser) args=(--train-denoiser) ;;
  both) args=(--train-vae --train-denoiser) ;;
  *) echo "error: STAGE must be vae, denoiser or both, got '$STAGE'" >&2; exit 2 ;;
esac
[[ -n "$VAE_CKPT" ]] && args+=(--load-vae "$VAE_CKPT")
[[ -n "$RESUME" ]] && args+=(--load "$RESUME")
[[ "$AUTO_RESUME" == 1 ]] && args+=(--auto-resume)

# Inside `srun` (a SLURM job step) every task is one DDP process; Lightning reads the ranks from SLURM's variables
# and must be given the same layout: processes per node and nodes. Arguments after these override them.
if [[ -n "${SLURM_STEP_ID:-}" && -n "${SLURM_NTASKS:-}" ]]; then
  nodes="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
  for stage in vae denoiser; do
    args+=(--$stage.trainer.devices "$(( SLURM_NTASKS / nodes ))" --$stage.trainer.num_nodes "$nodes"
           --$stage.trainer.strategy ddp)
  done
fi

exec python -m model.main -cfg "$CONFIG" "${args[@]}" -n "$RUN" "$@"
