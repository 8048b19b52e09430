#!/usr/bin/env python3
"""The DDPM paper's U-Net in plain PyTorch, with diffusers' `UNet2DModel` state-dict names, for the
PyTorch peer on machines without diffusers (the lent GPU machine has torch and nothing else).

It implements exactly the configurations `UNet2DModel` takes for the DDPM family
(`google/ddpm-*`): DownBlock2D / AttnDownBlock2D and their mirrored up blocks, ResnetBlock2D with
the `default` time-embedding shift, single-head (or `attention_head_dim`-wide) self-attention
with a residual, a stride-2 conv downsampler with diffusers' (0, 1, 0, 1) padding when
`downsample_padding` is 0, nearest-neighbour upsampling plus a 3x3 conv, and diffusers'
`get_timestep_embedding`. `--check` compares it with diffusers (when installed) on random weights
loaded with `load_state_dict(strict=True)`:

    .venv/bin/python scripts/bench/unet_torch.py --check
"""

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t, dim, flip_sin_to_cos, freq_shift):
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device)
    emb = t[:, None].float() * torch.exp(exponent / (half - freq_shift))[None, :]
    emb = torch.cat([emb.sin(), emb.cos()], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, cin, dim):
        super().__init__()
        self.linear_1 = nn.Linear(cin, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    def __init__(self, cin, cout, temb, groups, eps, dropout):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Attention(nn.Module):
    def __init__(self, channels, head_dim, groups, eps):
        super().__init__()
        self.heads = channels // head_dim if head_dim else 1
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.group_norm(x).view(b, c, h * w).transpose(1, 2)
        q, k, v = (f(y).view(b, -1, self.heads, c // self.heads).transpose(1, 2)
                   for f in (self.to_q, self.to_k, self.to_v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        y = self.to_out[1](self.to_out[0](y))
        return y.transpose(1, 2).reshape(b, c, h, w) + x


class Downsample2D(nn.Module):
    def __init__(self, channels, padding):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x):
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Block(nn.Module):
    """A down or up block: resnets, optional attention after each, optional resampler."""

    def __init__(self, resnets, attentions, sampler, kind):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if attentions:
            self.attentions = nn.ModuleList(attentions)
        else:
            self.attentions = None
        if sampler is not None:
            setattr(self, "downsamplers" if kind == "down" else "upsamplers", nn.ModuleList([sampler]))
        self.kind = kind


class UNet(nn.Module):
    def __init__(self, sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                 block_out_channels=(128, 256, 256, 256),
                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                 norm_num_groups=32, norm_eps=1e-6, dropout=0.0, freq_shift=1,
                 flip_sin_to_cos=False, downsample_padding=0, attention_head_dim=None, **unused):
        super().__init__()
        ch = block_out_channels
        temb = ch[0] * 4
        self.flip, self.shift, self.ch0 = flip_sin_to_cos, freq_shift, ch[0]
        self.conv_in = nn.Conv2d(in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        g, eps = norm_num_groups, norm_eps
        res = lambda i, o: ResnetBlock2D(i, o, temb, g, eps, dropout)  # noqa: E731
        att = lambda c: Attention(c, attention_head_dim, g, eps)  # noqa: E731
        levels = len(ch)
        self.down_blocks = nn.ModuleList()
        prev = ch[0]
        for i, kind in enumerate(down_block_types):
            resnets = [res(prev if j == 0 else ch[i], ch[i]) for j in range(layers_per_block)]
            attns = [att(ch[i]) for _ in range(layers_per_block)] if kind.startswith("Attn") else []
            down = Downsample2D(ch[i], downsample_padding) if i < levels - 1 else None
            self.down_blocks.append(Block(resnets, attns, down, "down"))
            prev = ch[i]
        self.mid_block = nn.Module()
        self.mid_block.resnets = nn.ModuleList([res(ch[-1], ch[-1]), res(ch[-1], ch[-1])])
        self.mid_block.attentions = nn.ModuleList([att(ch[-1])])
        self.up_blocks = nn.ModuleList()
        rev = list(reversed(ch))
        prev = rev[0]
        for i, kind in enumerate(up_block_types):
            out = rev[i]
            skip_in = rev[min(i + 1, levels - 1)]
            resnets = []
            for j in range(layers_per_block + 1):
                skip = skip_in if j == layers_per_block else out
                resnets.append(res((prev if j == 0 else out) + skip, out))
            attns = [att(out) for _ in range(layers_per_block + 1)] if kind.startswith("Attn") else []
            up = Upsample2D(out) if i < levels - 1 else None
            self.up_blocks.append(Block(resnets, attns, up, "up"))
            prev = out
        self.conv_norm_out = nn.GroupNorm(g, ch[0], eps=eps)
        self.conv_out = nn.Conv2d(ch[0], out_channels, 3, padding=1)

    def forward(self, x, t):
        if t.dim() == 0:
            t = t[None]
        t = t.expand(x.shape[0])
        emb = self.time_embedding(timestep_embedding(t, self.ch0, self.flip, self.shift).to(x.dtype))
        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            for j, resnet in enumerate(block.resnets):
                h = resnet(h, emb)
                if block.attentions is not None:
                    h = block.attentions[j](h)
                skips.append(h)
            if hasattr(block, "downsamplers"):
                h = block.downsamplers[0](h)
                skips.append(h)
        h = self.mid_block.resnets[0](h, emb)
        h = self.mid_block.attentions[0](h)
        h = self.mid_block.resnets[1](h, emb)
        for block in self.up_blocks:
            for j, resnet in enumerate(block.resnets):
                h = resnet(torch.cat([h, skips.pop()], dim=1), emb)
                if block.attentions is not None:
                    h = block.attentions[j](h)
            if hasattr(block, "upsamplers"):
                h = block.upsamplers[0](h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


def check():
    from diffusers import UNet2DModel

    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "golden"))
    from model_diffusers import DDPM_CIFAR10, TINY

    for name, config in (("tiny", TINY), ("ddpm-cifar10", DDPM_CIFAR10)):
        torch.manual_seed(0)
        reference = UNet2DModel(**config).eval()
        port = UNet(**config).eval()
        port.load_state_dict(reference.state_dict(), strict=True)
        size = config["sample_size"]
        x = torch.randn(2, 3, size, size)
        t = torch.tensor([3, 700])
        with torch.no_grad():
            err = (port(x, t) - reference(x, t).sample).abs().max().item()
        n = sum(p.numel() for p in port.parameters())
        print(f"{name}: {n} parameters, max abs difference from diffusers {err:.2e}")
        assert err < 1e-4, err


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with diffusers")
    args = parser.parse_args()
    if args.check:
        check()
