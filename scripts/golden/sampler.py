#!/usr/bin/env python3
"""Golden fixtures for the samplers in `crates/train/src/sample.rs`.

Each sampler step is computed twice, independently, and the two must agree to 1e-9 before a
fixture is written:

* by diffusers' schedulers, the reference implementations people compare against:
  `DDPMScheduler` (Ho et al. 2020, Alg. 2 with the posterior mean of Eq. 7),
  `DDIMScheduler` (Song et al. 2021, Eq. 12 and 16, `set_alpha_to_one=True`,
  `use_clipped_model_output=True` when clipping) and `DPMSolverMultistepScheduler`
  (Lu et al. 2022, DPM-Solver++(2M): `algorithm_type="dpmsolver++"`, `solver_order=2`,
  `lower_order_final=True`, `final_sigmas_type="zero"`), their tables replaced by float64
  ones (and DPM-Solver's float32 cast of the sample made a float64 one) so that the reference
  is exact;
* by the closed-form equations re-typed here in numpy float64.

Clipping x0 to [-1, 1] is diffusers' `clip_sample` (DDPM, DDIM) and, for DPM-Solver++, dynamic
thresholding with `sample_max_value=1.0`, which then reduces to a clamp.

Run from the repository root:

    .venv/bin/python scripts/golden/sampler.py

It rewrites crates/sample/tests/fixtures/sampler_golden.json, which is committed so that the
tests need no Python.
"""

import json
import math
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

OUT = Path(__file__).resolve().parents[2] / "crates" / "sample" / "tests" / "fixtures"
T = 1000
BETAS = np.linspace(1e-4, 0.02, T, dtype=np.float64)  # Ho et al. 2020, the official code
ALPHAS_CUMPROD = np.cumprod(1.0 - BETAS)
SHAPE = (2, 1, 2, 3)
PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}

rng = np.random.default_rng(20240607)


def f32(a):
    """Rounds to float32 values: the Rust side computes in f32, and diffusers' DPM-Solver casts
    its sample to float32, which is then exact."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def randn():
    return f32(rng.standard_normal(SHAPE))


def f64_tables(scheduler):
    """Replaces a diffusers scheduler's float32 tables by float64 ones."""
    scheduler.betas = torch.tensor(BETAS, dtype=torch.float64)
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    return scheduler


def t64(a):
    return torch.tensor(a, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# The closed forms in numpy.


def abar(t):
    """alpha_bar at t; t = None (the step past 0) is 1."""
    return 1.0 if t is None else ALPHAS_CUMPROD[t]


def x0_eps(prediction, out, x, t):
    """(x0_hat, eps_hat) from the network output."""
    a, b = math.sqrt(abar(t)), math.sqrt(1.0 - abar(t))
    if prediction == "eps":
        return (x - b * out) / a, out
    if prediction == "x0":
        return out, (x - a * out) / b
    return a * x - b * out, a * out + b * x


def clip(x0, x, t, on):
    """Clamps x0_hat and re-derives eps_hat from it."""
    if not on:
        return x0_eps("x0", x0, x, t)
    x0 = np.clip(x0, -1.0, 1.0)
    return x0_eps("x0", x0, x, t)


def np_ddpm(prediction, clip_x0, variance, t, out, x, noise):
    x0, _ = clip(*x0_eps(prediction, out, x, t)[:1], x, t, clip_x0)
    prev = None if t == 0 else t - 1
    ab, ab_prev, beta = abar(t), abar(prev), BETAS[t]
    # Eq. 7: the posterior mean at x0_hat.
    mean = math.sqrt(ab_prev) * beta / (1 - ab) * x0 + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * x
    if t == 0:
        return mean, x0
    var = (1 - ab_prev) / (1 - ab) * beta if variance == "fixed_small" else beta
    return mean + math.sqrt(var) * noise, x0


def np_ddim(prediction, clip_x0, eta, t, t_prev, out, x, noise):
    x0, eps = clip(x0_eps(prediction, out, x, t)[0], x, t, clip_x0)
    ab, ab_prev = abar(t), abar(t_prev)
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
    prev = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sigma**2) * eps
    if sigma > 0:
        prev = prev + sigma * noise
    return prev, x0


def lam(t):
    return 0.5 * math.log(abar(t)) - 0.5 * math.log(1 - abar(t))


def np_dpm_solver_pp(prediction, clip_x0, timesteps, outs, x):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) from x at timesteps[0]: first order at the first
    step and at the last, which goes to sigma = 0 and so returns x0_hat. Returns the input, the
    output and x0_hat of every step; each step's input is the previous output rounded to
    float32."""
    results = []
    previous = None
    for i, t in enumerate(timesteps):
        x0 = clip(x0_eps(prediction, outs[i], x, t)[0], x, t, clip_x0)[0]
        t_next = timesteps[i + 1] if i + 1 < len(timesteps) else None
        if t_next is None:
            prev = x0
        else:
            a_t, s_t, s_s = math.sqrt(abar(t_next)), math.sqrt(1 - abar(t_next)), math.sqrt(1 - abar(t))
            h = lam(t_next) - lam(t)
            d = x0
            if previous is not None:
                x0_1, t_1 = previous
                r0 = (lam(t) - lam(t_1)) / h
                d = x0 + 0.5 / r0 * (x0 - x0_1)
            prev = s_t / s_s * x - a_t * math.expm1(-h) * d
        previous = (x0, t)
        results.append((x, prev, x0))
        x = f32(prev)
    return results


# ---------------------------------------------------------------------------------------------
# diffusers.


def diffusers_ddpm(prediction, clip_x0, variance, t, out, x, noise):
    s = f64_tables(
        DDPMScheduler(
            num_train_timesteps=T,
            variance_type=variance,
            clip_sample=clip_x0,
            clip_sample_range=1.0,
            prediction_type=PREDICTION[prediction],
        )
    )
    # DDPMScheduler draws its noise from the generator; draw the same noise again to store it.
    seed = 1000 + t
    r = s.step(t64(out), t, t64(x), generator=torch.Generator().manual_seed(seed))
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    assert noise is None
    return r.prev_sample.numpy(), r.pred_original_sample.numpy(), z


def diffusers_ddim(prediction, clip_x0, eta, n_steps, t, out, x, noise):
    s = f64_tables(
        DDIMScheduler(
            num_train_timesteps=T,
            clip_sample=clip_x0,
            clip_sample_range=1.0,
            set_alpha_to_one=True,
            steps_offset=0,
            timestep_spacing="leading",
            prediction_type=PREDICTION[prediction],
        )
    )
    s.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    s.set_timesteps(n_steps)
    r = s.step(t64(out), t, t64(x), eta=eta, use_clipped_model_output=clip_x0, variance_noise=t64(noise))
    return r.prev_sample.numpy(), r.pred_original_sample.numpy(), [int(v) for v in s.timesteps]


class _Float64Torch:
    """`torch` with `float32` meaning float64, for diffusers' DPM-Solver module, whose `step`
    casts the sample to float32 and so would compute the update in float32."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


def diffusers_dpm_solver_pp(prediction, clip_x0, n_steps, outs, xs):
    import diffusers.schedulers.scheduling_dpmsolver_multistep as module

    module.torch = _Float64Torch()
    s = f64_tables(
        DPMSolverMultistepScheduler(
            num_train_timesteps=T,
            algorithm_type="dpmsolver++",
            solver_order=2,
            lower_order_final=True,
            final_sigmas_type="zero",
            timestep_spacing="trailing",
            thresholding=clip_x0,
            sample_max_value=1.0,
            prediction_type=PREDICTION[prediction],
        )
    )
    s.set_timesteps(n_steps)
    timesteps = [int(v) for v in s.timesteps]
    sigmas = np.sqrt((1 - ALPHAS_CUMPROD[timesteps]) / ALPHAS_CUMPROD[timesteps])
    s.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]))
    results = []
    for i, t in enumerate(timesteps):
        r = s.step(t64(outs[i]), t, t64(xs[i]))
        # The x0_hat diffusers used is the last converted model output.
        results.append((r.prev_sample.numpy(), s.model_outputs[-1].numpy()))
    return timesteps, results


# ---------------------------------------------------------------------------------------------


def agree(name, ours, theirs):
    err = float(np.max(np.abs(np.asarray(ours) - np.asarray(theirs))))
    assert err < 1e-9, f"{name}: numpy and diffusers differ by {err}"


def flat(a):
    return [float(v) for v in np.asarray(a, dtype=np.float64).reshape(-1)]


def main():
    cases = []
    # One DDPM step at a time, at the ends of the chain and in between.
    for t, variance, prediction, clip_x0 in [
        (999, "fixed_large", "eps", False),
        (500, "fixed_small", "eps", False),
        (250, "fixed_large", "eps", True),
        (1, "fixed_small", "eps", True),
        (0, "fixed_large", "eps", False),
        (700, "fixed_small", "v", False),
        (300, "fixed_large", "x0", True),
    ]:
        x, out = randn(), randn()
        prev_d, x0_d, noise = diffusers_ddpm(prediction, clip_x0, variance, t, out, x, None)
        prev_n, x0_n = np_ddpm(prediction, clip_x0, variance, t, out, x, noise)
        agree(f"ddpm t={t}", prev_n, prev_d)
        agree(f"ddpm t={t} x0", x0_n, x0_d)
        cases.append(
            {
                "name": f"ddpm {variance} {prediction} clip={clip_x0} t={t}",
                "config": {"kind": "ddpm", "variance": variance},
                "prediction": prediction,
                "clip_x0": clip_x0,
                "steps": [
                    {
                        "index": T - 1 - t,
                        "t": t,
                        "x_t": flat(x),
                        "model_output": flat(out),
                        "noise": flat(noise) if t > 0 else None,
                        "prev_sample": flat(prev_d),
                        "pred_x0": flat(x0_d),
                    }
                ],
            }
        )
    # One DDIM step of 50 (leading spacing: 980, 960, ..., 0), including the last one, to x0.
    n_steps = 50
    for index, eta, prediction, clip_x0 in [
        (0, 0.0, "eps", False),
        (10, 0.5, "eps", False),
        (25, 1.0, "eps", True),
        (49, 1.0, "eps", False),
        (30, 0.0, "v", True),
    ]:
        x, out, noise = randn(), randn(), randn()
        timesteps = list(range(980, -1, -20))
        t = timesteps[index]
        t_prev = timesteps[index + 1] if index + 1 < n_steps else None
        prev_d, x0_d, their_steps = diffusers_ddim(prediction, clip_x0, eta, n_steps, t, out, x, noise)
        assert their_steps == timesteps, their_steps
        prev_n, x0_n = np_ddim(prediction, clip_x0, eta, t, t_prev, out, x, noise)
        agree(f"ddim t={t}", prev_n, prev_d)
        agree(f"ddim t={t} x0", x0_n, x0_d)
        cases.append(
            {
                "name": f"ddim eta={eta} {prediction} clip={clip_x0} t={t}",
                "config": {"kind": "ddim", "steps": n_steps, "eta": eta, "spacing": "leading"},
                "prediction": prediction,
                "clip_x0": clip_x0,
                "steps": [
                    {
                        "index": index,
                        "t": t,
                        "x_t": flat(x),
                        "model_output": flat(out),
                        "noise": flat(noise) if eta > 0 and t_prev is not None else None,
                        "prev_sample": flat(prev_d),
                        "pred_x0": flat(x0_d),
                    }
                ],
            }
        )
    # Whole DPM-Solver++(2M) chains: first order, second order, ..., the final step to x0.
    for n_steps, prediction, clip_x0 in [(5, "eps", False), (4, "eps", True), (6, "v", False)]:
        outs = [randn() for _ in range(n_steps)]
        ts_trailing = [int(round(T - i * T / n_steps)) - 1 for i in range(n_steps)]
        steps_np = np_dpm_solver_pp(prediction, clip_x0, ts_trailing, outs, randn())
        xs = [x for x, _, _ in steps_np]
        timesteps, results = diffusers_dpm_solver_pp(prediction, clip_x0, n_steps, outs, xs)
        assert timesteps == ts_trailing, (timesteps, ts_trailing)
        steps_np = [(p, x0) for _, p, x0 in steps_np]
        for i, ((p_n, x0_n), (p_d, x0_d)) in enumerate(zip(steps_np, results)):
            agree(f"dpm-solver++ step {i}", p_n, p_d)
            agree(f"dpm-solver++ step {i} x0", x0_n, x0_d)
        cases.append(
            {
                "name": f"dpm-solver++(2M) {n_steps} steps {prediction} clip={clip_x0}",
                "config": {"kind": "dpm_solver_pp", "steps": n_steps, "spacing": "trailing"},
                "prediction": prediction,
                "clip_x0": clip_x0,
                "steps": [
                    {
                        "index": i,
                        "t": t,
                        "x_t": flat(xs[i]),
                        "model_output": flat(outs[i]),
                        "noise": None,
                        "prev_sample": flat(results[i][0]),
                        "pred_x0": flat(results[i][1]),
                    }
                    for i, t in enumerate(timesteps)
                ],
            }
        )
    fixture = {
        "generator": "scripts/golden/sampler.py",
        "reference": "diffusers DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler in float64, "
        "cross-checked against numpy closed forms",
        "schedule": {"kind": "linear", "n_steps": T, "start": 1e-4, "end": 0.02},
        "shape": list(SHAPE),
        "cases": cases,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "sampler_golden.json"
    path.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {path}: {len(cases)} cases")


if __name__ == "__main__":
    main()
