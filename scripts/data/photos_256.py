#!/usr/bin/env python3
"""A small 256×256 image folder cut from real photographs, for a 256² training run on a CPU.

The photographs are the colour ones that scikit-image ships in `skimage.data` (no download):
astronaut, coffee, chelsea (a cat), rocket, the two stereo motorcycle views, the Hubble deep
field, a retina and an immunohistochemistry micrograph. Each is scaled so that its short side is
one of a few sizes at or above 256 (Pillow's antialiased LANCZOS), and 256×256 windows are cut
from it at evenly spaced offsets along both axes. The crops go into OUT as PNGs, one folder
without classes (the layout of `ddpm train --data` for the 256² presets).

    .venv/bin/python scripts/data/photos_256.py OUT            # 8 photographs -> about 100 PNGs

Requirements: scripts/data/requirements.txt (scikit-image, Pillow, numpy).
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
import skimage.data as skdata

PHOTOS = {
    "astronaut": skdata.astronaut,
    "coffee": skdata.coffee,
    "chelsea": skdata.chelsea,
    "rocket": skdata.rocket,
    "motorcycle_left": lambda: skdata.stereo_motorcycle()[0],
    "motorcycle_right": lambda: skdata.stereo_motorcycle()[1],
    "hubble_deep_field": skdata.hubble_deep_field,
    "retina": skdata.retina,
    "immunohistochemistry": skdata.immunohistochemistry,
}

# Short sides the photographs are scaled to before cutting: a whole view, and closer ones.
SHORT_SIDES = (256, 320, 400)
SIZE = 256


def offsets(length, n):
    """`n` evenly spaced window starts along an axis of `length` pixels (one when it fits once)."""
    if length <= SIZE:
        return [0]
    return sorted({round(i * (length - SIZE) / (n - 1)) for i in range(n)})


def crops(image):
    """Every 256×256 window of `image` at each short side in SHORT_SIDES."""
    h, w = image.shape[:2]
    for short in SHORT_SIDES:
        scale = short / min(h, w)
        size = (max(SIZE, round(w * scale)), max(SIZE, round(h * scale)))
        scaled = np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))
        n = 2 if short == SIZE else 3
        for top in offsets(scaled.shape[0], n):
            for left in offsets(scaled.shape[1], n):
                yield short, top, left, scaled[top : top + SIZE, left : left + SIZE]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    n = 0
    for name, load in PHOTOS.items():
        image = load()
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, name
        for short, top, left, crop in crops(image):
            assert crop.shape == (SIZE, SIZE, 3)
            Image.fromarray(crop).save(args.out / f"{name}-s{short}-{top:04d}-{left:04d}.png")
            n += 1
    print(f"wrote {n} crops of {SIZE}x{SIZE} from {len(PHOTOS)} photographs into {args.out}")


if __name__ == "__main__":
    main()
