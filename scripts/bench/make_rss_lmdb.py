"""A synthetic LSUN-like LMDB for the loader's memory benchmark (scripts/bench/loader_rss.sh):
N records (default 50,000) of 256x256 JPEGs (quality 90) under LSUN-style 40-character hex
keys. 500 distinct images (smooth random colour fields with noise) are each stored N / 500
times under different keys: every record is its own value in the file, as in a real database.

Usage: python scripts/bench/make_rss_lmdb.py OUT [N]   (needs lmdb, pillow, numpy)
"""

import hashlib
import io
import sys

import lmdb
import numpy as np
import PIL.Image


def image(seed):
    rng = np.random.default_rng(seed)
    field = PIL.Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((256, 256), PIL.Image.BICUBIC)
    noisy = np.asarray(field).astype(np.int16) + rng.integers(-12, 13, (256, 256, 3))
    buf = io.BytesIO()
    PIL.Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main():
    out, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 50_000
    distinct = [image(seed) for seed in range(500)]
    env = lmdb.open(out, map_size=16 << 30)
    with env.begin(write=True) as txn:
        for i in range(n):
            txn.put(hashlib.sha1(str(i).encode()).hexdigest().encode(), distinct[i % 500])
    env.close()
    print(f"wrote {n} records to {out} ({sum(map(len, distinct)) * n // 500 >> 20} MB of JPEG)")


if __name__ == "__main__":
    main()
