//! ProgressiveGAN's TFRecord layout, as its `dataset_tool.py` (`TFRecordExporter`) writes it and
//! the DDPM paper's code read it: one `<name>-rNN.tfrecords` file per resolution 2^NN, each an
//! uncompressed TFRecord file of `tf.train.Example` records with the features `shape` (an int64
//! list, `[C, H, W]`) and `data` (one bytes value, the raw u8 pixels in CHW order).
//!
//! A TFRecord is `u64` length (little-endian), the masked CRC32C of those 8 bytes, the data, the
//! masked CRC32C of the data. Opening walks the file once, checking every length's checksum, and
//! keeps each record's offset (8 bytes a record); reading a record checks its data's checksum,
//! so a flipped byte anywhere is an error that names the file and the record.
//!
//! The protobuf is decoded by hand (the few fields the layout uses; unknown fields are skipped).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Record, Records};
use crate::error::{DataError, Result};

/// TFRecord's checksum: CRC32C rotated right by 15 bits plus a constant (`crc32c::Mask`).
///
/// ```
/// // TensorFlow's masked CRC of the empty string.
/// assert_eq!(data::stream::tfrecord::masked_crc32c(b""), 0xa282_ead8);
/// ```
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
        .rotate_right(15)
        .wrapping_add(0xa282_ead8)
}

/// The file of a ProgressiveGAN dataset to read for images of `size`: `path` itself when it is
/// a file; in a folder, the `*-rNN.tfrecords` whose 2^NN is the larger side of `size`, else the
/// one of the highest resolution.
///
/// # Errors
///
/// [`DataError::Missing`] when `path` does not exist, [`DataError::Empty`] for a folder without
/// `*-rNN.tfrecords` files, [`DataError::Io`] when it cannot be listed.
pub fn choose_file(path: &Path, size: [usize; 2]) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.is_dir() {
        return Err(DataError::Missing {
            path: path.to_path_buf(),
            hint: "pass a ProgressiveGAN dataset folder (*-rNN.tfrecords) or one .tfrecords file"
                .into(),
        });
    }
    let io_err = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io_err)? {
        let file = entry.map_err(io_err)?.path();
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let Some(stem) = name.strip_suffix(".tfrecords") else {
            continue;
        };
        let level = stem
            .rsplit_once("-r")
            .and_then(|(_, nn)| nn.parse::<u32>().ok());
        if let Some(level) = level {
            found.push((level, file));
        }
    }
    found.sort();
    let want = size[0].max(size[1]);
    let chosen = found
        .iter()
        .find(|(level, _)| 1usize.checked_shl(*level) == Some(want))
        .or(found.last());
    chosen
        .map(|(_, file)| file.clone())
        .ok_or_else(|| DataError::Empty {
            path: path.to_path_buf(),
            reason: "no ProgressiveGAN *-rNN.tfrecords file in the folder".into(),
        })
}

/// The records of one TFRecord file; see the [module docs](self).
#[derive(Debug)]
pub struct TfRecords {
    path: PathBuf,
    file: File,
    /// The byte offset of each record's header.
    offsets: Vec<u64>,
}

/// Header bytes before a record's data: the length and its checksum.
const HEADER: u64 = 12;

impl TfRecords {
    /// Opens `path` and indexes its records, checking each length's checksum.
    ///
    /// # Errors
    ///
    /// [`DataError::Io`] when it cannot be read, [`DataError::BadRecord`] naming the record whose
    /// length fails its checksum or runs past the end of the file.
    pub fn open(path: &Path) -> Result<Self> {
        let io_err = |source| DataError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        let mut reader = BufReader::new(file.try_clone().map_err(io_err)?);
        let mut offsets = Vec::new();
        let mut offset = 0u64;
        while offset < file_len {
            let bad = |reason: String| DataError::BadRecord {
                path: path.to_path_buf(),
                record: format!("{} (at byte {offset})", offsets.len()),
                reason,
            };
            if file_len - offset < HEADER {
                return Err(bad(format!(
                    "the file ends {} bytes into the record's 12-byte header (truncated?)",
                    file_len - offset
                )));
            }
            let mut header = [0u8; HEADER as usize];
            reader.read_exact(&mut header).map_err(io_err)?;
            let len_bytes: [u8; 8] = header[..8].try_into().expect("8 bytes");
            let crc = u32::from_le_bytes(header[8..].try_into().expect("4 bytes"));
            if masked_crc32c(&len_bytes) != crc {
                return Err(bad("the length fails its CRC32C checksum".into()));
            }
            let len = u64::from_le_bytes(len_bytes);
            let end = offset
                .checked_add(HEADER + 4)
                .and_then(|o| o.checked_add(len))
                .filter(|&end| end <= file_len)
                .ok_or_else(|| {
                    bad(format!(
                        "a {len}-byte record runs past the end of the {file_len}-byte file (truncated?)"
                    ))
                })?;
            offsets.push(offset);
            reader.seek(SeekFrom::Start(end)).map_err(io_err)?;
            offset = end;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            offsets,
        })
    }

    /// The data of record `idx`, its checksum checked.
    fn data(&self, idx: usize) -> std::result::Result<Vec<u8>, String> {
        let offset = self.offsets[idx];
        let mut header = [0u8; 8];
        self.file
            .read_exact_at(&mut header, offset)
            .map_err(|err| err.to_string())?;
        let len = u64::from_le_bytes(header) as usize;
        let mut buf = vec![0u8; len + 4];
        self.file
            .read_exact_at(&mut buf, offset + HEADER)
            .map_err(|err| err.to_string())?;
        let crc = u32::from_le_bytes(buf[len..].try_into().expect("4 bytes"));
        buf.truncate(len);
        if masked_crc32c(&buf) != crc {
            return Err("the data fails its CRC32C checksum".into());
        }
        Ok(buf)
    }
}

impl Records for TfRecords {
    fn path(&self) -> &Path {
        &self.path
    }

    fn len(&self) -> usize {
        self.offsets.len()
    }

    fn name(&self, idx: usize) -> String {
        format!("{idx} (at byte {})", self.offsets[idx])
    }

    fn read(&self, idx: usize) -> std::result::Result<Record, String> {
        let bytes = self.data(idx)?;
        let (shape, chw) = parse_example(&bytes)?;
        Ok(Record::Raw { chw, shape })
    }
}

/// A protobuf reader over one message's bytes.
struct Wire<'a> {
    bytes: &'a [u8],
}

impl<'a> Wire<'a> {
    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .bytes
                .split_first()
                .ok_or("a varint runs past the end of the message")?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: u64) -> std::result::Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|_| "a field length overflows")?;
        if n > self.bytes.len() {
            return Err("a field runs past the end of the message".into());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// The next field: its number, and its payload for length-delimited fields (`None` for the
    /// other wire types, which are skipped, and for varints, whose value is `value`).
    fn field(&mut self) -> std::result::Result<Option<Field<'a>>, String> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let (number, wire_type) = (tag >> 3, tag & 7);
        let field = match wire_type {
            0 => Field::Varint(number, self.varint()?),
            1 => Field::Skipped(number, self.take(8)?),
            2 => {
                let len = self.varint()?;
                Field::Bytes(number, self.take(len)?)
            }
            5 => Field::Skipped(number, self.take(4)?),
            other => return Err(format!("unsupported protobuf wire type {other}")),
        };
        Ok(Some(field))
    }
}

enum Field<'a> {
    Varint(u64, u64),
    Bytes(u64, &'a [u8]),
    #[allow(dead_code)]
    Skipped(u64, &'a [u8]),
}

/// The fields numbered `number` that are length-delimited, in order.
fn submessages(bytes: &[u8], number: u64) -> std::result::Result<Vec<&[u8]>, String> {
    let mut wire = Wire { bytes };
    let mut out = Vec::new();
    while let Some(field) = wire.field()? {
        if let Field::Bytes(n, payload) = field {
            if n == number {
                out.push(payload);
            }
        }
    }
    Ok(out)
}

/// `shape` and `data` of a `tf.train.Example` in ProgressiveGAN's layout.
fn parse_example(bytes: &[u8]) -> std::result::Result<([usize; 3], Vec<u8>), String> {
    let mut shape: Option<Vec<u64>> = None;
    let mut data: Option<&[u8]> = None;
    // Example.features (1) -> Features.feature (1, map entries) -> key (1), value (2).
    for features in submessages(bytes, 1)? {
        for entry in submessages(features, 1)? {
            let key = submessages(entry, 1)?.pop().unwrap_or_default();
            let Some(feature) = submessages(entry, 2)?.pop() else {
                continue;
            };
            match key {
                // Feature.int64_list (3) -> Int64List.value (1), packed or not.
                b"shape" => shape = Some(int64_list(feature)?),
                // Feature.bytes_list (1) -> BytesList.value (1).
                b"data" => {
                    for list in submessages(feature, 1)? {
                        data = submessages(list, 1)?.pop().or(data);
                    }
                }
                _ => {}
            }
        }
    }
    let shape = shape.ok_or("the Example has no `shape` feature")?;
    let data = data.ok_or("the Example has no `data` feature")?;
    let [c, h, w] = <[u64; 3]>::try_from(shape.as_slice())
        .map_err(|_| format!("shape {shape:?} is not [C, H, W]"))?
        .map(|d| d as usize);
    if data.len() != c * h * w || c == 0 || h == 0 || w == 0 {
        return Err(format!(
            "{} data bytes do not make the shape [{c}, {h}, {w}]",
            data.len()
        ));
    }
    Ok(([c, h, w], data.to_vec()))
}

fn int64_list(feature: &[u8]) -> std::result::Result<Vec<u64>, String> {
    let mut values = Vec::new();
    for list in submessages(feature, 3)? {
        let mut wire = Wire { bytes: list };
        while let Some(field) = wire.field()? {
            match field {
                Field::Varint(1, v) => values.push(v),
                Field::Bytes(1, packed) => {
                    let mut inner = Wire { bytes: packed };
                    while !inner.bytes.is_empty() {
                        values.push(inner.varint()?);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut n: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn field(number: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(number << 3 | 2, &mut out);
        varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn examples_parse_with_unpacked_shapes_and_either_key_order() {
        // Unpacked int64 values (wire type 0), `data` before `shape`, and an unknown feature.
        let mut shape = Vec::new();
        for d in [1u64, 2, 3] {
            varint(1 << 3, &mut shape);
            varint(d, &mut shape);
        }
        let data_entry = field(
            1,
            &[
                field(1, b"data"),
                field(2, &field(1, &field(1, &[1, 2, 3, 4, 5, 6]))),
            ]
            .concat(),
        );
        let shape_entry = field(
            1,
            &[field(1, b"shape"), field(2, &field(3, &shape))].concat(),
        );
        let other = field(
            1,
            &[field(1, b"label"), field(2, &field(3, &[8, 1]))].concat(),
        );
        let example = field(1, &[data_entry, other, shape_entry].concat());
        let parsed = parse_example(&example).unwrap();
        assert_eq!(parsed, ([1, 2, 3], vec![1, 2, 3, 4, 5, 6]));
        let no_data = field(
            1,
            &field(
                1,
                &[field(1, b"shape"), field(2, &field(3, &shape))].concat(),
            ),
        );
        assert_eq!(
            parse_example(&no_data).unwrap_err(),
            "the Example has no `data` feature"
        );
        assert!(parse_example(&example[..example.len() - 3]).is_err());
    }

    #[test]
    fn masked_crc_matches_tensorflow() {
        // crc32c("123456789") = 0xe3069283 (RFC 3720), rotated right by 15 and offset by
        // 0xa282ead8 as TensorFlow's crc32c::Mask (computed with Python integers).
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
    }
}
