#!/usr/bin/env python3
"""Golden fixture for `train::objective::training_loss`, computed independently of our Rust code.

The training objective (Ho et al. 2020, Alg. 1) re-typed here in numpy float64:

* x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (Eq. 4), with one t per sample, on the
  official DDPM linear schedule (np.linspace(1e-4, 0.02, 1000), float64);
* the network is a fixed stand-in, out = 0.5 x_t + 0.001 t (t broadcast over each sample), so
  that the loss depends on x_t and hence on add_noise;
* targets: eps (the paper), x_0, or v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0
  (Salimans & Ho 2022);
* element losses: L1 |d|, L2 d^2, and Huber as torch.nn.functional.huber_loss with `delta`
  (0.5 d^2 where |d| < delta, delta (|d| - delta / 2) elsewhere), cross-checked here against
  torch in float64;
* the loss of a batch: each sample's mean element loss, times its min-SNR-gamma weight
  (Hang et al. 2023) when gamma is set, then the mean over the batch. The weights are the ones
  objective.rs documents: min(SNR, gamma) / SNR for eps, min(SNR, gamma) for x_0 and
  min(SNR, gamma) / (SNR + 1) for v, with SNR = alpha_bar / (1 - alpha_bar). For L2 the script
  checks that each of them weights the equivalent x_0 error by min(SNR, gamma).

x_0 and the noise are rounded to float32 values before the float64 computation, since the Rust
test feeds them to libtorch in f32.

Run from the repository root:

    .venv/bin/python scripts/golden/objective.py

It rewrites crates/train/tests/fixtures/objective_golden.json, which is committed so that the
tests need no Python.
"""

import json
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[2] / "crates" / "train" / "tests" / "fixtures"
T = 1000
SCHEDULE = {"kind": "linear", "n_steps": T, "start": 0.0001, "end": 0.02}
BETAS = np.linspace(SCHEDULE["start"], SCHEDULE["end"], T, dtype=np.float64)
ALPHAS_CUMPROD = np.cumprod(1.0 - BETAS)
SNR = ALPHAS_CUMPROD / (1.0 - ALPHAS_CUMPROD)
SHAPE = (4, 3, 4, 4)

# The stand-in network: out = OUT_SCALE * x_t + T_SCALE * t.
OUT_SCALE = 0.5
T_SCALE = 0.001

# One t for the whole batch at both ends and in the middle, and two batches with a different t
# per sample that mix clipped (SNR > gamma) and unclipped min-SNR weights.
T_BATCHES = [
    [0, 0, 0, 0],
    [1, 1, 1, 1],
    [500, 500, 500, 500],
    [998, 998, 998, 998],
    [999, 999, 999, 999],
    [0, 1, 500, 999],
    [998, 2, 60, 731],
]
LOSSES = [("l1", 1.0), ("l2", 1.0), ("huber", 1.0), ("huber", 0.25)]
PREDICTIONS = ["eps", "x0", "v"]
GAMMAS = [None, 5.0]

rng = np.random.default_rng(20200619)


def f32(a):
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def per_sample(table, t):
    """table[t] shaped [N, 1, 1, 1]."""
    return table[np.asarray(t)].reshape(-1, 1, 1, 1)


def huber(d, delta):
    a = np.abs(d)
    return np.where(a < delta, 0.5 * d * d, delta * (a - 0.5 * delta))


def element_loss(kind, delta, d):
    if kind == "l1":
        return np.abs(d)
    if kind == "l2":
        return d * d
    if kind == "huber":
        ours = huber(d, delta)
        theirs = torch.nn.functional.huber_loss(
            torch.tensor(d), torch.zeros(d.shape, dtype=torch.float64), reduction="none", delta=delta
        ).numpy()
        assert np.allclose(ours, theirs, rtol=1e-15, atol=0), "huber differs from torch"
        return ours
    raise ValueError(kind)


def min_snr_weight(prediction, gamma, t):
    snr = SNR[np.asarray(t)]
    clipped = np.minimum(snr, gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "x0":
        return clipped
    return clipped / (snr + 1.0)


def pred_x0(prediction, out, x_t, t):
    """The network output read as an estimate of x_0."""
    a = np.sqrt(per_sample(ALPHAS_CUMPROD, t))
    b = np.sqrt(1.0 - per_sample(ALPHAS_CUMPROD, t))
    if prediction == "eps":
        return (x_t - b * out) / a
    if prediction == "x0":
        return out
    return a * x_t - b * out


def case_loss(x_0, noise, t, prediction, kind, delta, gamma):
    a = np.sqrt(per_sample(ALPHAS_CUMPROD, t))
    b = np.sqrt(1.0 - per_sample(ALPHAS_CUMPROD, t))
    x_t = a * x_0 + b * noise
    out = OUT_SCALE * x_t + T_SCALE * np.asarray(t, dtype=np.float64).reshape(-1, 1, 1, 1)
    target = {"eps": noise, "x0": x_0, "v": a * noise - b * x_0}[prediction]
    sample_loss = element_loss(kind, delta, out - target).mean(axis=(1, 2, 3))
    if gamma is not None:
        weight = min_snr_weight(prediction, gamma, t)
        if kind == "l2":
            # Each target's weight gives the x_0 error min(SNR, gamma) ||x0_hat - x_0||^2.
            x0_error = ((pred_x0(prediction, out, x_t, t) - x_0) ** 2).mean(axis=(1, 2, 3))
            equivalent = np.minimum(SNR[np.asarray(t)], gamma) * x0_error
            assert np.allclose(weight * sample_loss, equivalent, rtol=1e-9, atol=0), (prediction, t)
        sample_loss = sample_loss * weight
    return float(sample_loss.mean())


def main():
    x_0 = f32(rng.uniform(-1.0, 1.0, SHAPE))
    noise = f32(rng.standard_normal(SHAPE))
    mixed_snr = SNR[np.asarray(T_BATCHES[-2])]
    assert (mixed_snr > 5.0).any() and (mixed_snr < 5.0).any(), mixed_snr
    assert (SNR[np.asarray(T_BATCHES[-1])] > 5.0).any()

    cases = []
    for t in T_BATCHES:
        for prediction in PREDICTIONS:
            for kind, delta in LOSSES:
                for gamma in GAMMAS:
                    name = f"{prediction} {kind}"
                    if kind == "huber":
                        name += f"(delta={delta})"
                    name += f" gamma={gamma} t={t}"
                    cases.append(
                        {
                            "name": name,
                            "objective": {
                                "prediction": prediction,
                                "loss": kind,
                                "huber_delta": delta,
                                "min_snr_gamma": gamma,
                            },
                            "t": t,
                            "loss": case_loss(x_0, noise, t, prediction, kind, delta, gamma),
                        }
                    )
    # Huber with delta = 0.25 must see both of its branches, or it tests nothing beyond L2/L1.
    d = 0.5 * (np.sqrt(ALPHAS_CUMPROD[500]) * x_0 + np.sqrt(1 - ALPHAS_CUMPROD[500]) * noise) - noise
    assert (np.abs(d) < 0.25).any() and (np.abs(d) > 0.25).any()

    payload = {
        "generator": "scripts/golden/objective.py",
        "reference": "Ho et al. 2020 Alg. 1 with eps/x0/v targets, L1/L2/Huber and min-SNR-gamma "
        "weights, numpy float64 (Huber cross-checked against torch)",
        "schedule": SCHEDULE,
        "stand_in": {"out_scale": OUT_SCALE, "t_scale": T_SCALE},
        "shape": list(SHAPE),
        "x_0": [float(v) for v in x_0.reshape(-1)],
        "noise": [float(v) for v in noise.reshape(-1)],
        "cases": cases,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "objective_golden.json"
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
        f.write("\n")
    print(f"wrote {path.relative_to(OUT.parents[3])}: {len(cases)} cases ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
