//! The crate's error type: every way a fetch fails, each naming the file or URL and the fix.

use std::io;
use std::path::{Path, PathBuf};

/// Why a fetch failed. Messages name the file or URL and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The server could not be reached (no DNS, connection refused or timed out).
    #[error(
        "cannot reach {url} ({reason}): copy {file_name} into {} by hand and rerun, \
         it is then verified and used without the network",
        .dir.display()
    )]
    Offline {
        /// The address tried.
        url: String,
        /// What went wrong, from the network stack.
        reason: String,
        /// The file to copy by hand.
        file_name: String,
        /// Where to copy it.
        dir: PathBuf,
    },
    /// The server answered with an HTTP error status (after retries for 5xx).
    #[error(
        "{url} answered HTTP {status}: check the address, or copy {file_name} into {} by hand \
         and rerun",
        .dir.display()
    )]
    Http {
        /// The address tried.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The file to copy by hand.
        file_name: String,
        /// Where to copy it.
        dir: PathBuf,
    },
    /// The transfer kept failing without progress.
    #[error(
        "download of {url} failed {attempts} times ({reason}): rerun to resume from {}, or \
         copy {file_name} into {} by hand and rerun",
        .part.display(),
        .dir.display()
    )]
    Interrupted {
        /// The address tried.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        reason: String,
        /// The partial file kept for the next run.
        part: PathBuf,
        /// The file to copy by hand.
        file_name: String,
        /// Where to copy it.
        dir: PathBuf,
    },
    /// The URL is malformed or uses an unsupported scheme.
    #[error("cannot download {url}: {reason}; pass an http:// or https:// address")]
    InvalidUrl {
        /// The address given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file (downloaded, copied by hand, or extracted) does not match its checksum. It was
    /// moved to `bad` and nothing was extracted from it.
    #[error(
        "{} has {algorithm} {actual}, expected {expected}: the file was moved to {}; rerun to \
         download it again, or copy a good copy to {}",
        .path.display(),
        .bad.display(),
        .path.display()
    )]
    ChecksumMismatch {
        /// The file as the user knows it.
        path: PathBuf,
        /// Where the rejected file now is.
        bad: PathBuf,
        /// `md5` or `sha256`.
        algorithm: &'static str,
        /// The expected digest.
        expected: String,
        /// The digest found.
        actual: String,
    },
    /// A verified archive cannot be extracted (truncated, corrupt, or not the expected layout).
    #[error(
        "cannot extract {}: {reason}; delete it and rerun to download it again",
        .path.display()
    )]
    Archive {
        /// The archive.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A local file operation failed.
    #[error("cannot {action} {}", .path.display())]
    Io {
        /// The operation: `read`, `write`, `create`, `rename`, `remove`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `hf:` followed by something that is not `OWNER/NAME[@REVISION]`.
    #[error("{name} is not a Hub model name: write hf:OWNER/NAME or hf:OWNER/NAME@REVISION")]
    HubName {
        /// What was given.
        name: String,
    },
    /// The Hub has no such repository or revision.
    #[error(
        "hf:{repo}@{revision}: no such repository or revision on {endpoint}: check the \
         OWNER/NAME and the @REVISION (a private repository also needs HF_TOKEN)"
    )]
    HubRepoNotFound {
        /// `owner/name`.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The server asked.
        endpoint: String,
    },
    /// The repository is private or gated and the request was refused.
    #[error(
        "hf:{repo}: the Hub answered HTTP {status}: the repository is private or gated, so \
         {}",
        if *had_token {
            "the token in HF_TOKEN lacks access: accept the model's terms on its Hub page or use a token with read access"
        } else {
            "set HF_TOKEN to an access token with read access (or run `huggingface-cli login`)"
        }
    )]
    HubNeedsToken {
        /// `owner/name`.
        repo: String,
        /// 401 or 403.
        status: u16,
        /// Whether a token was sent.
        had_token: bool,
    },
    /// `HF_HUB_OFFLINE` is set and the cache does not hold the model.
    #[error(
        "hf:{repo}@{revision}: HF_HUB_OFFLINE is set and the cache {} does not hold it: unset \
         HF_HUB_OFFLINE and run once with the network to download it",
        .cache.display()
    )]
    HubOfflineMiss {
        /// `owner/name`.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The cache's `hub` folder.
        cache: PathBuf,
    },
    /// The repository is not a diffusers `UNet2DModel` (pipeline).
    #[error(
        "hf:{repo}: {what}, not a diffusers UNet2DModel: only DDPM/DDIM pipelines (a unet that \
         is a UNet2DModel, such as google/ddpm-cifar10-32) sample here"
    )]
    HubNotUNet {
        /// `owner/name`.
        repo: String,
        /// What the repository holds instead.
        what: String,
    },
    /// Any other failure of a Hub request or of the cache.
    #[error(
        "hf:{repo}: {}{reason}",
        if file.is_empty() { String::new() } else { format!("{file}: ") }
    )]
    HubRequest {
        /// `owner/name`.
        repo: String,
        /// The file asked for (empty: none yet).
        file: String,
        /// What went wrong.
        reason: String,
    },
}

impl FetchError {
    /// A local file operation `action` on `path` failed.
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        FetchError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
