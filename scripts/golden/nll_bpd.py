#!/usr/bin/env python3
"""Golden fixture for the variational bound in bits per dimension (`ddpm eval nll`), computed
independently of our Rust code in numpy float64.

The formulas are re-typed from the official code, not imported:

* `normal_kl`, `approx_standard_normal_cdf` and `discretized_gaussian_log_likelihood` of Ho's
  `diffusion_tf/utils.py`, as ported to improved-diffusion's `improved_diffusion/losses.py`:
  KL = 0.5 (-1 + lv2 - lv1 + exp(lv1 - lv2) + (m1 - m2)^2 exp(-lv2)); the CDF's tanh
  approximation 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); the decoder's bin
  [x - 1/255, x + 1/255], open to -inf at x < -0.999 (pixel 0) and to +inf at x > 0.999
  (pixel 255), probabilities clamped at 1e-12 before the log;
* `q_posterior_mean_variance`, `p_mean_variance`, `_vb_terms_bpd`, `_prior_bpd` and
  `calc_bpd_loop` of improved-diffusion's `improved_diffusion/gaussian_diffusion.py` (Ho's
  `diffusion_utils_2.py`): the posterior mean coef1 x_0 + coef2 x_t and log variance clipped at
  t = 0 (log of posterior_variance[1]); the model mean from x_0 predicted from eps and clipped to
  [-1, 1] when clip_denoised; fixed-large log variance log(append(posterior_variance[1],
  betas[1:])), fixed-small the clipped posterior log variance, learned_range
  frac * log(betas) + (1 - frac) * clipped posterior log variance with frac = (v + 1) / 2
  (Improved DDPM Eq. 15); each term mean_flat / ln 2; KL for t > 0 and the decoder NLL at t = 0;
  the prior KL(N(sqrt(ab_T) x_0, 1 - ab_T) || N(0, 1)); the total = prior + sum over t.

The network is a fixed stand-in that the Rust test implements too: eps = x_t * a_t with
a_t = 0.875 - t / (2 T), and for learned_range a second half of channels v = clip(0.5 x_t, -1, 1),
both in float32 as libtorch computes them from x_t rounded to float32 (a_t and 0.5 are exact in
float32, so these products round identically in numpy and libtorch). Everything else is float64,
as the Rust side computes the bound.

Images are uint8 with pixels 0 and 255 present (the decoder's edge bins); the noise for each
(t, image) is fixed here and passed in.

Run from the repository root:

    .venv/bin/python scripts/golden/nll_bpd.py

It rewrites crates/sample/tests/fixtures/nll_golden.json (committed; the test
`likelihood_golden` needs no Python). Requirements: numpy only.
"""

import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[2] / "crates" / "sample" / "tests" / "fixtures"
T = 8
SHAPE = (3, 2, 2, 3)  # N, C, H, W


def tables(betas):
    alphas_cumprod = np.cumprod(1.0 - betas)
    prev = np.append(1.0, alphas_cumprod[:-1])
    post_var = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
    return {
        "betas": betas,
        "ab": alphas_cumprod,
        "sqrt_recip_ab": np.sqrt(1.0 / alphas_cumprod),
        "sqrt_recipm1_ab": np.sqrt(1.0 / alphas_cumprod - 1.0),
        "post_log_var": np.log(np.append(post_var[1], post_var[1:])),
        "coef1": betas * np.sqrt(prev) / (1.0 - alphas_cumprod),
        "coef2": (1.0 - prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod),
        "post_var": post_var,
    }


def normal_kl(m1, lv1, m2, lv2):
    return 0.5 * (-1.0 + lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2))


def cdf(x):
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def decoder_log_likelihood(x, means, log_scales):
    centered = x - means
    inv = np.exp(-log_scales)
    cdf_plus = cdf(inv * (centered + 1.0 / 255.0))
    cdf_min = cdf(inv * (centered - 1.0 / 255.0))
    log_cdf_plus = np.log(np.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = np.log(np.maximum(1.0 - cdf_min, 1e-12))
    log_delta = np.log(np.maximum(cdf_plus - cdf_min, 1e-12))
    return np.where(x < -0.999, log_cdf_plus, np.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def mean_flat(x):
    return x.reshape(x.shape[0], -1).mean(axis=1)


def network(x_t, t, learned):
    x32 = x_t.astype(np.float32)
    eps = (x32 * np.float32(0.875 - t / (2 * T))).astype(np.float64)
    v = np.clip(x32 * np.float32(0.5), -1.0, 1.0).astype(np.float64)
    return eps, (v if learned else None)


def model_log_variance(tab, t, variance, v):
    if variance == "fixed_small":
        return np.full((SHAPE[0], 1, 1, 1), tab["post_log_var"][t])
    if variance == "fixed_large":
        large = np.log(np.append(tab["post_var"][1], tab["betas"][1:]))
        return np.full((SHAPE[0], 1, 1, 1), large[t])
    frac = (v + 1.0) / 2.0
    return frac * np.log(tab["betas"][t]) + (1.0 - frac) * tab["post_log_var"][t]


def vb_term(tab, x_0, noise, t, variance, clip):
    x_t = np.sqrt(tab["ab"][t]) * x_0 + np.sqrt(1.0 - tab["ab"][t]) * noise
    eps, v = network(x_t, t, variance == "learned_range")
    pred_x0 = tab["sqrt_recip_ab"][t] * x_t - tab["sqrt_recipm1_ab"][t] * eps
    if clip:
        pred_x0 = np.clip(pred_x0, -1.0, 1.0)
    mean = tab["coef1"][t] * pred_x0 + tab["coef2"][t] * x_t
    log_var = model_log_variance(tab, t, variance, v)
    if t == 0:
        log_scales = np.broadcast_to(0.5 * log_var, x_0.shape)
        return -mean_flat(decoder_log_likelihood(x_0, mean, log_scales)) / np.log(2.0)
    true_mean = tab["coef1"][t] * x_0 + tab["coef2"][t] * x_t
    return mean_flat(normal_kl(true_mean, tab["post_log_var"][t], mean, log_var)) / np.log(2.0)


def prior(tab, x_0):
    ab = tab["ab"][-1]
    kl = normal_kl(np.sqrt(ab) * x_0, np.log(1.0 - ab), 0.0, 0.0)
    return mean_flat(kl) / np.log(2.0)


def main():
    rng = np.random.default_rng(30)
    betas = np.linspace(0.02, 0.45, T)
    tab = tables(betas)
    pixels = rng.integers(0, 256, size=SHAPE)
    pixels.reshape(-1)[[0, 5, 13, 20]] = [0, 255, 0, 255]
    x_0 = pixels / 127.5 - 1.0
    noise = rng.standard_normal((T,) + SHAPE)
    cases = []
    for variance, clip in [
        ("fixed_small", True),
        ("fixed_large", True),
        ("fixed_large", False),
        ("learned_range", True),
    ]:
        terms = [vb_term(tab, x_0, noise[t], t, variance, clip) for t in range(T)]
        prior_bits = prior(tab, x_0)
        total = prior_bits + np.sum(terms, axis=0)
        cases.append(
            {
                "variance": variance,
                "clip": clip,
                "terms": [term.tolist() for term in terms],
                "prior": prior_bits.tolist(),
                "total": total.tolist(),
            }
        )
    # The decoder alone at both edge bins, an inner bin and far-off means.
    x = np.array([-1.0, -1.0, 1.0, 1.0, 1.0 / 255.0, -1.0 + 2.0 / 255.0, 1.0 - 2.0 / 255.0, 0.2])
    means = np.array([-1.02, 0.5, 0.97, -0.4, 0.0, -0.99, 0.99, 3.0])
    log_scales = np.array([-4.0, -1.0, -3.5, -0.5, -6.0, -5.0, -5.0, -2.0])
    fixture = {
        "schedule_betas": betas.tolist(),
        "shape": list(SHAPE),
        "pixels": pixels.reshape(-1).tolist(),
        "noise": noise.reshape(-1).tolist(),
        "cases": cases,
        "decoder": {
            "x": x.tolist(),
            "means": means.tolist(),
            "log_scales": log_scales.tolist(),
            "log_likelihood": decoder_log_likelihood(x, means, log_scales).tolist(),
        },
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "nll_golden.json").write_text(json.dumps(fixture, indent=1) + "\n")
    for case in cases:
        print(case["variance"], case["clip"], "mean total bits/dim", np.mean(case["total"]))


if __name__ == "__main__":
    main()
