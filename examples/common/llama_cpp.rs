//! The llama.cpp adapter most examples run on.

/// A llama.cpp adapter on the model from `common::model_path`, with the
/// settings of `common::generation`; `llamacpp_qa.rs` shows these steps one by one.
pub(crate) fn llama_cpp_adapter()
-> anyhow::Result<(dsrs_local::LlamaCppAdapter, Option<tempfile::TempDir>)> {
    use std::sync::Arc;

    use dsrs_local::{LlamaCppAdapter, LlamaCppConfig, LlamaCppLoadOptions, LlamaCppModel};
    let (path, scratch) = super::common::model_path()?;
    let model = Arc::new(LlamaCppModel::load(&path, LlamaCppLoadOptions::default())?);
    let config =
        LlamaCppConfig::default().with_generation(super::common::generation(scratch.is_some()));
    Ok((LlamaCppAdapter::from_loaded_model(model, config), scratch))
}
