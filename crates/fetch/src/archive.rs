//! Extraction: a `.tar.gz` into a directory, one member of a zip archive into a file.

use super::{Algorithm, Checksum, FetchError};
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

/// Unpacks a `.tar.gz` into `into` (created). The tar crate refuses entries that would land
/// outside `into` (absolute paths, `..`).
///
/// # Errors
///
/// [`FetchError::Archive`] for a truncated or corrupt archive; the caller discards `into`.
pub(super) fn unpack_tar_gz(archive: &Path, into: &Path) -> Result<(), FetchError> {
    let corrupt = |e: io::Error| FetchError::Archive {
        path: archive.to_path_buf(),
        reason: e.to_string(),
    };
    fs::create_dir_all(into).map_err(|e| FetchError::io("create", into, e))?;
    let file = fs::File::open(archive).map_err(|e| FetchError::io("read", archive, e))?;
    let decoder = flate2::read::GzDecoder::new(io::BufReader::new(file));
    let mut tar = tar::Archive::new(decoder);
    tar.set_preserve_permissions(false);
    tar.unpack(into).map_err(corrupt)?;
    // The tar reader stops at its end-of-archive blocks; reading on to the gzip trailer checks
    // its CRC and length, so an archive cut short after the last entry is caught as well.
    io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(corrupt)?;
    Ok(())
}

/// Copies the member `member` of the zip archive `archive` to `out` and returns its digest.
///
/// # Errors
///
/// [`FetchError::Archive`] when the archive is not a readable zip or lacks the member.
pub(super) fn extract_zip_member(
    archive: &Path,
    member: &str,
    out: &Path,
    algorithm: Algorithm,
) -> Result<Checksum, FetchError> {
    let corrupt = |reason: String| FetchError::Archive {
        path: archive.to_path_buf(),
        reason,
    };
    let file = fs::File::open(archive).map_err(|e| FetchError::io("read", archive, e))?;
    let mut zip =
        zip::ZipArchive::new(io::BufReader::new(file)).map_err(|e| corrupt(e.to_string()))?;
    let entry = zip.by_name(member).map_err(|e| match e {
        zip::result::ZipError::FileNotFound => corrupt(format!("it has no member {member}")),
        e => corrupt(e.to_string()),
    })?;
    let writer = fs::File::create(out).map_err(|e| FetchError::io("write", out, e))?;
    let mut tee = Tee {
        reader: entry,
        writer: io::BufWriter::new(writer),
        write_error: None,
    };
    let digest = Checksum::compute(algorithm, &mut tee);
    if let Some(e) = tee.write_error.take() {
        return Err(FetchError::io("write", out, e));
    }
    // The zip reader checks the member's CRC-32 at its end: a corrupt member fails here.
    let digest = digest.map_err(|e| corrupt(format!("member {member}: {e}")))?;
    tee.writer
        .flush()
        .map_err(|e| FetchError::io("write", out, e))?;
    Ok(digest)
}

/// A reader that copies what it reads into a writer, so the member is hashed while written.
/// Write errors are kept apart so they are reported against the output file.
struct Tee<R, W> {
    reader: R,
    writer: W,
    write_error: Option<io::Error>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.reader.read(buf)?;
        if let Err(e) = self.writer.write_all(&buf[..n]) {
            let kind = e.kind();
            self.write_error = Some(e);
            return Err(io::Error::new(kind, "write failed"));
        }
        Ok(n)
    }
}
