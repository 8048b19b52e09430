#!/usr/bin/env python3
"""How much of DDIM's poor FID on a T = 300 linear schedule comes from starting at N(0, I)?

On the fashion-mnist preset's schedule (linear beta 1e-4 -> 0.02, T = 300), abar at the first
sampling step is about 0.05, so q(x_T | x_0) still carries sqrt(abar_T) ~ 0.22 of the image: the
true x_T has the data's mean (mostly background, -1) scaled by 0.22, not 0. Samplers that start
from N(0, I) start from the wrong distribution; the stochastic ancestral chain can partly correct
that on the way, the deterministic DDIM ODE cannot.

This draws EMA samples of a checkpoint (the PyTorch port of the SimpleUnet, the race's sampler
code in train_peer.py) from two starts and writes uint8 `.npz` files for `ddpm eval fid`:

* `noise`: x_T ~ N(0, I), what every sampler does;
* `matched`: x_T ~ N(sqrt(abar_T) mu, abar_T s^2 + (1 - abar_T)), mu and s^2 the per-pixel mean
  and variance of the (flip-augmented) training images, a Gaussian fit of the true q(x_T) that
  uses no particular image.

    .venv/bin/python scripts/quality/prior_mismatch.py --checkpoint CKPT --data data/fashion-mnist \\
        --n 500 --out target/quality/prior
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "golden"))
sys.path.insert(0, str(HERE))
from model_simple import SimpleUnet  # noqa: E402
import train_peer  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samplers", default="ddim50,ddim50-trailing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = Path(args.checkpoint)
    config = json.loads((ckpt / "state.json").read_text())["config"]
    model_config = dict(config["model"])
    model_config.pop("arch")
    model = SimpleUnet(model_config, exact=False)
    model.load_state_dict(load_file(ckpt / "ema.safetensors"), strict=True)
    model.eval()
    tables = train_peer.Tables(train_peer.betas_of(config["schedule"]))
    images = train_peer.load_train_images(config, args.data).float() / 127.5 - 1.0
    both = torch.cat([images, images.flip(-1)])
    mu, var = both.mean(0), both.var(0)
    shape = tuple(images.shape[1:])
    samplers = {
        "ddim50": {"kind": "ddim", "steps": 50, "eta": 0.0, "spacing": "leading"},
        "ddim50-trailing": {"kind": "ddim", "steps": 50, "eta": 0.0, "spacing": "trailing"},
        "ddpm": {"kind": "ddpm", "variance": "fixed_small"},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"data_mean_pixel": float(mu.mean())}
    for name in args.samplers.split(","):
        sampler = samplers[name]
        if sampler["kind"] == "ddim":
            t_first = train_peer.timesteps(tables.T, sampler["steps"], sampler["spacing"])[0]
        else:
            t_first = tables.T - 1
        abar = tables.abar[t_first]
        mean, std = math.sqrt(abar) * mu, (abar * var + (1 - abar)).sqrt()

        def matched(gen, rows, mean=mean, std=std):
            return mean + std * torch.randn((rows, *shape), generator=gen)

        report[name] = {"t_first": t_first, "abar": abar, "sqrt_abar": math.sqrt(abar)}
        for start, x_T in [("noise", None), ("matched", matched)]:
            pixels = train_peer.sample(
                model, tables, sampler, config["objective"]["prediction"], args.n, 250, args.seed, shape, x_T
            )
            path = out / f"{name}-{start}.npz"
            np.savez(path, arr_0=pixels)
            report[name][start] = {"npz": str(path), "mean_pixel": float(pixels.mean())}
            print(f"{name} from {start}: {path}", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
