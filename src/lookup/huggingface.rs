//! Files in the Hugging Face cache on disk (`huggingface-cli download` puts them there).

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

use super::{ModelSource, not_found};
use crate::Result;

/// The Hugging Face hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`; `None` without a home folder.
pub fn hf_cache_dir() -> Option<PathBuf> {
    if let Some(cache) = std::env::var_os("HF_HUB_CACHE") {
        return Some(cache.into());
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(home).join("hub"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/huggingface/hub"))
}

pub(super) fn resolve(
    source: &ModelSource,
    cache_dir: Option<&Path>,
    repo: &str,
    file: &str,
    revision: &str,
) -> Result<PathBuf> {
    let hint = format!(
        "download it first: `huggingface-cli download {repo} {file}` (or set HF_HOME / HF_HUB_CACHE to where your cache is)"
    );
    let Some(dir) = cache_dir.map(Path::to_path_buf) else {
        return Err(not_found(
            source,
            vec!["(no HF_HUB_CACHE, HF_HOME or HOME set)".into()],
            &hint,
        ));
    };
    let cache = Cache::new(dir.clone());
    let entry = cache.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    if let Some(path) = entry.get(file).filter(|p| p.is_file()) {
        return Ok(path);
    }
    let folder = dir.join(format!("models--{}", repo.replace('/', "--")));
    Err(not_found(
        source,
        vec![format!(
            "{} (revision {revision}, file {file})",
            folder.display()
        )],
        &hint,
    ))
}
