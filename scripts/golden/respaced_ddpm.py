#!/usr/bin/env python3
"""Golden fixture for DDPM over a respaced chain (`ddpm sample --sampler ddpm --steps N`), computed
in float64 numpy independently of our Rust code (crates/sample/src/solvers/ddpm.rs and
crates/schedule/src/respace.rs).

Re-typed from Nichol & Dhariwal 2021 (Improved DDPM, §4) and improved-diffusion's `respace.py` +
`gaussian_diffusion.py` (`p_mean_variance`, `p_sample`), not imported: the sampler visits the
steps S = (s_K > ... > s_1) of a T-step schedule as a K-step chain of its own with
beta'_k = 1 - ab[s_k] / ab[s_{k-1}] (ab = 1 before the first step), and at each step

* x0_hat = sqrt(1 / ab_t) x_t - sqrt(1 / ab_t - 1) eps_theta, clamped to [-1, 1] when clipping;
* mean = coef1 x0_hat + coef2 x_t with coef1 = sqrt(ab_prev) beta' / (1 - ab_t) and
  coef2 = sqrt(1 - beta') (1 - ab_prev) / (1 - ab_t);
* sigma^2 = beta' (fixed_large), (1 - ab_prev) / (1 - ab_t) beta' (fixed_small), or
  exp(frac ln beta' + (1 - frac) ln max(fixed_small, 1e-20)) with frac = (v + 1) / 2
  (learned_range, Eq. 15; the floor is diffusers', for the final step, which adds no noise);
* x_prev = mean + sigma z, and x_prev = mean on the final step.

The steps are diffusers' `leading` spacing, (K - 1, ..., 0) * (T // K), and `trailing`
(round(T - i T / K) - 1 for i = 0..K-1): the chain over 10 of T = 50 steps.

Run from the repository root:

    .venv/bin/python scripts/golden/respaced_ddpm.py

It rewrites crates/sample/tests/fixtures/respaced_ddpm_golden.json (committed).
Requirements: numpy.
"""

import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[2] / "crates" / "sample" / "tests" / "fixtures"
T = 50
K = 10
SHAPE = (2, 1, 4, 4)


def f32(x):
    return np.asarray(x, dtype=np.float32)


def step(ab, t, t_prev, x_t, eps, v, noise, variance, clip):
    a_t = ab[t]
    a_prev = 1.0 if t_prev is None else ab[t_prev]
    beta = 1.0 - a_t / a_prev
    post_var = (1.0 - a_prev) / (1.0 - a_t) * beta
    x0 = np.sqrt(1.0 / a_t) * x_t - np.sqrt(1.0 / a_t - 1.0) * eps
    if clip:
        x0 = np.clip(x0, -1.0, 1.0)
    coef1 = np.sqrt(a_prev) * beta / (1.0 - a_t)
    coef2 = np.sqrt(1.0 - beta) * (1.0 - a_prev) / (1.0 - a_t)
    mean = coef1 * x0 + coef2 * x_t
    if t_prev is None:
        return mean
    if variance == "fixed_large":
        log_var = np.log(beta) * np.ones_like(x_t)
    elif variance == "fixed_small":
        log_var = np.log(post_var) * np.ones_like(x_t)
    else:
        frac = (v + 1.0) / 2.0
        log_var = frac * np.log(beta) + (1.0 - frac) * np.log(max(post_var, 1e-20))
    return mean + np.exp(0.5 * log_var) * noise


def main():
    rng = np.random.default_rng(303)
    betas = np.linspace(1e-4, 0.2, T, dtype=np.float64)
    ab = np.cumprod(1.0 - betas)
    spacings = {
        "leading": [int(x) for x in (np.arange(K)[::-1] * (T // K))],
        "trailing": [int(x) for x in (np.round(np.arange(T, 0, -T / K)) - 1)],
    }
    cases = []
    for spacing, timesteps in spacings.items():
        for i, t in enumerate(timesteps):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
            # float32 inputs, as the sampler gets them; the reference runs in float64 on them.
            x_t = f32(rng.standard_normal(SHAPE)).astype(np.float64)
            eps = f32(rng.standard_normal(SHAPE)).astype(np.float64)
            v = f32(rng.uniform(-1.0, 1.0, SHAPE)).astype(np.float64)
            noise = f32(rng.standard_normal(SHAPE)).astype(np.float64)
            out = {}
            for variance in ["fixed_small", "fixed_large", "learned_range"]:
                for clip in [False, True]:
                    prev = step(ab, t, t_prev, x_t, eps, v, noise, variance, clip)
                    out[f"{variance}_{'clip' if clip else 'noclip'}"] = prev.ravel().tolist()
            cases.append(
                {
                    "spacing": spacing,
                    "i": i,
                    "t": t,
                    "x_t": x_t.ravel().tolist(),
                    "eps": eps.ravel().tolist(),
                    "v": v.ravel().tolist(),
                    "noise": noise.ravel().tolist(),
                    "prev": out,
                }
            )
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "respaced_ddpm_golden.json"
    data = {
        "betas": betas.tolist(),
        "steps": K,
        "shape": list(SHAPE),
        "timesteps": spacings,
        "cases": cases,
    }
    path.write_text(json.dumps(data) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
