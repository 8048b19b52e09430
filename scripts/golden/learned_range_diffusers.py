#!/usr/bin/env python3
"""A diffusers folder with a learned variance, made by diffusers itself, and the DDPM steps of
`DDPMScheduler(variance_type="learned_range")` on it: what `sample::Pipeline` must load and
step to.

`learned_range/` is a tiny `UNet2DModel` (`tiny_unet.py`'s TINY) with
out_channels = 2 * in_channels (the prediction, then v in [-1, 1], Improved DDPM Eq. 15), saved
with `save_pretrained`, and a `scheduler_config.json` (linear betas, T = 50, epsilon,
`variance_type: learned_range`, clip_sample true).

`learned_range_steps.safetensors` holds, for fixed inputs `x_t` [2, 3, 8, 8] and each case
(the full chain at t = 49, 20 and 0; and the chain respaced to 10 steps, diffusers'
`set_timesteps(10)`, at its t = 45, 25 and 5, whose betas are 1 - ab_t / ab_prev): the model's
eval-mode output `out_<case>` and the noise `noise_<case>` that `DDPMScheduler.step` drew (from a
seeded generator, drawn again here with the same seed), and its `prev_<case>`. The Rust test
passes that noise and must give `prev_<case>` to 1e-5.

Run from the repository root:

    .venv/bin/python scripts/golden/learned_range_diffusers.py

Requirements: torch, diffusers, safetensors (the venv's).
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_unet import TINY as BASE  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "crates" / "sample" / "tests" / "fixtures" / "diffusers"

TINY = dict(BASE, out_channels=6)

SCHEDULER = dict(
    num_train_timesteps=50,
    beta_start=0.0001,
    beta_end=0.2,
    beta_schedule="linear",
    variance_type="learned_range",
    clip_sample=True,
    prediction_type="epsilon",
)


def main():
    torch.manual_seed(30)
    unet = UNet2DModel(**TINY).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = OUT / "learned_range"
    shutil.rmtree(folder, ignore_errors=True)
    unet.save_pretrained(folder)
    DDPMScheduler(**SCHEDULER).save_pretrained(folder)
    json.loads((folder / "scheduler_config.json").read_text())  # written as diffusers writes it

    x_t = torch.randn(2, 3, 8, 8)
    tensors = {"x_t": x_t}
    cases = {"full": (None, [49, 20, 0]), "respaced": (10, [45, 25, 5])}
    for name, (n_steps, ts) in cases.items():
        scheduler = DDPMScheduler.from_pretrained(folder)
        if n_steps is not None:
            scheduler.set_timesteps(n_steps)
            assert all(t in scheduler.timesteps.tolist() for t in ts), scheduler.timesteps
        for t in ts:
            with torch.no_grad():
                out = unet(x_t, t).sample
            seed = 1000 + t
            step = scheduler.step(out, t, x_t, generator=torch.Generator().manual_seed(seed))
            noise = randn_tensor(x_t.shape, generator=torch.Generator().manual_seed(seed))
            key = f"{name}_{t}"
            tensors[f"out_{key}"] = out
            tensors[f"noise_{key}"] = noise
            tensors[f"prev_{key}"] = step.prev_sample
            tensors[f"x0_{key}"] = step.pred_original_sample
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / "learned_range_steps.safetensors")
    print("wrote", folder, "and", OUT / "learned_range_steps.safetensors")


if __name__ == "__main__":
    main()
