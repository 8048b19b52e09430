#!/usr/bin/env python3
"""PyTorch eager peer of `crates/model/benches/unet.rs`: the same networks, shapes and steps.

* simple_unet: the notebook's SimpleUnet (the PyTorch port in scripts/golden/model_simple.py, with
  PyTorch's own symmetric padding) at batch 128, 28x28x3;
* ddpm_unet: diffusers' UNet2DModel with the google/ddpm-cifar10-32 configuration and dropout 0.1
  (scripts/golden/model_diffusers.py) at batch 16, 32x32x3.

`forward` is inference (eval mode under `torch.no_grad`); `train_step` is a train-mode forward,
MSE against a fixed target, `backward`, `torch.optim.Adam.step` (its default single-tensor
implementation on CPU) and `zero_grad` (set to None). Each runs in NCHW and in channels-last
(`model.to(memory_format=torch.channels_last)` and the input converted). The .venv torch is the
libtorch the Rust code links, so the ratio of the two measures the bindings, not the kernels.

    .venv/bin/python scripts/bench/model_pytorch.py [--threads 2] [--iters 10] [--only simple_unet]

Prints ms/step (mean and median over the timed iterations, after two warm-up iterations).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "golden"))
from model_diffusers import DDPM_CIFAR10  # noqa: E402
from model_simple import SimpleUnet, seed_cifar10_config  # noqa: E402


class DiffusersEps(torch.nn.Module):
    """UNet2DModel returning the tensor, so both models are called alike."""

    def __init__(self):
        super().__init__()
        from diffusers import UNet2DModel

        self.unet = UNet2DModel(**DDPM_CIFAR10)

    def forward(self, x, t):
        return self.unet(x, t).sample


def time_it(fn, iters, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.mean(times), statistics.median(times)


def bench(name, make_model, batch, channels_last, iters):
    torch.manual_seed(0)
    model = make_model()
    size = 28 if name == "simple_unet" else 32
    x = torch.randn(batch, 3, size, size)
    target = torch.randn_like(x)
    t = torch.randint(0, 1000, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    layout = "channels_last" if channels_last else "nchw"

    def forward():
        with torch.no_grad():
            return model(x, t)

    model.eval()
    mean, median = time_it(forward, iters)
    print(f"{name}/batch{batch}/forward/{layout}: mean {mean:.1f} ms, median {median:.1f} ms", flush=True)

    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step():
        loss = F.mse_loss(model(x, t), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    model.train()
    mean, median = time_it(train_step, iters)
    print(f"{name}/batch{batch}/train_step/{layout}: mean {mean:.1f} ms, median {median:.1f} ms", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--only", choices=["simple_unet", "ddpm_unet"])
    parser.add_argument("--layout", choices=["nchw", "channels_last"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    cases = [
        ("simple_unet", lambda: SimpleUnet(seed_cifar10_config(), exact=False), 128),
        ("ddpm_unet", DiffusersEps, 16),
    ]
    for name, make, batch in cases:
        if args.only and args.only != name:
            continue
        for channels_last in (True, False):
            if args.layout and args.layout != ("channels_last" if channels_last else "nchw"):
                continue
            bench(name, make, batch, channels_last, args.iters)


if __name__ == "__main__":
    main()
