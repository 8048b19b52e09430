"""The peer of crates/data/examples/bench_decode.rs: Pillow decodes, centre-crops to the short
side and resizes to SIZE² with LANCZOS (ProgressiveGAN's create_lsun, with Pillow's decoder),
over and over on THREADS threads (Pillow releases the GIL while it decodes and resizes), for
about SECONDS; prints one JSON line.

Usage: python scripts/bench/decode_peer.py DIR SIZE THREADS SECONDS
"""

import io
import json
import os
import sys
import threading
import time

import numpy as np
import PIL.Image


def work(value, size):
    img = np.asarray(PIL.Image.open(io.BytesIO(value)).convert("RGB"))
    crop = np.min(img.shape[:2])
    img = img[(img.shape[0] - crop) // 2 : (img.shape[0] + crop) // 2,
              (img.shape[1] - crop) // 2 : (img.shape[1] + crop) // 2]
    return np.asarray(PIL.Image.fromarray(img, "RGB").resize((size, size), PIL.Image.LANCZOS))


def main():
    directory, size, threads, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    values = [open(os.path.join(directory, f), "rb").read() for f in sorted(os.listdir(directory))]
    counts = [0] * threads
    started = time.perf_counter()

    def loop(t):
        i = t
        while time.perf_counter() - started < seconds:
            work(values[i % len(values)], size)
            counts[t] += 1
            i += threads

    workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    rate = sum(counts) / elapsed
    print(json.dumps({"impl": "pillow " + PIL.__version__, "dir": directory, "size": size,
                      "threads": threads, "images": sum(counts), "seconds": round(elapsed, 3),
                      "images_per_s": round(rate, 2), "per_thread": round(rate / threads, 2)}))


if __name__ == "__main__":
    main()
