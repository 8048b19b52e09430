#!/usr/bin/env python3
"""The PyTorch peer of `cargo xtask quality`: the recipe of a `ddpm train` run, in plain PyTorch.

It reads the run's resolved configuration (`<run>/config.json`, which `ddpm train` writes before
its first step) and trains the same thing on the same data, on the same number of threads, until
SIGTERM or SIGINT (the xtask sends SIGTERM when the wall-clock budget is spent, as it does to
`ddpm train`), or for --minutes / --max-steps. Then it samples with the EMA weights and writes
uint8 NHWC `.npz` files (`arr_0`) that `ddpm eval fid --samples` scores with the Rust FID code.

The recipe, each part written here independently of the Rust code, from its definition:

* data: Fashion-MNIST or MNIST (`dataset.kind`), the training split read from the IDX `.gz`
  files, scaled with x / 127.5 - 1, each image flipped left-right with probability
  `transform.flip_p`; a fresh permutation each epoch, incomplete last batch dropped;
* network: the paper's U-Net (`model.arch = "ddpm"`), scripts/bench/unet_torch.py under
  diffusers' names (checked against diffusers there), with the official initialisation (fan-avg
  uniform variance scaling, zero biases, a 1e-10 scale for each residual branch's last conv, the
  attention output and conv_out), NCHW as the Rust side on the CPU; or
  the notebook's SimpleUnet (`model.arch = "simple"`), the independent PyTorch port in
  scripts/golden/model_simple.py with PyTorch's symmetric padding (equal to Keras' 'same' at the
  even sizes the network sees) and its first up block's cat([x, x]) convolved as one convolution
  with the kernel halves summed (the same function, as the Rust model computes it);
  `glorot_uniform` kernels and zero biases (Keras' defaults, which the Rust model reproduces);
  BatchNorm with the config's eps and momentum; channels-last on the CPU, as the Rust side;
* schedule: linear or cosine betas (Ho et al. 2020; Nichol & Dhariwal 2021, Eq. 17 with the
  max-beta cap) in float64, the tables then cast to float32;
* loss: t ~ U{0, ..., T-1}, eps ~ N(0, I), x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, the
  network's ε, x_0 or v target, L1 or L2, the mean over all elements;
* optimizer: torch.optim.Adam(fused=True) (the kernel the Rust side calls) or AdamW with the
  config's betas, eps and weight decay; the learning rate lr * (n + 1) / warmup_steps for the
  n-th update below warmup_steps, then constant (or cosine to min_lr over the run's planned
  steps); gradients clipped to global norm grad_clip (`clip_grad_norm_`); a step whose loss or
  gradient norm is not finite is skipped (weights, moments, EMA and BatchNorm statistics
  unchanged, as the Rust trainer does);
* EMA: the average starts at the initial weights; after update n (from 0) it moves towards the
  live weights with decay min(decay, (1 + n) / (10 + n)) when `ema.warmup`, by one
  torch._foreach_lerp_; the BatchNorm buffers are copied;
* sampling: the EMA network in eval mode; DDIM (Song et al. 2021, Eq. 12 with sigma(eta) of
  Eq. 16; `leading`, `trailing` or `linspace` spacing as diffusers' DDIMScheduler, the last step
  to abar = 1) or ancestral DDPM (Ho et al. 2020, Alg. 2 with the posterior mean of Eq. 7,
  sigma^2 = beta-tilde or beta), x_0-hat clamped to [-1, 1] at each step (the toolkit's default),
  images round((x + 1) * 127.5).

Settings it does not implement (another architecture, min-SNR weighting, Huber, bf16, another
dataset) are refused, naming the key, rather than trained differently.

    .venv/bin/python scripts/quality/train_peer.py --config runs/q/config.json \\
        --data data/fashion-mnist --threads 2 --minutes 30 --out target/quality/peer \\
        --samples 2000 --sampler '{"kind": "ddim", "steps": 50, "eta": 0.0, "spacing": "leading"}'
"""

import argparse
import gzip
import json
import math
import signal
import struct
import sys
import time
from fractions import Fraction
from pathlib import Path

START = time.monotonic()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "golden"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from model_simple import FoldedSimpleUnet  # noqa: E402
from unet_torch import UNet  # noqa: E402

STOP = {"signal": None}


def on_signal(signum, _frame):
    STOP["signal"] = signal.Signals(signum).name


def refuse(key, value, supported):
    sys.exit(f"train_peer.py: {key} = {json.dumps(value)} is not implemented here (supported: {supported})")


# ---------------------------------------------------------------------------------------------
# Data.


def read_idx_images(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != 2051:
        sys.exit(f"{path}: not an IDX image file (magic {magic})")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, rows, cols)


def load_train_images(config, data_dir):
    spec = config["dataset"]
    if spec.get("kind") not in ("fashion-mnist", "mnist"):
        refuse("dataset.kind", spec.get("kind"), "fashion-mnist, mnist")
    if spec.get("split") != "train":
        refuse("dataset.split", spec.get("split"), "train")
    transform = config["transform"]
    if transform.get("size") is not None:
        refuse("transform.size", transform["size"], "null (the images' own 28x28)")
    if not transform.get("normalize", True):
        refuse("transform.normalize", False, "true")
    path = Path(data_dir) / "train-images-idx3-ubyte.gz"
    if not path.exists():
        sys.exit(f"{path} is missing: run `cargo xtask fetch-fashion-mnist` or pass --data DIR")
    return torch.from_numpy(read_idx_images(path).copy())


def batches(images, batch_size, flip_p, gen):
    """Endless training batches: a permutation per epoch, drop_last, flips, [-1, 1]."""
    n = images.shape[0]
    per_epoch = n // batch_size
    while True:
        perm = torch.randperm(n, generator=gen)
        for b in range(per_epoch):
            x = images[perm[b * batch_size : (b + 1) * batch_size]].float() / 127.5 - 1.0
            flip = torch.rand(batch_size, generator=gen) < flip_p
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            yield x


# ---------------------------------------------------------------------------------------------
# The network.

# The official DDPM code's "zero" scale for the last layer of every residual branch, the attention
# output projection and conv_out (TensorFlow's variance scaling rejects 0).
ZERO_SCALE = 1e-10


def fan_avg_uniform_(weight, scale):
    """TensorFlow's variance_scaling(scale, 'fan_avg', 'uniform'): U(-l, l), l = sqrt(6 s / fan sum)."""
    receptive_field = math.prod(weight.shape[2:])
    fan_sum = (weight.shape[0] + weight.shape[1]) * receptive_field
    limit = math.sqrt(6.0 * scale / fan_sum)
    nn.init.uniform_(weight, -limit, limit)


def build_unet(model_config):
    """The paper's U-Net (`model.arch = "ddpm"`): scripts/bench/unet_torch.py under diffusers'
    configuration names, initialised as the official code (fan-avg uniform, zero biases, a
    ~zero scale for each residual branch's conv2, attention's to_out and conv_out)."""
    if model_config.get("num_classes") is not None:
        refuse("model.num_classes", model_config["num_classes"], "null")
    widths = [m * model_config["channels"] for m in model_config["channel_mult"]]
    size = model_config["image_size"]
    down = [
        "AttnDownBlock2D" if (size >> level) in model_config["attention_resolutions"] else "DownBlock2D"
        for level in range(len(widths))
    ]
    up = [kind.replace("Down", "Up") for kind in reversed(down)]
    model = UNet(
        sample_size=size,
        in_channels=model_config["in_channels"],
        out_channels=model_config["out_channels"],
        layers_per_block=model_config["layers_per_block"],
        block_out_channels=widths,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=model_config["norm_num_groups"],
        norm_eps=model_config["norm_eps"],
        dropout=model_config["dropout"],
        freq_shift=model_config["freq_shift"],
        flip_sin_to_cos=model_config["flip_sin_to_cos"],
        downsample_padding=model_config["downsample_padding"],
        attention_head_dim=model_config["attention_head_dim"],
    )
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            last = name.endswith(("conv2", "to_out.0")) or name == "conv_out"
            fan_avg_uniform_(module.weight, ZERO_SCALE if last else 1.0)
            nn.init.zeros_(module.bias)
    # NCHW, as the Rust U-Net trains on the CPU (channels-last measured slower there).
    model.memory_format = torch.contiguous_format
    return model


def build_model(config):
    model_config = dict(config["model"])
    arch = model_config.pop("arch", None)
    if arch == "ddpm":
        return build_unet(model_config)
    if arch != "simple":
        refuse("model.arch", arch, "simple, ddpm")
    model = FoldedSimpleUnet(model_config, exact=False)
    # Keras' defaults, as the Rust model: glorot_uniform kernels, zero biases.
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    model.memory_format = torch.channels_last
    return model.to(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------
# The schedule.


def betas_of(schedule):
    kind, n = schedule.get("kind"), schedule.get("n_steps")
    if kind == "linear":
        return np.linspace(schedule["start"], schedule["end"], n, dtype=np.float64)
    if kind == "cosine":
        s, max_beta = schedule.get("s", 0.008), schedule.get("max_beta", 0.999)

        def alpha_bar(tau):
            return math.cos((tau + s) / (1 + s) * math.pi / 2) ** 2

        return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)])
    refuse("schedule.kind", kind, "linear, cosine")


class Tables:
    def __init__(self, betas):
        self.betas = betas
        self.T = len(betas)
        self.abar = np.cumprod(1.0 - betas)
        self.abar_prev = np.concatenate([[1.0], self.abar[:-1]])
        self.posterior_variance = betas * (1.0 - self.abar_prev) / (1.0 - self.abar)
        self.coef1 = betas * np.sqrt(self.abar_prev) / (1.0 - self.abar)
        self.coef2 = (1.0 - self.abar_prev) * np.sqrt(1.0 - betas) / (1.0 - self.abar)
        self.sqrt_abar = torch.tensor(np.sqrt(self.abar), dtype=torch.float32)
        self.sqrt_one_minus_abar = torch.tensor(np.sqrt(1.0 - self.abar), dtype=torch.float32)


def timesteps(T, n, spacing):
    """The DDIM sub-sequence in sampling order (diffusers' `timestep_spacing`, exact)."""
    if not 1 <= n <= T:
        sys.exit(f"sampler steps = {n} is impossible with T = {T}")
    if spacing == "leading":
        ts = [i * (T // n) for i in range(n)]
    elif spacing == "trailing":
        ts = [round(Fraction(T * (i + 1), n)) - 1 for i in range(n)]
    elif spacing == "linspace":
        ts = [0] if n == 1 else [round(Fraction(i * (T - 1), n - 1)) for i in range(n)]
    else:
        refuse("sampler spacing", spacing, "leading, trailing, linspace")
    return ts[::-1]


# ---------------------------------------------------------------------------------------------
# Training.


def lr_at(optim, n, total_steps):
    if n < optim["warmup_steps"]:
        return optim["lr"] * (n + 1) / optim["warmup_steps"]
    if optim["decay"] == "constant":
        return optim["lr"]
    span = max(total_steps - optim["warmup_steps"], 1)
    progress = min((n - optim["warmup_steps"]) / span, 1.0)
    return optim["min_lr"] + 0.5 * (optim["lr"] - optim["min_lr"]) * (1 + math.cos(math.pi * progress))


def check_supported(config):
    objective, optim = config["objective"], config["optim"]
    if objective["prediction"] not in ("eps", "x0", "v"):
        refuse("objective.prediction", objective["prediction"], "eps, x0, v")
    if objective["loss"] not in ("l1", "l2"):
        refuse("objective.loss", objective["loss"], "l1, l2")
    if objective.get("min_snr_gamma") is not None:
        refuse("objective.min_snr_gamma", objective["min_snr_gamma"], "null")
    if optim["kind"] not in ("adam", "adamw"):
        refuse("optim.kind", optim["kind"], "adam, adamw")
    if optim["decay"] not in ("constant", "cosine"):
        refuse("optim.decay", optim["decay"], "constant, cosine")
    if config.get("precision") not in ("f32", "bf16"):
        refuse("precision", config.get("precision"), "f32 (bf16 is f32 on the CPU)")


def planned_steps(config, n_images):
    per_epoch = n_images // config["batch_size"]
    limits = [x for x in (config["epochs"] and config["epochs"] * per_epoch, config["max_steps"]) if x]
    return min(limits)


def train(config, images, args):
    check_supported(config)
    objective, optim_config, ema_config = config["objective"], config["optim"], config["ema"]
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = build_model(config)
    tables = Tables(betas_of(config["schedule"]))
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = list(model.buffers())
    kind = torch.optim.Adam if optim_config["kind"] == "adam" else torch.optim.AdamW
    opt = kind(
        params,
        lr=optim_config["lr"],
        betas=(optim_config["beta1"], optim_config["beta2"]),
        eps=optim_config["eps"],
        weight_decay=optim_config["weight_decay"],
        fused=True,
    )
    ema_params = [p.detach().clone() for p in params]
    ema_buffers = [b.detach().clone() for b in buffers]
    ema_updates = 0
    total = planned_steps(config, images.shape[0])
    if args.max_steps:
        total = min(total, args.max_steps)
    batch_size = config["batch_size"]
    deadline = START + args.minutes * 60 if args.minutes else math.inf
    losses, curve, skipped, step = [], [], 0, 0
    model.train()
    for x0 in batches(images, batch_size, config["transform"]["flip_p"], gen):
        if STOP["signal"] or step >= total or time.monotonic() >= deadline:
            break
        x0 = x0.contiguous(memory_format=model.memory_format)
        t = torch.randint(0, tables.T, (batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen).contiguous(memory_format=model.memory_format)
        a = tables.sqrt_abar[t].view(-1, 1, 1, 1)
        s = tables.sqrt_one_minus_abar[t].view(-1, 1, 1, 1)
        x_t = a * x0 + s * noise
        saved = [b.clone() for b in buffers]
        out = model(x_t, t)
        target = {"eps": noise, "x0": x0, "v": a * noise - s * x0}[objective["prediction"]]
        diff = out - target
        loss = diff.abs().mean() if objective["loss"] == "l1" else diff.square().mean()
        opt.zero_grad(set_to_none=False)
        loss.backward()
        clip = optim_config["grad_clip"]
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else math.inf, foreach=True)
        loss_value = loss.item()
        step += 1
        if not (math.isfinite(loss_value) and math.isfinite(norm.item())):
            skipped += 1
            with torch.no_grad():
                for b, old in zip(buffers, saved):
                    b.copy_(old)
            continue
        n = step - 1 - skipped
        for group in opt.param_groups:
            group["lr"] = lr_at(optim_config, n, total)
        opt.step()
        decay = ema_config["decay"]
        if ema_config["warmup"]:
            decay = min(decay, (1 + ema_updates) / (10 + ema_updates))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)
            for e, b in zip(ema_buffers, buffers):
                e.copy_(b)
        ema_updates += 1
        losses.append(loss_value)
        if step % config["log_every"] == 0:
            curve.append({"step": step, "loss": float(np.mean(losses[-config["log_every"] :]))})
    stopped = time.monotonic()
    # The EMA network for sampling.
    ema_model = build_model(config)
    with torch.no_grad():
        for p, e in zip([p for p in ema_model.parameters() if p.requires_grad], ema_params):
            p.copy_(e)
        for b, e in zip(ema_model.buffers(), ema_buffers):
            b.copy_(e)
    ema_model.eval()
    result = {
        "steps": step,
        "skipped_steps": skipped,
        "images": step * batch_size,
        "train_seconds": stopped - START,
        "images_per_s": step * batch_size / max(stopped - START, 1e-9),
        "final_loss": float(np.mean(losses[-100:])) if losses else None,
        "stopped_by": STOP["signal"] or ("max_steps" if step >= total else "minutes"),
        "loss_curve": curve,
    }
    return ema_model, tables, result


# ---------------------------------------------------------------------------------------------
# Sampling.


@torch.no_grad()
def sample(model, tables, sampler, prediction, n_images, batch_size, seed, shape, x_T=None):
    """uint8 NHWC samples; x_T (a function of (generator, rows) giving the start of a batch)
    replaces N(0, I) when given (scripts/quality/prior_mismatch.py)."""
    kind = sampler.get("kind")
    if kind == "ddim":
        ts = timesteps(tables.T, sampler["steps"], sampler.get("spacing", "leading"))
        eta = sampler.get("eta", 0.0)
    elif kind == "ddpm":
        ts = list(range(tables.T))[::-1]
        variance = sampler.get("variance", "fixed_large")
        if variance not in ("fixed_small", "fixed_large"):
            refuse("sampler variance", variance, "fixed_small, fixed_large")
    else:
        refuse("sampler kind", kind, "ddim, ddpm")
    out = []
    gen = torch.Generator().manual_seed(seed)
    for first in range(0, n_images, batch_size):
        rows = min(batch_size, n_images - first)
        x = torch.randn((rows, *shape), generator=gen) if x_T is None else x_T(gen, rows)
        for i, t in enumerate(ts):
            t_batch = torch.full((rows,), t, dtype=torch.int64)
            output = model(x.contiguous(memory_format=model.memory_format), t_batch).float()
            a, b = math.sqrt(tables.abar[t]), math.sqrt(1.0 - tables.abar[t])
            if prediction == "eps":
                x0 = (x - b * output) / a
            elif prediction == "x0":
                x0 = output
            else:
                x0 = a * x - b * output
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - a * x0) / b
            if kind == "ddim":
                t_prev = ts[i + 1] if i + 1 < len(ts) else None
                abar_prev = 1.0 if t_prev is None else tables.abar[t_prev]
                sigma = eta * math.sqrt((1 - abar_prev) / (1 - tables.abar[t])) * math.sqrt(
                    1 - tables.abar[t] / abar_prev
                )
                direction = math.sqrt(max(1 - abar_prev - sigma**2, 0.0))
                x = math.sqrt(abar_prev) * x0 + direction * eps
                if sigma > 0 and t_prev is not None:
                    x = x + sigma * torch.randn(x.shape, generator=gen)
            else:
                x = tables.coef1[t] * x0 + tables.coef2[t] * x
                if t > 0:
                    var = tables.posterior_variance[t] if variance == "fixed_small" else tables.betas[t]
                    x = x + math.sqrt(var) * torch.randn(x.shape, generator=gen)
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous())
    return torch.cat(out).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the Rust run's config.json")
    parser.add_argument("--data", required=True, help="the dataset folder (IDX .gz files)")
    parser.add_argument("--out", required=True, help="where result.json and the samples go")
    parser.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
    parser.add_argument("--minutes", type=float, help="stop after this much wall time (also on SIGTERM)")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=0, help="EMA samples per sampler")
    parser.add_argument("--sample-batch", type=int, default=250)
    parser.add_argument(
        "--sampler",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='a sampler as the Rust SamplerConfig JSON, named: ddim50={"kind": "ddim", "steps": 50, '
        '"eta": 0.0, "spacing": "leading"}; writes samples-NAME.npz (repeatable)',
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    torch.set_num_threads(args.threads)
    config = json.loads(Path(args.config).read_text())
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = load_train_images(config, args.data)
    model, tables, result = train(config, images, args)
    print(
        f"peer: {result['steps']} steps in {result['train_seconds']:.1f} s "
        f"({result['images_per_s']:.1f} images/s), loss {result['final_loss']}",
        file=sys.stderr,
        flush=True,
    )
    result.update(torch=torch.__version__, threads=torch.get_num_threads(), seed=args.seed, samplers={})
    shape = (config["model"]["in_channels"], images.shape[2], images.shape[3])
    for spec in args.sampler:
        name, _, text = spec.partition("=")
        sampler = json.loads(text)
        started = time.monotonic()
        pixels = sample(
            model, tables, sampler, config["objective"]["prediction"], args.samples, args.sample_batch, args.seed, shape
        )
        path = out_dir / f"samples-{name}.npz"
        np.savez(path, arr_0=pixels)
        seconds = time.monotonic() - started
        result["samplers"][name] = {"config": sampler, "npz": str(path), "seconds": seconds}
        print(f"peer: {args.samples} {name} samples in {seconds:.1f} s -> {path}", file=sys.stderr, flush=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
