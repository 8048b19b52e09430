#!/usr/bin/env python3
"""The diffusers side of `ddpm eval sweep` (issue #27): the same (sampler, NFE, seed) pairs run
with diffusers' schedulers on a diffusers folder (our `ddpm export` of the swept checkpoint),
from the x_T that `ddpm eval sweep` draws for the same seed, scored by the same
`ddpm eval fid --samples` against the same reference.

x_T: `ddpm` draws batch b of a request seeded with s from a generator seeded with
batch_seed(s, b) = s + b * 0x9E3779B97F4A7C15 (mod 2^64), which draws what libtorch's CPU
generator draws after torch.manual_seed of that seed (`crates/sample/src/sampler.rs`), at the
full batch size. So with the sweep's --sample-batch-size (250 by default) both sides start
every image from the same x_T.

Each scheduler is the one `scripts/golden/sampler_loops.py` builds for the sampler of that name,
the configuration `tests/tests/sampler_parity.rs` checks against our `--no-clip` samplers to one
u8 level: diffusers' defaults for clipping (none for DPM-Solver++ and UniPC), our spacing,
`final_sigmas_type="zero"`. Images/s counts the sampling alone (the pipeline loop on the batches,
not the scoring), on --threads threads, as the sweep's does.

Writes OUT/diffusers-sweep.json (every pair, rewritten after each: a second run keeps the pairs
already scored) and OUT/diffusers-sweep.md.

    python scripts/quality/sweep_diffusers.py --folder EXPORT --ref fm-test.npz \
        --samplers dpm-solver++:3,unipc:2:bh2 --nfe 10,20 --seeds 0,1,2 --n 1000 --out OUT
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "golden"))
from sampler_loops import diffusers_loop, scheduler  # noqa: E402

GOLDEN = 0x9E3779B97F4A7C15


def batch_seed(seed, batch):
    return (seed + batch * GOLDEN) % 2**64


def x_t_of(seed, n, batch_size, shape):
    """The x_T of `ddpm`'s request of n images seeded with `seed`, in batches of batch_size."""
    rows = []
    for b in range((n + batch_size - 1) // batch_size):
        torch.manual_seed(batch_seed(seed, b))
        draw = torch.randn((batch_size, *shape))
        rows.append(draw[: min(batch_size, n - b * batch_size)])
    return torch.cat(rows)


def draw(unet, config, name, nfe, x_t, batch_size):
    """Images (uint8 NHWC) of sampler `name` at `nfe` steps from x_T, and the seconds taken."""
    images = []
    start = time.perf_counter()
    with torch.no_grad():
        for batch in x_t.split(batch_size):
            x = diffusers_loop(unet, scheduler(name, config), batch, nfe)
            images.append(((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8))
    seconds = time.perf_counter() - start
    return torch.cat(images).permute(0, 2, 3, 1).numpy(), seconds


def fid_of(ddpm, npz, ref, threads, out_json):
    subprocess.run(
        [ddpm, "eval", "fid", "--samples", str(npz), "--ref", str(ref), "--threads", str(threads),
         "--out", str(out_json)],
        check=True,
    )
    return json.loads(out_json.read_text())["fid"]


def markdown(rows):
    lines = ["| sampler (diffusers) | NFE | FID (mean ± sd over seeds) | seeds | images/s |",
             "| --- | --- | --- | --- | --- |"]
    keys = []
    for r in rows:
        if (r["sampler"], r["nfe"]) not in keys:
            keys.append((r["sampler"], r["nfe"]))
    for sampler, nfe in keys:
        group = [r for r in rows if r["sampler"] == sampler and r["nfe"] == nfe]
        fids = [r["fid"] for r in group]
        sd = statistics.stdev(fids) if len(fids) > 1 else 0.0
        speed = statistics.mean(r["images_per_s"] for r in group)
        lines.append(f"| {sampler} | {nfe} | {statistics.mean(fids):.2f} ± {sd:.2f} | {len(fids)} | {speed:.1f} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", type=Path, required=True, help="a diffusers folder (ddpm export)")
    p.add_argument("--ref", type=Path, required=True, help="the sweep's --ref")
    p.add_argument("--samplers", required=True, help="sampler_loops.py names, comma-separated")
    p.add_argument("--nfe", default="10,20")
    p.add_argument("--seeds", default="0")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=250, help="the sweep's --sample-batch-size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ddpm", default="target/release/ddpm")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers import UNet2DModel

    # A pipeline folder (unet/, scheduler/) or one model folder with its scheduler_config.json.
    pipeline = (args.folder / "unet").is_dir()
    unet = UNet2DModel.from_pretrained(args.folder / "unet" if pipeline else args.folder).eval()
    scheduler_dir = args.folder / "scheduler" if pipeline else args.folder
    config = json.loads((scheduler_dir / "scheduler_config.json").read_text())
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    args.out.mkdir(parents=True, exist_ok=True)
    table_path = args.out / "diffusers-sweep.json"
    rows = json.loads(table_path.read_text())["rows"] if table_path.exists() else []
    for seed in [int(s) for s in args.seeds.split(",")]:
        x_t = x_t_of(seed, args.n, args.batch_size, shape)
        for name in args.samplers.split(","):
            for nfe in [int(k) for k in args.nfe.split(",")]:
                if any(r["sampler"] == name and r["nfe"] == nfe and r["seed"] == seed for r in rows):
                    continue
                print(f"{name} at NFE {nfe}, seed {seed}", flush=True)
                images, seconds = draw(unet, config, name, nfe, x_t, args.batch_size)
                tag = f"{name.replace(':', '-')}-nfe{nfe}-seed{seed}"
                npz = args.out / f"{tag}.npz"
                np.savez(npz, arr_0=images)
                fid = fid_of(args.ddpm, npz, args.ref, args.threads, args.out / f"{tag}.json")
                rows.append(dict(sampler=name, nfe=nfe, seed=seed, fid=fid,
                                 images_per_s=args.n / seconds, folder=str(args.folder),
                                 n=args.n, batch_size=args.batch_size, threads=args.threads))
                print(f"FID {fid:.4f}, {args.n / seconds:.2f} images/s", flush=True)
                table_path.write_text(json.dumps({"rows": rows}, indent=1))
                (args.out / "diffusers-sweep.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
