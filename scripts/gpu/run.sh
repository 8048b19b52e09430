#!/usr/bin/env bash
# The GPU check of `cargo xtask gpu-bundle`: run on a machine with a GPU and python3 + torch 2.11.0
# (no cargo needed). Writes everything under $OUT (default ./out) and one summary, report.json:
#   1. `ddpm doctor --json --device cuda`: the GPU is seen and libtorch_cuda is loaded;
#   2. the CUDA test binaries (model's cuda tests; torch-ext's, with CUDA generators, CUDA graphs
#      and a one-rank NCCL group);
#   3. report.py: paper U-Net training images/s at batch 128 in bf16, Rust beside PyTorch eager
#      (fused Adam) and torch.compile; DDIM-50 sampling images/s; GPU memory per process.
#
#   bash run.sh              # on the GPU machine
#   bash run.sh --cpu-smoke  # here: the same steps on the CPU at toy sizes, to test the script
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$HERE/out}"
PYTHON="${PYTHON:-python3}"
SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
mkdir -p "$OUT"

TORCH_DIR="$("$PYTHON" -c 'import os, torch; print(os.path.dirname(torch.__file__))')" || {
  echo "run.sh: $PYTHON cannot import torch" >&2; exit 2; }
TORCH_VERSION="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
export LD_LIBRARY_PATH="$TORCH_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "run.sh: torch $TORCH_VERSION at $TORCH_DIR (LD_LIBRARY_PATH)"

started=$(date +%s)
status=0
step() { echo "== $*"; }

step "ddpm doctor"
if [ $SMOKE = 1 ]; then doctor_args=(--json); else doctor_args=(--json --device cuda); fi
"$HERE/bin/ddpm" doctor "${doctor_args[@]}" > "$OUT/doctor.json" 2> "$OUT/doctor.err"
doctor_rc=$?
cat "$OUT/doctor.json"; [ $doctor_rc = 0 ] || { status=1; cat "$OUT/doctor.err"; }

step "CUDA tests"
tests_json="["
for t in "$HERE"/bin/tests/*; do
  [ -x "$t" ] || continue
  name="$(basename "$t")"
  if [ $SMOKE = 1 ]; then
    # The CUDA tests need a GPU: here only check that each binary starts and lists its tests.
    timeout 120 "$t" --list > "$OUT/test-$name.log" 2>&1; rc=$?
  else
    timeout 300 "$t" --test-threads 1 > "$OUT/test-$name.log" 2>&1; rc=$?
  fi
  summary="$(grep -E '^test result' "$OUT/test-$name.log" | tail -1)"
  [ -n "$summary" ] || summary="$(grep -cE ': test$' "$OUT/test-$name.log") tests listed"
  echo "$name: rc $rc, $summary"
  [ $rc = 0 ] || status=1
  tests_json="$tests_json{\"binary\":\"$name\",\"rc\":$rc,\"summary\":\"$summary\"},"
done
tests_json="${tests_json%,}]"

step "training and sampling throughput"
if [ $SMOKE = 1 ]; then
  report_args=(--device cpu --batch 2 --rounds 1 --warmup 1 --ddim-steps 2 --no-compile)
else
  report_args=(--device cuda --bf16 --batch 128 --rounds 10 --warmup 3 --ddim-steps 50)
fi
timeout 420 "$PYTHON" "$HERE/scripts/gpu/report.py" --bin "$HERE/bin" --scripts "$HERE/scripts/bench" \
  "${report_args[@]}" --out "$OUT/throughput.json"
[ $? = 0 ] || status=1

"$PYTHON" - "$OUT" "$tests_json" "$started" "$SMOKE" <<'PY'
import json, os, sys, time
out, tests, started, smoke = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except Exception as e:
        return {"error": str(e)}
report = {"cpu_smoke": smoke, "doctor": load("doctor.json"), "cuda_tests": tests,
          "throughput": load("throughput.json"), "wall_s": time.time() - started}
with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
print(f"run.sh: wrote {os.path.join(out, 'report.json')} in {report['wall_s']:.0f} s")
PY
exit $status
