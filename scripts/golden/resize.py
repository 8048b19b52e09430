"""Golden values for `data::resize`: bilinear resizing as `tf.image.resize` does it by default.

`tf.image.resize(images, size)` (TF 2, method="bilinear", antialias=False) calls
`ResizeBilinear(half_pixel_centers=True)`: each output pixel `o` samples the input at
`(o + 0.5) * in_size / out_size - 0.5`, clamped to the image, and interpolates linearly between
the two neighbouring pixels, first along x on the two rows, then along y. The output is float32 and
is not rounded. TensorFlow is not installed here, so this script computes the values twice:

1. with an explicit numpy port of TF's formula (`compute_interpolation_weights` with
   `HalfPixelScaler` in tensorflow/core/kernels/image/resize_bilinear_op.cc), in float32;
2. with `torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)`,
   which uses the same half-pixel convention,

and refuses to write the fixture unless both agree to 1e-4 on 0..255 values.

Usage (from the repository root):

    .venv/bin/python scripts/golden/resize.py

writes `crates/data/tests/fixtures/resize_bilinear.json`. Images are stored channel-major (CHW),
as the `data` crate keeps them; values are listed row-major.
"""

import json
import pathlib

import numpy as np
import torch

TOLERANCE = 1e-4
OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/data/tests/fixtures/resize_bilinear.json"


def tf_weights(in_size: int, out_size: int):
    """TF's per-axis (lower, upper, lerp) for half-pixel centres, in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    lower, upper, lerp = [], [], []
    for o in range(out_size):
        x = (np.float32(o) + np.float32(0.5)) * scale - np.float32(0.5)
        x_floor = np.floor(x)
        lower.append(max(int(x_floor), 0))
        upper.append(min(int(np.ceil(x)), in_size - 1))
        lerp.append(np.float32(x - x_floor))
    return lower, upper, lerp


def tf_resize_bilinear(image_hwc: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """An explicit port of TF's ResizeBilinear (half_pixel_centers=True) on one HWC image."""
    img = image_hwc.astype(np.float32)
    in_h, in_w, channels = img.shape
    ys = tf_weights(in_h, out_h)
    xs = tf_weights(in_w, out_w)
    out = np.zeros((out_h, out_w, channels), dtype=np.float32)
    for y in range(out_h):
        y0, y1, fy = ys[0][y], ys[1][y], ys[2][y]
        for x in range(out_w):
            x0, x1, fx = xs[0][x], xs[1][x], xs[2][x]
            for c in range(channels):
                top_left, top_right = img[y0, x0, c], img[y0, x1, c]
                bottom_left, bottom_right = img[y1, x0, c], img[y1, x1, c]
                top = top_left + (top_right - top_left) * fx
                bottom = bottom_left + (bottom_right - bottom_left) * fx
                out[y, x, c] = top + (bottom - top) * fy
    return out


def torch_resize_bilinear(image_hwc: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    xs = torch.from_numpy(image_hwc.astype(np.float32)).permute(2, 0, 1)[None]
    ys = torch.nn.functional.interpolate(xs, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=False)
    return ys[0].permute(1, 2, 0).numpy()


def case(name: str, rng: np.random.Generator, in_h: int, in_w: int, channels: int, out_h: int, out_w: int):
    image = rng.integers(0, 256, size=(in_h, in_w, channels), dtype=np.uint8)
    # Saturated corners exercise the clamping at the borders.
    image[0, 0, :] = 255
    image[-1, -1, :] = 0
    expected = tf_resize_bilinear(image, out_h, out_w)
    reference = torch_resize_bilinear(image, out_h, out_w)
    diff = float(np.abs(expected - reference).max())
    assert diff <= TOLERANCE, f"{name}: numpy TF port and torch differ by {diff}"
    print(f"{name}: {in_h}x{in_w}x{channels} -> {out_h}x{out_w}, |numpy - torch| max {diff:.2e}")
    return {
        "name": name,
        "channels": channels,
        "in_height": in_h,
        "in_width": in_w,
        "out_height": out_h,
        "out_width": out_w,
        "input": image.transpose(2, 0, 1).reshape(-1).tolist(),
        "expected": [float(v) for v in expected.transpose(2, 0, 1).reshape(-1)],
    }


def main():
    rng = np.random.default_rng(20200619)  # Ho et al.'s arXiv date; any fixed seed will do.
    cases = [
        case("cifar_32_to_28_rgb", rng, 32, 32, 3, 28, 28),
        case("non_square_down_rgb", rng, 20, 30, 3, 13, 17),
        case("upsample_gray", rng, 5, 7, 1, 12, 16),
        case("up_and_down_gray", rng, 10, 40, 1, 25, 8),
        case("identity_rgb", rng, 6, 6, 3, 6, 6),
    ]
    fixture = {
        "source": "scripts/golden/resize.py (numpy port of tf.image.resize bilinear, cross-checked with torch)",
        "tolerance": TOLERANCE,
        "layout": "chw",
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
