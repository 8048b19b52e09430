#!/bin/sh
# Peak RSS and step time of training passes (forward + backward, batch 1, 256², reduced-width
# U-Net) with and without activation checkpointing: ours (crates/model/examples/
# checkpoint_memory.rs) beside diffusers' UNet2DModel (checkpoint_memory_peer.py) at the same
# configuration, each in a process of its own. Usage, from the repository root:
#   cargo build -p model --example checkpoint_memory [--release]
#   sh scripts/bench/checkpoint_memory.sh [target/debug/examples/checkpoint_memory] [STEPS]
set -eu
BIN=${1:-target/debug/examples/checkpoint_memory}
STEPS=${2:-3}
PY=${DDPM_PYTHON:-python3}
CONFIG=$(mktemp)
trap 'rm -f "$CONFIG"' EXIT
"$BIN" --print-config > "$CONFIG"
for mode in "" --checkpointing; do
  echo "ours      ${mode:-plain}: $("$BIN" $mode --steps "$STEPS")"
  echo "diffusers ${mode:-plain}: $("$PY" scripts/bench/checkpoint_memory_peer.py $mode --steps "$STEPS" < "$CONFIG")"
done
