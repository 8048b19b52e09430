//! `hf:OWNER/NAME[@REVISION]`: a diffusers `UNet2DModel` pipeline on the Hugging Face Hub,
//! resolved through the [`hf_hub`] crate into the Hub's standard cache (`$HF_HUB_CACHE`, or
//! `$HF_HOME/hub`, by default `~/.cache/huggingface/hub`), the one Python's `huggingface_hub`
//! reads and writes, so a model downloaded by either is found by both.
//!
//! Only what sampling reads is downloaded, with the Hub's layout of such repositories
//! (`google/ddpm-cifar10-32`: `model_index.json`, `unet/config.json`,
//! `unet/diffusion_pytorch_model.safetensors` or `.bin`, `scheduler/scheduler_config.json`;
//! the oldest keep `config.json`, the weights and `scheduler_config.json` at the root):
//! `model_index.json`, the U-Net's config, its weights (safetensors preferred over `.bin`) and
//! the scheduler config. [`HubSettings::from_env`] honours `HF_ENDPOINT`, `HF_HUB_OFFLINE`,
//! `HF_TOKEN` (else the token file `huggingface-cli login` writes) and `HF_HOME`.
//!
//! ```no_run
//! use fetch::hub::{HubRef, HubSettings};
//!
//! let repo = HubRef::parse("hf:google/ddpm-cifar10-32").unwrap()?;
//! let folder = repo.resolve(&HubSettings::from_env())?;
//! assert!(folder.join("unet").join("config.json").is_file());
//! # Ok::<(), fetch::FetchError>(())
//! ```

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::FetchError;

/// The prefix that names a Hub repository where a path is expected.
pub const PREFIX: &str = "hf:";

/// The Hub's address unless `HF_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A model repository on the Hub and the revision (branch, tag or commit) to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    /// `owner/name`.
    pub repo_id: String,
    /// The revision, `main` unless `@REVISION` names one.
    pub revision: String,
}

/// Where and how to reach the Hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// The server (`HF_ENDPOINT`).
    pub endpoint: String,
    /// The cache's `hub` folder (`HF_HUB_CACHE`, or `$HF_HOME/hub`).
    pub cache_dir: PathBuf,
    /// The access token (`HF_TOKEN`, else `$HF_HOME/token`).
    pub token: Option<String>,
    /// Use the cache only (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// Show download progress bars.
    pub progress: bool,
}

impl HubSettings {
    /// The settings the environment gives, as Python's `huggingface_hub` reads them: `HF_HOME`
    /// (default `~/.cache/huggingface`), `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN` (or the
    /// `token` file in `HF_HOME`) and `HF_HUB_OFFLINE` (`1`, `true`, `yes` or `on`).
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`HubSettings::from_env`] with the variables looked up by `lookup` (empty values count
    /// as unset).
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let home = var("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
            home.join(".cache").join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE").map_or_else(|| home.join("hub"), PathBuf::from);
        let token = var("HF_TOKEN").or_else(|| Cache::new(cache_dir.clone()).token());
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        Self {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            cache_dir,
            token,
            offline,
            progress: true,
        }
    }
}

/// What a request for one file came to.
enum Got {
    File(PathBuf),
    Missing,
}

impl HubRef {
    /// Reads `hf:OWNER/NAME[@REVISION]`; `None` when `text` does not start with `hf:`.
    ///
    /// # Errors
    /// [`FetchError::HubName`] when the rest is not `OWNER/NAME` with an optional `@REVISION`.
    pub fn parse(text: &str) -> Option<Result<Self, FetchError>> {
        let rest = text.strip_prefix(PREFIX)?;
        let (repo_id, revision) = rest.split_once('@').unwrap_or((rest, "main"));
        let parts: Vec<&str> = repo_id.split('/').collect();
        let valid = parts.len() == 2
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            })
            && !revision.is_empty();
        Some(if valid {
            Ok(Self {
                repo_id: repo_id.to_string(),
                revision: revision.to_string(),
            })
        } else {
            Err(FetchError::HubName {
                name: text.to_string(),
            })
        })
    }

    /// Downloads what sampling reads (or finds it in the cache) and returns the snapshot folder
    /// that holds it: a diffusers pipeline folder (`unet/`, `scheduler/`) or, for the oldest
    /// repositories, a model folder.
    ///
    /// # Errors
    /// [`FetchError::HubRepoNotFound`], [`FetchError::HubNeedsToken`],
    /// [`FetchError::HubOfflineMiss`], [`FetchError::HubNotUNet`], or
    /// [`FetchError::HubRequest`] for anything else the server or the cache did.
    pub fn resolve(&self, settings: &HubSettings) -> Result<PathBuf, FetchError> {
        let cache = Cache::new(settings.cache_dir.clone());
        let repo =
            Repo::with_revision(self.repo_id.clone(), RepoType::Model, self.revision.clone());
        let api = ApiBuilder::from_cache(cache.clone())
            .with_endpoint(settings.endpoint.clone())
            .with_token(settings.token.clone())
            .with_progress(settings.progress)
            .build()
            .map_err(|e| self.request_err("", &e.to_string()))?;
        let get = |file: &str| -> Result<Got, FetchError> {
            if let Some(path) = self.cached(&cache, &repo, file) {
                return Ok(Got::File(path));
            }
            if settings.offline {
                return Ok(Got::Missing);
            }
            match api.repo(repo.clone()).download(file) {
                Ok(path) => Ok(Got::File(path)),
                Err(e) => self.classify(file, e, settings),
            }
        };
        let first = |files: &[&str]| -> Result<Option<PathBuf>, FetchError> {
            for file in files {
                if let Got::File(path) = get(file)? {
                    return Ok(Some(path));
                }
            }
            Ok(None)
        };
        let index = first(&["model_index.json"])?;
        if let Some(index) = &index {
            self.check_index(index)?;
        }
        let Some(config) = first(&["unet/config.json", "config.json"])? else {
            return Err(self.nothing_there(settings, index.is_some()));
        };
        self.check_config(&config)?;
        let sub = if config.parent().and_then(Path::file_name) == Some("unet".as_ref()) {
            "unet/"
        } else {
            ""
        };
        let weights = [
            format!("{sub}diffusion_pytorch_model.safetensors"),
            format!("{sub}diffusion_pytorch_model.bin"),
        ];
        if first(&[&weights[0], &weights[1]])?.is_none() {
            return Err(FetchError::HubNotUNet {
                repo: self.repo_id.clone(),
                what: format!("it has no {} or {}", weights[0], weights[1]),
            });
        }
        first(&["scheduler/scheduler_config.json", "scheduler_config.json"])?;
        let snapshot = if sub.is_empty() {
            config.parent()
        } else {
            config.parent().and_then(Path::parent)
        };
        Ok(snapshot
            .expect("a cached file lies in a snapshot")
            .to_path_buf())
    }

    /// The cached copy of `file`: through `refs/REVISION`, or the snapshot of a commit named as
    /// the revision.
    fn cached(&self, cache: &Cache, repo: &Repo, file: &str) -> Option<PathBuf> {
        cache.repo(repo.clone()).get(file).or_else(|| {
            let snapshot = cache
                .path()
                .join(repo.folder_name())
                .join("snapshots")
                .join(&self.revision)
                .join(file);
            snapshot.exists().then_some(snapshot)
        })
    }

    /// The error when neither `unet/config.json` nor `config.json` could be had.
    fn nothing_there(&self, settings: &HubSettings, has_index: bool) -> FetchError {
        if settings.offline {
            FetchError::HubOfflineMiss {
                repo: self.repo_id.clone(),
                revision: self.revision.clone(),
                cache: settings.cache_dir.clone(),
            }
        } else {
            FetchError::HubNotUNet {
                repo: self.repo_id.clone(),
                what: format!(
                    "it has {} but no unet/config.json or config.json",
                    if has_index {
                        "model_index.json"
                    } else {
                        "no model_index.json"
                    }
                ),
            }
        }
    }

    /// A `model_index.json` must name a `UNet2DModel` as its `unet`.
    fn check_index(&self, index: &Path) -> Result<(), FetchError> {
        let value = read_json(index).map_err(|e| self.request_err("model_index.json", &e))?;
        let class = |key: &str| {
            value
                .get(key)
                .and_then(|v| v.get(1))
                .and_then(|v| v.as_str())
        };
        match class("unet") {
            Some("UNet2DModel") => Ok(()),
            Some(other) => Err(FetchError::HubNotUNet {
                repo: self.repo_id.clone(),
                what: format!("its unet is a {other}"),
            }),
            None => Err(FetchError::HubNotUNet {
                repo: self.repo_id.clone(),
                what: format!(
                    "its model_index.json names a {} without a unet",
                    value["_class_name"].as_str().unwrap_or("pipeline")
                ),
            }),
        }
    }

    /// The U-Net's `config.json` must say `"_class_name": "UNet2DModel"`.
    fn check_config(&self, config: &Path) -> Result<(), FetchError> {
        let value = read_json(config).map_err(|e| self.request_err("config.json", &e))?;
        match value.get("_class_name").and_then(|v| v.as_str()) {
            Some("UNet2DModel") => Ok(()),
            other => Err(FetchError::HubNotUNet {
                repo: self.repo_id.clone(),
                what: format!("its config.json describes a {}", other.unwrap_or("model")),
            }),
        }
    }

    /// Sorts a failed request: a file that is not there ([`Got::Missing`]) or an error.
    fn classify(
        &self,
        file: &str,
        error: ApiError,
        settings: &HubSettings,
    ) -> Result<Got, FetchError> {
        let ApiError::RequestError(boxed) = &error else {
            return Err(self.request_err(file, &error.to_string()));
        };
        let ureq::Error::Status(status, response) = boxed.as_ref() else {
            return Err(self.request_err(
                file,
                &format!("{error}; to use what is cached without the network set HF_HUB_OFFLINE=1"),
            ));
        };
        let code = response.header("x-error-code").unwrap_or("");
        match (code, *status) {
            ("RepositoryNotFound" | "RevisionNotFound", _) => Err(FetchError::HubRepoNotFound {
                repo: self.repo_id.clone(),
                revision: self.revision.clone(),
                endpoint: settings.endpoint.clone(),
            }),
            (_, 401 | 403) => Err(FetchError::HubNeedsToken {
                repo: self.repo_id.clone(),
                status: *status,
                had_token: settings.token.is_some(),
            }),
            (_, 404) => Ok(Got::Missing),
            _ => Err(self.request_err(file, &format!("HTTP {status}"))),
        }
    }

    fn request_err(&self, file: &str, reason: &str) -> FetchError {
        FetchError::HubRequest {
            repo: self.repo_id.clone(),
            file: file.to_string(),
            reason: reason.to_string(),
        }
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_hub_and_the_standard_cache_are_the_defaults() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            HubSettings::from_vars(move |name| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            })
        };
        let s = vars(&[("HOME", "/home/u")]);
        assert_eq!(s.endpoint, "https://huggingface.co");
        assert_eq!(s.cache_dir, Path::new("/home/u/.cache/huggingface/hub"));
        assert!(!s.offline && s.token.is_none());
        let s = vars(&[
            ("HOME", "/home/u"),
            ("HF_HOME", "/data/hf"),
            ("HF_ENDPOINT", "http://127.0.0.1:9"),
            ("HF_TOKEN", "hf_x"),
            ("HF_HUB_OFFLINE", "True"),
        ]);
        assert_eq!(s.endpoint, "http://127.0.0.1:9");
        assert_eq!(s.cache_dir, Path::new("/data/hf/hub"));
        assert_eq!((s.token.as_deref(), s.offline), (Some("hf_x"), true));
        let s = vars(&[("HF_HUB_CACHE", "/c"), ("HF_HUB_OFFLINE", "0")]);
        assert_eq!((s.cache_dir.as_path(), s.offline), (Path::new("/c"), false));
    }

    #[test]
    fn names_parse_with_and_without_a_revision() {
        assert_eq!(HubRef::parse("runs/x").map(|r| r.is_ok()), None);
        let r = HubRef::parse("hf:google/ddpm-cifar10-32").unwrap().unwrap();
        assert_eq!(
            (r.repo_id.as_str(), r.revision.as_str()),
            ("google/ddpm-cifar10-32", "main")
        );
        let r = HubRef::parse("hf:a/b@v1.0").unwrap().unwrap();
        assert_eq!((r.repo_id.as_str(), r.revision.as_str()), ("a/b", "v1.0"));
        for bad in ["hf:noslash", "hf:a/b/c", "hf:a/b@", "hf:/b", "hf:a b/c"] {
            let err = HubRef::parse(bad).unwrap().unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains("OWNER/NAME"), "{err}");
        }
    }
}
