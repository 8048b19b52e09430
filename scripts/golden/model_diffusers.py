#!/usr/bin/env python3
"""Golden fixtures for the `model` crate's U-Net: diffusers' own `UNet2DModel`.

The fixture model has the DDPM paper's block structure and every convention of
`google/ddpm-cifar10-32` (DownBlock2D / AttnDownBlock2D at the second level / DownBlock2D, mirrored
up blocks, one full-width attention head, `freq_shift` 1, `flip_sin_to_cos` false,
`downsample_padding` 0, GroupNorm eps 1e-6, dropout 0.1), shrunk to 8 base channels, 3 levels,
4 groups and 16x16 inputs so that the fixtures stay small. Its weights are diffusers' random init
with every parameter then perturbed (GroupNorm scales away from 1, biases away from 0), and it is
saved with `save_pretrained`, so the test reads exactly what diffusers writes. Run from the
repository root:

    .venv/bin/python scripts/golden/model_diffusers.py            # rewrite the fixtures
    .venv/bin/python scripts/golden/model_diffusers.py --verify DIR

It writes to crates/model/tests/fixtures/:

* unet_tiny/config.json, unet_tiny/diffusion_pytorch_model.safetensors   (save_pretrained)
* unet_tiny_io.safetensors        x [3, 3, 16, 16], timesteps [0, 500, 999], the eval-mode output,
                                  and the gradients of sum(out * probe) for a few parameters
* ddpm_cifar10_keys.json          every state-dict key and shape, in order, of the full
                                  google/ddpm-cifar10-32 configuration (35,746,307 parameters)

`--verify DIR` checks the other direction: DIR holds a model saved by the Rust code
(`cargo test -p model --test diffusers_parity -- --ignored export`: config.json written by
`UNetConfig::to_diffusers_config`, diffusion_pytorch_model.safetensors written by
`save_safetensors`, io.safetensors with the Rust output), which must load with
`UNet2DModel.from_pretrained` without missing or unexpected keys and reproduce the Rust output.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file, save_file

OUT = Path(__file__).resolve().parents[2] / "crates" / "model" / "tests" / "fixtures"

# google/ddpm-cifar10-32's configuration (Ho et al. 2020, App. B), with the paper's dropout.
DDPM_CIFAR10 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=32,
    norm_eps=1e-6,
    dropout=0.1,
    freq_shift=1,
    flip_sin_to_cos=False,
    downsample_padding=0,
    attention_head_dim=None,
    act_fn="silu",
    time_embedding_type="positional",
    resnet_time_scale_shift="default",
)

TINY = dict(
    DDPM_CIFAR10,
    sample_size=16,
    block_out_channels=(8, 16, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
)


# Parameters whose gradients the fixture records: one of each kind of layer, ends and middle.
GRAD_NAMES = [
    "conv_in.weight",
    "time_embedding.linear_1.weight",
    "down_blocks.0.resnets.0.norm1.weight",
    "down_blocks.0.downsamplers.0.conv.weight",
    "down_blocks.1.attentions.1.to_q.weight",
    "down_blocks.1.resnets.0.conv_shortcut.weight",
    "mid_block.attentions.0.to_out.0.bias",
    "mid_block.resnets.1.time_emb_proj.weight",
    "up_blocks.1.attentions.2.group_norm.bias",
    "up_blocks.1.upsamplers.0.conv.weight",
    "up_blocks.2.resnets.2.conv_shortcut.weight",
    "conv_norm_out.weight",
    "conv_out.bias",
]


def perturb_(model, gen):
    """Every parameter moves: norms away from (1, 0), weights and biases by a little noise."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.add_(0.02 * noise)


def write_fixtures():
    full = UNet2DModel(**DDPM_CIFAR10)
    n_full = sum(p.numel() for p in full.parameters())
    assert n_full == 35_746_307, n_full
    keys = [[k, list(v.shape)] for k, v in full.state_dict().items()]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ddpm_cifar10_keys.json").write_text("[\n" + ",\n".join(json.dumps(k) for k in keys) + "\n]\n")

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2020)
    model = UNet2DModel(**TINY)
    perturb_(model, gen)
    model.eval()
    model.save_pretrained(OUT / "unet_tiny", safe_serialization=True)

    x = torch.randn(3, 3, 16, 16, generator=gen)
    t = torch.tensor([0, 500, 999], dtype=torch.int64)
    out = model(x, t).sample
    # Gradients of sum(out * probe), in eval mode (no dropout), check the backward pass too.
    probe = torch.randn(out.shape, generator=gen)
    (out * probe).sum().backward()
    grads = {f"grad.{name}": model.get_parameter(name).grad.clone() for name in GRAD_NAMES}
    io = {"x": x, "timesteps": t, "out": out.detach().contiguous(), "probe": probe, **grads}
    save_file(io, OUT / "unet_tiny_io.safetensors")
    n = sum(p.numel() for p in model.parameters())
    print(f"ddpm: full config {n_full} parameters; tiny {n} parameters, |out| max {out.abs().max():.3f}")


def verify(directory):
    """Loads a Rust-saved model with diffusers and compares its output with the Rust output."""
    directory = Path(directory)
    model, info = UNet2DModel.from_pretrained(directory, output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        if info[kind]:
            sys.exit(f"{kind}: {info[kind]}")
    model.eval()
    io = load_file(directory / "io.safetensors")
    with torch.no_grad():
        out = model(io["x"], io["timesteps"]).sample
    err = (out - io["out"]).abs().max().item()
    print(f"diffusers vs Rust output: max abs error {err:.2e}")
    if err > 1e-4:
        sys.exit("mismatch")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--verify", metavar="DIR", help="check a Rust-saved model in DIR instead")
    args = parser.parse_args()
    verify(args.verify) if args.verify else write_fixtures()
