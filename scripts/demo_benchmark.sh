#!/usr/bin/env bash
# Reproduces the README's demo figures on this machine: the wall time of the README's main command, then the VAE's
# reconstruction error, the digits classifier, and the DDIM-25 samples' class accuracy, copy check and error budget
# on pixel features (demo_report), for one or more training seeds.
#
#   bash scripts/demo_benchmark.sh [--seeds N] [RUN]
#
# RUN is the first run number (default 1; the runs must not exist yet); training seed k (0 .. N-1, default N = 1)
# trains run RUN+k with --seed k (the data split stays the same). Prints the machine (CPU model, vector ISA, cores),
# each run's wall time and report, then one error-budget row per seed and their mean ± std
# (benchmarks.demo_seeds). Leaves everything in runs/digits-<n>/. Run it alone on the machine: the timings count
# wall-clock seconds.
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
SEEDS=1
if [[ "${1:-}" == "--seeds" ]]; then SEEDS="$2"; shift 2; fi
FIRST="${1:-1}"
[[ "$SEEDS" =~ ^[1-9][0-9]*$ ]] || { echo "error: --seeds must be a positive integer, got $SEEDS" >&2; exit 2; }

cpu="$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)"
isa="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_tile' | tr '\n' ' ')"
torch_isa="$(python -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')"
machine="$(nproc) CPU cores, ${cpu:-unknown CPU}, flags: ${isa:-none of avx2/avx512f}(torch kernels: $torch_isa)"
echo "machine: $machine"

[[ -f runs/classifiers/digits.pt ]] || python -m model.scripts.train_classifier -cfg config/digits.json
RUNS=()
for (( k = 0; k < SEEDS; k++ )); do
  RUN=$(( FIRST + k ))
  DIR="runs/digits-$RUN"
  LOG="$(mktemp)"
  start=$(date +%s)
  python -m model.main -cfg config/digits.json --train-vae --train-denoiser -n "$RUN" --seed "$k" | tee "$LOG"
  python -m model.scripts.sample --load "$DIR/denoiser/checkpoints/last.ckpt" --ddim --steps 25 --per-class 8
  main_s=$(( $(date +%s) - start ))
  echo "$main_s" > "$DIR/main_wall_s"

  python -m model.scripts.sample_vae --load "$DIR/vae/checkpoints/last.ckpt" --num_samples 64
  scales=(0); (( k == 0 )) && scales=(0 2)  # the guided row of the README comes from the first seed
  python -m model.scripts.demo_report --load "$DIR/denoiser/checkpoints/last.ckpt" \
    --classifier runs/classifiers/digits.pt --per-class 50 --cfg-scale "${scales[@]}"
  echo "README main command (both stages + samples), seed $k: ${main_s} s wall on $machine"
  grep -h "trained to step" "$LOG" || true
  RUNS+=("$DIR")
done
python -m benchmarks.demo_seeds "${RUNS[@]}"
echo "machine: $machine"
