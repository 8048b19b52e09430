//! Checksums that identify a downloaded file: MD5 (what torchvision publishes for its datasets)
//! and SHA-256, compared case-insensitively.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use crate::FetchError;

/// A hash algorithm used to verify a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// MD5, as published for CIFAR and Fashion-MNIST (an integrity check, not a security one).
    Md5,
    /// SHA-256, as published by PyPI.
    Sha256,
}

impl Algorithm {
    /// The lowercase name used in messages (`md5`, `sha256`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha256 => "sha256",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 => 64,
        }
    }
}

/// An expected digest: an [`Algorithm`] and a lowercase hex string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    algorithm: Algorithm,
    hex: String,
}

impl Checksum {
    /// An MD5 digest from its 32 hex digits.
    ///
    /// # Panics
    ///
    /// When `hex` is not 32 hex digits: checksums are constants of the program.
    ///
    /// ```
    /// use fetch::{Algorithm, Checksum};
    ///
    /// let md5 = Checksum::md5("C32A1D4AB5D03F1284B67883E8D87530");
    /// assert_eq!(md5.algorithm(), Algorithm::Md5);
    /// assert_eq!(md5.hex(), "c32a1d4ab5d03f1284b67883e8d87530");
    /// ```
    pub fn md5(hex: &str) -> Self {
        Self::new(Algorithm::Md5, hex)
    }

    /// A SHA-256 digest from its 64 hex digits.
    ///
    /// # Panics
    ///
    /// When `hex` is not 64 hex digits: checksums are constants of the program.
    pub fn sha256(hex: &str) -> Self {
        Self::new(Algorithm::Sha256, hex)
    }

    fn new(algorithm: Algorithm, hex: &str) -> Self {
        assert!(
            hex.len() == algorithm.hex_len() && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{} digest must be {} hex digits, got {hex:?}",
            algorithm.name(),
            algorithm.hex_len()
        );
        Self {
            algorithm,
            hex: hex.to_ascii_lowercase(),
        }
    }

    /// Hashes everything `reader` yields.
    ///
    /// # Errors
    ///
    /// The reader's IO error.
    ///
    /// ```
    /// use fetch::{Algorithm, Checksum};
    ///
    /// let digest = Checksum::compute(Algorithm::Md5, &b"abc"[..]).unwrap();
    /// assert_eq!(digest, Checksum::md5("900150983cd24fb0d6963f7d28e17f72"));
    /// ```
    pub fn compute(algorithm: Algorithm, mut reader: impl Read) -> io::Result<Self> {
        let bytes = match algorithm {
            Algorithm::Md5 => digest_of::<md5::Md5>(&mut reader)?,
            Algorithm::Sha256 => digest_of::<sha2::Sha256>(&mut reader)?,
        };
        let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self { algorithm, hex })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The digest as lowercase hex.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Hashes a file with this checksum's algorithm.
    pub(crate) fn of_file(&self, path: &Path) -> Result<Self, FetchError> {
        let file = fs::File::open(path).map_err(|e| FetchError::io("read", path, e))?;
        Self::compute(self.algorithm, file).map_err(|e| FetchError::io("read", path, e))
    }

    /// Hashes the gunzipped content of a file with this checksum's algorithm; `None` when the
    /// file is not valid gzip.
    pub(crate) fn of_gunzipped_file(&self, path: &Path) -> Result<Option<Self>, FetchError> {
        let file = fs::File::open(path).map_err(|e| FetchError::io("read", path, e))?;
        let decoder = flate2::read::GzDecoder::new(io::BufReader::new(file));
        Ok(Self::compute(self.algorithm, decoder).ok())
    }
}

/// The digest `D` of everything `reader` yields, read in 1 MiB chunks.
fn digest_of<D: sha2::Digest>(reader: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut hasher = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hasher.finalize().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_compare_case_insensitively() {
        assert_eq!(
            Checksum::md5("C32A1D4AB5D03F1284B67883E8D87530"),
            Checksum::md5("c32a1d4ab5d03f1284b67883e8d87530")
        );
    }

    #[test]
    #[should_panic(expected = "md5 digest must be 32 hex digits")]
    fn a_short_digest_is_a_programming_error() {
        Checksum::md5("c32a");
    }

    #[test]
    fn sha256_of_empty_input_is_the_known_value() {
        let digest = Checksum::compute(Algorithm::Sha256, io::empty()).unwrap();
        assert_eq!(
            digest.hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
