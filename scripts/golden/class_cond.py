#!/usr/bin/env python3
"""Golden fixtures for class conditioning and classifier-free guidance, made by diffusers itself.

1. A class-conditional diffusers model folder, `crates/sample/tests/fixtures/diffusers/class_cond/`:
   a tiny `UNet2DModel(num_class_embeds=4)` with the DDPM paper's block structure (attention at
   the second level), saved with `save_pretrained`, and a `scheduler_config.json` beside it
   (DDPMScheduler, linear betas, T = 1000). Its 4 class embeddings are 3 classes and, last,
   the null label of classifier-free guidance (the toolkit's convention, and DiT's). Every
   parameter is perturbed away from diffusers' init (the class embeddings too).

   `class_cond_io.safetensors` beside it holds fixed inputs `x` [4, 3, 8, 8], `timesteps`
   [3, 250, 700, 999] and `class_labels` [0, 1, 2, 3] (3 = null), diffusers' eval-mode output
   `out` = `model(x, timesteps, class_labels)`, `out_null` with every label 3, and
   `guided_w3`: the guided noise eps_u + 3 (eps_c - eps_u) for labels [2, 0, 1, 2], both halves
   in one batched forward (`torch.cat([x, x])`, labels then null labels), as diffusers'
   pipelines run classifier-free guidance (`DiTPipeline`: `noise_pred = uncond + guidance_scale
   * (cond - uncond)`).

2. `crates/sample/tests/fixtures/guidance_golden.json`: guided sampler steps. For each case, fixed
   eps_c (the conditional model output), eps_u (the unconditional one), x_t and noise; the guided
   output eps_u + W (eps_c - eps_u) and diffusers' scheduler step on it, in float64 (the tables
   of `sampler.py`): one DDPM step (`DDPMScheduler`, its noise from a seeded generator and stored)
   and one DDIM step (`DDIMScheduler`, 50 leading steps), for ε- and v-prediction (guidance
   applies to the model output whatever it predicts, as diffusers does), with W = 3, 1 and 0.

Run from the repository root:

    .venv/bin/python scripts/golden/class_cond.py

`scripts/golden/diffusers_folders.py --verify-export DIR IO` checks an export of a
class-conditional model too (it passes IO's `class_labels` when there are some).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import sampler  # noqa: E402  (the float64 scheduler machinery of the sampler fixtures)
from tiny_unet import TINY as BASE  # noqa: E402

ROOT = HERE.parents[1]
DIFFUSERS = ROOT / "crates" / "sample" / "tests" / "fixtures" / "diffusers"
GOLDEN = ROOT / "crates" / "sample" / "tests" / "fixtures" / "guidance_golden.json"

N_CLASSES = 3
NULL = N_CLASSES
TINY = dict(BASE, num_class_embeds=N_CLASSES + 1)


def guide(eps_c, eps_u, w):
    """Classifier-free guidance as diffusers' pipelines write it."""
    return eps_u + w * (eps_c - eps_u)


def class_cond_model():
    torch.manual_seed(30)
    model = UNet2DModel(**TINY)
    assert model.class_embedding.weight.shape == (N_CLASSES + 1, 32)
    gen = torch.Generator().manual_seed(31)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif name == "class_embedding.weight":
                p.copy_(noise)
            else:
                p.add_(0.02 * noise)
    return model.eval()


def write_model():
    model = class_cond_model()
    folder = DIFFUSERS / "class_cond"
    model.save_pretrained(folder, safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(folder)
    gen = torch.Generator().manual_seed(32)
    x = torch.randn(4, 3, 8, 8, generator=gen)
    t = torch.tensor([3, 250, 700, 999], dtype=torch.int64)
    labels = torch.tensor([0, 1, 2, NULL], dtype=torch.int64)
    guided_labels = torch.tensor([2, 0, 1, 2], dtype=torch.int64)
    with torch.no_grad():
        out = model(x, t, class_labels=labels).sample
        out_null = model(x, t, class_labels=torch.full((4,), NULL)).sample
        # One batched forward for both halves, as diffusers' pipelines do it.
        both = model(
            torch.cat([x, x]),
            torch.cat([t, t]),
            class_labels=torch.cat([guided_labels, torch.full((4,), NULL)]),
        ).sample
        eps_c, eps_u = both.chunk(2)
        guided = guide(eps_c, eps_u, 3.0)
        # The same by two separate forwards, to 1e-6: batching does not change the network.
        apart = guide(model(x, t, class_labels=guided_labels).sample, out_null, 3.0)
    err = (guided - apart).abs().max().item()
    assert err < 1e-5, err
    # Labels matter, and the null label is a label like the others.
    assert (out - out_null).abs().max() > 1e-2
    save_file(
        {
            "x": x,
            "timesteps": t,
            "class_labels": labels,
            "out": out.contiguous(),
            "out_null": out_null.contiguous(),
            "guided_labels": guided_labels,
            "guided_w3": guided.contiguous(),
        },
        DIFFUSERS / "class_cond_io.safetensors",
    )
    n = sum(p.numel() for p in model.parameters())
    print(f"class_cond: {n} parameters, |out| max {out.abs().max():.3f}, batched vs apart {err:.1e}")


def write_guided_steps():
    rng = np.random.default_rng(20250214)
    randn = lambda: sampler.f32(rng.standard_normal(sampler.SHAPE))  # noqa: E731
    cases = []
    for kind, t_or_index, prediction, w, variance_or_eta in [
        ("ddpm", 500, "eps", 3.0, "fixed_small"),
        ("ddpm", 700, "v", 3.0, "fixed_large"),
        ("ddpm", 120, "eps", 1.0, "fixed_large"),
        ("ddim", 10, "eps", 3.0, 0.0),
        ("ddim", 25, "eps", 0.0, 0.5),
        ("ddim", 30, "v", 3.0, 0.0),
    ]:
        x, eps_c, eps_u = randn(), randn(), randn()
        guided = guide(eps_c, eps_u, w)
        if kind == "ddpm":
            t = t_or_index
            prev, x0, noise = sampler.diffusers_ddpm(prediction, False, variance_or_eta, t, guided, x, None)
            prev_n, x0_n = sampler.np_ddpm(prediction, False, variance_or_eta, t, guided, x, noise)
            config = {"kind": "ddpm", "variance": variance_or_eta}
            index = sampler.T - 1 - t
        else:
            index, eta = t_or_index, variance_or_eta
            noise = randn()
            timesteps = list(range(980, -1, -20))
            t, t_prev = timesteps[index], timesteps[index + 1]
            prev, x0, _ = sampler.diffusers_ddim(prediction, False, eta, 50, t, guided, x, noise)
            prev_n, x0_n = sampler.np_ddim(prediction, False, eta, t, t_prev, guided, x, noise)
            config = {"kind": "ddim", "steps": 50, "eta": eta, "spacing": "leading"}
            if eta == 0:
                noise = None
        sampler.agree(f"{kind} t={t}", prev_n, prev)
        sampler.agree(f"{kind} t={t} x0", x0_n, x0)
        cases.append(
            {
                "name": f"{kind} {prediction} W={w} t={t}",
                "config": config,
                "prediction": prediction,
                "guidance": w,
                "index": index,
                "t": t,
                "x_t": sampler.flat(x),
                "eps_c": sampler.flat(eps_c),
                "eps_u": sampler.flat(eps_u),
                "noise": None if noise is None else sampler.flat(noise),
                "guided": sampler.flat(guided),
                "prev_sample": sampler.flat(prev),
                "pred_x0": sampler.flat(x0),
            }
        )
    fixture = {
        "generator": "scripts/golden/class_cond.py",
        "reference": "eps_u + W (eps_c - eps_u) as diffusers' pipelines guide, then diffusers "
        "DDPMScheduler / DDIMScheduler in float64, cross-checked against numpy closed forms",
        "schedule": {"kind": "linear", "n_steps": sampler.T, "start": 1e-4, "end": 0.02},
        "shape": list(sampler.SHAPE),
        "cases": cases,
    }
    GOLDEN.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {GOLDEN}: {len(cases)} cases")


if __name__ == "__main__":
    write_model()
    write_guided_steps()
