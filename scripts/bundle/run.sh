#!/usr/bin/env bash
# The GPU bundle's entry point (`cargo xtask gpu-bundle`): on a machine with python3 and torch
# 2.11.0 (+cu130) but no cargo, runs the bundle's checks and timings and writes one JSON report.
#
#   ./run.sh [--cpu-smoke] [--out gpu-report.json] [--skip-compile]
#
# The Rust binaries load the libtorch of that torch: LD_LIBRARY_PATH is set to its lib/ (the
# binaries' own rpath points at the build machine's). PYTHON picks another python3.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
torch_lib="$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
version="$("$python" -c 'import torch; print(torch.__version__)')"
case "$version" in
  2.11.0*) ;;
  *) echo "run.sh: warning: torch $version; the binaries were built for 2.11.0" >&2 ;;
esac
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cd "$here"
exec timeout --signal=INT 600 "$python" "$here/scripts/bundle/run.py" "$@"
