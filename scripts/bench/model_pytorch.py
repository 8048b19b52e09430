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
    cargo build --release -p model --example step_time
    .venv/bin/python scripts/bench/model_pytorch.py --lockstep target/release/examples/step_time

Prints ms/step (mean and median over the timed iterations, after two warm-up iterations). With
`--lockstep`, Rust steps (the `step_time` example, serving one step per request) and PyTorch
steps alternate one by one, in both orders, and the median of the per-round Rust/PyTorch ratios is
printed: on a shared machine the background load changes from minute to minute, and only steps
timed side by side are comparable.
"""

import argparse
import statistics
import subprocess
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


CASES = {
    "simple_unet": (lambda: SimpleUnet(seed_cifar10_config(), exact=False), 128, 28),
    "ddpm_unet": (DiffusersEps, 16, 32),
}
LAYOUTS = ("channels_last", "nchw")


class Case:
    """One model at its benchmark shape, with its forward and training step."""

    def __init__(self, name, layout):
        make, batch, size = CASES[name]
        torch.manual_seed(0)
        self.model = make()
        self.x = torch.randn(batch, 3, size, size)
        self.target = torch.randn_like(self.x)
        self.t = torch.randint(0, 1000, (batch,))
        if layout == "channels_last":
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)

    def forward(self):
        self.model.eval()
        with torch.no_grad():
            return self.model(self.x, self.t)

    def train_step(self):
        self.model.train()
        loss = F.mse_loss(self.model(self.x, self.t), self.target)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


def standalone(name, layout, iters):
    case = Case(name, layout)
    batch = CASES[name][1]
    for step, fn in (("forward", case.forward), ("train_step", case.train_step)):
        mean, median = time_it(fn, iters)
        print(f"{name}/batch{batch}/{step}/{layout}: mean {mean:.1f} ms, median {median:.1f} ms", flush=True)


def lockstep(rust_binary, name, layout, iters, threads):
    """Alternates single steps of the Rust server and of PyTorch (R, P, P, R, ...) so that both
    run under the same background load, and reports the median of the per-round ratios."""
    rust = subprocess.Popen(
        [rust_binary, "--serve", name, layout, "--threads", str(threads)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
    )
    assert rust.stdout.readline().strip() == "ready"

    def rust_step(kind):
        rust.stdin.write(kind + "\n")
        return float(rust.stdout.readline())

    case = Case(name, layout)
    batch = CASES[name][1]
    for kind, py_fn in (("forward", case.forward), ("train", case.train_step)):

        def py_step():
            start = time.perf_counter()
            py_fn()
            return (time.perf_counter() - start) * 1e3

        for _ in range(2):
            rust_step(kind), py_step()
        rust_ms, py_ms = [], []
        for i in range(iters):
            if i % 2 == 0:
                rust_ms.append(rust_step(kind))
                py_ms.append(py_step())
            else:
                py_ms.append(py_step())
                rust_ms.append(rust_step(kind))
        ratios = [r / p for r, p in zip(rust_ms, py_ms)]
        step = "train_step" if kind == "train" else kind
        print(
            f"{name}/batch{batch}/{step}/{layout}: Rust median {statistics.median(rust_ms):.1f} ms, "
            f"PyTorch median {statistics.median(py_ms):.1f} ms, Rust/PyTorch median ratio "
            f"{statistics.median(ratios):.3f} (ratio of sums {sum(rust_ms) / sum(py_ms):.3f}, {iters} rounds)",
            flush=True,
        )
    rust.stdin.write("quit\n")
    rust.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--only", choices=list(CASES))
    parser.add_argument("--layout", choices=LAYOUTS)
    parser.add_argument(
        "--lockstep", metavar="RUST_BINARY",
        help="alternate steps with the Rust `step_time` example (target/release/examples/step_time)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for name in CASES:
        if args.only and args.only != name:
            continue
        for layout in LAYOUTS:
            if args.layout and args.layout != layout:
                continue
            if args.lockstep:
                lockstep(args.lockstep, name, layout, args.iters, args.threads)
            else:
                standalone(name, layout, args.iters)


if __name__ == "__main__":
    main()
