//! The errors of the `model` crate: invalid configurations and weight files that do not fit.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong when building a model or moving its weights to and from disk.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration value is out of range or inconsistent with another.
    #[error("invalid {arch} config: {reason}")]
    InvalidConfig {
        /// The architecture whose configuration is wrong (`simple` or `ddpm`).
        arch: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A configuration file cannot be read or parsed.
    #[error("cannot read model config {path}: {reason}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// The IO or JSON error.
        reason: String,
    },
    /// A weight file cannot be read from disk.
    #[error("cannot read weights {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A weight file exists but is not a valid safetensors file (truncated, garbled header, ...).
    #[error("{path} is not a valid safetensors file ({reason}): re-download or re-save it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the safetensors parser reported.
        reason: String,
    },
    /// A weight file is valid but its tensors do not fit the model; nothing was loaded.
    #[error("weights in {path} do not fit the model, nothing was loaded: {mismatch}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Every key that is missing, unexpected, mis-shaped or of an unusable dtype (boxed: it
        /// is four lists, and errors travel in every `Result`).
        mismatch: Box<WeightMismatch>,
    },
    /// A weight file whose values are not all finite; nothing was loaded.
    #[error(
        "{path}: tensor `{tensor}` holds {n_bad} NaN or infinite value(s) of {numel}: the file is \
         damaged or was saved from a diverged run; use another checkpoint"
    )]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The first tensor (in name order) with a non-finite value.
        tensor: String,
        /// How many of its values are NaN or infinite.
        n_bad: i64,
        /// Its number of values.
        numel: usize,
    },
    /// Writing a weight file failed.
    #[error("cannot write weights {path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The IO or serialisation error.
        reason: String,
    },
    /// The file system failed while a weight file was written (a full disk, say). The message
    /// leaves the OS error to the source, so that a printed chain (`{:#}`) says it once.
    #[error("cannot write weights {}", path.display())]
    WriteIo {
        /// The file.
        path: PathBuf,
        /// The IO error; its kind tells a full disk (`StorageFull`) from other failures.
        #[source]
        source: std::io::Error,
    },
    /// libtorch reported an error.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// One tensor whose shape in the file differs from the model's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The parameter name.
    pub name: String,
    /// The shape the model has.
    pub expected: Vec<i64>,
    /// The shape the file has.
    pub found: Vec<i64>,
}

/// How a weight file's keys differ from a model's parameters and buffers.
///
/// Every list is sorted by name so that messages are stable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WeightMismatch {
    /// Model tensors that the file lacks.
    pub missing: Vec<String>,
    /// File tensors that the model does not have.
    pub unexpected: Vec<String>,
    /// Tensors present in both with different shapes.
    pub wrong_shape: Vec<ShapeMismatch>,
    /// Tensors whose file dtype cannot be converted to the model's (e.g. an integer for a weight).
    pub wrong_dtype: Vec<(String, String)>,
}

impl WeightMismatch {
    /// True when the file fits the model exactly.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.wrong_shape.is_empty()
            && self.wrong_dtype.is_empty()
    }
}

impl fmt::Display for WeightMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!(
                "{} missing ({})",
                self.missing.len(),
                self.missing.join(", ")
            ));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!(
                "{} unexpected ({})",
                self.unexpected.len(),
                self.unexpected.join(", ")
            ));
        }
        if !self.wrong_shape.is_empty() {
            let items: Vec<String> = self
                .wrong_shape
                .iter()
                .map(|m| format!("{}: model {:?}, file {:?}", m.name, m.expected, m.found))
                .collect();
            parts.push(format!("{} mis-shaped ({})", items.len(), items.join("; ")));
        }
        if !self.wrong_dtype.is_empty() {
            let items: Vec<String> = self
                .wrong_dtype
                .iter()
                .map(|(name, dtype)| format!("{name}: {dtype}"))
                .collect();
            parts.push(format!(
                "{} of an unusable dtype ({})",
                items.len(),
                items.join(", ")
            ));
        }
        if parts.is_empty() {
            write!(f, "no differences")
        } else {
            write!(f, "{}", parts.join("; "))
        }
    }
}

/// Shorthand for an [`ModelError::InvalidConfig`].
pub(crate) fn invalid(arch: &'static str, reason: impl Into<String>) -> ModelError {
    ModelError::InvalidConfig {
        arch,
        reason: reason.into(),
    }
}
