//! NumPy `.npy` and `.npz` files (format version 1.0), the exchange format of FID tools:
//! sample sets as uint8 NHWC arrays (`arr_0`), reference statistics as `mu` and `sigma` (f64).
//!
//! Reading accepts little-endian `u1`, `f4`, `f8` and `i8` arrays in C order, stored or deflated
//! inside the zip; writing produces exactly what `numpy.savez` does (stored entries).

use std::io::{Read, Write};
use std::path::Path;

use super::ImageSet;
use crate::error::{DataError, Result};

/// The values of an array.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// `|u1`.
    U8(Vec<u8>),
    /// `<f4`.
    F32(Vec<f32>),
    /// `<f8`.
    F64(Vec<f64>),
    /// `<i8`.
    I64(Vec<i64>),
}

/// An n-dimensional array in C order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// The dimensions.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: NpyData,
}

impl NpyData {
    fn len(&self) -> usize {
        match self {
            NpyData::U8(v) => v.len(),
            NpyData::F32(v) => v.len(),
            NpyData::F64(v) => v.len(),
            NpyData::I64(v) => v.len(),
        }
    }

    fn descr(&self) -> &'static str {
        match self {
            NpyData::U8(_) => "|u1",
            NpyData::F32(_) => "<f4",
            NpyData::F64(_) => "<f8",
            NpyData::I64(_) => "<i8",
        }
    }
}

impl NpyArray {
    /// An array, checking that the data fills the shape.
    ///
    /// # Errors
    /// [`DataError::Config`] when `data` has another length than the shape's product.
    ///
    /// ```
    /// use data::images::{NpyArray, NpyData};
    /// let a = NpyArray::new(vec![2, 3], NpyData::U8(vec![0; 6]))?;
    /// assert_eq!(a.shape, [2, 3]);
    /// assert!(NpyArray::new(vec![2, 3], NpyData::U8(vec![0; 5])).is_err());
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn new(shape: Vec<usize>, data: NpyData) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(DataError::Config(format!(
                "array of shape {shape:?} needs {n} values, got {}",
                data.len()
            )));
        }
        Ok(Self { shape, data })
    }

    /// The array as `.npy` bytes.
    ///
    /// ```
    /// use data::images::{NpyArray, NpyData};
    /// let bytes = NpyArray::new(vec![3], NpyData::F64(vec![1.0, 2.0, 3.0]))?.to_npy_bytes();
    /// assert_eq!(&bytes[..6], b"\x93NUMPY");
    /// assert_eq!(bytes.len() % 64, 24 % 64); // 64-byte aligned header, then 3 × 8 bytes
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn to_npy_bytes(&self) -> Vec<u8> {
        let shape = match self.shape.len() {
            1 => format!("({},)", self.shape[0]),
            _ => format!(
                "({})",
                self.shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header = format!(
            "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
            self.data.descr()
        );
        // magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64,
        // ending in a newline (the layout numpy writes).
        let unpadded = 10 + header.len() + 1;
        header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
        header.push('\n');
        let mut out = Vec::with_capacity(10 + header.len() + self.data.len() * 8);
        out.extend_from_slice(b"\x93NUMPY\x01\x00");
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        match &self.data {
            NpyData::U8(v) => out.extend_from_slice(v),
            NpyData::F32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            NpyData::F64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            NpyData::I64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
        out
    }

    /// Parses `.npy` bytes; `path` only names the source in errors.
    ///
    /// # Errors
    /// [`DataError::Npy`] for a bad magic, header, unsupported dtype, Fortran order or a size
    /// that does not match the shape.
    pub fn from_npy_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |message: String| DataError::Npy {
            path: path.to_path_buf(),
            message,
        };
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err(bad("not a .npy array (bad magic)".into()));
        }
        let (header_len, start) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            v => return Err(bad(format!("unsupported .npy format version {v}"))),
        };
        let header = bytes
            .get(start..start + header_len)
            .and_then(|h| std::str::from_utf8(h).ok())
            .ok_or_else(|| bad("truncated or non-text .npy header".into()))?;
        let field = |key: &str| -> Option<&str> {
            let at = header.find(&format!("'{key}':"))? + key.len() + 3;
            Some(header[at..].trim_start())
        };
        let descr = field("descr")
            .and_then(|v| v.strip_prefix('\''))
            .and_then(|v| v.split('\'').next())
            .ok_or_else(|| bad(format!("no dtype in header {header:?}")))?;
        if field("fortran_order").is_some_and(|v| v.starts_with("True")) {
            return Err(bad(
                "Fortran-ordered arrays are not supported: save with np.ascontiguousarray".into(),
            ));
        }
        let shape_text = field("shape")
            .and_then(|v| v.strip_prefix('('))
            .and_then(|v| v.split(')').next())
            .ok_or_else(|| bad(format!("no shape in header {header:?}")))?;
        let shape = shape_text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.trim_end_matches('L')
                    .parse::<usize>()
                    .map_err(|_| bad(format!("bad shape ({shape_text})")))
            })
            .collect::<Result<Vec<usize>>>()?;
        let n: usize = shape.iter().product();
        let body = &bytes[start + header_len..];
        let need = |size: usize| -> Result<&[u8]> {
            body.get(..n * size).ok_or_else(|| {
                bad(format!(
                    "holds {} bytes of data, shape {shape:?} of {descr} needs {}",
                    body.len(),
                    n * size
                ))
            })
        };
        let data = match descr {
            "|u1" | "<u1" | "u1" | "|b1" => NpyData::U8(need(1)?.to_vec()),
            "<f4" => NpyData::F32(
                need(4)?
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            "<f8" => NpyData::F64(
                need(8)?
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            "<i8" => NpyData::I64(
                need(8)?
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            other => {
                return Err(bad(format!(
                    "unsupported dtype {other} (supported: uint8, float32, float64, int64)"
                )))
            }
        };
        Ok(Self { shape, data })
    }
}

/// Writes arrays into an `.npz` (a zip of `<name>.npy` entries, as `numpy.savez`), atomically:
/// to `<path>.tmp`, then renamed. A failed write (a full disk, say) removes `<path>.tmp` and
/// reports the file system's error once.
///
/// # Errors
/// [`DataError::Write`] naming the file.
///
/// ```
/// use data::images::{read_npz, write_npz, NpyArray, NpyData};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("stats.npz");
/// let mu = NpyArray::new(vec![2], NpyData::F64(vec![0.5, -1.0]))?;
/// write_npz(&path, &[("mu", &mu)])?;
/// assert_eq!(read_npz(&path)?, vec![("mu".to_string(), mu)]);
/// # Ok::<(), data::DataError>(())
/// ```
pub fn write_npz(path: &Path, arrays: &[(&str, &NpyArray)]) -> Result<()> {
    let err = |message: String| DataError::Write {
        path: path.to_path_buf(),
        message,
    };
    let tmp = path.with_extension("npz.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
    let written = write_zip(&file, arrays).and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e.to_string()));
    }
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

/// The zip of `arrays`, written into `file`.
fn write_zip(file: &std::fs::File, arrays: &[(&str, &NpyArray)]) -> std::io::Result<()> {
    let zip_io = |e: zip::result::ZipError| match e {
        zip::result::ZipError::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    };
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
    // numpy.savez writes stored (uncompressed) entries; zip64 lets arrays exceed 4 GiB.
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(
            arrays
                .iter()
                .any(|(_, a)| a.data.len() * 8 > u32::MAX as usize / 2),
        );
    for (i, (name, array)) in arrays.iter().enumerate() {
        let mut entry = zip
            .start_file(format!("{name}.npy"), options)
            .map_err(zip_io)
            .and_then(|()| zip.write_all(&array.to_npy_bytes()));
        if i + 1 == arrays.len() {
            // The data out of the buffer now, so that a full disk shows here, not while the
            // archive is finished (where the zip writer would report it twice).
            entry = entry.and_then(|()| zip.flush());
        }
        if let Err(e) = entry {
            // Dropped, the zip writer would try to finish the archive on the failing file
            // system and print a second, raw error of its own ("ZipWriter drop failed"). It
            // holds only a borrowed file, a buffer and the entry names, so it is forgotten
            // instead; the caller closes and removes the file.
            std::mem::forget(zip);
            return Err(e);
        }
    }
    let mut inner = zip.finish().map_err(zip_io)?;
    inner.flush()
}

/// Reads every array of an `.npz`, in file order, named without the `.npy` suffix.
///
/// # Errors
/// [`DataError::Missing`] when the file does not exist; [`DataError::Npy`] when it is not a
/// zip of well-formed `.npy` entries.
pub fn read_npz(path: &Path) -> Result<Vec<(String, NpyArray)>> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing {
            path: path.to_path_buf(),
            hint: "no such file".into(),
        },
        _ => DataError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    let bad = |message: String| DataError::Npy {
        path: path.to_path_buf(),
        message,
    };
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| bad(format!("not an .npz (zip) file: {e}")))?;
    let mut out = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        let name = entry.name().trim_end_matches(".npy").to_string();
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("entry {name}: {e}")))?;
        let array = NpyArray::from_npy_bytes(&bytes, path)
            .map_err(|e| bad(format!("entry {name}: {e}")))?;
        out.push((name, array));
    }
    Ok(out)
}

/// Reads a sample set from an `.npz`, as FID tools exchange them: the array `arr_0` (what
/// `numpy.savez(path, x)` writes), or else the first array; uint8, `[N, H, W, C]`, or
/// `[N, H, W]` for grayscale. The images come back NCHW.
///
/// # Errors
/// Those of [`read_npz`], and [`DataError::Npy`] naming the file when it holds no array, or one
/// of another type or shape.
///
/// ```
/// use data::images::{read_samples_npz, write_samples_npz, ImageSet};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("samples.npz");
/// let images = ImageSet::new((0..2 * 3 * 4 * 5).map(|v| v as u8).collect(), [2, 3, 4, 5])?;
/// write_samples_npz(&path, &images)?;
/// assert_eq!(read_samples_npz(&path)?, images);
/// # Ok::<(), data::DataError>(())
/// ```
pub fn read_samples_npz(path: &Path) -> Result<ImageSet> {
    let bad = |message: String| DataError::Npy {
        path: path.to_path_buf(),
        message,
    };
    let arrays = read_npz(path)?;
    let Some((name, array)) = arrays
        .iter()
        .find(|(name, _)| name == SAMPLES_ARRAY)
        .or_else(|| arrays.first())
    else {
        return Err(bad("holds no arrays".into()));
    };
    let NpyData::U8(pixels) = &array.data else {
        return Err(bad(format!(
            "array `{name}` is not uint8: save samples as uint8 NHWC on [0, 255]"
        )));
    };
    let shape = match array.shape[..] {
        [n, h, w] => [n, h, w, 1],
        [n, h, w, c] => [n, h, w, c],
        _ => {
            return Err(bad(format!(
                "array `{name}` has shape {:?}; samples must be [N, H, W, C] (or [N, H, W])",
                array.shape
            )))
        }
    };
    ImageSet::from_nhwc(pixels, shape).map_err(|e| bad(format!("array `{name}`: {e}")))
}

/// Writes a sample set as FID tools read it: one uint8 NHWC array `arr_0`, as
/// `numpy.savez(path, samples)` does.
///
/// # Errors
/// [`DataError::Write`] naming the file.
pub fn write_samples_npz(path: &Path, images: &ImageSet) -> Result<()> {
    let (nhwc, shape) = images.to_nhwc();
    let array = NpyArray::new(shape.to_vec(), NpyData::U8(nhwc))?;
    write_npz(path, &[(SAMPLES_ARRAY, &array)])
}

/// The name `numpy.savez(path, x)` gives its one array, and sample sets are stored under.
const SAMPLES_ARRAY: &str = "arr_0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_dtype_and_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npz");
        let arrays = [
            NpyArray::new(vec![2, 2, 2, 3], NpyData::U8((0..24).collect())).unwrap(),
            NpyArray::new(vec![3], NpyData::F32(vec![1.5, -2.0, 3.25])).unwrap(),
            NpyArray::new(vec![2, 2], NpyData::F64(vec![1e-300, 2.0, f64::MAX, -0.0])).unwrap(),
            NpyArray::new(vec![1], NpyData::I64(vec![-7])).unwrap(),
        ];
        write_npz(
            &path,
            &[
                ("arr_0", &arrays[0]),
                ("f", &arrays[1]),
                ("sigma", &arrays[2]),
                ("i", &arrays[3]),
            ],
        )
        .unwrap();
        let back = read_npz(&path).unwrap();
        let names: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["arr_0", "f", "sigma", "i"]);
        for ((_, got), want) in back.iter().zip(&arrays) {
            assert_eq!(got, want);
        }
    }

    /// Bytes numpy 1.x/2.x writes for `np.save(f, np.arange(6, dtype=np.uint8).reshape(2, 3))`.
    #[test]
    fn reads_numpy_written_bytes() {
        let mut bytes =
            b"\x93NUMPY\x01\x00v\x00{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), }"
                .to_vec();
        bytes.extend(std::iter::repeat_n(b' ', 128 - 10 - bytes[10..].len() - 1));
        bytes.push(b'\n');
        bytes.extend([0u8, 1, 2, 3, 4, 5]);
        let a = NpyArray::from_npy_bytes(&bytes, Path::new("x.npy")).unwrap();
        assert_eq!(a.shape, [2, 3]);
        assert_eq!(a.data, NpyData::U8(vec![0, 1, 2, 3, 4, 5]));
        // And we write the same header bytes numpy does.
        assert_eq!(a.to_npy_bytes(), bytes);
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.npz");
        std::fs::write(&path, b"not a zip").unwrap();
        let err = read_npz(&path).unwrap_err().to_string();
        assert!(
            err.contains("junk.npz") && err.contains("not an .npz"),
            "{err}"
        );
        let err = read_npz(&dir.path().join("none.npz"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("none.npz"), "{err}");
        let short = NpyArray::new(vec![4], NpyData::F64(vec![1.0; 4]))
            .unwrap()
            .to_npy_bytes();
        let err = NpyArray::from_npy_bytes(&short[..short.len() - 8], Path::new("s.npy"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("s.npy") && err.contains("needs 32"), "{err}");
        let fortran =
            b"\x93NUMPY\x01\x00\x36\x00{'descr': '<f8', 'fortran_order': True, 'shape': (0,), }\n";
        let err = NpyArray::from_npy_bytes(fortran, Path::new("f.npy"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("Fortran"), "{err}");
    }
}
