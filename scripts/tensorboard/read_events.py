#!/usr/bin/env python3
"""Reads a TensorBoard log directory with TensorBoard's own reader, `EventAccumulator`, and prints
what it found as one JSON object, for tests/tests/tensorboard.rs to check against the run's
metrics.jsonl, sample pictures and config.json:

    {"scalars": {tag: [[step, value], ...]},
     "images":  {tag: [[step, width, height, png_hex], ...]},
     "texts":   {tag: [[step, text], ...]}}

Every event is kept (no sampling: size guidance 0). Requirements: scripts/tensorboard/requirements.txt.

    .venv/bin/python scripts/tensorboard/read_events.py runs/seed/tb
"""

import json
import sys

from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.util import tensor_util


def main(logdir):
    acc = ea.EventAccumulator(
        logdir, size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0}
    )
    acc.Reload()
    tags = acc.Tags()
    try:
        text_tags = acc.PluginTagToContent("text")
    except KeyError:  # no text summaries
        text_tags = {}
    texts = {}
    for tag in text_tags:
        texts[tag] = [
            [e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode("utf-8")]
            for e in acc.Tensors(tag)
        ]
    out = {
        "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
        "images": {
            t: [[e.step, e.width, e.height, e.encoded_image_string.hex()] for e in acc.Images(t)]
            for t in tags["images"]
        },
        "texts": texts,
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
