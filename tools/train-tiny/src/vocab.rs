//! The model's own vocabulary: BPE merges learned by the `tokenizers` crate on
//! the rendered training prompts, stored as a llama.cpp SentencePiece
//! (`tokenizer.ggml.model = "llama"`) vocabulary.
//!
//! Why SentencePiece storage: llama.cpp's BPE type always splits text into
//! words first, so no token could span a space. The SentencePiece type merges
//! across spaces (`▁`), which turns DSPy's fixed boilerplate ("Your input
//! fields are:", "Respond with the corresponding output fields, …") into a few
//! tokens and makes training sequences several times shorter. Each merged
//! token's score is minus its merge rank, so llama.cpp (and our candle
//! tokenizer, which copies llama.cpp's algorithm) apply merges in the order
//! BPE learned them. Digits are kept out of every merge, so numbers are read
//! and written digit by digit, which is what lets a small model do arithmetic.

use std::collections::HashMap;

use anyhow::{Context, Result};
use candle_core::quantized::gguf_file::Value;
use dsrs_local::prompt::CHATML_TEMPLATE;
use tokenizers::Trainer;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};

/// Special tokens, in id order from 0.
pub const SPECIAL_TOKENS: [&str; 4] = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const UNKNOWN_ID: u32 = 0;
const END_OF_TEXT_ID: u32 = 1;
const END_OF_TURN_ID: u32 = 3;

// llama.cpp's token types.
const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_BYTE: i32 = 6;

/// Learns `merges` BPE merges from `texts` and returns the GGUF `tokenizer.*`
/// keys of the finished vocabulary (special tokens, 256 byte-fallback tokens,
/// the characters seen, then the merged tokens).
pub fn train(texts: &[String], vocab_size: usize) -> Result<HashMap<String, Value>> {
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(4)
        .show_progress(false)
        .build();
    let pieces = texts.iter().flat_map(|text| plain_runs(text));
    trainer
        .feed(pieces, |run| Ok(split_digits(run)))
        .map_err(|e| anyhow::anyhow!("feeding the BPE trainer: {e}"))?;
    let mut bpe = BPE::default();
    trainer
        .train(&mut bpe)
        .map_err(|e| anyhow::anyhow!("training BPE: {e}"))?;
    let mut learned: Vec<(String, u32)> = bpe.get_vocab().into_iter().collect();
    learned.sort_by_key(|(_, id)| *id);

    let mut tokens: Vec<String> = SPECIAL_TOKENS.iter().map(|t| t.to_string()).collect();
    let mut types = vec![TYPE_UNKNOWN, TYPE_CONTROL, TYPE_CONTROL, TYPE_CONTROL];
    let mut scores = vec![0.0f32; tokens.len()];
    for byte in 0..=255u8 {
        tokens.push(format!("<0x{byte:02X}>"));
        types.push(TYPE_BYTE);
        scores.push(0.0);
    }
    for (text, id) in learned {
        tokens.push(text);
        types.push(TYPE_NORMAL);
        // Earlier merges win, as in BPE.
        scores.push(-(id as f32));
    }

    let array = |values: Vec<Value>| Value::Array(values);
    let mut metadata = HashMap::new();
    metadata.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    metadata.insert(
        "tokenizer.ggml.tokens".into(),
        array(tokens.into_iter().map(Value::String).collect()),
    );
    metadata.insert(
        "tokenizer.ggml.scores".into(),
        array(scores.into_iter().map(Value::F32).collect()),
    );
    metadata.insert(
        "tokenizer.ggml.token_type".into(),
        array(types.into_iter().map(Value::I32).collect()),
    );
    for (key, id) in [
        ("unknown_token_id", UNKNOWN_ID),
        ("bos_token_id", END_OF_TEXT_ID),
        ("eos_token_id", END_OF_TURN_ID),
        ("padding_token_id", END_OF_TEXT_ID),
    ] {
        metadata.insert(format!("tokenizer.ggml.{key}"), Value::U32(id));
    }
    for key in ["add_bos_token", "add_eos_token", "add_space_prefix"] {
        metadata.insert(format!("tokenizer.ggml.{key}"), Value::Bool(false));
    }
    metadata.insert(
        "tokenizer.chat_template".into(),
        Value::String(CHATML_TEMPLATE.into()),
    );
    Ok(metadata)
}

/// The text between special tokens, spaces written as `▁`.
fn plain_runs(text: &str) -> Vec<String> {
    let mut runs = vec![text.to_string()];
    for special in SPECIAL_TOKENS {
        runs = runs
            .iter()
            .flat_map(|run| run.split(special).map(str::to_string).collect::<Vec<_>>())
            .collect();
    }
    runs.into_iter()
        .filter(|run| !run.is_empty())
        .map(|run| run.replace(' ', "▁"))
        .collect()
}

/// Splits a run so that every digit stands alone and merges never touch one.
fn split_digits(run: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    for c in run.chars() {
        if c.is_ascii_digit() {
            if !current.is_empty() {
                parts.push(std::mem::take(&mut current));
            }
            parts.push(c.to_string());
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        parts.push(current);
    }
    parts
}

/// Writes a vocabulary-only GGUF, so the crate's own tokenizer (the one both
/// backends agree with) can be built from it.
pub fn write_vocab_only(metadata: &HashMap<String, Value>, path: &std::path::Path) -> Result<()> {
    let mut keys: Vec<&String> = metadata.keys().collect();
    keys.sort();
    let mut entries: Vec<(&str, &Value)> = keys
        .iter()
        .map(|key| (key.as_str(), &metadata[*key]))
        .collect();
    let architecture = Value::String("llama".into());
    entries.push(("general.architecture", &architecture));
    let mut file = std::fs::File::create(path).with_context(|| path.display().to_string())?;
    candle_core::quantized::gguf_file::write(&mut file, &entries, &[])?;
    Ok(())
}

/// The id of `<|im_end|>`, which ends every reply.
pub const END_OF_TURN: u32 = END_OF_TURN_ID;
