#!/usr/bin/env python3
"""The GPU bundle's checks and timings (`cargo xtask gpu-bundle` packs this with the binaries).

Runs, from the bundle directory, with the torch of the python that runs it (run.sh sets
LD_LIBRARY_PATH to that torch's lib/ so that the Rust binaries load the same libtorch):

1. `ddpm doctor --json` on the device;
2. the `cuda-tests` test binaries (torch-ext's CUDA generators, CUDA graphs, memory stats and a
   one-rank NCCL group; the model's CUDA tests; CUDA-graph training against eager training);
3. the paper U-Net's training throughput at batch 128 in bf16: the Rust `Trainer::train_step`
   eager and with `--cuda-graph` (loader, t/eps draws, NaN guard, clipping, fused Adam, EMA), and
   a PyTorch loop doing the same (fused Adam, `clip_grad_norm_`, `_foreach_lerp_` EMA), eager and
   under `torch.compile`;
4. DDIM-50 sampling throughput (50 steps of the U-Net at batch 128, Rust and PyTorch);
5. the peak bytes in live CUDA tensors of each training run;
6. activation checkpointing's memory and time: one forward and backward pass of the 114M 256²
   U-Net at batch 16 with and without checkpointing, ours (`bin/checkpoint_memory`) beside
   diffusers' `UNet2DModel` with `enable_gradient_checkpointing()` on and off, each in a process
   of its own, the peak bytes in live CUDA tensors and the median step time;

and writes everything to one JSON report. Every piece has a time limit, so that the whole run
stays within about 10 minutes; a piece that fails or times out is recorded as such and the run
goes on. `--cpu-smoke` runs the same pipeline on the CPU with tiny counts (the test binaries are
only listed), to check the bundle without a GPU.
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent.parent  # the bundle root (scripts/bundle/..)


def finite(value):
    """`value` with every NaN or infinite float replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def run(cmd, timeout, env=None, stdin_text=None):
    """Runs `cmd` (with `stdin_text` on its standard input); returns a record with the exit code,
    seconds and the output's tail."""
    start = time.monotonic()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, input=stdin_text)
        code, text, stdout = out.returncode, out.stdout + out.stderr, out.stdout
    except subprocess.TimeoutExpired as e:
        code, stdout = None, ""
        text = f"timed out after {timeout} s\n" + ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""))
    return {
        "command": [str(c) for c in cmd],
        "exit_code": code,
        "ok": code == 0,
        "seconds": round(time.monotonic() - start, 2),
        "output_tail": text[-4000:],
        "stdout": stdout[-20000:],
    }


class Server:
    """A bench server (bench_serve or peer.py) speaking the one-request-per-line protocol."""

    def __init__(self, cmd, what):
        self.what = what
        self.proc = subprocess.Popen(
            [str(c) for c in cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            err = self.proc.stderr.read()[-3000:]
            raise RuntimeError(f"{what} did not start: {line!r} {err}")
        self.ready = line[len("ready"):].strip()

    def ask(self, request):
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()[-3000:]
            raise RuntimeError(f"{self.what} stopped at {request!r}: {err}")
        return float(line)

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()


def timed(make, requests, deadline):
    """Starts a server with `make()`, sends (name, request) pairs, returns {name: answer}."""
    record = {}
    start = time.monotonic()
    server = None
    watchdog = None
    try:
        server = make()
        # A request that never answers (a hung compile, a deadlock) is killed at the deadline.
        watchdog = threading.Timer(deadline, server.proc.kill)
        watchdog.start()
        record["ready"] = server.ready
        for name, request in requests:
            if time.monotonic() - start > deadline:
                record["error"] = f"stopped after {deadline} s, before {request!r}"
                break
            record[name] = server.ask(request)
    except Exception as e:  # noqa: BLE001: a failed piece is recorded, the run goes on
        record["error"] = str(e)[-3000:]
    finally:
        if watchdog is not None:
            watchdog.cancel()
        if server is not None:
            server.close()
    record["seconds"] = round(time.monotonic() - start, 2)
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="the whole pipeline on the CPU, tiny")
    parser.add_argument("--out", default="gpu-report.json")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile run")
    args = parser.parse_args()
    smoke = args.cpu_smoke
    device = "cpu" if smoke else "cuda"
    batch = 2 if smoke else 128
    warm, steps = (1, 2) if smoke else (10, 30)
    ddim_steps = 2 if smoke else 50
    limit = 120 if smoke else 150  # seconds per piece

    import torch  # the peer's torch; run.sh made its lib/ the Rust binaries' libtorch

    started = time.monotonic()
    budget = 570  # seconds: run.sh stops everything at 600

    def out_of_time():
        return time.monotonic() - started > budget

    report = {
        "mode": "cpu-smoke" if smoke else "gpu",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "ld_library_path": os.environ.get("LD_LIBRARY_PATH", ""),
        "bundle": json.loads((HERE / "bundle.json").read_text()) if (HERE / "bundle.json").exists() else None,
    }
    def save():
        # Strict JSON: NaN (no CUDA memory counters on the CPU) becomes null.
        Path(args.out).write_text(json.dumps(finite(report), indent=2, allow_nan=False) + "\n")

    try:
        sections(args, smoke, device, batch, warm, steps, ddim_steps, limit, report, save, out_of_time, torch)
    except KeyboardInterrupt:
        report["interrupted"] = "stopped by run.sh's 10-minute limit"
    finally:
        report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        report["seconds"] = round(time.monotonic() - started, 1)
        save()
        print(f"== wrote {args.out}", flush=True)


def sections(args, smoke, device, batch, warm, steps, ddim_steps, limit, report, save, out_of_time, torch):
    """Each part of the report, saved as it completes."""
    bin_dir, test_dir = HERE / "bin", HERE / "tests"
    peer = HERE / "scripts/bundle/peer_with_fallback.py"
    if not smoke:
        report["nvidia_smi"] = run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], 30
        )

    print("== doctor", flush=True)
    doctor = run([bin_dir / "ddpm", "doctor", "--json", "--device", device], 60)
    try:
        doctor["json"] = json.loads(doctor.pop("stdout"))
    except Exception:  # noqa: BLE001: the text stays in output_tail
        pass
    report["doctor"] = doctor
    save()

    print("== CUDA tests", flush=True)
    env = dict(os.environ, DDPM_MODEL_FIXTURES=str(HERE / "fixtures/model"), RUST_BACKTRACE="0")
    tests = {}
    for binary in sorted(test_dir.iterdir()) if test_dir.is_dir() else []:
        filters = (HERE / "tests.json")
        names = json.loads(filters.read_text()).get(binary.name, []) if filters.exists() else []
        cmd = [binary, *names, "--test-threads=1"]
        if smoke:
            cmd.append("--list")
        tests[binary.name] = run(cmd, 60 if smoke else 240, env=env)
        tests[binary.name].pop("stdout")
        print(f"   {binary.name}: {'ok' if tests[binary.name]['ok'] else 'FAILED'}", flush=True)
    report["cuda_tests"] = tests
    nccl = next((t for n, t in tests.items() if n.startswith("torch_ext")), None)
    report["nccl_world_size_1"] = (
        None
        if nccl is None or smoke
        else "a_single_rank_nccl_group_runs_collectives_on_the_gpu ... ok" in nccl["output_tail"]
    )
    save()

    case = ["--case", "ddpm_unet", "--batch", str(batch), "--device", device]
    if not smoke:
        case.append("--bf16")
    train_requests = [("warmup_ms", f"loop_step {warm}"), ("timed_ms", f"loop_step {steps}"), ("peak_bytes", "memory")]

    def rust(extra):
        return lambda: Server([bin_dir / "bench_serve", *case, *extra], "bench_serve")

    def torch_peer(extra):
        return lambda: Server([sys.executable, peer, *case, "--train-adam", "fused", *extra], "peer.py")

    print("== training throughput", flush=True)
    train = {}
    runs = [
        ("rust_eager", rust(["--loop-only"])),
        ("rust_cuda_graph", rust(["--loop-only", "--cuda-graph"])),
        ("pytorch_eager_fused_adam", torch_peer([])),
    ]
    if not args.skip_compile:
        runs.append(("pytorch_compile_fused_adam", torch_peer(["--compile"])))
    for name, make in runs:
        if out_of_time():
            train[name] = {"error": "skipped: out of time"}
            continue
        # The peak covers the warm-up and the timed steps.
        requests = [("reset", "memory"), *train_requests]
        # torch.compile compiles forward and backward during its warm-up.
        record = timed(make, requests, 2 * limit if "compile" in name else limit)
        record.pop("reset", None)
        if "timed_ms" in record:
            record["images_per_s"] = batch * steps / (record["timed_ms"] / 1e3)
        train[name] = record
        print(f"   {name}: {record.get('images_per_s', record.get('error', '?'))}", flush=True)
    base = train.get("pytorch_eager_fused_adam", {}).get("images_per_s")
    for record in train.values():
        if base and record.get("images_per_s"):
            record["vs_pytorch_eager"] = record["images_per_s"] / base
    report["training_bf16_batch"] = batch
    report["training"] = train
    save()

    print("== DDIM-50 sampling throughput", flush=True)
    sampling = {}
    for name, make in [("rust", rust([])), ("pytorch", torch_peer([]))]:
        if out_of_time():
            sampling[name] = {"error": "skipped: out of time"}
            continue
        record = timed(make, [("warmup_ms", "ddim_step 2"), ("timed_ms", f"ddim_step {ddim_steps}")], limit)
        if "timed_ms" in record:
            # One image takes 50 network evaluations.
            record["images_per_s"] = batch / (record["timed_ms"] / 1e3) * (ddim_steps / 50)
        sampling[name] = record
        print(f"   {name}: {record.get('images_per_s', record.get('error', '?'))}", flush=True)
    report["ddim50_sampling"] = sampling
    save()

    print("== activation checkpointing: memory and step time", flush=True)
    report["checkpointing_memory"] = checkpointing_memory(smoke, device, out_of_time)


def key_values(text):
    """`a=1.0 b=2.5` (the last such line of `text`) as {"a": 1.0, "b": 2.5}."""
    lines = [l for l in text.splitlines() if "=" in l and "peak_rss_mib" in l]
    if not lines:
        return {}
    return {k: float(v) for k, v in (pair.split("=", 1) for pair in lines[-1].split())}


def checkpointing_memory(smoke, device, out_of_time):
    """Ours beside diffusers, plain and checkpointed (the reduced-width network on the CPU in
    the smoke run); the activation memory is the peak less the memory before the pass."""
    ours = HERE / "bin/checkpoint_memory"
    size = [] if smoke else ["--full"]
    config = run([ours, *size, "--print-config"], 60)
    if not config["ok"]:
        return {"error": config["output_tail"]}
    args = [*size, "--device", device, "--batch", "1" if smoke else "16", "--steps", "1" if smoke else "3"]
    peer = [sys.executable, HERE / "scripts/bench/checkpoint_memory_peer.py"]
    results = {"batch": 1 if smoke else 16, "network": "reduced-width 256²" if smoke else "ho2020_256 (114M)"}
    for name, cmd in [("ours", [ours]), ("diffusers", peer)]:
        for mode, flag in [("plain", []), ("checkpointing", ["--checkpointing"])]:
            if out_of_time():
                results[f"{name}_{mode}"] = {"error": "skipped: out of time"}
                continue
            record = run([*cmd, *flag, *args], 240, stdin_text=config["stdout"])
            results[f"{name}_{mode}"] = {**key_values(record["stdout"]), "ok": record["ok"],
                                         "seconds": record["seconds"]}
            if not record["ok"]:
                results[f"{name}_{mode}"]["error"] = record["output_tail"]
            print(f"   {name} {mode}: {results[f'{name}_{mode}']}", flush=True)
    peak = "peak_cuda_mib" if device == "cuda" else "peak_rss_mib"
    before = "cuda_before_mib" if device == "cuda" else "rss_before_mib"
    for name in ["ours", "diffusers"]:
        plain, ckpt = results.get(f"{name}_plain", {}), results.get(f"{name}_checkpointing", {})
        if all(k in r for r in (plain, ckpt) for k in (peak, before, "step_ms")):
            cut = (plain[peak] - plain[before]) / max(ckpt[peak] - ckpt[before], 1e-9)
            results[f"{name}_activation_cut"] = cut
            results[f"{name}_checkpointing_time_ratio"] = ckpt["step_ms"] / plain["step_ms"]
    return results
