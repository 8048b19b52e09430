#!/bin/sh
# Decode + centre crop + Lanczos resize per thread: Rust (crates/data/examples/bench_decode.rs,
# release) beside Pillow (scripts/bench/decode_peer.py), alternated, same images, same threads.
# Usage: scripts/bench/decode.sh SCRATCH_DIR [THREADS] [SECONDS]   (from the repository root)
set -e
dir=$1; threads=${2:-1}; seconds=${3:-5}
python=${DDPM_PYTHON:-.venv/bin/python}
"$python" scripts/bench/make_decode_set.py "$dir"
cargo build --release -q -p data --example bench_decode
for fmt in webp jpeg; do
  for size in 256 128; do
    target/release/examples/bench_decode "$dir/$fmt" "$size" "$threads" "$seconds"
    "$python" scripts/bench/decode_peer.py "$dir/$fmt" "$size" "$threads" "$seconds"
  done
done
