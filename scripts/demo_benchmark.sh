#!/usr/bin/env bash
# Reproduces the README's demo figures on this machine: the wall time of the README's main command, then the VAE's
# reconstruction error, the digits classifier, and the DDIM-25 samples' class accuracy, copy check and error budget
# on pixel features (demo_report).
#
#   bash scripts/demo_benchmark.sh [RUN]        (RUN: the run number, default 1; the run must not exist yet)
#
# Prints the numbers and leaves them in runs/digits-<RUN>/ (vae/samples/reconstructions.json,
# denoiser/report/report.md). Run it alone on the machine: the timings count wall-clock seconds.
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
RUN="${1:-1}"
DIR="runs/digits-$RUN"
LOG="$(mktemp)"

start=$(date +%s)
python -m model.main -cfg config/digits.json --train-vae --train-denoiser -n "$RUN" | tee "$LOG"
python -m model.scripts.sample --load "$DIR/denoiser/checkpoints/last.ckpt" --ddim --steps 25 --per-class 8
main_s=$(( $(date +%s) - start ))

python -m model.scripts.sample_vae --load "$DIR/vae/checkpoints/last.ckpt" --num_samples 64
[[ -f runs/classifiers/digits.pt ]] || python -m model.scripts.train_classifier -cfg config/digits.json
python -m model.scripts.demo_report --load "$DIR/denoiser/checkpoints/last.ckpt" \
  --classifier runs/classifiers/digits.pt --per-class 50 --cfg-scale 0 2

cpu="$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)"
echo "README main command (both stages + samples): ${main_s} s wall on $(nproc) CPU cores (${cpu:-unknown CPU})"
grep -h "trained to step" "$LOG" || true
