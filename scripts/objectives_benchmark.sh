#!/usr/bin/env bash
# The digits demo under each training objective (model/objectives.py): one VAE, then the denoiser stage of
# config/digits.json trained as vp (v-target), flow (rectified flow) and edm (Karras et al. 2022) on its latents,
# each judged by demo_report (DDIM-25 noise-dense, 50 samples of every class, w = 0): the error budget on pixel
# features beside the VAE round trip and the real floor, class accuracy and the copy check.
#
#   bash scripts/objectives_benchmark.sh [RUN] [OBJECTIVE ...]     (RUN default 1; objectives default: vp flow edm)
#
# Leaves runs/objectives-<RUN>/<objective>/report/report.md and prints each report's budget table. Then every
# registered sampler at about 5, 10, 25 and 50 network evaluations on each objective's model, on the noise-dense and
# the Karras grid (benchmarks.quality_per_step --nfe): benchmarks/results/nfe_<objective>_<grid>.csv and .png.
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
RUN="${1:-1}"
shift || true
if [[ $# -gt 0 ]]; then OBJECTIVES=("$@"); else OBJECTIVES=(vp flow edm); fi
ROOT="runs/objectives-$RUN"
mkdir -p "$ROOT"

[[ -f "$ROOT/digits-1/vae/checkpoints/last.ckpt" ]] || \
  python -m model.main -cfg config/digits.json --train-vae -n 1 --output_dir "$ROOT" --vae.trainer.progress_bar false
[[ -f runs/classifiers/digits.pt ]] || python -m model.scripts.train_classifier -cfg config/digits.json
for objective in "${OBJECTIVES[@]}"; do
  start=$(date +%s)
  times=()  # the config's flow_logit_mean shapes the flow objective's training times; the others draw their own
  [[ "$objective" == flow ]] || times=(--denoiser.diffusion.flow_logit_mean 0)
  python -m model.main -cfg config/digits.json --train-denoiser -n 1 --output_dir "$ROOT/$objective" \
    --load-vae "$ROOT/digits-1/vae/checkpoints/last.ckpt" --denoiser.diffusion.objective "$objective" \
    --denoiser.trainer.progress_bar false "${times[@]}"
  echo "$objective: denoiser stage $(( $(date +%s) - start )) s wall"
  python -m model.scripts.demo_report --load "$ROOT/$objective/digits-1/denoiser/checkpoints/last.ckpt" \
    --classifier runs/classifiers/digits.pt --per-class 50 --cfg-scale 0 --sampler ddim --steps 25 \
    --output "$ROOT/$objective/report"
done
for objective in "${OBJECTIVES[@]}"; do
  for grid in noise-dense karras; do
    python -m benchmarks.quality_per_step --load "$ROOT/$objective/digits-1/denoiser/checkpoints/last.ckpt" \
      --classifier runs/classifiers/digits.pt --nfe 5 10 25 50 --spacing "$grid" --name "nfe_${objective}_${grid}" \
      > "$ROOT/$objective/nfe_${grid}.md"
  done
done
cpu="$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)"
for objective in "${OBJECTIVES[@]}"; do
  echo "== $objective ($(nproc) CPU cores, ${cpu:-unknown CPU}, torch $(python -c 'import torch; print(torch.__version__)'))"
  sed -n '/rror budget/,$p' "$ROOT/$objective/report/report.md" | head -12
done
