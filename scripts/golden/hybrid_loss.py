#!/usr/bin/env python3
"""Golden fixture for the hybrid loss of learned variances (`objective.variance =
"learned_range"`, Nichol & Dhariwal 2021), computed independently of our Rust code.

Re-typed from improved-diffusion's `improved_diffusion/gaussian_diffusion.py` (`training_losses`
with `model_var_type=LEARNED_RANGE`, `loss_type=RESCALED_MSE`, i.e. the paper's hybrid
L_simple + lambda L_vlb with lambda = 0.001), not imported:

* the network's 2C output channels split into the prediction (eps here) and v in [-1, 1];
* L_simple per sample: mean over C, H, W of (eps_theta - eps)^2 (float32, as libtorch computes
  it from float32 tensors);
* L_vlb per sample, `_vb_terms_bpd` on `frozen_out` (the prediction detached, v kept) with
  clip_denoised=False, in float64: x0_hat = sqrt(1/ab_t) x_t - sqrt(1/ab_t - 1) eps_theta, the
  model mean coef1 x0_hat + coef2 x_t, the log variance frac log(beta_t) + (1 - frac) log
  posterior_variance_t (clipped at t = 0: posterior_variance[1]) with frac = (v + 1) / 2; the
  KL against q(x_{t-1} | x_t, x_0) (`normal_kl`) for t > 0, the discretized Gaussian decoder NLL
  (`discretized_gaussian_log_likelihood`, bins of +-1/255 open at pixels 0 and 255) at t = 0;
  mean over dimensions / ln 2 (bits);
* the loss: mean over samples of L_simple + L_vlb * T / 1000 (improved-diffusion's
  `terms["vb"] *= self.num_timesteps / 1000.0`: one t's term times T estimates L_vlb, times
  lambda = 0.001).

x_t is formed as libtorch forms it from float32 tables and tensors: float32(sqrt(ab_t)) * x_0 +
float32(sqrt(1 - ab_t)) * eps, each product and the sum rounded to float32.

Run from the repository root:

    .venv/bin/python scripts/golden/hybrid_loss.py

It rewrites crates/train/tests/fixtures/hybrid_loss_golden.json (committed). Requirements: numpy.
"""

import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[2] / "crates" / "train" / "tests" / "fixtures"
T = 100
SHAPE = (4, 2, 3, 3)  # N, C, H, W
TS = [0, 1, 37, 99]


def normal_kl(m1, lv1, m2, lv2):
    return 0.5 * (-1.0 + lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2))


def cdf(x):
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def decoder_log_likelihood(x, means, log_scales):
    centered = x - means
    inv = np.exp(-log_scales)
    cdf_plus = cdf(inv * (centered + 1.0 / 255.0))
    cdf_min = cdf(inv * (centered - 1.0 / 255.0))
    return np.where(
        x < -0.999,
        np.log(np.maximum(cdf_plus, 1e-12)),
        np.where(
            x > 0.999,
            np.log(np.maximum(1.0 - cdf_min, 1e-12)),
            np.log(np.maximum(cdf_plus - cdf_min, 1e-12)),
        ),
    )


def main():
    rng = np.random.default_rng(300)
    betas = np.linspace(1e-4, 0.05, T)
    ab = np.cumprod(1.0 - betas)
    prev = np.append(1.0, ab[:-1])
    post_var = betas * (1.0 - prev) / (1.0 - ab)
    post_log_var = np.log(np.append(post_var[1], post_var[1:]))
    coef1 = betas * np.sqrt(prev) / (1.0 - ab)
    coef2 = (1.0 - prev) * np.sqrt(1.0 - betas) / (1.0 - ab)

    pixels = rng.integers(0, 256, size=SHAPE)
    pixels.reshape(-1)[[0, 7, 40, 51]] = [0, 255, 0, 255]
    x_0 = (pixels / 127.5 - 1.0).astype(np.float32)
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    eps_out = (noise + 0.3 * rng.standard_normal(SHAPE)).astype(np.float32)
    v_out = rng.uniform(-1.0, 1.0, SHAPE).astype(np.float32)
    t = np.array(TS)

    shape4 = (-1, 1, 1, 1)
    a32 = np.sqrt(ab).astype(np.float32)[t].reshape(shape4)
    b32 = np.sqrt(1.0 - ab).astype(np.float32)[t].reshape(shape4)
    x_t = (a32 * x_0).astype(np.float32) + (b32 * noise).astype(np.float32)

    simple = ((eps_out - noise) ** 2).reshape(SHAPE[0], -1).mean(axis=1, dtype=np.float32)

    x0d, xtd, epsd, vd = (a.astype(np.float64) for a in (x_0, x_t, eps_out, v_out))
    col = lambda table: table[t].reshape(shape4)
    pred_x0 = np.sqrt(1.0 / col(ab)) * xtd - np.sqrt(1.0 / col(ab) - 1.0) * epsd
    mean = col(coef1) * pred_x0 + col(coef2) * xtd
    frac = (vd + 1.0) / 2.0
    log_var = frac * np.log(col(betas)) + (1.0 - frac) * col(post_log_var)
    true_mean = col(coef1) * x0d + col(coef2) * xtd
    kl = normal_kl(true_mean, col(post_log_var), mean, log_var).reshape(SHAPE[0], -1).mean(1)
    nll = -decoder_log_likelihood(x0d, mean, 0.5 * log_var).reshape(SHAPE[0], -1).mean(1)
    vlb = np.where(t == 0, nll, kl) / np.log(2.0)
    loss = np.mean(simple.astype(np.float64) + vlb * T / 1000.0)

    fixture = {
        "schedule_betas": betas.tolist(),
        "shape": list(SHAPE),
        "t": TS,
        "x_0": x_0.reshape(-1).tolist(),
        "noise": noise.reshape(-1).tolist(),
        "x_t": x_t.reshape(-1).tolist(),
        "eps_out": eps_out.reshape(-1).tolist(),
        "v_out": v_out.reshape(-1).tolist(),
        "simple": simple.astype(np.float64).tolist(),
        "vlb": vlb.tolist(),
        "loss": float(loss),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "hybrid_loss_golden.json").write_text(json.dumps(fixture, indent=1) + "\n")
    print("L_simple", simple, "L_vlb (bits)", vlb, "loss", loss)


if __name__ == "__main__":
    main()
