//! Finding models by name in fake Hugging Face and Ollama caches.

use std::fs;
use std::path::Path;

use dsrs_local::Error;
use dsrs_local::lookup::{LookupDirs, ModelSource};

fn write(path: &Path, contents: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

#[test]
fn names_are_read_as_paths_repos_or_ollama_models() {
    assert_eq!(
        ModelSource::parse("Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q4_k_m.gguf"),
        ModelSource::HuggingFace {
            repo: "Qwen/Qwen2.5-0.5B-Instruct-GGUF".into(),
            file: "qwen2.5-0.5b-instruct-q4_k_m.gguf".into(),
            revision: "main".into()
        }
    );
    assert_eq!(
        ModelSource::parse("qwen2.5:0.5b"),
        ModelSource::Ollama {
            name: "qwen2.5:0.5b".into()
        }
    );
    assert_eq!(
        ModelSource::parse("ollama:user/m"),
        ModelSource::Ollama {
            name: "user/m".into()
        }
    );
    assert_eq!(
        ModelSource::parse("models/x.gguf"),
        ModelSource::Path("models/x.gguf".into())
    );
}

#[test]
fn a_repo_file_is_found_in_the_hugging_face_cache() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache
        .path()
        .join("models--Qwen--Qwen2.5-0.5B-Instruct-GGUF");
    write(&repo.join("refs/main"), "abc123");
    write(&repo.join("snapshots/abc123/qwen.gguf"), "GGUF");
    let dirs = LookupDirs {
        huggingface: Some(cache.path().into()),
        ..LookupDirs::default()
    };
    let found = ModelSource::parse("Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen.gguf")
        .resolve_in(&dirs)
        .unwrap();
    assert_eq!(found, repo.join("snapshots/abc123/qwen.gguf"));

    let err = ModelSource::parse("Qwen/Other-GGUF:x.gguf")
        .resolve_in(&dirs)
        .unwrap_err();
    let Error::ModelLookup { looked, hint, .. } = &err else {
        panic!("{err}")
    };
    assert!(looked[0].contains("models--Qwen--Other-GGUF"), "{looked:?}");
    assert!(
        hint.contains("huggingface-cli download Qwen/Other-GGUF x.gguf"),
        "{hint}"
    );
}

#[test]
fn an_ollama_model_is_found_through_its_manifest() {
    let store = tempfile::tempdir().unwrap();
    let manifest = r#"{"schemaVersion":2,"layers":[
        {"mediaType":"application/vnd.ollama.image.template","digest":"sha256:111"},
        {"mediaType":"application/vnd.ollama.image.model","digest":"sha256:222"}]}"#;
    write(
        &store
            .path()
            .join("manifests/registry.ollama.ai/library/qwen2.5/0.5b"),
        manifest,
    );
    write(&store.path().join("blobs/sha256-222"), "GGUF");
    let dirs = LookupDirs {
        ollama: Some(store.path().into()),
        ..LookupDirs::default()
    };
    let found = ModelSource::parse("qwen2.5:0.5b")
        .resolve_in(&dirs)
        .unwrap();
    assert_eq!(found, store.path().join("blobs/sha256-222"));

    let err = ModelSource::parse("llama3.2")
        .resolve_in(&dirs)
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("manifests/registry.ollama.ai/library/llama3.2/latest"),
        "{message}"
    );
    assert!(message.contains("ollama pull llama3.2"), "{message}");
}

#[test]
fn a_missing_path_says_where_it_looked_and_what_to_do() {
    let err = ModelSource::parse("/nowhere/model.gguf")
        .resolve_in(&LookupDirs::default())
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("/nowhere/model.gguf") && message.contains("Hugging Face"),
        "{message}"
    );
}

#[test]
fn catalog_models_are_found_by_short_name_in_the_models_cache() {
    let cache = tempfile::tempdir().unwrap();
    let dirs = LookupDirs {
        catalog: Some(cache.path().into()),
        ..LookupDirs::default()
    };
    let source = ModelSource::parse("smollm2-135m");
    assert_eq!(
        source,
        ModelSource::Catalog {
            name: "smollm2-135m".into()
        }
    );
    let err = source.resolve_in(&dirs).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("SmolLM2-135M-Instruct.Q4_1.gguf") && message.contains("make models"),
        "{message}"
    );
    write(
        &cache.path().join("SmolLM2-135M-Instruct.Q4_1.gguf"),
        "GGUF",
    );
    assert_eq!(
        source.resolve_in(&dirs).unwrap(),
        cache.path().join("SmolLM2-135M-Instruct.Q4_1.gguf")
    );
    assert!(matches!(
        ModelSource::parse("GEMMA3-270M"),
        ModelSource::Catalog { .. }
    ));
}
