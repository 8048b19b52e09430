//! The crate's error type: every variant that comes from a file names the file, and format errors
//! name the byte offset where the file stops making sense.

use std::path::PathBuf;

/// A `Result` whose error is [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Everything that can go wrong between files on disk and batches in memory.
///
/// Byte offsets count from the start of the file; for gzip-compressed IDX files they count in the
/// decompressed data (the messages say so).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file or folder that the dataset needs does not exist.
    #[error("cannot find {}: {hint}", path.display())]
    Missing {
        /// The path that was looked for.
        path: PathBuf,
        /// What the user can do about it.
        hint: String,
    },
    /// A file where the dataset needs the folder that holds its files.
    #[error("{} is a file, not a folder: {hint}", path.display())]
    NotAFolder {
        /// The path given.
        path: PathBuf,
        /// Which folder to pass instead.
        hint: String,
    },
    /// Reading a file failed for another reason than its absence.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a file failed.
    #[error("cannot write {}: {message}", path.display())]
    Write {
        /// The file that could not be written.
        path: PathBuf,
        /// What the encoder or the file system said.
        message: String,
    },
    /// A file of fixed-length records whose size is not a multiple of the record length.
    #[error(
        "{}: {len} bytes is not a whole number of {record_len}-byte records: the record at byte {offset} \
         has only {} bytes (is the file truncated, or is it another format?)",
        path.display(),
        len - offset
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        len: u64,
        /// The record length of its format.
        record_len: usize,
        /// Where the incomplete last record starts.
        offset: u64,
    },
    /// A label byte that is not a valid class index.
    #[error("{}: label {label} at byte {offset}{} is out of range 0..{n_classes}", path.display(), decompressed_note(*decompressed))]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// Where the label byte sits.
        offset: u64,
        /// The value found.
        label: u16,
        /// The number of classes of the format.
        n_classes: usize,
        /// Whether `offset` counts in gzip-decompressed data.
        decompressed: bool,
    },
    /// An IDX file whose first four bytes are not a supported magic number.
    #[error(
        "{}: bad IDX magic number {:02x} {:02x} {:02x} {:02x}: {reason} \
         (expected 00 00 08 03 for images or 00 00 08 01 for labels)",
        path.display(), found[0], found[1], found[2], found[3]
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first four bytes (after decompression).
        found: [u8; 4],
        /// Why they are not accepted.
        reason: String,
    },
    /// An IDX file whose header disagrees with its data or with the file it is paired with.
    #[error("{}: {message}", path.display())]
    Dims {
        /// The file.
        path: PathBuf,
        /// Which dimensions disagree, and how.
        message: String,
    },
    /// An image that could not be decoded (fatal unless the folder loader was told to skip).
    #[error("{}: unreadable image: {reason}", path.display())]
    Unreadable {
        /// The image file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// A record of a streamed dataset (LMDB, TFRecord, a streamed folder) that cannot be read,
    /// fails its checksum, or does not decode; names the dataset and the record.
    #[error("{}: record {record}: {reason}", path.display())]
    BadRecord {
        /// The database folder or the file.
        path: PathBuf,
        /// The record: its key, its path, or its index (and byte offset) in the file.
        record: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Images of one set that do not share a size; names the folder and two of its files.
    #[error("{}: {message}", path.display())]
    MixedSizes {
        /// The folder.
        path: PathBuf,
        /// Which files differ, and how.
        message: String,
    },
    /// A file or folder that holds no images at all.
    #[error("{}: {reason}", path.display())]
    Empty {
        /// The file or folder.
        path: PathBuf,
        /// Why nothing was found.
        reason: String,
    },
    /// A `.npy`/`.npz` file that is not a well-formed NumPy array file, or holds an array of
    /// another type or shape than the caller needs.
    #[error("{}: {message}", path.display())]
    Npy {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A configuration or argument that cannot work.
    #[error("{0}")]
    Config(String),
}

fn decompressed_note(decompressed: bool) -> &'static str {
    if decompressed {
        " of the decompressed data"
    } else {
        ""
    }
}
