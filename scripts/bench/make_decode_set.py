"""Encoded test images for the decode benchmark (scripts/bench/decode.sh): the real photographs
scikit-image ships, resized so the short side is 256 as LSUN's images are, written as WebP
(quality 75, lossy) and JPEG (quality 90) into OUT/webp and OUT/jpeg.

Usage: python scripts/bench/make_decode_set.py OUT   (needs scikit-image, pillow)
"""

import pathlib
import sys

import PIL.Image
import skimage

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
          "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg"]


def main():
    out = pathlib.Path(sys.argv[1])
    data = pathlib.Path(skimage.__file__).parent / "data"
    for fmt, options in [("webp", {"quality": 75}), ("jpeg", {"quality": 90})]:
        (out / fmt).mkdir(parents=True, exist_ok=True)
        for name in PHOTOS:
            img = PIL.Image.open(data / name).convert("RGB")
            w, h = img.size
            scale = 256 / min(w, h)
            img = img.resize((round(w * scale), round(h * scale)), PIL.Image.LANCZOS)
            img.save(out / fmt / (pathlib.Path(name).stem + "." + fmt), format=fmt.upper(), **options)


if __name__ == "__main__":
    main()
