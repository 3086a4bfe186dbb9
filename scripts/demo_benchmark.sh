#!/usr/bin/env bash
# Reproduces a demo's figures on this machine: the wall time of the README's main command, then the VAE's
# reconstruction error, the data's classifier, and the samples' class accuracy, copy check and error budgets
# (demo_report with the config's sampler: pixel features, and the classifier's features), for one or more training
# seeds.
#
#   bash scripts/demo_benchmark.sh [--config digits|emoji] [--seeds N] [--first-seed S] [--draws D] [RUN] \
#     [-- OVERRIDES]
#
# --config picks config/<name>.json (default digits; emoji needs `python -m model.scripts.fetch_emoji --output
# data/emoji` first). RUN is the first run number (default 1; the runs must not exist yet); the k-th training seed (k =
# 0 .. N-1, default N = 1) trains run RUN+k with --seed S+k (default S = 0; the data split stays the same), so
# --first-seed 6 adds seeds to the ones a first call trained. --draws D scores D draws of each run's samples (seeds 0 ..
# D-1; demo_report --sample-draws), whose mean is the run's row: one draw of 500 samples moves recall by up to about
# 0.02. Prints the machine (CPU model, vector ISA, cores), each run's wall time and report, then one error-budget row
# per seed and their mean ± std with the recipe's bounds (benchmarks.demo_seeds). OVERRIDES after -- go to every run's
# main command (e.g. -- --denoiser.diffusion.flow_logit_mean 0.5: a variation of the recipe over the same seeds). Leaves
# everything in runs/<name>-<n>/. Run it alone on the machine: the timings count wall-clock seconds.
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
SEEDS=1
SEED0=0
DRAWS=1
NAME=digits
while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --seeds) SEEDS="${2:-}"; shift 2 ;;
    --first-seed) SEED0="${2:-}"; shift 2 ;;
    --draws) DRAWS="${2:-}"; shift 2 ;;
    --config) NAME="${2:-}"; shift 2 ;;
    --) break ;;
    *) echo "error: unknown option $1; use --config digits|emoji, --seeds N, --first-seed S, --draws D" >&2; exit 2 ;;
  esac
done
FIRST=1
if [[ -n "${1:-}" && "$1" != "--" ]]; then FIRST="$1"; shift; fi
if [[ "${1:-}" == "--" ]]; then shift; fi
[[ "$FIRST" =~ ^[1-9][0-9]*$ ]] || { echo "error: RUN must be a positive integer, got $FIRST" >&2; exit 2; }
OVERRIDES=("$@")  # for the main command of every run
[[ "$SEEDS" =~ ^[1-9][0-9]*$ ]] || { echo "error: --seeds must be a positive integer, got $SEEDS" >&2; exit 2; }
[[ "$SEED0" =~ ^[0-9]+$ ]] || { echo "error: --first-seed must be an integer >= 0, got $SEED0" >&2; exit 2; }
[[ "$DRAWS" =~ ^[1-9][0-9]*$ ]] || { echo "error: --draws must be a positive integer, got $DRAWS" >&2; exit 2; }
case "$NAME" in
  digits) PIXELS=(8); GUIDED=2 ;;  # the digits' native 8x8; the README's guided row is w = 2
  emoji) PIXELS=(16 32); GUIDED=2 ;;  # RGB pictures: the pixel budget at two sizes
  *) echo "error: --config must be digits or emoji, got $NAME" >&2; exit 2 ;;
esac
CFG="config/$NAME.json"
CLF="runs/classifiers/$NAME.pt"

cpu="$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)"
isa="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_tile' | tr '\n' ' ')"
python -c 'import torch' 2>/dev/null || {
  echo "error: python cannot import torch; activate the project's environment (. .venv/bin/activate)" >&2; exit 2; }
torch_isa="$(python -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')"
machine="$(nproc) CPU cores, ${cpu:-unknown CPU}, flags: ${isa:-none of avx2/avx512f}(torch kernels: $torch_isa)"
echo "machine: $machine"

[[ -f "$CLF" ]] || python -m model.scripts.train_classifier -cfg "$CFG"
RUNS=()
for (( k = 0; k < SEEDS; k++ )); do
  RUN=$(( FIRST + k ))
  SEED=$(( SEED0 + k ))
  DIR="runs/$NAME-$RUN"
  LOG="$(mktemp)"
  start=$(date +%s)
  python -m model.main -cfg "$CFG" --train-vae --train-denoiser -n "$RUN" --seed "$SEED" ${OVERRIDES[@]+"${OVERRIDES[@]}"} \
    | tee "$LOG"
  python -m model.scripts.sample --load "$DIR/denoiser/checkpoints/last.ckpt" --per-class 8  # the config's sampler
  main_s=$(( $(date +%s) - start ))
  echo "$main_s" > "$DIR/main_wall_s"

  python -m model.scripts.sample_vae --load "$DIR/vae/checkpoints/last.ckpt" --num_samples 64
  scales=(0); (( k == 0 )) && [[ -n "$GUIDED" ]] && scales=(0 "$GUIDED")  # a guided row from the first seed
  python -m model.scripts.demo_report --load "$DIR/denoiser/checkpoints/last.ckpt" \
    --classifier "$CLF" --per-class 50 --cfg-scale "${scales[@]}" --pixel-size "${PIXELS[@]}" --sample-draws "$DRAWS"
  echo "README main command (both stages + samples), seed $SEED: ${main_s} s wall on $machine"
  grep -h "trained to step" "$LOG" || true
  RUNS+=("$DIR")
done
python -m benchmarks.demo_seeds "${RUNS[@]}" --bounds "$NAME"
echo "machine: $machine"
