#!/usr/bin/env python3
"""Does the EMA network sample worse because its BatchNorm statistics are the live network's?

The trainer (and train_peer.py) average the weights and copy the BatchNorm buffers: the EMA
network then normalizes with running statistics of the *live* network's activations. This
recomputes them for the EMA weights (train-mode passes over training batches with t ~ U{0..T-1},
as in training, cumulative averages: `momentum=None`), then samples, and writes uint8 `.npz`
files for `ddpm eval fid` from the checkpoint's EMA network as saved (`saved`) and with its
statistics recomputed (`recomputed`).

    .venv/bin/python scripts/quality/ema_batchnorm.py --checkpoint CKPT --data data/fashion-mnist \\
        --n 500 --out target/quality/ema-bn
"""

import argparse
import json
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
    parser.add_argument("--batches", type=int, default=200, help="batches of 64 for the statistics")
    parser.add_argument("--sampler", default='{"kind": "ddim", "steps": 50, "eta": 0.0, "spacing": "leading"}')
    parser.add_argument("--name", default="ddim50")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = Path(args.checkpoint)
    config = json.loads((ckpt / "state.json").read_text())["config"]
    model_config = dict(config["model"])
    model_config.pop("arch")
    model = SimpleUnet(model_config, exact=False)
    model.load_state_dict(load_file(ckpt / "ema.safetensors"), strict=True)
    tables = train_peer.Tables(train_peer.betas_of(config["schedule"]))
    images = train_peer.load_train_images(config, args.data)
    shape = tuple(images.shape[1:])
    sampler = json.loads(args.sampler)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {}
    for variant in ("saved", "recomputed"):
        if variant == "recomputed":
            gen = torch.Generator().manual_seed(args.seed + 1)
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = None
            model.train()
            with torch.no_grad():
                for _, x0 in zip(range(args.batches), train_peer.batches(images, 64, 0.5, gen)):
                    t = torch.randint(0, tables.T, (64,), generator=gen)
                    noise = torch.randn(x0.shape, generator=gen)
                    x_t = tables.sqrt_abar[t].view(-1, 1, 1, 1) * x0 + tables.sqrt_one_minus_abar[t].view(-1, 1, 1, 1) * noise
                    model(x_t, t)
        model.eval()
        pixels = train_peer.sample(
            model, tables, sampler, config["objective"]["prediction"], args.n, 250, args.seed, shape
        )
        path = out / f"{args.name}-{variant}.npz"
        np.savez(path, arr_0=pixels)
        report[variant] = {"npz": str(path), "mean_pixel": float(pixels.mean())}
        print(f"{variant}: {path}", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
