//! Models pulled by Ollama: its manifest names the GGUF blob.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{ModelSource, not_found};
use crate::Result;

const REGISTRY: &str = "registry.ollama.ai";
const MODEL_LAYER: &str = "application/vnd.ollama.image.model";

/// Ollama's model store: `OLLAMA_MODELS`, else `~/.ollama/models`.
pub fn ollama_models_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("OLLAMA_MODELS") {
        return Some(dir.into());
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".ollama/models"))
}

/// `qwen2.5:0.5b` → (`registry.ollama.ai/library/qwen2.5`, `0.5b`).
fn manifest_parts(name: &str) -> (String, String) {
    let (path, tag) = match name.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') => (path, tag),
        _ => (name, "latest"),
    };
    let path = match path.matches('/').count() {
        0 => format!("{REGISTRY}/library/{path}"),
        1 => format!("{REGISTRY}/{path}"),
        _ => path.to_string(),
    };
    (path, tag.to_string())
}

pub(super) fn resolve(
    source: &ModelSource,
    models_dir: Option<&Path>,
    name: &str,
) -> Result<PathBuf> {
    let hint = format!(
        "pull it first: `ollama pull {name}` (or set OLLAMA_MODELS to Ollama's model folder)"
    );
    let Some(dir) = models_dir.map(Path::to_path_buf) else {
        return Err(not_found(
            source,
            vec!["(no OLLAMA_MODELS or HOME set)".into()],
            &hint,
        ));
    };
    let (path, tag) = manifest_parts(name);
    let manifest_path = dir.join("manifests").join(&path).join(&tag);
    let manifest: Option<Value> = std::fs::read_to_string(&manifest_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let Some(manifest) = manifest else {
        return Err(not_found(
            source,
            vec![manifest_path.display().to_string()],
            &hint,
        ));
    };
    let digest = manifest["layers"].as_array().and_then(|layers| {
        layers
            .iter()
            .find(|layer| layer["mediaType"] == MODEL_LAYER)
            .and_then(|layer| layer["digest"].as_str())
    });
    let Some(digest) = digest else {
        return Err(not_found(
            source,
            vec![format!(
                "{} (no model layer in the manifest)",
                manifest_path.display()
            )],
            &hint,
        ));
    };
    let blob = dir.join("blobs").join(digest.replace(':', "-"));
    if blob.is_file() {
        Ok(blob)
    } else {
        Err(not_found(
            source,
            vec![
                manifest_path.display().to_string(),
                blob.display().to_string(),
            ],
            &hint,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::manifest_parts;

    #[test]
    fn names_map_to_manifest_paths() {
        assert_eq!(
            manifest_parts("qwen2.5:0.5b"),
            ("registry.ollama.ai/library/qwen2.5".into(), "0.5b".into())
        );
        assert_eq!(
            manifest_parts("llama3.2"),
            (
                "registry.ollama.ai/library/llama3.2".into(),
                "latest".into()
            )
        );
        assert_eq!(
            manifest_parts("user/model:q4"),
            ("registry.ollama.ai/user/model".into(), "q4".into())
        );
        assert_eq!(
            manifest_parts("host.io/ns/model:t"),
            ("host.io/ns/model".into(), "t".into())
        );
    }
}
