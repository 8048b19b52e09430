#!/usr/bin/env python3
"""PyTorch eager peer of `crates/train/benches/sampling.rs`: one sampling step of each network.

A step is the network's forward pass (eval mode, `torch.no_grad`), a fresh `torch.randn_like`
draw and the sampler's update written in plain torch ops with float64 coefficients from the
host, as the Rust code does:

* ddpm: x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) * eps) / sqrt(alpha_t) + sqrt(beta_t) * z
  (Ho et al. 2020, Alg. 2, sigma_t^2 = beta_t);
* ddim50: x_prev = sqrt(abar_prev) * x0_hat + sqrt(1 - abar_prev) * eps (Song et al. 2021,
  Eq. 12, eta = 0), with x0_hat = x_t / sqrt(abar_t) - sqrt(1 / abar_t - 1) * eps.

Networks and shapes as in the Rust bench: the notebook's SimpleUnet (scripts/golden/model_simple.py)
at batch 128, 28x28x3, and diffusers' UNet2DModel with the google/ddpm-cifar10-32 configuration
(scripts/golden/model_diffusers.py) at batch 4, 32x32x3; linear betas 1e-4 to 0.02 over
T = 1000, at t = 500 (DDPM) and t = 500 (DDIM-50, leading spacing, to t = 480). NCHW.

    .venv/bin/python scripts/bench/sampling_pytorch.py [--threads 2] [--iters 10] [--only simple_unet]

Prints ms/step (mean and median over the timed iterations, after two warm-up iterations).
"""

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "golden"))
from model_diffusers import DDPM_CIFAR10  # noqa: E402
from model_simple import SimpleUnet, seed_cifar10_config  # noqa: E402

BETAS = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
ALPHAS_CUMPROD = np.cumprod(1.0 - BETAS)


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


def ddpm_step(model, x, t):
    beta, abar = BETAS[t], ALPHAS_CUMPROD[t]
    t_batch = torch.full((x.shape[0],), t, dtype=torch.int64)
    eps = model(x, t_batch).float()
    noise = torch.randn_like(x)
    mean = (x - eps * (beta / math.sqrt(1.0 - abar))) * (1.0 / math.sqrt(1.0 - beta))
    return mean + noise * math.sqrt(beta)


def ddim_step(model, x, t, t_prev=480):
    abar, abar_prev = ALPHAS_CUMPROD[t], ALPHAS_CUMPROD[t_prev]
    t_batch = torch.full((x.shape[0],), t, dtype=torch.int64)
    eps = model(x, t_batch).float()
    x0 = x * (1.0 / math.sqrt(abar)) - eps * math.sqrt(1.0 / abar - 1.0)
    return x0 * math.sqrt(abar_prev) + eps * math.sqrt(1.0 - abar_prev)


def bench(name, make_model, batch, iters):
    torch.manual_seed(0)
    model = make_model().eval()
    size = 28 if name == "simple_unet" else 32
    x = torch.randn(batch, 3, size, size)
    for label, step in (("ddpm", ddpm_step), ("ddim50", ddim_step)):

        def run():
            with torch.no_grad():
                return step(model, x, 500)

        mean, median = time_it(run, iters)
        print(f"sampling_step/{name}/batch{batch}/{label}: mean {mean:.1f} ms, median {median:.1f} ms", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--only", choices=["simple_unet", "ddpm_unet"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    cases = [
        ("simple_unet", lambda: SimpleUnet(seed_cifar10_config(), exact=False), 128),
        ("ddpm_unet", DiffusersEps, 4),
    ]
    for name, make, batch in cases:
        if args.only and args.only != name:
            continue
        bench(name, make, batch, args.iters)


if __name__ == "__main__":
    main()
