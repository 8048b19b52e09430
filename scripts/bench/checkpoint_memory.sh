#!/bin/sh
# Peak RSS and step time of training passes (forward + backward, batch 1, 256²) with and without
# activation checkpointing: ours (crates/model/examples/checkpoint_memory.rs) beside diffusers'
# UNet2DModel (checkpoint_memory_peer.py) at the same configuration, each in a process of its
# own, the reduced-width U-Net or (FULL=1) the 114M UNetConfig::ho2020_256. Each side runs with
# glibc's default allocator settings and with large blocks returned on free (ours:
# --return-freed, as `ddpm train --gradient-checkpointing` sets it on the CPU; diffusers: the
# same setting through glibc's MALLOC_MMAP_THRESHOLD_). Usage, from the repository root:
#   cargo build -p model --example checkpoint_memory [--release]
#   [FULL=1] sh scripts/bench/checkpoint_memory.sh [target/debug/examples/checkpoint_memory] [STEPS]
set -eu
BIN=${1:-target/debug/examples/checkpoint_memory}
STEPS=${2:-3}
PY=${DDPM_PYTHON:-python3}
SIZE=""
if [ "${FULL:-0}" = 1 ]; then SIZE=--full; fi
CONFIG=$(mktemp)
trap 'rm -f "$CONFIG"' EXIT
"$BIN" $SIZE --print-config > "$CONFIG"
for mode in "" --checkpointing; do
  for alloc in default returned; do
    flag=""; threshold=""
    if [ $alloc = returned ]; then flag=--return-freed; threshold=1048576; fi
    echo "ours      ${mode:-plain} alloc=$alloc: $("$BIN" $SIZE $mode $flag --steps "$STEPS")"
    echo "diffusers ${mode:-plain} alloc=$alloc: $(env ${threshold:+MALLOC_MMAP_THRESHOLD_=$threshold} \
      "$PY" scripts/bench/checkpoint_memory_peer.py $mode --steps "$STEPS" < "$CONFIG")"
  done
done
