//! `--checkpoint` and `--init-from` values: a path, or `hf:OWNER/NAME[@REVISION]`, a diffusers
//! pipeline on the Hugging Face Hub that [`fetch::hub`] downloads into the Hub's cache (or finds
//! there). Every command that opens a checkpoint passes the flag through [`local`] first.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fetch::hub::{HubRef, HubSettings};

/// The local folder `given` names: `given` itself, or for `hf:OWNER/NAME[@REVISION]` the
/// snapshot folder in the Hub's cache, downloaded when missing (`HF_ENDPOINT`, `HF_TOKEN`,
/// `HF_HOME` and `HF_HUB_OFFLINE` as Python's `huggingface_hub` reads them). `flag` names the
/// flag in errors.
pub fn local(given: &Path, flag: &str) -> Result<PathBuf> {
    let Some(parsed) = given.to_str().and_then(HubRef::parse) else {
        return Ok(given.to_path_buf());
    };
    let hub = parsed.with_context(|| flag.to_string())?;
    let settings = HubSettings::from_env();
    let folder = hub
        .resolve(&settings)
        .with_context(|| format!("{flag} {}", given.display()))?;
    eprintln!(
        "{flag} {}: {} (from {})",
        given.display(),
        folder.display(),
        if settings.offline {
            "the cache, HF_HUB_OFFLINE".to_string()
        } else {
            settings.endpoint
        }
    );
    Ok(folder)
}

/// [`local`] for an optional flag.
pub fn local_opt(given: &Option<PathBuf>, flag: &str) -> Result<Option<PathBuf>> {
    given.as_deref().map(|p| local(p, flag)).transpose()
}
