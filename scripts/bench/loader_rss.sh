#!/bin/sh
# The loader's peak resident memory over one epoch of 50,000 synthetic 256² LMDB records.
# Usage: scripts/bench/loader_rss.sh SCRATCH_DIR [N] [WORKERS]   (from the repository root)
set -e
dir=$1; n=${2:-50000}; workers=${3:-2}
python=${DDPM_PYTHON:-.venv/bin/python}
[ -f "$dir/rss_lmdb/data.mdb" ] || "$python" scripts/bench/make_rss_lmdb.py "$dir/rss_lmdb" "$n"
du -sh "$dir/rss_lmdb"
cargo build --release -q -p data --example bench_loader_rss
target/release/examples/bench_loader_rss "$dir/rss_lmdb" 256 64 "$workers"
