"""Peer of crates/model/examples/checkpoint_memory.rs: diffusers' UNet2DModel at the same
configuration (read from `checkpoint_memory --print-config` on stdin), batch 1 (or `--batch B`)
at 256², with enable_gradient_checkpointing() on or off, on the CPU or (`--device cuda`) the GPU;
prints the same line, with the peak bytes in live CUDA tensors on the GPU. Requirements:
scripts/bench/requirements.txt (torch, diffusers)."""

import json
import sys
import time

import torch
from diffusers import UNet2DModel


def status_mib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def option(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main():
    checkpointing = "--checkpointing" in sys.argv
    steps = int(option("--steps", 3))
    batch = int(option("--batch", 1))
    device = torch.device(option("--device", "cpu"))
    cuda = device.type == "cuda"
    config = json.loads(sys.stdin.read())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    torch.set_num_threads(2)
    torch.manual_seed(0)
    net = UNet2DModel(**config).to(device)
    net.train()
    if checkpointing:
        net.enable_gradient_checkpointing()
    xs = torch.randn(batch, 3, 256, 256).to(device)
    t = torch.full((batch,), 500, device=device)
    rss_before = status_mib("VmRSS")
    cuda_before = torch.cuda.memory_allocated(device) / 2**20 if cuda else None
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = net(xs, t).sample
        out.square().mean().backward()
        if cuda:
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    line = (f"rss_before_mib={rss_before:.1f} peak_rss_mib={status_mib('VmHWM'):.1f} "
            f"step_ms={times[len(times) // 2]:.1f}")
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        line += f" cuda_before_mib={cuda_before:.1f} peak_cuda_mib={peak:.1f}"
    print(line)


if __name__ == "__main__":
    main()
