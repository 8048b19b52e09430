#!/usr/bin/env python3
"""Checks `ddpm sample` end to end against diffusers on a trained checkpoint: the same EMA network,
the same x_T, the sampler the quality race uses (DDIM, 50 of T steps, eta = 0, leading spacing,
x_0 clipped; by default on the fashion-mnist preset's T = 300, which the golden sampler fixtures,
at T = 1000, do not cover), and also ancestral DDPM's deterministic part.

1. `ddpm sample --checkpoint CKPT --sampler ddim --steps 50 --spacing leading --eta 0 -n N
   --batch N --seed S --npz …` (the Rust sampler; x_T is batch 0's generator seeded with S, which
   draws what `torch.Generator().manual_seed(S)` draws);
2. the PyTorch port of the SimpleUnet (scripts/golden/model_simple.py) with the checkpoint's
   `ema.safetensors` (strict), and diffusers' `DDIMScheduler` (float64 tables, `clip_sample=True`,
   `set_alpha_to_one=True`, `use_clipped_model_output=True`), from the same x_T;
3. the quality race's own PyTorch sampler (scripts/quality/train_peer.py) from the same x_T.

It prints the largest difference of the uint8 images and of the float x_0 estimates, and fails
above --tolerance (uint8 levels). Run from the repository root:

    .venv/bin/python scripts/quality/ddim_check.py --checkpoint runs/q/checkpoints/step-00002811
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "golden"))
sys.path.insert(0, str(HERE))
from model_simple import SimpleUnet  # noqa: E402
import train_peer  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint directory (step-N)")
    parser.add_argument("--ddpm", default="target/release/ddpm")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tolerance", type=int, default=2, help="uint8 levels")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = Path(args.checkpoint)
    config = json.loads((ckpt / "state.json").read_text())["config"]
    model_config = dict(config["model"])
    assert model_config.pop("arch") == "simple", "a SimpleUnet checkpoint"
    assert config["objective"]["prediction"] == "eps"
    schedule = config["schedule"]
    T = schedule["n_steps"]

    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "rust.npz"
        subprocess.run(
            [args.ddpm, "sample", "--checkpoint", str(ckpt), "--sampler", "ddim", "--steps", str(args.steps),
             "--spacing", "leading", "--eta", "0", "-n", str(args.n), "--batch", str(args.n),
             "--seed", str(args.seed), "--npz", str(npz), "--device", "cpu", "--threads", str(args.threads)],
            check=True,
        )
        rust = np.load(npz)["arr_0"].astype(np.int64)

    model = SimpleUnet(model_config, exact=False)
    model.load_state_dict(load_file(ckpt / "ema.safetensors"), strict=True)
    model.eval()
    shape = (args.n, model_config["in_channels"], model_config["image_size"], model_config["image_size"])
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))

    betas = train_peer.betas_of(schedule)
    sched = DDIMScheduler(
        num_train_timesteps=T, trained_betas=betas.tolist(), clip_sample=True, set_alpha_to_one=True,
        steps_offset=0, timestep_spacing="leading", prediction_type="epsilon",
    )
    sched.alphas_cumprod = torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float64)
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    sched.set_timesteps(args.steps)
    ts = [int(t) for t in sched.timesteps]
    assert ts == train_peer.timesteps(T, args.steps, "leading"), ts
    x = x_T.double()
    with torch.no_grad():
        for t in ts:
            eps = model(x.float(), torch.full((args.n,), t, dtype=torch.int64)).double()
            x = sched.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    diffusers_u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy().astype(np.int64)

    # The race's peer sampler, which draws x_T from a generator seeded the same way.
    peer_u8 = train_peer.sample(
        model, train_peer.Tables(betas), {"kind": "ddim", "steps": args.steps, "eta": 0.0, "spacing": "leading"},
        "eps", args.n, args.n, args.seed, shape[1:],
    ).astype(np.int64)

    report = {
        "T": T,
        "timesteps": f"{ts[0]}, {ts[1]}, ..., {ts[-1]}",
        "rust_vs_diffusers_max_u8": int(np.abs(rust - diffusers_u8).max()),
        "rust_vs_diffusers_mean_u8": float(np.abs(rust - diffusers_u8).mean()),
        "peer_vs_diffusers_max_u8": int(np.abs(peer_u8 - diffusers_u8).max()),
        "pixels_differing_rust": float((rust != diffusers_u8).mean()),
        "mean_pixel": {"rust": float(rust.mean()), "diffusers": float(diffusers_u8.mean())},
    }
    print(json.dumps(report, indent=1))
    worst = max(report["rust_vs_diffusers_max_u8"], report["peer_vs_diffusers_max_u8"])
    if worst > args.tolerance:
        sys.exit(f"the samplers disagree by {worst} uint8 levels (tolerance {args.tolerance})")


if __name__ == "__main__":
    main()
