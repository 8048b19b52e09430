"""Fixtures for the streamed dataset kinds (`data::stream`): an LMDB in LSUN's layout written by
Python's `lmdb`, ProgressiveGAN-layout TFRecords written byte for byte by hand, and the pixels
Pillow makes of them.

Sources are real photographs that scikit-image ships (`skimage/data`), made smaller with Pillow
so the fixtures stay small. Each is encoded as LSUN stores its images (WebP, lossy and lossless)
or as JPEG or PNG, and stored in an LMDB under a key. The expected pixels are what ProgressiveGAN's
`dataset_tool.py create_lsun` makes of each value at 64x64: decode (here with Pillow; create_lsun
tries OpenCV first), crop the centre to the short side with the same integer arithmetic,
`PIL.Image.resize((64, 64), PIL.Image.ANTIALIAS)` (ANTIALIAS is LANCZOS).

The TFRecords follow `TFRecordExporter` in the same file: `<name>-rNN.tfrecords` for 2^NN pixels,
uncompressed TFRecord framing (u64 length, masked CRC32C of the length, data, masked CRC32C of
the data), each record a `tf.train.Example` with features `shape` (int64 list, CHW) and `data`
(one bytes value, raw u8 CHW); lower resolutions are 2x2 means rounded with `np.rint`. TensorFlow
is not installed here, so the framing and the protobuf are written by hand below, from
TensorFlow's `record_writer.cc` and protobuf's wire format.

Usage (from the repository root; the packages are in scripts/golden/requirements-streams.txt):

    .venv/bin/python scripts/golden/streams.py

writes crates/data/tests/fixtures/streams/: `lmdb/` (data.mdb, lock.mdb), `broken_lmdb/` (one
good value, and one truncated JPEG under key `bad-0002`), `tfr/tfr-r06.tfrecords` and
`tfr-r05.tfrecords`, and `expected.npz` (`lmdb_pixels`, u8 NHWC in the LMDB's key order,
`tfr_pixels`, u8 NCHW of r06, `tfr_r05`).
"""

import io
import os
import pathlib
import shutil
import struct

import lmdb
import numpy as np
import PIL.Image
import skimage

OUT = pathlib.Path("crates/data/tests/fixtures/streams")
SIZE = 64
DATA = pathlib.Path(skimage.__file__).parent / "data"


def source(name, scale):
    """A photograph from skimage/data, RGB, shrunk by `scale` with Pillow's LANCZOS."""
    img = PIL.Image.open(DATA / name).convert("RGB")
    w, h = img.size
    return img.resize((round(w * scale), round(h * scale)), PIL.Image.LANCZOS)


def encode(img, fmt, **options):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def create_lsun_pixels(value, resample=PIL.Image.LANCZOS):
    """create_lsun's preprocessing of one LMDB value, at SIZE, HWC u8."""
    img = np.asarray(PIL.Image.open(io.BytesIO(value)).convert("RGB"))
    crop = np.min(img.shape[:2])
    img = img[(img.shape[0] - crop) // 2 : (img.shape[0] + crop) // 2,
              (img.shape[1] - crop) // 2 : (img.shape[1] + crop) // 2]
    img = PIL.Image.fromarray(img, "RGB")
    img = img.resize((SIZE, SIZE), resample)
    return np.asarray(img)


# Key -> encoded value. LMDB keeps keys in byte order, which is the order the reader lists.
VALUES = {
    b"0001-chelsea-webp": encode(source("chelsea.png", 0.5), "WEBP", quality=90),
    b"0002-coffee-jpeg": encode(source("coffee.png", 0.4), "JPEG", quality=90),
    b"0003-astronaut-png": encode(source("astronaut.png", 0.25), "PNG"),
    b"0004-rocket-webp-lossless": encode(source("rocket.jpg", 0.25), "WEBP", lossless=True),
    b"0005-motorcycle-png": encode(source("motorcycle_left.png", 0.2), "PNG"),
}


def write_lmdb(path, values):
    shutil.rmtree(path, ignore_errors=True)
    env = lmdb.open(str(path), map_size=64 << 20, subdir=True)
    with env.begin(write=True) as txn:
        for key, value in values.items():
            txn.put(key, value)
    env.close()


# --- TFRecords, by hand ------------------------------------------------------------------------

def crc32c(data):
    """CRC-32C (Castagnoli), reflected polynomial 0x82F63B78, bit by bit."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked_crc(data):
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number, payload):
    """A length-delimited protobuf field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def example(chw):
    """tf.train.Example{features: {"shape": int64_list (packed), "data": bytes_list}}."""
    shape = field(1, b"".join(varint(d) for d in chw.shape))            # Int64List.value, packed
    shape_feature = field(3, shape)                                       # Feature.int64_list
    data_feature = field(1, field(1, chw.tobytes()))                      # Feature.bytes_list
    entries = (field(1, field(1, b"shape") + field(2, shape_feature))     # Features.feature map
               + field(1, field(1, b"data") + field(2, data_feature)))
    return field(1, entries)                                              # Example.features


def write_tfrecords(path, records):
    with open(path, "wb") as f:
        for data in records:
            length = struct.pack("<Q", len(data))
            f.write(length + struct.pack("<I", masked_crc(length)) + data
                    + struct.pack("<I", masked_crc(data)))


def halve(chw):
    """TFRecordExporter's next lower level: 2x2 means, np.rint, u8."""
    img = chw.astype(np.float32)
    img = (img[:, 0::2, 0::2] + img[:, 0::2, 1::2] + img[:, 1::2, 0::2] + img[:, 1::2, 1::2]) * 0.25
    return np.rint(img).clip(0, 255).astype(np.uint8)


def main():
    # CRC-32C check value from RFC 3720: "123456789" -> 0xE3069283.
    assert crc32c(b"123456789") == 0xE3069283
    OUT.mkdir(parents=True, exist_ok=True)
    write_lmdb(OUT / "lmdb", VALUES)
    good = encode(source("coffee.png", 0.1), "PNG")
    broken = VALUES[b"0001-chelsea-webp"][:1500]
    write_lmdb(OUT / "broken_lmdb", {b"good-0001": good, b"bad-0002": broken})
    keys = sorted(VALUES)
    pixels = np.stack([create_lsun_pixels(VALUES[k]) for k in keys])
    # The TFRecords hold the same images as create_lsun made them, CHW.
    chw = [p.transpose(2, 0, 1).copy() for p in pixels]
    (OUT / "tfr").mkdir(exist_ok=True)
    write_tfrecords(OUT / "tfr" / "tfr-r06.tfrecords", [example(c) for c in chw])
    write_tfrecords(OUT / "tfr" / "tfr-r05.tfrecords", [example(halve(c)) for c in chw])
    np.savez(OUT / "expected.npz", lmdb_pixels=pixels, tfr_pixels=np.stack(chw),
             tfr_r05=np.stack([halve(c) for c in chw]))
    # For scale: how far another filter is from Pillow's LANCZOS on the same crops.
    for k in keys:
        a = create_lsun_pixels(VALUES[k]).astype(int)
        b = create_lsun_pixels(VALUES[k], PIL.Image.BILINEAR).astype(int)
        print(f"{k.decode()}: BILINEAR vs LANCZOS mean {np.abs(a - b).mean():.2f}, max {np.abs(a - b).max()}")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total} bytes): keys {[k.decode() for k in keys]}")


if __name__ == "__main__":
    main()
