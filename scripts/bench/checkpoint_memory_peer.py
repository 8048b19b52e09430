"""Peer of crates/model/examples/checkpoint_memory.rs: diffusers' UNet2DModel at the same
configuration (read from `checkpoint_memory --print-config` on stdin), batch 1 at 256², with
enable_gradient_checkpointing() on or off; prints the same line. Requirements:
scripts/bench/requirements.txt (torch, diffusers)."""

import json
import resource
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


def main():
    checkpointing = "--checkpointing" in sys.argv
    steps = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 3
    config = json.loads(sys.stdin.read())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    torch.set_num_threads(2)
    torch.manual_seed(0)
    net = UNet2DModel(**config)
    net.train()
    if checkpointing:
        net.enable_gradient_checkpointing()
    xs = torch.randn(1, 3, 256, 256)
    t = torch.tensor([500])
    rss_before = status_mib("VmRSS")
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = net(xs, t).sample
        out.square().mean().backward()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    print(f"rss_before_mib={rss_before:.1f} peak_rss_mib={status_mib('VmHWM'):.1f} "
          f"step_ms={times[len(times) // 2]:.1f}")


if __name__ == "__main__":
    main()
