//! The model's own vocabulary: BPE merges learned by the `tokenizers` crate on
//! the rendered training prompts, stored as a llama.cpp SentencePiece
//! (`tokenizer.ggml.model = "llama"`) vocabulary.
//!
//! Why SentencePiece storage: llama.cpp's BPE type always splits text into
//! words first, so no token could span a space. The SentencePiece type merges
//! across spaces (`▁`), which turns DSPy's fixed boilerplate ("Your input
//! fields are:", "Respond with the corresponding output fields, …") into a few
//! tokens and makes training sequences several times shorter. Each merged
//! token's score is minus its learning rank, so llama.cpp (and our candle
//! tokenizer, which copies llama.cpp's algorithm) apply merges in the order
//! BPE learned them. Merges across spaces are learned from the prompt's fixed
//! text only, on top of whole words ([`train`]), so a value's words stay the
//! same tokens wherever they appear. Digits are kept out of every merge, so
//! numbers are read and written digit by digit.

use std::collections::HashMap;

use anyhow::{Context, Result};
use candle_core::quantized::gguf_file::Value;
use dsrs_local::prompt::CHATML_TEMPLATE;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::{Model, Trainer};

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

/// Marks the start of a field value in the texts [`train`] learns from.
pub const VALUE_START: char = '\u{E000}';
/// Marks the end of a field value.
pub const VALUE_END: char = '\u{E001}';

/// Learns a vocabulary of about `vocab_size` tokens (beyond the special and
/// byte tokens) from `texts`, whose field values are marked with
/// [`VALUE_START`]/[`VALUE_END`], and returns the GGUF `tokenizer.*` keys.
///
/// Two BPE stages, so the tokens of a value are the same words wherever it
/// appears (a word in a sentence, the same word in a JSON list):
/// 1. `word_share` of the merges within words only (no merge touches a space,
///    a digit or punctuation), on all the text;
/// 2. the rest on top of those words across spaces and punctuation, learned
///    from the fixed text only (values left out), which turns DSPy's
///    boilerplate into a few tokens.
///
/// Every stage-1 token outranks every stage-2 token, so the tokenizer (which
/// merges by score) forms the words first and glues only fixed text after.
pub fn train(
    texts: &[String],
    vocab_size: usize,
    word_share: f64,
) -> Result<HashMap<String, Value>> {
    let runs: Vec<String> = texts.iter().flat_map(|text| plain_runs(text)).collect();

    // Stage 1: words.
    let word_tokens = ((vocab_size as f64) * word_share) as usize;
    let words = learn_merges(&runs, word_tokens, |run| word_pieces(&unmarked(run)))?;
    let mut word_vocab: Vec<(String, u32)> = words.get_vocab().into_iter().collect();
    word_vocab.sort_by_key(|(_, id)| *id);

    // Stage 2: the fixed text, each stage-1 token written as one private-use
    // character so the second trainer merges whole words.
    let symbol = |id: u32| char::from_u32(STAGE_TWO_SYMBOLS + id).context("symbol out of range");
    let mut fixed_runs = Vec::new();
    for run in &runs {
        for part in fixed_parts(run) {
            let mut symbols = String::new();
            for piece in word_pieces(&part) {
                for token in words
                    .tokenize(&piece)
                    .map_err(|e| anyhow::anyhow!("word BPE: {e}"))?
                {
                    symbols.push(symbol(token.id)?);
                }
            }
            fixed_runs.push(symbols);
        }
    }
    let alphabet: std::collections::HashSet<char> =
        fixed_runs.iter().flat_map(|r| r.chars()).collect();
    let phrases = learn_merges(
        &fixed_runs,
        alphabet.len() + vocab_size.saturating_sub(word_tokens),
        |run| vec![run.to_string()],
    )?;
    let mut phrase_vocab: Vec<(String, u32)> = phrases.get_vocab().into_iter().collect();
    phrase_vocab.sort_by_key(|(_, id)| *id);
    let word_text: HashMap<u32, &str> =
        word_vocab.iter().map(|(t, id)| (*id, t.as_str())).collect();
    let spelled = |symbols: &str| -> Option<String> {
        symbols
            .chars()
            .map(|c| {
                word_text
                    .get(&((c as u32).checked_sub(STAGE_TWO_SYMBOLS)?))
                    .copied()
            })
            .collect()
    };

    let mut tokens: Vec<String> = SPECIAL_TOKENS.iter().map(|t| t.to_string()).collect();
    let mut types = vec![TYPE_UNKNOWN, TYPE_CONTROL, TYPE_CONTROL, TYPE_CONTROL];
    for byte in 0..=255u8 {
        tokens.push(format!("<0x{byte:02X}>"));
        types.push(TYPE_BYTE);
    }
    // A phrase token spelled like a word token is the same token. Every
    // phrase symbol is a word token's, so `spelled` always succeeds.
    let mut seen: std::collections::HashSet<String> = tokens.iter().cloned().collect();
    let learned = word_vocab.iter().map(|(text, _)| Some(text.clone())).chain(
        phrase_vocab
            .into_iter()
            .map(|(symbols, _)| spelled(&symbols)),
    );
    for text in learned.flatten() {
        if seen.insert(text.clone()) {
            tokens.push(text);
            types.push(TYPE_NORMAL);
        }
    }
    // Earlier merges win, as in BPE: the score is minus the learning rank.
    let scores: Vec<f32> = (0..tokens.len())
        .map(|id| {
            if id < SPECIAL_TOKENS.len() + 256 {
                0.0
            } else {
                -(id as f32)
            }
        })
        .collect();

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

/// A BPE vocabulary of `vocab_size` (its alphabet included) learned from
/// `runs`, each cut into the pieces that merges stay within by `pieces`.
fn learn_merges(
    runs: &[String],
    vocab_size: usize,
    pieces: impl Fn(&str) -> Vec<String> + Sync,
) -> Result<BPE> {
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(4)
        .show_progress(false)
        .build();
    trainer
        .feed(runs.iter(), |run| Ok(pieces(run)))
        .map_err(|e| anyhow::anyhow!("feeding the BPE trainer: {e}"))?;
    let mut bpe = BPE::default();
    trainer
        .train(&mut bpe)
        .map_err(|e| anyhow::anyhow!("training BPE: {e}"))?;
    Ok(bpe)
}

/// Stage-2 symbols: stage-1 token `id` is `char(STAGE_TWO_SYMBOLS + id)`
/// (supplementary private use area, never in the texts).
const STAGE_TWO_SYMBOLS: u32 = 0xF_0000;

/// The run without value marks.
fn unmarked(run: &str) -> String {
    run.chars()
        .filter(|&c| c != VALUE_START && c != VALUE_END)
        .collect()
}

/// The fixed text of a run: the parts outside values, also cut at digits.
fn fixed_parts(run: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut in_value = false;
    for c in run.chars() {
        match c {
            VALUE_START => in_value = true,
            VALUE_END => in_value = false,
            _ if in_value => {}
            _ if c.is_ascii_digit() => {}
            _ => {
                current.push(c);
                continue;
            }
        }
        if !current.is_empty() {
            parts.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        parts.push(current);
    }
    parts
}

/// Stage-1 pieces: runs of letters, and every other character alone
/// (spaces, digits, punctuation), so no word merge ever crosses them.
fn word_pieces(run: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    for c in run.chars() {
        if c.is_alphabetic() {
            current.push(c);
        } else {
            if !current.is_empty() {
                parts.push(std::mem::take(&mut current));
            }
            parts.push(c.to_string());
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
