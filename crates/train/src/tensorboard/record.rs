//! TFRecord framing, the container of TensorBoard's event files
//! (`tensorflow/core/lib/io/record_writer.cc`): each record is its length as a little-endian
//! `u64`, the masked CRC32C of those 8 bytes, the data, and the masked CRC32C of the data. The
//! checksum is [`data::stream::tfrecord::masked_crc32c`], which the data crate's TFRecord
//! reader checks too.

use data::stream::tfrecord::masked_crc32c;

/// Bytes around a record's data: the length and its checksum before, the data's checksum after.
const OVERHEAD: usize = 16;

/// `data` framed as one TFRecord.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + OVERHEAD);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// The records of `bytes`, in order, up to the first one that is cut short or fails a checksum
/// (the torn tail a crash leaves, which TensorBoard's reader skips too), and the number of
/// bytes the whole records take.
pub fn unframe(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 12) {
        let len_bytes: [u8; 8] = header[..8].try_into().expect("8 bytes");
        let len_crc = u32::from_le_bytes(header[8..].try_into().expect("4 bytes"));
        if masked_crc32c(&len_bytes) != len_crc {
            break;
        }
        let Ok(len) = usize::try_from(u64::from_le_bytes(len_bytes)) else {
            break;
        };
        let Some(end) = (at + 12).checked_add(len).filter(|e| e + 4 <= bytes.len()) else {
            break;
        };
        let data = &bytes[at + 12..end];
        let crc = u32::from_le_bytes(bytes[end..end + 4].try_into().expect("4 bytes"));
        if masked_crc32c(data) != crc {
            break;
        }
        records.push(data);
        at = end + 4;
    }
    (records, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_torn_tail_is_dropped() {
        let mut file = frame(b"first");
        file.extend(frame(b""));
        file.extend(frame(&[7u8; 300]));
        let whole = file.len();
        let (records, used) = unframe(&file);
        assert_eq!(records, [&b"first"[..], &b""[..], &[7u8; 300][..]]);
        assert_eq!(used, whole);
        // Every cut inside the last record leaves the first two.
        let second_end = frame(b"first").len() + frame(b"").len();
        for cut in second_end..whole {
            let (records, used) = unframe(&file[..cut]);
            assert_eq!(records.len(), 2, "cut at {cut}");
            assert_eq!(used, second_end);
        }
        // A flipped data byte fails the data's checksum.
        file[second_end + 20] ^= 1;
        assert_eq!(unframe(&file).0.len(), 2);
    }
}
