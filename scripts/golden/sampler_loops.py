#!/usr/bin/env python3
"""The reference side of `tests/tests/sampler_parity.rs`: diffusers' pipeline loop for each
deterministic sampler of `ddpm sample`, from a given x_T, on a diffusers `UNet2DModel` folder.

For every `NAME=STEPS` argument it builds the diffusers scheduler that `ddpm sample --sampler ...`
follows (from the folder's `scheduler_config.json`, with the settings of our flags: no clipping
or thresholding, the toolkit's default spacing, `final_sigmas_type="zero"`), and runs the loop of
diffusers' pipelines: x = x_T * init_noise_sigma, then for each timestep
`scale_model_input`, the U-Net, `step`. The images are converted as `DDPMPipeline` does,
round((x / 2 + 0.5).clamp(0, 1) * 255), and written as uint8 NCHW `.npy` files `NAME.npy` in OUT.

A name ending in `+default-clip` (`ddim+default-clip`) builds the same scheduler without
overriding `clip_sample` or `thresholding`: diffusers' own clamping from the folder's config, as
`ddpm sample` without `--no-clip` should give. DDIM then steps with
`use_clipped_model_output=True`, ε re-derived from the clamped x̂_0, as the toolkit's DDIM does
(diffusers' pipeline passes nothing, which keeps the network's ε).

`ddim-quadratic=STEPS` is not a diffusers scheduler: it re-types the DDIM paper's own loop
(ermongroup/ddim, `runners/diffusion.py` with `--skip_type quad`, `functions/denoising.py`
`generalized_steps` with eta = 0), its v-prediction output read as eps = sqrt(abar) v +
sqrt(1 - abar) x.

Requirements: torch (from `cargo xtask setup`), and diffusers and numpy as pinned in
scripts/bench/requirements.txt, which `cargo xtask test` installs.

    python scripts/golden/sampler_loops.py FOLDER X_T.npy OUT NAME=STEPS ...
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
    UNet2DModel,
    UniPCMultistepScheduler,
)


def scheduler(name, config):
    """The scheduler of `name`; with `+default-clip`, without our clamping overrides."""
    default_clip = name.endswith("+default-clip")
    cls, options = scheduler_options(name.removesuffix("+default-clip"))
    if default_clip:
        options = {k: v for k, v in options.items() if k not in ("clip_sample", "thresholding")}
    return cls.from_config(config, **options)


def scheduler_options(name):
    zero = dict(final_sigmas_type="zero")
    multistep = dict(lower_order_final=True, timestep_spacing="trailing", thresholding=False, **zero)
    if name == "ddim":
        return DDIMScheduler, dict(
            clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading", steps_offset=0
        )
    if name.startswith("dpm-solver++"):
        order = int(name.split(":")[1])
        return DPMSolverMultistepScheduler, dict(solver_order=order, algorithm_type="dpmsolver++", **multistep)
    if name.startswith("unipc"):
        _, order, variant = name.split(":")
        return UniPCMultistepScheduler, dict(
            solver_order=int(order), solver_type=variant, predict_x0=True, disable_corrector=[], **multistep
        )
    if name.startswith("euler"):
        karras = name.endswith(":karras")
        return EulerDiscreteScheduler, dict(timestep_spacing="linspace", use_karras_sigmas=karras, **zero)
    if name == "heun":
        return HeunDiscreteScheduler, dict(timestep_spacing="linspace", clip_sample=False)
    if name.startswith("pndm"):
        return PNDMScheduler, dict(
            skip_prk_steps=not name.endswith(":prk"),
            timestep_spacing="leading",
            steps_offset=0,
            set_alpha_to_one=False,
        )
    raise SystemExit(f"unknown sampler {name}")


def diffusers_loop(unet, s, x_t, steps, **step_options):
    s.set_timesteps(steps)
    x = x_t * s.init_noise_sigma
    for t in s.timesteps:
        out = unet(s.scale_model_input(x, t), t).sample
        x = s.step(out, t, x, **step_options).prev_sample
    return x


def ddim_paper_quadratic(unet, config, x_t, steps):
    T = config["num_train_timesteps"]
    s = DDIMScheduler.from_config(config)
    abar = s.alphas_cumprod.to(torch.float32)
    seq = [int(v) for v in np.linspace(0, np.sqrt(T * 0.8), steps) ** 2]
    seq_next = [-1] + seq[:-1]
    x = x_t
    for i, j in zip(reversed(seq), reversed(seq_next)):
        at = abar[i]
        at_next = abar[j] if j >= 0 else torch.tensor(1.0)
        v = unet(x, torch.full((x.shape[0],), i, dtype=torch.int64)).sample
        et = at.sqrt() * v + (1 - at).sqrt() * x
        x0_t = (x - et * (1 - at).sqrt()) / at.sqrt()
        c2 = (1 - at_next).sqrt()
        x = at_next.sqrt() * x0_t + c2 * et
    return x


def main():
    folder, x_t_path, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    torch.set_num_threads(1)
    unet = UNet2DModel.from_pretrained(folder).eval()
    config = json.loads((folder / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction", "the DDIM-paper loop reads v"
    x_t = torch.from_numpy(np.load(x_t_path))
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for arg in sys.argv[4:]:
            name, steps = arg.split("=")
            if name == "ddim-quadratic":
                x = ddim_paper_quadratic(unet, config, x_t, int(steps))
            else:
                clipped_eps = dict(use_clipped_model_output=True) if name == "ddim+default-clip" else {}
                x = diffusers_loop(unet, scheduler(name, config), x_t, int(steps), **clipped_eps)
            images = ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            np.save(out / f"{name.replace(':', '-').replace('+', '-')}.npy", images)
            print(name, steps, images.mean())


if __name__ == "__main__":
    main()
