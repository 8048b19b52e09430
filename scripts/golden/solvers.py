#!/usr/bin/env python3
"""Golden fixtures for the multistep solvers of `crates/sample/src/solvers/`, made by diffusers.

Each case runs one diffusers scheduler over a whole chain of a few steps on fixed model outputs,
with classifier-free guidance on: at step i the "network" gives a conditional output c_i and an
unconditional one u_i (fixed random draws), the scheduler steps on u_i + W (c_i - u_i), and the
fixture stores x_t, c_i, u_i, W, the noise (SDE only), diffusers' prev_sample and the x0_hat it
used. The input of step i + 1 is diffusers' output of step i rounded to float32 (what the Rust
side, in f32, is fed); diffusers itself runs in float64: its tables (betas, alphas_cumprod,
sigmas) replaced by float64 ones and the module's `torch.float32` made float64, as
`sampler.py` does, so the reference does not lose the digits that f32 would.

Schedulers (diffusers 0.42), with `timestep_spacing="trailing"`, `final_sigmas_type="zero"`,
`lower_order_final=True`, and thresholding (with `sample_max_value=1`, a clamp) when clipping:

* `DPMSolverMultistepScheduler`, `algorithm_type="dpmsolver++"`, `solver_order` 1, 2, 3, and
  `"sde-dpmsolver++"` (orders 2 and 3) with `variance_noise` passed in;
* `UniPCMultistepScheduler`, `solver_type` "bh1" and "bh2", `solver_order` 1, 2, 3, the
  corrector on (`disable_corrector=[]`). diffusers' bh1 turns its last step, to sigma = 0, into
  NaN (B(h) = -inf times a zero residual); the fixture keeps bh1's other steps and the Rust
  solver takes that step's limit, x0_hat.

Prediction types eps, x0 ("sample") and v; steps 5 to 16 (below and above diffusers' 15-step
threshold for lowering the second-last step's order).

Run from the repository root, with the .venv that `cargo xtask setup` makes (torch, diffusers,
numpy):

    .venv/bin/python scripts/golden/solvers.py

It rewrites crates/sample/tests/fixtures/solvers_golden.json, which is committed.
"""

import json
from pathlib import Path

import numpy as np
import torch
import diffusers.schedulers.scheduling_dpmsolver_multistep as dpm_module
import diffusers.schedulers.scheduling_unipc_multistep as unipc_module
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

OUT = Path(__file__).resolve().parents[2] / "crates" / "sample" / "tests" / "fixtures"
T = 1000
BETAS = np.linspace(1e-4, 0.02, T, dtype=np.float64)
ALPHAS_CUMPROD = np.cumprod(1.0 - BETAS)
SHAPE = (2, 1, 2, 3)
PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
GUIDANCE = 3.0

rng = np.random.default_rng(20261206)


class _Float64Torch:
    """`torch` with `float32` meaning float64, so that the schedulers' casts keep float64."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


dpm_module.torch = _Float64Torch()
unipc_module.torch = _Float64Torch()


def f32(a):
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def randn(scale=1.0):
    return f32(scale * rng.standard_normal(SHAPE))


def flat(a):
    return [float(v) for v in np.asarray(a, dtype=np.float64).reshape(-1)]


def f64_scheduler(scheduler, n_steps):
    scheduler.betas = torch.tensor(BETAS, dtype=torch.float64)
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    scheduler.set_timesteps(n_steps)
    timesteps = [int(v) for v in scheduler.timesteps]
    sigmas = np.sqrt((1 - ALPHAS_CUMPROD[timesteps]) / ALPHAS_CUMPROD[timesteps])
    scheduler.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]))
    return scheduler, timesteps


def make(kind, order, variant, prediction, clip_x0):
    common = dict(
        num_train_timesteps=T,
        solver_order=order,
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing="trailing",
        thresholding=clip_x0,
        sample_max_value=1.0,
        prediction_type=PREDICTION[prediction],
    )
    if kind == "dpm_solver_pp":
        return DPMSolverMultistepScheduler(algorithm_type=variant, **common)
    return UniPCMultistepScheduler(solver_type=variant, predict_x0=True, disable_corrector=[], **common)


def chain(kind, order, variant, prediction, clip_x0, n_steps):
    s, timesteps = f64_scheduler(make(kind, order, variant, prediction, clip_x0), n_steps)
    sde = variant == "sde-dpmsolver++"
    x = randn()
    steps = []
    for i, t in enumerate(timesteps):
        cond, uncond = randn(), randn()
        guided = uncond + GUIDANCE * (cond - uncond)
        last = i + 1 == len(timesteps)
        noise = randn() if sde and not last else None
        kwargs = {}
        if sde:
            kwargs["variance_noise"] = torch.from_numpy(noise if noise is not None else np.zeros(SHAPE))
        r = s.step(torch.from_numpy(guided), t, torch.from_numpy(x), **kwargs)
        prev = r.prev_sample.numpy()
        x0 = s.model_outputs[-1].numpy()
        if kind == "unipc" and variant == "bh1" and last:
            # diffusers' NaN (see the module docs): the limit of the step is x0_hat.
            assert np.isnan(prev).all(), prev
            prev = x0
        assert np.isfinite(prev).all(), (kind, variant, i)
        steps.append(
            {
                "index": i,
                "t": t,
                "x_t": flat(x),
                "cond": flat(cond),
                "uncond": flat(uncond),
                "noise": flat(noise) if noise is not None else None,
                "prev_sample": flat(prev),
                "pred_x0": flat(x0),
            }
        )
        x = f32(prev)
    return steps


def main():
    cases = []
    for kind, order, variant, prediction, clip_x0, n_steps in [
        ("dpm_solver_pp", 1, "dpmsolver++", "eps", False, 5),
        ("dpm_solver_pp", 2, "dpmsolver++", "v", False, 6),
        ("dpm_solver_pp", 3, "dpmsolver++", "eps", False, 8),
        ("dpm_solver_pp", 3, "dpmsolver++", "v", True, 10),
        ("dpm_solver_pp", 3, "dpmsolver++", "x0", False, 16),
        ("dpm_solver_pp", 2, "sde-dpmsolver++", "eps", False, 6),
        ("dpm_solver_pp", 2, "sde-dpmsolver++", "v", True, 5),
        ("dpm_solver_pp", 3, "sde-dpmsolver++", "x0", False, 7),
        ("unipc", 1, "bh2", "eps", False, 5),
        ("unipc", 2, "bh2", "eps", False, 6),
        ("unipc", 2, "bh2", "v", True, 8),
        ("unipc", 3, "bh2", "eps", False, 10),
        ("unipc", 3, "bh2", "x0", False, 16),
        ("unipc", 2, "bh1", "eps", False, 6),
        ("unipc", 3, "bh1", "v", False, 10),
    ]:
        if kind == "dpm_solver_pp":
            config = {"kind": kind, "steps": n_steps, "spacing": "trailing", "order": order,
                      "sde": variant == "sde-dpmsolver++"}
        else:
            config = {"kind": "unipc", "steps": n_steps, "spacing": "trailing", "order": order,
                      "variant": variant}
        cases.append(
            {
                "name": f"{kind} {variant} order {order} {prediction} clip={clip_x0} {n_steps} steps",
                "config": config,
                "prediction": prediction,
                "clip_x0": clip_x0,
                "guidance": GUIDANCE,
                "steps": chain(kind, order, variant, prediction, clip_x0, n_steps),
            }
        )
    fixture = {
        "generator": "scripts/golden/solvers.py",
        "reference": "diffusers DPMSolverMultistepScheduler and UniPCMultistepScheduler in float64",
        "schedule": {"kind": "linear", "n_steps": T, "start": 1e-4, "end": 0.02},
        "shape": list(SHAPE),
        "cases": cases,
    }
    path = OUT / "solvers_golden.json"
    path.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {path}: {len(cases)} cases")


if __name__ == "__main__":
    main()
