#!/usr/bin/env python3
"""TensorBoard's own TFRecord writer and Event protobufs on fixed inputs: the golden bytes that the
training crate's event-file writer (`train::tensorboard`) must reproduce.

Writes into crates/train/tests/fixtures/tensorboard/:
- records.bin: the TFRecord framing (`RecordWriter`: length, masked CRC32C of it, data, masked
  CRC32C of the data) of three payloads: b"", b"abc", and the bytes 0..255;
- tiny.png: a 3x2 RGB PNG written by Pillow;
- events.bin: an event file of four events with fixed wall times: the file version
  `brain.Event:2` (step 0); two scalars at step 10 in one event; tiny.png as the image
  `samples/grid` at step 10; a text summary `config` at step 10 (`text_pb`, as
  `tf.summary.text` writes it).

`the_encoding_matches_tensorboards_writer` in crates/train/src/tensorboard/tests.rs compares
byte for byte. Run from the repository root with the packages of
scripts/tensorboard/requirements.txt (and Pillow) installed:

    .venv/bin/python scripts/golden/tensorboard_events.py
"""

import io
from pathlib import Path

from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.text import summary_v2 as text_summary
from tensorboard.summary.writer.record_writer import RecordWriter

OUT = Path("crates/train/tests/fixtures/tensorboard")
CONFIG_TEXT = '```json\n{\n  "batch_size": 4\n}\n```'


def records(payloads):
    buf = io.BytesIO()
    writer = RecordWriter(buf)
    for payload in payloads:
        writer.write(payload)
    writer.flush()
    return buf.getvalue()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "records.bin").write_bytes(records([b"", b"abc", bytes(range(256))]))

    png = io.BytesIO()
    pixels = bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30, 40, 50, 60, 70, 80, 90])
    Image.frombytes("RGB", (3, 2), pixels).save(png, format="PNG")
    (OUT / "tiny.png").write_bytes(png.getvalue())

    events = [event_pb2.Event(wall_time=1_700_000_000.25, step=0, file_version="brain.Event:2")]
    scalars = summary_pb2.Summary(
        value=[
            summary_pb2.Summary.Value(tag="train/loss", simple_value=0.125),
            summary_pb2.Summary.Value(tag="train/lr", simple_value=2e-4),
        ]
    )
    events.append(event_pb2.Event(wall_time=1_700_000_001.5, step=10, summary=scalars))
    image = summary_pb2.Summary.Image(
        height=2, width=3, colorspace=3, encoded_image_string=png.getvalue()
    )
    grid = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="samples/grid", image=image)])
    events.append(event_pb2.Event(wall_time=1_700_000_002.75, step=10, summary=grid))
    text = text_summary.text_pb("config", CONFIG_TEXT)
    events.append(event_pb2.Event(wall_time=1_700_000_003.0, step=10, summary=text))
    (OUT / "events.bin").write_bytes(records([e.SerializeToString() for e in events]))


if __name__ == "__main__":
    main()
