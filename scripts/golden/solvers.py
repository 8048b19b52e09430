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

A second fixture, sigma_solvers_golden.json, runs the sigma-space schedulers the same way, one
entry per network evaluation (Heun's two per step but the last), with the timestep the network
sees (fractional, unrounded), the input scale 1/sqrt(sigma^2 + 1) and `init_noise_sigma`:

* `EulerDiscreteScheduler` (linspace, leading, trailing, `use_karras_sigmas`, explicit timesteps);
* `HeunDiscreteScheduler` (linspace, trailing with `clip_sample`, `use_karras_sigmas`);
* `EulerAncestralDiscreteScheduler` (linspace, leading, trailing), its noise passed in through
  the module's `randn_tensor`.

A third, pndm_golden.json, runs `PNDMScheduler` with `skip_prk_steps=True` (PLMS, as every diffusers
pipeline that takes a PNDM scheduler sets it; none of diffusers 0.42's DDPM pipelines takes one),
leading and trailing spacing, eps and v: n steps are n + 1 network evaluations; and with its
default `skip_prk_steps=False` (3 Runge-Kutta steps of 4 evaluations first: n + 9). It returns no
x0_hat, so only prev_sample is stored.

These modules compute their schedule with numpy as well, so their `np.float32` is made float64
too and the betas are passed as `trained_betas`: everything, timesteps and sigmas included, is
float64.

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
import diffusers.schedulers.scheduling_euler_discrete as euler_module
import diffusers.schedulers.scheduling_heun_discrete as heun_module
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_module
import diffusers.schedulers.scheduling_pndm as pndm_module
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

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


class _Float64Numpy:
    """`numpy` with `float32` meaning float64."""

    float32 = np.float64

    def __getattr__(self, name):
        return getattr(np, name)


dpm_module.torch = _Float64Torch()
unipc_module.torch = _Float64Torch()
for module in (euler_module, heun_module, euler_a_module, pndm_module):
    module.torch = _Float64Torch()
    module.np = _Float64Numpy()
# Euler ancestral's noise: what the chain stores for the step.
ANCESTRAL_NOISE = {}
euler_a_module.randn_tensor = lambda shape, **kwargs: torch.from_numpy(ANCESTRAL_NOISE["next"])


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


def make_sigma(kind, spacing, prediction, clip_x0):
    common = dict(
        num_train_timesteps=T,
        trained_betas=BETAS,
        prediction_type=PREDICTION[prediction],
        timestep_spacing="linspace" if spacing in ("karras", "list") else spacing,
    )
    if kind == "euler":
        return EulerDiscreteScheduler(use_karras_sigmas=spacing == "karras", final_sigmas_type="zero", **common)
    if kind == "heun":
        return HeunDiscreteScheduler(use_karras_sigmas=spacing == "karras", clip_sample=clip_x0, **common)
    return EulerAncestralDiscreteScheduler(**common)


def sigma_chain(kind, spacing, prediction, clip_x0, n_steps, listed):
    s = make_sigma(kind, spacing, prediction, clip_x0)
    if listed:
        s.set_timesteps(timesteps=listed)
    else:
        s.set_timesteps(n_steps)
    assert s.timesteps.dtype == torch.float64 and s.sigmas.dtype == torch.float64
    init = float(s.init_noise_sigma)
    x = f32(randn() * init)
    evals = []
    for k, t in enumerate(s.timesteps):
        scaled = s.scale_model_input(torch.from_numpy(x), t).numpy()
        scale = float(np.mean(scaled / x))
        cond, uncond = randn(), randn()
        guided = uncond + GUIDANCE * (cond - uncond)
        last = k + 1 == len(s.timesteps)
        noise = randn() if kind == "euler_ancestral" and not last else None
        ANCESTRAL_NOISE["next"] = noise if noise is not None else np.zeros(SHAPE)
        r = s.step(torch.from_numpy(guided), t, torch.from_numpy(x))
        prev = r.prev_sample.numpy()
        assert np.isfinite(prev).all(), (kind, spacing, k)
        evals.append(
            {
                "index": k,
                "t": float(t),
                "input_scale": scale,
                "x_t": flat(x),
                "cond": flat(cond),
                "uncond": flat(uncond),
                "noise": flat(noise) if noise is not None else None,
                "prev_sample": flat(prev),
                "pred_x0": flat(r.pred_original_sample.numpy()),
            }
        )
        x = f32(prev)
    return init, evals


def sigma_main():
    cases = []
    for kind, spacing, prediction, clip_x0, n_steps, listed in [
        ("euler", "linspace", "eps", False, 6, None),
        ("euler", "karras", "v", False, 7, None),
        ("euler", "leading", "x0", False, 5, None),
        ("euler", "trailing", "eps", False, 5, None),
        ("euler", "list", "v", False, 4, [999, 700, 400, 100]),
        ("heun", "linspace", "eps", False, 5, None),
        ("heun", "karras", "v", False, 6, None),
        ("heun", "trailing", "x0", True, 4, None),
        ("euler_ancestral", "linspace", "eps", False, 6, None),
        ("euler_ancestral", "leading", "v", False, 5, None),
        ("euler_ancestral", "trailing", "eps", False, 4, None),
    ]:
        config = {"kind": kind, "steps": n_steps, "spacing": "linspace" if listed else spacing}
        if listed:
            config["timesteps"] = listed
        init, evals = sigma_chain(kind, spacing, prediction, clip_x0, n_steps, listed)
        cases.append(
            {
                "name": f"{kind} {spacing} {prediction} clip={clip_x0} {n_steps} steps",
                "config": config,
                "prediction": prediction,
                "clip_x0": clip_x0,
                "guidance": GUIDANCE,
                "init_noise_sigma": init,
                "steps": evals,
            }
        )
    fixture = {
        "generator": "scripts/golden/solvers.py",
        "reference": "diffusers EulerDiscreteScheduler, HeunDiscreteScheduler and "
        "EulerAncestralDiscreteScheduler in float64",
        "schedule": {"kind": "linear", "n_steps": T, "start": 1e-4, "end": 0.02},
        "shape": list(SHAPE),
        "cases": cases,
    }
    path = OUT / "sigma_solvers_golden.json"
    path.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {path}: {len(cases)} cases")


def pndm_main():
    cases = []
    for spacing, prediction, n_steps, prk in [
        ("leading", "eps", 6, False),
        ("leading", "v", 5, False),
        ("trailing", "eps", 4, False),
        ("leading", "eps", 2, False),
        ("leading", "eps", 6, True),
        ("leading", "v", 5, True),
        ("trailing", "eps", 4, True),
        ("leading", "eps", 9, True),
    ]:
        s = PNDMScheduler(
            num_train_timesteps=T,
            trained_betas=BETAS,
            skip_prk_steps=not prk,
            prediction_type=PREDICTION[prediction],
            timestep_spacing=spacing,
        )
        s.set_timesteps(n_steps)
        assert s.alphas_cumprod.dtype == torch.float64
        x = randn()
        evals = []
        for k, t in enumerate(s.timesteps):
            cond, uncond = randn(), randn()
            guided = uncond + GUIDANCE * (cond - uncond)
            prev = s.step(torch.from_numpy(guided), int(t), torch.from_numpy(x)).prev_sample.numpy()
            assert np.isfinite(prev).all(), (spacing, k)
            evals.append(
                {
                    "index": k,
                    "t": int(t),
                    "x_t": flat(x),
                    "cond": flat(cond),
                    "uncond": flat(uncond),
                    "prev_sample": flat(prev),
                }
            )
            x = f32(prev)
        cases.append(
            {
                "name": f"pndm {spacing} {prediction} {n_steps} steps prk={prk}",
                "config": {"kind": "pndm", "steps": n_steps, "spacing": spacing, "prk": prk},
                "prediction": prediction,
                "guidance": GUIDANCE,
                "steps": evals,
            }
        )
    fixture = {
        "generator": "scripts/golden/solvers.py",
        "reference": "diffusers PNDMScheduler in float64, skip_prk_steps True and False",
        "schedule": {"kind": "linear", "n_steps": T, "start": 1e-4, "end": 0.02},
        "shape": list(SHAPE),
        "cases": cases,
    }
    path = OUT / "pndm_golden.json"
    path.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {path}: {len(cases)} cases")


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
    sigma_main()
    pndm_main()
