#!/usr/bin/env python3
"""The measurements of `run.sh` on a lent GPU: the paper's U-Net (batch 128, bf16) training
images/s of Rust beside PyTorch eager (fused Adam) and torch.compile, alternated request by
request so all sides run under the same load; DDIM-50 sampling images/s (50 DDIM steps, each an
eval forward and the update); the GPU memory each process holds. Writes one JSON report.

It drives the same one-step-per-line servers as `cargo xtask bench`: `bench_serve` (Rust) and
`peer.py` (PyTorch, with diffusers' UNet2DModel or, without diffusers, `unet_torch.UNet`, the
same network in plain PyTorch).

    python3 report.py --bin BIN_DIR --scripts SCRIPTS_DIR --device cuda --bf16 --batch 128 --out report.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


class Server:
    def __init__(self, name, cmd, env=None):
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready = self.proc.stdout.readline().strip()
        if not self.ready.startswith("ready"):
            raise RuntimeError(f"{name}: no `ready` line (got {self.ready!r})")

    def step(self, request):
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} ended during {request}")
        return float(line)

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except Exception:
            self.proc.kill()


def gpu_memory_mib(pid):
    """The GPU memory a process holds, from nvidia-smi (None where there is none)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30,
        ).stdout
    except Exception:
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            return float(parts[1])
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", required=True, help="folder with ddpm and bench_serve")
    p.add_argument("--scripts", required=True, help="folder with peer.py and unet_torch.py")
    p.add_argument("--device", default="cuda")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    common = ["--case", "ddpm_unet", "--batch", str(args.batch), "--device", args.device]
    if args.bf16:
        common.append("--bf16")
    peer = [sys.executable, os.path.join(args.scripts, "peer.py")] + common
    servers = [Server("rust", [os.path.join(args.bin, "bench_serve")] + common)]
    servers.append(Server("pytorch_eager_fused_adam", peer + ["--fused-adam"]))
    if not args.no_compile:
        servers.append(Server("pytorch_compile_fused_adam", peer + ["--fused-adam", "--compile", "default"]))
    report = {
        "device": args.device, "bf16": args.bf16, "batch": args.batch, "rounds": args.rounds,
        "model": "DDPM CIFAR-10 U-Net (35.7M parameters), 32x32x3", "servers": {},
    }
    started = time.time()
    try:
        # Warm-up: cuDNN autotuning, torch.compile's compilation, allocator growth.
        for _ in range(args.warmup):
            for s in servers:
                s.step("train_step")
                s.step("ddim_step")
        times = {s.name: {"train_step": [], "ddim_step": []} for s in servers}
        for r in range(args.rounds):
            order = servers if r % 2 == 0 else list(reversed(servers))
            for s in order:
                times[s.name]["train_step"].append(s.step("train_step"))
            for s in order:
                times[s.name]["ddim_step"].append(s.step("ddim_step"))
        # One DDIM-50 chain's worth of steps, back to back, per server.
        chains = {}
        for s in servers:
            t0 = time.perf_counter()
            total = sum(s.step("ddim_step") for _ in range(args.ddim_steps))
            chains[s.name] = (total, (time.perf_counter() - t0) * 1e3)
        for s in servers:
            train_ms = statistics.median(times[s.name]["train_step"])
            ddim_ms = statistics.median(times[s.name]["ddim_step"])
            chain_ms = chains[s.name][0]
            report["servers"][s.name] = {
                "ready": s.ready,
                "train_step_ms_median": train_ms,
                "train_images_per_s": args.batch / train_ms * 1e3,
                "ddim_step_ms_median": ddim_ms,
                "ddim50_chain_ms": chain_ms,
                "ddim50_images_per_s": args.batch / chain_ms * 1e3,
                "gpu_memory_mib": gpu_memory_mib(s.proc.pid),
                "train_step_ms": times[s.name]["train_step"],
            }
        rust = report["servers"]["rust"]
        for s in servers[1:]:
            peer_row = report["servers"][s.name]
            ratios = [a / b for a, b in zip(times["rust"]["train_step"], times[s.name]["train_step"])]
            peer_row["rust_over_this_train_ms_ratio_median"] = statistics.median(ratios)
            peer_row["rust_over_this_ddim50_images_per_s"] = rust["ddim50_images_per_s"] / peer_row["ddim50_images_per_s"]
    finally:
        for s in servers:
            s.close()
    report["wall_s"] = time.time() - started
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    for name, row in report["servers"].items():
        print(f"{name}: train {row['train_images_per_s']:.1f} img/s ({row['train_step_ms_median']:.2f} ms), "
              f"DDIM-{args.ddim_steps} {row['ddim50_images_per_s']:.1f} img/s, GPU memory {row['gpu_memory_mib']} MiB")


if __name__ == "__main__":
    main()
