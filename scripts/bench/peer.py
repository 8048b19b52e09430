#!/usr/bin/env python3
"""PyTorch eager peer of `crates/train/examples/bench_serve.rs`, for `cargo xtask bench`.

Builds one benchmark case, prints `ready`, then runs one step per line of stdin (`forward`,
`train_step`, `loop_step`, `optimizer_step`, `ddpm_step`, `ddim_step`, each with an optional
count: `train_step 30` runs 30 and synchronises once; `memory` answers the peak bytes in live CUDA
tensors since the previous `memory`; `quit` ends) and answers each with its wall time in ms.
The xtask alternates single requests between this process and the Rust one, so both are timed
under the same machine load, and the ratio of the two measures the bindings and the Rust code
around libtorch, not the kernels: the .venv torch is the libtorch the Rust code links.

The same work as the Rust side, step for step:

* simple_unet: the notebook's SimpleUnet (the independent port in scripts/golden/model_simple.py,
  PyTorch's symmetric padding, which equals Keras' 'same' at the even sizes this network sees),
  with the first up block's cat([x, x]) folded into one convolution with summed kernel halves,
  as the Rust model does (the same function; see `crates/model/src/simple.rs`); L1 loss, Adam;
  T = 300 linear schedule for training.
* ddpm_unet: diffusers' UNet2DModel with the google/ddpm-cifar10-32 configuration (dropout 0.1);
  L2 loss, Adam; T = 1000.
* ddpm_unet_256: the same with the google/ddpm-church-256 configuration (the paper's 114M U-Net
  of the 256² presets: widths 128·(1, 1, 2, 2, 4, 4), attention at 16², no dropout), 256×256.

`train_step`: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, a train-mode forward, the loss,
backward, `torch.optim.Adam.step` (its default implementation for the device) and `zero_grad`
(set to None). `optimizer_step`: what a training loop runs after backward, on fixed gradients
(N(0, 1e-6), as the Rust side's): `torch.nn.utils.clip_grad_norm_(params, 1.0)`, the Adam step of
`--adam foreach` (`torch.optim.Adam(foreach=True)`) or `--adam fused` (`fused=True`), and an EMA
of the weights with decay min(0.9999, (1 + n) / (10 + n)) by `torch._foreach_lerp_` (diffusers'
`EMAModel` with `foreach=True`). `loop_step`: a whole training iteration as a PyTorch loop writes
it, to set beside the Rust `Trainer::train_step` (for `cargo xtask gpu-bundle`): fresh t and
noise, the train step, `clip_grad_norm_(1.0)`, the step of `--train-adam` and the EMA update.
`--train-adam default|foreach|fused` picks `train_step`'s and `loop_step`'s Adam;
`--compile` wraps the network in `torch.compile` (default mode). `forward`: eval mode under `torch.no_grad`. Sampling steps at t = 500 on the
T = 1000 linear schedule: DDPM (Ho et al. 2020, Alg. 2, sigma^2 = beta) and DDIM (eta = 0, 50
leading-spaced steps, to t = 480), with float64 coefficients from the host. The other solvers'
steps (`dpmpp_2m_step`, `dpmpp_3m_step`, `unipc_bh2_step`, `euler_step`, `heun_step`,
`plms_step`): diffusers' scheduler of the same name (`SOLVERS`) on 50 leading-spaced steps of the
same schedule, stepped in order from its first timestep at or below 500 as the Rust chain is (the
earlier steps replayed untimed on a stand-in output), one `scale_model_input`, network evaluation
and `step` per request.

    .venv/bin/python scripts/bench/peer.py --case simple_unet --batch 128 --layout channels_last
"""

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "golden"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    from model_diffusers import DDPM_CIFAR10  # noqa: E402
except ImportError:  # no diffusers: the same configuration, spelled out
    DDPM_CIFAR10 = dict(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32, norm_eps=1e-6, dropout=0.1, freq_shift=1, flip_sin_to_cos=False,
        downsample_padding=0, attention_head_dim=None,
    )
from model_simple import FoldedSimpleUnet, SimpleUnet, seed_cifar10_config  # noqa: E402

# google/ddpm-church-256's unet/config.json (113,673,219 parameters), as the Rust
# `UNetConfig::ho2020_256` is.
DDPM_256 = dict(
    DDPM_CIFAR10,
    sample_size=256,
    block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    dropout=0.0,
)


class DiffusersEps(torch.nn.Module):
    """UNet2DModel returning the tensor, so both models are called alike. Without diffusers
    (the lent GPU machine has torch alone) it is `unet_torch.UNet`, the same network in plain
    PyTorch under the same state-dict names (`unet_torch.py --check`: 1.6e-6 from diffusers on
    the full configuration)."""

    def __init__(self, config=DDPM_CIFAR10):
        super().__init__()
        try:
            from diffusers import UNet2DModel

            self.unet = UNet2DModel(**config)
            self.diffusers = True
        except ImportError:
            from unet_torch import UNet

            self.unet = UNet(**config)
            self.diffusers = False

    def forward(self, x, t):
        out = self.unet(x, t)
        return out.sample if self.diffusers else out


def linear_alphas_cumprod(n_steps):
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, n_steps, dtype=np.float64))


# name: (model, image size, training T, loss)
CASES = {
    "simple_unet": (lambda: FoldedSimpleUnet(seed_cifar10_config(), exact=False), 28, 300, "l1"),
    "ddpm_unet": (DiffusersEps, 32, 1000, "l2"),
    "ddpm_unet_256": (lambda: DiffusersEps(DDPM_256), 256, 1000, "l2"),
}
SAMPLING_ABAR = linear_alphas_cumprod(1000)

# request: (diffusers scheduler, its options beyond the shared ones)
SOLVERS = {
    "dpmpp_2m_step": ("DPMSolverMultistepScheduler", dict(solver_order=2, algorithm_type="dpmsolver++")),
    "dpmpp_3m_step": ("DPMSolverMultistepScheduler", dict(solver_order=3, algorithm_type="dpmsolver++")),
    "unipc_bh2_step": ("UniPCMultistepScheduler", dict(solver_order=2, solver_type="bh2")),
    "euler_step": ("EulerDiscreteScheduler", {}),
    "heun_step": ("HeunDiscreteScheduler", {}),
    "plms_step": ("PNDMScheduler", dict(skip_prk_steps=True)),
}


class Chain:
    """One diffusers scheduler's chain of 50 steps on the T = 1000 linear schedule, stepped in
    order from its first timestep at or below 500 (so a multistep solver runs at full order)."""

    def __init__(self, request, case):
        # diffusers is imported on the first request, so the peer starts without it (the GPU
        # bundle's machine), where only these steps are unavailable.
        self.name, self.options = SOLVERS[request]
        self.case = case
        self.cursor = self.n = 0

    def ready(self, count):
        """Replays the steps before t <= 500 (untimed) unless `count` steps remain before the
        last two."""
        if self.cursor + count + 2 <= self.n:
            return
        import diffusers

        x = self.case.x0
        self.scheduler = getattr(diffusers, self.name)(
            num_train_timesteps=1000,
            beta_start=1e-4,
            beta_end=0.02,
            beta_schedule="linear",
            timestep_spacing="leading",
            **self.options,
        )
        self.scheduler.set_timesteps(50, device=self.case.device)
        timesteps = self.scheduler.timesteps.tolist()
        self.n = len(timesteps)
        start = next(i for i, t in enumerate(timesteps) if t <= 500)
        with torch.no_grad():
            for i in range(start):
                t = self.scheduler.timesteps[i]
                self.scheduler.scale_model_input(x, t)
                self.scheduler.step(x, t, x)
        self.cursor = start

    def step(self):
        case, x = self.case, self.case.x0
        case.model.eval()
        with torch.no_grad():
            t = self.scheduler.timesteps[self.cursor]
            x_in = self.scheduler.scale_model_input(x, t)
            eps = case.net(x_in, t.reshape(1).expand(x.shape[0])).float()
            out = self.scheduler.step(eps, t, x).prev_sample
        self.cursor += 1
        return out


class Case:
    def __init__(
        self, name, batch, layout, device, bf16, unfolded=False, adam="foreach", train_adam="default", compile=False
    ):
        make, size, n_train, loss = CASES[name]
        if unfolded and name == "simple_unet":
            make = lambda: SimpleUnet(seed_cifar10_config(), exact=False)  # noqa: E731
        torch.manual_seed(0)
        self.device = torch.device(device)
        self.model = make().to(self.device)
        self.loss = loss
        self.bf16 = bf16 and self.device.type == "cuda"
        self.memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.x0 = (torch.rand(batch, 3, size, size, device=self.device) * 2 - 1).contiguous(
            memory_format=self.memory_format
        )
        self.noise = torch.randn_like(self.x0)
        self.t = torch.randint(0, n_train, (batch,), device=self.device)
        abar = torch.tensor(linear_alphas_cumprod(n_train), dtype=torch.float32, device=self.device)
        self.sqrt_abar, self.sqrt_one_minus_abar = abar.sqrt(), (1 - abar).sqrt()
        kind = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[train_adam]
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4, **kind)
        self.adam = adam
        self.n_train = n_train
        self.loop_ema = None
        if compile:
            self.model = torch.compile(self.model)

    def setup_optimizer_step(self):
        """The optimizer, EMA and gradients of `optimizer_step`, made on its first request."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        kind = {"foreach": {"foreach": True}, "fused": {"fused": True}}[self.adam]
        self.step_opt = torch.optim.Adam(params, lr=2e-4, eps=1e-8, **kind)
        self.ema_params = [p.detach().clone() for p in params]
        self.step_params = params
        self.ema_updates = 0

    def net(self, x, t):
        if self.bf16:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.model(x, t).float()
        return self.model(x, t)

    def forward(self):
        self.model.eval()
        with torch.no_grad():
            return self.net(self.x0, self.t)

    def train_step(self, zero_grad=True):
        self.model.train()
        a = self.sqrt_abar[self.t].view(-1, 1, 1, 1)
        s = self.sqrt_one_minus_abar[self.t].view(-1, 1, 1, 1)
        out = self.net(a * self.x0 + s * self.noise, self.t)
        diff = out - self.noise
        loss = diff.abs().mean() if self.loss == "l1" else diff.square().mean()
        loss.backward()
        if zero_grad:
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return loss

    def loop_step(self):
        self.t = torch.randint(0, self.n_train, self.t.shape, device=self.device)
        self.noise = torch.randn_like(self.x0)
        self.train_step(zero_grad=False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.loop_ema is None:
            self.loop_ema = [p.detach().clone() for p in params]
            self.loop_ema_updates = 0
        decay = min(0.9999, (1 + self.loop_ema_updates) / (10 + self.loop_ema_updates))
        with torch.no_grad():
            torch._foreach_lerp_(self.loop_ema, params, 1.0 - decay)
        self.loop_ema_updates += 1

    def optimizer_step(self):
        if not hasattr(self, "step_opt"):
            self.setup_optimizer_step()
        torch.nn.utils.clip_grad_norm_(self.step_params, 1.0)
        self.step_opt.step()
        decay = min(0.9999, (1 + self.ema_updates) / (10 + self.ema_updates))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, self.step_params, 1.0 - decay)
        self.ema_updates += 1

    def ddpm_step(self, t=500):
        self.model.eval()
        abar, abar_prev = SAMPLING_ABAR[t], SAMPLING_ABAR[t - 1]
        beta = 1.0 - abar / abar_prev
        with torch.no_grad():
            t_batch = torch.full((self.x0.shape[0],), t, dtype=torch.int64, device=self.device)
            eps = self.net(self.x0, t_batch).float()
            noise = torch.randn_like(self.x0)
            mean = (self.x0 - eps * (beta / math.sqrt(1.0 - abar))) * (1.0 / math.sqrt(1.0 - beta))
            return mean + noise * math.sqrt(beta)

    def ddim_step(self, t=500, t_prev=480):
        self.model.eval()
        abar, abar_prev = SAMPLING_ABAR[t], SAMPLING_ABAR[t_prev]
        with torch.no_grad():
            t_batch = torch.full((self.x0.shape[0],), t, dtype=torch.int64, device=self.device)
            eps = self.net(self.x0, t_batch).float()
            x0 = self.x0 * (1.0 / math.sqrt(abar)) - eps * math.sqrt(1.0 / abar - 1.0)
            return x0 * math.sqrt(abar_prev) + eps * math.sqrt(1.0 - abar_prev)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=list(CASES), required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--layout", choices=["nchw", "channels_last"], default="nchw")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument(
        "--adam",
        choices=["foreach", "fused"],
        default="foreach",
        help="optimizer_step: torch.optim.Adam(foreach=True) or (fused=True)",
    )
    parser.add_argument("--adam-foreach", dest="adam", action="store_const", const="foreach")
    parser.add_argument("--adam-fused", dest="adam", action="store_const", const="fused")
    parser.add_argument(
        "--cudnn-benchmark", choices=["true", "false"], default="true", help="CUDA: cuDNN's autotuner"
    )
    parser.add_argument(
        "--train-adam",
        choices=["default", "foreach", "fused"],
        default="default",
        help="train_step and loop_step: torch.optim.Adam's implementation",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument(
        "--unfolded", action="store_true", help="simple_unet: convolve cat([x, x]) as the notebook writes it"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark == "true"
    case = Case(
        args.case,
        args.batch,
        args.layout,
        args.device,
        args.bf16,
        args.unfolded,
        args.adam,
        args.train_adam,
        args.compile,
    )
    steps = {
        "forward": case.forward,
        "train_step": case.train_step,
        "loop_step": case.loop_step,
        "optimizer_step": case.optimizer_step,
        "ddpm_step": case.ddpm_step,
        "ddim_step": case.ddim_step,
    }
    chains = {}
    for request in SOLVERS:
        chains[request] = Chain(request, case)
        steps[request] = chains[request].step
    print(f"ready torch {torch.__version__}", flush=True)
    cuda = case.device.type == "cuda"
    for line in sys.stdin:
        words = line.split()
        request = words[0] if words else ""
        if request in ("quit", ""):
            break
        if request == "memory":
            peak = torch.cuda.max_memory_allocated(case.device) if cuda else float("nan")
            if cuda:
                torch.cuda.reset_peak_memory_stats(case.device)
            print(peak, flush=True)
            continue
        count = int(words[1]) if len(words) > 1 else 1
        if request in chains:
            chains[request].ready(count)
        start = time.perf_counter()
        for _ in range(count):
            steps[request]()
        if cuda:
            torch.cuda.synchronize()
        print(f"{(time.perf_counter() - start) * 1e3:.4f}", flush=True)


if __name__ == "__main__":
    main()
