#!/bin/bash
# One row of the fashion-mnist preset's ablation table (docs/runs/fashion-mnist-preset-ablation/):
# train the preset with overrides for a fixed wall-clock budget, then score N EMA samples per
# sampler against the Inception features of the first 1,000 Fashion-MNIST test images.
#
#   scripts/quality/ablate.sh NAME MINUTES THREADS N "SAMPLERS" -- [ddpm train flags...]
#   scripts/quality/ablate.sh ema999 12 1 500 "ddim50 ddpm" -- --set ema.decay=0.999
#
# SAMPLERS: ddim50 (η = 0), ddim50e1 (η = 1), dpm20 (DPM-Solver++ 20 steps), ddpm (all T steps,
# σ² = β̃), ddpml (σ² = β). The run stops by SIGTERM at the deadline (it checkpoints first);
# `--epochs 1000` in the flags keeps the epochs from ending it sooner. Results: RESULT lines in
# $ABLATE_DIR/NAME.log (default target/ablate), the samples as .npz and the scores as JSON.
# Run from the repository root after `cargo build --release -p cli`; DATA defaults to Debian's
# /usr/share/datasets/fashion-mnist.
set -u
name=$1; minutes=$2; threads=$3; n=$4; samplers=$5; shift 6
out=${ABLATE_DIR:-target/ablate}
data=${DATA:-/usr/share/datasets/fashion-mnist}
ddpm=${DDPM:-target/release/ddpm}
mkdir -p "$out"
run=$out/runs/$name
log=$out/$name.log
echo "== $name $(date +%T) train $minutes min, $threads threads: $*" > "$log"
timeout -s TERM "$((minutes * 60))s" "$ddpm" train --preset fashion-mnist --data "$data" \
  --run-dir "$run" --overwrite --threads "$threads" --progress-every 500 \
  --set sample_every_epochs=1000 "$@" >> "$log" 2>&1
echo "== train ended $(date +%T) rc $?" >> "$log"
tail -n 1 "$run/metrics.jsonl" >> "$log"
ref=$out/ref-test-1000.npz
if [ ! -f "$ref" ]; then
  "$ddpm" eval stats --resize pytorch --device cpu --threads "$threads" --dataset fashion-mnist \
    --split test --data "$data" --offline --n 1000 --features --out "$ref" >> "$log" 2>&1
fi
for s in $samplers; do
  case $s in
    ddim50) flags=(--sampler ddim --steps 50 --eta 0) ;;
    ddim50e1) flags=(--sampler ddim --steps 50 --eta 1) ;;
    dpm20) flags=(--sampler dpm-solver++ --steps 20) ;;
    ddpm) flags=(--sampler ddpm --variance small) ;;
    ddpml) flags=(--sampler ddpm --variance large) ;;
    *) echo "unknown sampler $s" >&2; exit 2 ;;
  esac
  t0=$(date +%s)
  "$ddpm" eval fid --resize pytorch --device cpu --threads "$threads" --ref "$ref" --n "$n" \
    --seed 0 --checkpoint "$run" --sample-batch-size 250 "${flags[@]}" \
    --save-samples "$out/$name-$s.npz" --out "$out/$name-$s.json" >> "$log" 2>&1
  fid=$(python3 -c "import json; d = json.load(open('$out/$name-$s.json')); print(f\"fid={d['fid']:.1f} kid1e3={d['kid']['mean'] * 1e3:.1f}\")")
  echo "RESULT $name $s n=$n $fid secs=$(($(date +%s) - t0))" >> "$log"
done
echo "== done $(date +%T)" >> "$log"
