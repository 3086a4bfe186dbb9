#!/usr/bin/env bash
# Train one or both stages; the same script runs on a workstation and inside train.sbatch.
#
#   CONFIG=config/digits.json STAGE=both RUN=1 ./train.sh
#   CONFIG=config/ffhq-denoiser.json STAGE=denoiser VAE_CKPT=runs/ffhq-beta-vae-1/vae/checkpoints/last.ckpt ./train.sh
#   RESUME=runs/digits-1/vae/checkpoints/last.ckpt STAGE=vae ./train.sh
#
# Extra arguments go to `python -m model.main` unchanged (e.g. --vae.trainer.max_steps 100).
# Multi-GPU, SLURM signals and requeue are set up in train.sbatch (issue 6 completes them).
set -euo pipefail
cd "$(dirname "$0")"

CONFIG="${CONFIG:-config/digits.json}"
STAGE="${STAGE:-both}"        # vae | denoiser | both
RUN="${RUN:-1}"               # run number: the run folder is runs/<config name>-<RUN>
VAE_CKPT="${VAE_CKPT:-}"      # stage-1 checkpoint for STAGE=denoiser
RESUME="${RESUME:-}"          # last.ckpt of the stage to resume (one stage only)

case "$STAGE" in
  vae) args=(--train-vae) ;;
  denoiser) args=(--train-denoiser) ;;
  both) args=(--train-vae --train-denoiser) ;;
  *) echo "error: STAGE must be vae, denoiser or both, got '$STAGE'" >&2; exit 2 ;;
esac
[[ -n "$VAE_CKPT" ]] && args+=(--load-vae "$VAE_CKPT")
[[ -n "$RESUME" ]] && args+=(--load "$RESUME")

exec python -m model.main -cfg "$CONFIG" "${args[@]}" -n "$RUN" "$@"
