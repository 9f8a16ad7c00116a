//! Finding a model file from what a user calls it: a local path, a short
//! name of the catalog (`smollm2-135m`, fetched by `make models`), a Hugging
//! Face repo and file in the Hugging Face cache on disk, or an Ollama model
//! in Ollama's local store. Nothing is downloaded here; when a model is not
//! found, the error lists every place looked and how to get the file.

mod catalog;
mod huggingface;
mod ollama;

use std::fmt;
use std::path::{Path, PathBuf};

pub use catalog::{CATALOG, CatalogModel, catalog_model, models_cache_dir};
pub use huggingface::hf_cache_dir;
pub use ollama::ollama_models_dir;

use crate::{Error, Result};

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelSource {
    /// A GGUF file on disk.
    Path(PathBuf),
    /// A file of a Hugging Face model repo, from the local Hugging Face cache.
    HuggingFace {
        /// `owner/name`.
        repo: String,
        /// The file in the repo.
        file: String,
        /// Branch, tag or commit (`main` by default).
        revision: String,
    },
    /// A model of the catalog, fetched by `make models` (`smollm2-135m`).
    Catalog {
        /// Its short name.
        name: String,
    },
    /// A model pulled by Ollama (`name[:tag]`, `namespace/name[:tag]`).
    Ollama {
        /// The model name as `ollama pull` takes it.
        name: String,
    },
}

impl ModelSource {
    /// Reads a model name:
    /// - an existing file → that path;
    /// - a catalog short name (`smollm2-135m`, `gemma3-270m`) → the catalog;
    /// - `hf:owner/repo:file.gguf`, or `owner/repo:file.gguf` → Hugging Face;
    /// - `ollama:name[:tag]`, or a bare `name[:tag]` that is not a path → Ollama;
    /// - anything else → a path (that lookup will report missing).
    pub fn parse(name: &str) -> Self {
        if Path::new(name).is_file() {
            return ModelSource::Path(name.into());
        }
        if let Some(model) = catalog_model(name) {
            return ModelSource::Catalog {
                name: model.name.into(),
            };
        }
        if let Some(rest) = name.strip_prefix("ollama:") {
            return ModelSource::Ollama { name: rest.into() };
        }
        let hf = name.strip_prefix("hf:").unwrap_or(name);
        if let Some((repo, file)) = hf.split_once(':')
            && repo.matches('/').count() == 1
            && file.ends_with(".gguf")
        {
            return ModelSource::HuggingFace {
                repo: repo.into(),
                file: file.into(),
                revision: "main".into(),
            };
        }
        let looks_like_path = name.contains(std::path::MAIN_SEPARATOR)
            || name.ends_with(".gguf")
            || name.starts_with('.');
        if !looks_like_path && !name.is_empty() {
            return ModelSource::Ollama { name: name.into() };
        }
        ModelSource::Path(name.into())
    }

    /// Finds the file on this machine, in the standard cache folders.
    pub fn resolve(&self) -> Result<PathBuf> {
        self.resolve_in(&LookupDirs::from_env())
    }

    /// Finds the file, looking in the given cache folders.
    pub fn resolve_in(&self, dirs: &LookupDirs) -> Result<PathBuf> {
        match self {
            ModelSource::Path(path) => {
                if path.is_file() {
                    Ok(path.clone())
                } else {
                    Err(Error::ModelNotFound {
                        path: path.clone(),
                        hint: "no such file; check the path, or name a model in the Hugging Face \
                               cache (`owner/repo:file.gguf`) or Ollama's store (`name:tag`)"
                            .into(),
                    })
                }
            }
            ModelSource::HuggingFace {
                repo,
                file,
                revision,
            } => huggingface::resolve(self, dirs.huggingface.as_deref(), repo, file, revision),
            ModelSource::Catalog { name } => catalog::resolve(self, dirs.catalog.as_deref(), name),
            ModelSource::Ollama { name } => ollama::resolve(self, dirs.ollama.as_deref(), name),
        }
    }
}

/// Where models are looked up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LookupDirs {
    /// The Hugging Face hub cache.
    pub huggingface: Option<PathBuf>,
    /// Ollama's model store.
    pub ollama: Option<PathBuf>,
    /// The catalog's models cache.
    pub catalog: Option<PathBuf>,
}

impl LookupDirs {
    /// The standard folders: `HF_HUB_CACHE` / `HF_HOME/hub` /
    /// `~/.cache/huggingface/hub`, `OLLAMA_MODELS` / `~/.ollama/models`, and
    /// `DSRS_MODELS` / `~/.cache/dsrs-local/models`.
    pub fn from_env() -> Self {
        LookupDirs {
            huggingface: hf_cache_dir(),
            ollama: ollama_models_dir(),
            catalog: models_cache_dir(),
        }
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Path(path) => write!(f, "{}", path.display()),
            ModelSource::HuggingFace {
                repo,
                file,
                revision,
            } if revision == "main" => write!(f, "{repo}:{file}"),
            ModelSource::HuggingFace {
                repo,
                file,
                revision,
            } => write!(f, "{repo}@{revision}:{file}"),
            ModelSource::Catalog { name } => write!(f, "{name}"),
            ModelSource::Ollama { name } => write!(f, "ollama:{name}"),
        }
    }
}

fn not_found(source: &ModelSource, looked: Vec<String>, hint: &str) -> Error {
    Error::ModelLookup {
        model: source.to_string(),
        looked,
        hint: hint.to_string(),
    }
}
