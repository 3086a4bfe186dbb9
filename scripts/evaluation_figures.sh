#!/usr/bin/env bash
# Reproduces the evaluation figures of docs/evaluation.md from a trained digits run (the README's main command) and
# the toy: the error budget, FID and class accuracy per guidance scale, real digits beside samples, quality per
# network evaluation, the loss per timestep, the schedule, noising, loss and denoising plots, reimagining, inpainting
# and the toy's Chamfer distances. Copies the pictures, upscaled (nearest), to docs/figures/.
#
#   bash scripts/evaluation_figures.sh [RUN]     (RUN: the digits run number, default 1)
#
# Trains what is missing: the digits run (under 1 min 30 s on 2 AVX-512 CPU cores), the digits classifier (about 20 s) and the
# toy run (config/toy2d.json, about 1 min). Everything else reads those checkpoints.
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
RUN="${1:-1}"
DIR="runs/digits-$RUN"
DEN="$DIR/denoiser/checkpoints/last.ckpt"
TOY="runs/toy2d-$RUN/denoiser/checkpoints/last.ckpt"
CLF=runs/classifiers/digits.pt
OUT="runs/figures-$RUN"
mkdir -p "$OUT" docs/figures

[[ -f "$DEN" ]] || python -m model.main -cfg config/digits.json --train-vae --train-denoiser -n "$RUN"
[[ -f "$CLF" ]] || python -m model.scripts.train_classifier -cfg config/digits.json
[[ -f "$TOY" ]] || python -m model.main -cfg config/toy2d.json --train-denoiser -n "$RUN"

python -m model.scripts.evaluate --load "$DEN" --classifier "$CLF" --num_samples 500 --cfg-scale 0 2 7.5 \
  --output "$OUT/evaluation"  # the checkpoint's sampler
python -m model.scripts.demo_report --load "$DEN" --classifier "$CLF" --per-class 50 --cfg-scale 0 2 \
  --output "$OUT/report"
python -m benchmarks.quality_per_step --load "$DEN" --classifier "$CLF" --plot "$OUT/quality/quality_per_step.png"
python -m model.scripts.evaluate --load "$TOY" --num_samples 2000 --ddim --steps 50 --output "$OUT/toy"
python -m model.scripts.plots schedules --T 1000 --output "$OUT/schedules"
python -m model.scripts.plots schedules --T 10 --output "$OUT/schedules-T10"
python -m model.scripts.plots noising --load "$DEN" --T 10 --output "$OUT/noising"
python -m model.scripts.plots loss --run "$DIR" --output "$OUT/loss"
python -m model.scripts.plots denoising --load "$DEN" --n 8 --output "$OUT/denoising"
python -m model.scripts.reimagine --load "$DEN" --index 0 --output "$OUT/reimagine"
python - "$OUT/mask_right_half.png" <<'EOF2'
import sys

import numpy as np
from PIL import Image

mask = np.zeros((16, 16), np.uint8)
mask[:, 8:] = 255  # regenerate the right half
Image.fromarray(mask).save(sys.argv[1])
EOF2
python -m model.scripts.reimagine --load "$DEN" --index 0 --mask "$OUT/mask_right_half.png" --ddim-steps 25 \
  --output "$OUT/inpaint"

python - "$OUT" <<'EOF2'
import sys
from pathlib import Path

from PIL import Image

out = Path(sys.argv[1])
pictures = {"schedules/schedules.png": 1, "loss/loss.png": 1, "toy/chamfer.png": 1, "quality/quality_per_step.png": 1,
            "noising/noising_latent.png": 4, "noising/noising_pixels.png": 4, "denoising/denoising.png": 4,
            "reimagine/reimagine.png": 4, "reimagine/intermediates.png": 4, "evaluation/samples_w0.png": 3,
            "evaluation/samples_w7.5.png": 3, "report/real_vs_samples_w0.png": 3, "inpaint/inpaint.png": 6}
for name, scale in pictures.items():
    img = Image.open(out / name)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(Path("docs/figures") / name.replace("/", "-"))
print(f"wrote {len(pictures)} pictures to docs/figures/")
EOF2
