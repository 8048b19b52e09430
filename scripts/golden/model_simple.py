#!/usr/bin/env python3
"""Golden fixtures for the `model` crate's SimpleUnet: a PyTorch port of the seed notebook's model.

The port follows the notebook's Keras code (docs/seed-notebook.md, "Building an U-Net model")
layer by layer, with the PyTorch tutorial's module names (DeepFindr, which the notebook cites):

* time: SinusoidalPositionEmbeddings(dim) -> Dense(dim) -> ReLU, the embedding computed with the
  notebook's formula `exp(arange(half) * -(log(10000) / (half - 1)))`, sin then cos;
* conv0: Conv2D(down[0], 3, 'same');
* Block: h = BN(ReLU(conv1(x))); h += ReLU(Dense(t))[:, :, None, None];
  h = BN(ReLU(conv2(h))); return transform(h), with transform Conv2D(out, 4, strides=2, 'same')
  going down and Conv2DTranspose(out, 4, strides=2, 'same') going up;
* up blocks take cat([x, skip], channels); output: Conv2D(out_channels, 1).

Keras 'same' padding is implemented here from TensorFlow's definition, independently of the Rust
code (which uses PyTorch's symmetric `padding=1`): a convolution pads
`total = max((ceil(n / s) - 1) * s + k - n, 0)` with the odd pixel after; a transposed
convolution is the adjoint of the 'same' convolution from `n * s` to `n`, i.e. the full
transposed convolution cropped by that padding. BatchNorm is Keras' (eps 1e-3, momentum 0.99,
which is PyTorch's momentum 0.01).

The fixture network is tiny (3 blocks, widths 4..12, 16x16x3) with perturbed BatchNorm
parameters and statistics so that nothing is trivially zero or one. Run from the repository root:

    .venv/bin/python scripts/golden/model_simple.py            # rewrite the fixtures
    .venv/bin/python scripts/golden/model_simple.py --verify DIR

It writes to crates/model/tests/fixtures/:

* simple_tiny_config.json      the `ModelConfig` JSON (`"arch": "simple"`)
* simple_tiny.safetensors      the port's state_dict (parameters, running stats, batch counters)
* simple_tiny_io.safetensors   x, timesteps, the eval-mode output, the train-mode output, the
                               running statistics of BatchNorms after that train-mode pass, and
                               the gradients of sum(out * probe) in that pass for a few parameters

`--verify DIR` checks the other direction: DIR holds a model saved by the Rust code
(`cargo test -p model --test simple_parity -- --ignored export`), which must load into the port
with `load_state_dict(strict=True)` and reproduce the Rust output.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

OUT = Path(__file__).resolve().parents[2] / "crates" / "model" / "tests" / "fixtures"


def keras_same_padding(n, k, s):
    """TensorFlow's 'same' padding (before, after) along one axis."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


class KerasConv2d(nn.Conv2d):
    """Conv2D(padding='same') with TensorFlow's padding, or PyTorch's symmetric padding when
    `exact` is False (equal on the even sizes the network sees, and what a PyTorch user writes)."""

    def __init__(self, c_in, c_out, k, stride=1, exact=True):
        super().__init__(c_in, c_out, k, stride=stride, padding=0 if exact else (k - 1) // 2 if stride == 1 else 1)
        self.exact = exact

    def forward(self, x):
        if not self.exact:
            return super().forward(x)
        (t, b), (l, r) = (keras_same_padding(n, self.kernel_size[0], self.stride[0]) for n in x.shape[-2:])
        return super().forward(F.pad(x, (l, r, t, b)))


class KerasConvTranspose2d(nn.ConvTranspose2d):
    """Conv2DTranspose(padding='same'): output n * s, the full transposed conv cropped by the
    'same' padding of the forward conv from n * s to n."""

    def __init__(self, c_in, c_out, k, stride, exact=True):
        super().__init__(c_in, c_out, k, stride=stride, padding=0 if exact else 1)
        self.exact = exact

    def forward(self, x):
        if not self.exact:
            return super().forward(x)
        y = super().forward(x)
        s, k = self.stride[0], self.kernel_size[0]
        (h, w) = x.shape[-2:]
        (t, _), (l, _) = keras_same_padding(h * s, k, s), keras_same_padding(w * s, k, s)
        return y[..., t : t + h * s, l : l + w * s]


class SinusoidalPositionEmbeddings(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, time):
        half_dim = self.dim // 2
        embeddings = math.log(10000) / (half_dim - 1)
        embeddings = torch.exp(torch.arange(half_dim, dtype=torch.float32, device=time.device) * -embeddings)
        embeddings = time.float()[:, None] * embeddings[None, :]
        return torch.cat((embeddings.sin(), embeddings.cos()), dim=-1)


class Block(nn.Module):
    def __init__(self, c_in, c_out, time_emb_dim, up, eps, momentum, exact):
        super().__init__()
        self.time_mlp = nn.Linear(time_emb_dim, c_out)
        self.conv1 = KerasConv2d(c_in, c_out, 3, exact=exact)
        if up:
            self.transform = KerasConvTranspose2d(c_out, c_out, 4, 2, exact=exact)
        else:
            self.transform = KerasConv2d(c_out, c_out, 4, 2, exact=exact)
        self.conv2 = KerasConv2d(c_out, c_out, 3, exact=exact)
        self.bnorm1 = nn.BatchNorm2d(c_out, eps=eps, momentum=momentum)
        self.bnorm2 = nn.BatchNorm2d(c_out, eps=eps, momentum=momentum)
        self.relu = nn.ReLU()

    def forward(self, x, t):
        h = self.bnorm1(self.relu(self.conv1(x)))
        time_emb = self.relu(self.time_mlp(t))
        h = h + time_emb[:, :, None, None]
        h = self.bnorm2(self.relu(self.conv2(h)))
        return self.transform(h)


class SimpleUnet(nn.Module):
    """The notebook's SimpleUnet for a `SimpleUnetConfig` dict (the Rust crate's JSON)."""

    def __init__(self, config, exact=True):
        super().__init__()
        down, up = config["down_channels"], config["up_channels"]
        dim = config["time_emb_dim"]
        eps, momentum = config["batch_norm_eps"], config["batch_norm_momentum"]
        self.time_mlp = nn.Sequential(SinusoidalPositionEmbeddings(dim), nn.Linear(dim, dim), nn.ReLU())
        self.conv0 = KerasConv2d(config["in_channels"], down[0], 3, exact=exact)
        n = len(down) - 1
        self.downs = nn.ModuleList(
            [Block(down[i], down[i + 1], dim, False, eps, momentum, exact) for i in range(n)]
        )
        self.ups = nn.ModuleList(
            [Block(up[i] + down[n - i], up[i + 1], dim, True, eps, momentum, exact) for i in range(n)]
        )
        self.output = KerasConv2d(up[-1], config["out_channels"], 1, exact=exact)

    def down_path(self, x, timestep):
        """The time embedding, and the down path's output with the skips it keeps."""
        t = self.time_mlp(timestep)
        x = self.conv0(x)
        residual_inputs = []
        for down in self.downs:
            x = down(x, t)
            residual_inputs.append(x)
        return x, t, residual_inputs

    def forward(self, x, timestep):
        x, t, residual_inputs = self.down_path(x, timestep)
        for up in self.ups:
            residual_x = residual_inputs.pop()
            x = torch.cat((x, residual_x), dim=1)
            x = up(x, t)
        return self.output(x)


class FoldedSimpleUnet(SimpleUnet):
    """SimpleUnet whose first up block convolves x once with the two kernel halves summed instead
    of convolving cat([x, x]) (its skip is x itself): the same function at a lower cost, as the
    Rust network computes it. The speed peers (`scripts/bench/peer.py`,
    `scripts/quality/train_peer.py`) run this one."""

    def forward(self, x, timestep):
        x, t, residual_inputs = self.down_path(x, timestep)
        residual_inputs.pop()
        first = self.ups[0]
        half = first.conv1.weight.shape[1] // 2
        kernel = first.conv1.weight[:, :half] + first.conv1.weight[:, half:]
        h = F.conv2d(x, kernel, first.conv1.bias, padding=1)
        h = first.bnorm1(first.relu(h))
        h = h + first.relu(first.time_mlp(t))[:, :, None, None]
        h = first.bnorm2(first.relu(first.conv2(h)))
        x = first.transform(h)
        for up in self.ups[1:]:
            x = up(torch.cat((x, residual_inputs.pop()), dim=1), t)
        return self.output(x)


def seed_cifar10_config():
    return dict(
        in_channels=3, out_channels=3, image_size=28, down_channels=[28, 128, 256], up_channels=[256, 128, 28],
        time_emb_dim=32, batch_norm_eps=1e-3, batch_norm_momentum=0.01,
    )


TINY = dict(
    in_channels=3, out_channels=3, image_size=16, down_channels=[4, 6, 8, 12], up_channels=[12, 8, 6, 4],
    time_emb_dim=8, batch_norm_eps=1e-3, batch_norm_momentum=0.01,
)


# Parameters whose gradients the fixture records: one of each kind of layer, ends and middle.
GRAD_NAMES = [
    "time_mlp.1.weight",
    "conv0.weight",
    "downs.0.conv1.weight",
    "downs.0.bnorm1.weight",
    "downs.1.time_mlp.bias",
    "downs.2.transform.weight",
    "ups.0.conv1.weight",
    "ups.1.bnorm2.bias",
    "ups.2.transform.weight",
    "output.bias",
]


def perturb_(model, gen):
    """Moves BatchNorm away from its identity initialisation and gives every bias a value."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))
                module.num_batches_tracked.fill_(7)
            elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))


def write_fixtures():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    model = SimpleUnet(TINY)
    perturb_(model, gen)
    # Copies: the train-mode pass below updates the running statistics in place.
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    # The seed preset's count is the notebook's `model.summary()` total; the other two presets'
    # counts are asserted by the Rust tests.
    count = lambda config: sum(p.numel() for p in SimpleUnet(config).parameters())  # noqa: E731
    assert count(seed_cifar10_config()) == 3_482_231
    fashion = dict(seed_cifar10_config(), in_channels=1, out_channels=1, down_channels=[16, 32, 64],
                   up_channels=[64, 32, 16])
    large = dict(seed_cifar10_config(), image_size=64, down_channels=[28, 128, 256, 512, 1024],
                 up_channels=[1024, 512, 256, 128, 28])
    assert count(fashion) == 236_113 and count(large) == 62_229_111

    x = torch.randn(3, 3, 16, 16, generator=gen)
    t = torch.tensor([0, 150, 299], dtype=torch.int64)
    model.eval()
    with torch.no_grad():
        out_eval = model(x, t)
        # PyTorch's symmetric padding gives the same numbers on these even sizes.
        native = SimpleUnet(TINY, exact=False).eval()
        native.load_state_dict(state)
        assert torch.allclose(native(x, t), out_eval, atol=1e-6, rtol=0)
    # A train-mode pass with gradients: the loss sum(out * probe) checks the backward pass too.
    model.train()
    probe = torch.randn(out_eval.shape, generator=gen)
    out_train = model(x, t)
    (out_train * probe).sum().backward()
    out_train = out_train.detach()
    grads = {f"grad.{name}": model.get_parameter(name).grad.clone() for name in GRAD_NAMES}
    io = {
        "x": x,
        "timesteps": t,
        "out_eval": out_eval,
        "out_train": out_train,
        "downs.0.bnorm1.running_mean": model.downs[0].bnorm1.running_mean.clone(),
        "downs.0.bnorm1.running_var": model.downs[0].bnorm1.running_var.clone(),
        "ups.2.bnorm2.running_var": model.ups[2].bnorm2.running_var.clone(),
        "probe": probe,
        **grads,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    save_file(state, OUT / "simple_tiny.safetensors", metadata={"format": "pt"})
    save_file({k: v.contiguous() for k, v in io.items()}, OUT / "simple_tiny_io.safetensors")
    (OUT / "simple_tiny_config.json").write_text(json.dumps({"arch": "simple", **TINY}, indent=2) + "\n")
    n = sum(p.numel() for p in model.parameters())
    print(f"simple: {n} parameters, {len(state)} tensors; eval |out| max {out_eval.abs().max():.3f}")


def verify(directory):
    """Loads a model saved by the Rust code and compares its output with the Rust output."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    config.pop("arch")
    model = SimpleUnet(config).eval()
    model.load_state_dict(load_file(directory / "model.safetensors"), strict=True)
    io = load_file(directory / "io.safetensors")
    with torch.no_grad():
        out = model(io["x"], io["timesteps"])
    err = (out - io["out"]).abs().max().item()
    print(f"PyTorch port vs Rust output: max abs error {err:.2e}")
    if err > 1e-4:
        sys.exit("mismatch")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--verify", metavar="DIR", help="check a Rust-saved model in DIR instead")
    args = parser.parse_args()
    verify(args.verify) if args.verify else write_fixtures()
