#!/usr/bin/env python3
"""Golden fixtures for FID and KID arithmetic (`train::fid`), computed with numpy and scipy.

The references follow the code that defined each metric:

* statistics as pytorch-fid computes them (`calculate_activation_statistics`):
  `mu = np.mean(act, axis=0)`, `sigma = np.cov(act, rowvar=False)` (divisor N - 1), in float64;
* FID as pytorch-fid's `calculate_frechet_distance` (the TTUR formula, Heusel et al. 2017):
  `covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)`, real part, with the `eps * I` offset only when
  the product is singular, then `|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr(covmean)`;
* KID as clean-fid's `kernel_distance` and torch-fidelity (Binkowski et al. 2018, Eq. 4): the
  unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over
  subsets. Subset indices are drawn here and written into the fixture, so the Rust test checks the
  arithmetic independently of the random generator.

Feature sets are float32 values (as the network's output), small (d = 16 or 24) and non-negative like Inception pool features. One case has
fewer samples than dimensions (singular covariances), where scipy's `sqrtm` is itself inaccurate:
the fixture stores the scipy value and also the value from the eigenvalues of the symmetric form
sqrt(S1) S2 sqrt(S1) (computed in float64 with numpy), and the Rust test uses a looser tolerance
against scipy there.

Run from the repository root:

    .venv/bin/python scripts/golden/fid.py

It rewrites crates/eval/tests/fixtures/fid_*.json, which are committed so that the tests need no
Python.
"""

import json
from pathlib import Path

import numpy as np
import scipy.linalg

OUT = Path(__file__).resolve().parents[2] / "crates" / "eval" / "tests" / "fixtures"


def stats(act):
    return np.mean(act, axis=0), np.cov(act, rowvar=False)


def fid_scipy(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance, verbatim in substance."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_symmetric(mu1, sigma1, mu2, sigma2):
    """The same distance through the eigenvalues of sqrt(S1) S2 sqrt(S1)."""
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ sigma2 @ root1
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum())


def mmd2_unbiased(x, y):
    """One subset of clean-fid's kernel_distance: the unbiased MMD^2, cubic kernel."""
    d = x.shape[1]
    m = x.shape[0]
    a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
    b = (x @ y.T / d + 1) ** 3
    return float(((a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m) / m)


def features(rng, n, d, shift, scale):
    # Relu of correlated Gaussians: non-negative, with a full covariance.
    # Rounded to float32, as the network's features are: the Rust side stores them so.
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    x = np.maximum(rng.normal(size=(n, d)) @ mix * scale + shift, 0.0)
    return x.astype(np.float32).astype(np.float64)


def case(name, rng, n1, n2, d, n_subsets, subset_size):
    x1 = features(rng, n1, d, 0.3, 1.0)
    x2 = features(rng, n2, d, 0.5, 1.2)
    mu1, sigma1 = stats(x1)
    mu2, sigma2 = stats(x2)
    subsets = []
    for _ in range(n_subsets):
        # clean-fid draws the second set's subset first; the order does not change the value.
        idx1 = rng.choice(n1, subset_size, replace=False)
        idx2 = rng.choice(n2, subset_size, replace=False)
        subsets.append(
            {"idx1": idx1.tolist(), "idx2": idx2.tolist(), "mmd2": mmd2_unbiased(x1[idx1], x2[idx2])}
        )
    out = {
        "about": "written by scripts/golden/fid.py",
        "d": d,
        "features1": x1.tolist(),
        "features2": x2.tolist(),
        "mu1": mu1.tolist(),
        "sigma1": sigma1.ravel().tolist(),
        "mu2": mu2.tolist(),
        "sigma2": sigma2.ravel().tolist(),
        "fid_scipy": fid_scipy(mu1, sigma1, mu2, sigma2),
        "fid_symmetric": fid_symmetric(mu1, sigma1, mu2, sigma2),
        "fid_self_scipy": fid_scipy(mu1, sigma1, mu1, sigma1),
        "subsets": subsets,
        "kid": float(np.mean([s["mmd2"] for s in subsets])),
        "mmd2_full": mmd2_unbiased(x1[: min(n1, n2)], x2[: min(n1, n2)]),
    }
    path = OUT / f"fid_{name}.json"
    path.write_text(json.dumps(out, indent=None) + "\n")
    print(f"{path.name}: fid {out['fid_scipy']:.12g} (symmetric {out['fid_symmetric']:.12g}), kid {out['kid']:.6g}")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20200619)
    case("full_rank", rng, n1=120, n2=90, d=16, n_subsets=3, subset_size=40)
    case("singular", rng, n1=14, n2=18, d=24, n_subsets=2, subset_size=10)


if __name__ == "__main__":
    main()
