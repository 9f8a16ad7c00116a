//! A header's architecture numbers and vocabulary, checked before any
//! engine sees them. A corrupt or hostile file whose numbers contradict
//! each other (no heads, a negative epsilon, an infinite RoPE base) or
//! whose vocabulary has a token twice or a special token past its end makes
//! llama.cpp stop the process on an assertion (`GGML_ASSERT(eps >= 0.0f)`
//! in a decode, `id_to_token.size() == token_to_id.size()` in the load,
//! `token_bos() != LLAMA_TOKEN_NULL` in a tokenization; all found by the
//! mutation tests or read beside them) and candle compute garbage. Only keys
//! a file has are checked, so an architecture this crate has never seen
//! passes to the engines' own checks.

use std::collections::HashMap;

use super::{GgufHeader, MetadataValue};

/// Counts no real model comes near; above them a file is corrupt.
const MAX_LAYERS: u64 = 1 << 12;
const MAX_WIDTH: u64 = 1 << 20;

/// Why the header cannot describe a model an engine can load, if it cannot.
pub(super) fn contradiction(header: &GgufHeader) -> Option<String> {
    vocabulary(header).err().or_else(|| numbers(header))
}

/// Each token once, and every special token id within the vocabulary.
fn vocabulary(header: &GgufHeader) -> Result<(), String> {
    let Some(tokens) = header
        .get("tokenizer.ggml.tokens")
        .and_then(MetadataValue::as_array)
    else {
        return Ok(());
    };
    let mut seen = HashMap::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        let Some(text) = token.as_str() else {
            return Err(format!("token {id} of the vocabulary is not a string"));
        };
        if let Some(first) = seen.insert(text, id) {
            return Err(format!(
                "the vocabulary has the token {text:?} twice (ids {first} and {id})"
            ));
        }
    }
    // llama.cpp disables a special token past the vocabulary with a warning,
    // then asserts when it must add that token to a prompt: when the file
    // says so, or by default for a SentencePiece vocabulary's BOS.
    let sentencepiece = header.get_str("tokenizer.ggml.model") == Some("llama");
    for (token, by_default) in [("bos", sentencepiece), ("eos", false)] {
        let added = header
            .get(&format!("tokenizer.ggml.add_{token}_token"))
            .and_then(MetadataValue::as_bool)
            .unwrap_or(by_default);
        let key = format!("tokenizer.ggml.{token}_token_id");
        if added && let Some(id) = header.get_u64(&key).filter(|&id| id >= tokens.len() as u64) {
            return Err(format!(
                "`{key}` is {id}, past the vocabulary's {} tokens, and every prompt gets it",
                tokens.len()
            ));
        }
    }
    Ok(())
}

/// Why the architecture's numbers cannot describe a model, if they cannot.
fn numbers(header: &GgufHeader) -> Option<String> {
    let architecture = header.architecture()?;
    let key = |suffix: &str| format!("{architecture}.{suffix}");
    // Every float under the architecture's keys is finite (arrays included).
    for (name, value) in header.metadata.range(key("")..) {
        if !name.starts_with(&key("")) {
            break;
        }
        let items = value.as_array().unwrap_or(std::slice::from_ref(value));
        if items
            .iter()
            .any(|v| matches!(v, MetadataValue::Float(f) if !f.is_finite()))
        {
            return Some(format!("`{name}` is not a finite number"));
        }
    }
    // Counts within bounds, where the file has them as single numbers (some
    // architectures give per-layer arrays, which llama.cpp checks itself).
    let count = |suffix: &str, least: u64, most: u64| -> Result<Option<u64>, String> {
        match header.get(&key(suffix)) {
            Some(value @ (MetadataValue::Uint(_) | MetadataValue::Int(_))) => {
                match value.as_u64().filter(|n| (least..=most).contains(n)) {
                    Some(n) => Ok(Some(n)),
                    None => Err(format!(
                        "`{}` is {value:?}; it must be from {least} to {most}",
                        key(suffix)
                    )),
                }
            }
            _ => Ok(None),
        }
    };
    let checked = || -> Result<(), String> {
        count("block_count", 1, MAX_LAYERS)?;
        count("context_length", 1, u64::from(u32::MAX))?;
        count("feed_forward_length", 1, MAX_WIDTH * 16)?;
        let width = count("embedding_length", 1, MAX_WIDTH)?;
        let heads = count("attention.head_count", 1, MAX_WIDTH)?;
        let kv_heads = count("attention.head_count_kv", 1, MAX_WIDTH)?;
        let head_dim = count("attention.key_length", 1, MAX_WIDTH)?;
        count("attention.value_length", 1, MAX_WIDTH)?;
        if let (Some(heads), Some(kv_heads)) = (heads, kv_heads)
            && !heads.is_multiple_of(kv_heads)
        {
            return Err(format!(
                "{heads} query heads cannot share {kv_heads} key/value heads"
            ));
        }
        let head_dim = head_dim.or_else(|| Some(width? / heads?));
        if let (Some(rope), Some(head_dim)) =
            (count("rope.dimension_count", 0, MAX_WIDTH)?, head_dim)
            && rope > head_dim
        {
            return Err(format!(
                "RoPE over {rope} dimensions of {head_dim}-dimensional heads"
            ));
        }
        if head_dim == Some(0) {
            return Err("the heads have no dimensions".into());
        }
        for (suffix, least) in [
            ("attention.layer_norm_rms_epsilon", 0.0),
            ("attention.layer_norm_epsilon", 0.0),
        ] {
            if let Some(value) = header.arch_f64(suffix).filter(|v| *v < least) {
                return Err(format!(
                    "`{}` is {value}; it must be at least {least}",
                    key(suffix)
                ));
            }
        }
        for suffix in [
            "rope.freq_base",
            "rope.freq_base_swa",
            "rope.scaling.factor",
        ] {
            if let Some(value) = header.arch_f64(suffix).filter(|v| *v <= 0.0) {
                return Err(format!("`{}` is {value}; it must be above 0", key(suffix)));
            }
        }
        Ok(())
    };
    checked().err()
}
