//! The output constraint: a grammar, built from a signature, that every reply must follow.
//!
//! The grammar forces the marker structure `ChatAdapter` uses for demos —
//! `[[ ## field ## ]]\n<value>\n\n` for each output field in order, then
//! `[[ ## completed ## ]]` and an optional newline — with each value of its
//! declared type:
//! free text for `String` fields (never containing `[[`, so no marker can be
//! forged), and compact JSON matching the field's schema for everything else
//! (integers, numbers, booleans, lists, structs).
//!
//! It is written in llguidance's Lark dialect. llguidance computes, at each
//! step, the set of tokens of the model's own vocabulary that keep the reply
//! inside the grammar; both backends apply that mask to the logits before
//! sampling, so the same grammar binds llama.cpp and candle (GBNF would bind
//! llama.cpp only). `specs/prompt-protocol.md` says more.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};

use super::fields::{SignatureFields, ValueKind};
use crate::{Error, Result};

/// Marker that ends every reply.
pub const COMPLETED_MARKER: &str = "[[ ## completed ## ]]";

/// Default cap on the characters of one free-text value (and of each string
/// inside a JSON value), so that even a model with random weights reaches
/// `[[ ## completed ## ]]` in bounded time.
pub const DEFAULT_MAX_TEXT_CHARS: usize = 1500;

/// The marker that opens a field's value.
pub fn field_marker(name: &str) -> String {
    format!("[[ ## {name} ## ]]")
}

/// A grammar for the replies of one signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputConstraint {
    lark: String,
}

impl OutputConstraint {
    /// Builds the grammar for a signature's output fields. Every value is
    /// bounded: free text to `max_text_chars` characters, strings inside JSON
    /// likewise, lists to `max_text_chars / 16` items, numbers to 16 digits.
    pub fn for_fields(fields: &SignatureFields, max_text_chars: usize) -> Self {
        let max_text_chars = max_text_chars.max(1);
        let mut start = Vec::new();
        let mut rules = Vec::new();
        let outputs = &fields.outputs;
        start.push(lark_string(&format!(
            "{}\n",
            field_marker(&outputs[0].name)
        )));
        for (i, field) in outputs.iter().enumerate() {
            let separator = match outputs.get(i + 1) {
                Some(next) => format!("\n\n{}\n", field_marker(&next.name)),
                None => format!("\n\n{COMPLETED_MARKER}"),
            };
            let rule = format!("value_{i}");
            start.push(rule.clone());
            match &field.kind {
                ValueKind::Text => {
                    // A lazy gen: the text ends at the first separator, which it
                    // emits (suffix). Its body cannot contain `[[` and is bounded.
                    let body = format!(
                        r"([^\s\[]|\[[^\[])([^\[]|\[[^\[]){{0,{}}}\[?",
                        max_text_chars - 1
                    );
                    rules.push(format!(
                        "{rule}[suffix={}]: /{body}/",
                        lark_string(&separator)
                    ));
                }
                kind => {
                    rules.push(format!("{rule}: {}", typed_value(kind, max_text_chars)));
                    start.push(lark_string(&separator));
                }
            }
        }
        // ChatAdapter's demo replies end with a newline after the marker, so
        // a model that learned from them may write one (often inside the
        // same token as the marker).
        start.push(r#""\n"?"#.to_string());
        let lark = format!("start: {}\n{}\n", start.join(" "), rules.join("\n"));
        OutputConstraint { lark }
    }

    /// The grammar in llguidance's Lark syntax.
    pub fn lark(&self) -> &str {
        &self.lark
    }
}

const NUMBER: &str = r"/-?(0|[1-9][0-9]{0,15})(\.[0-9]{1,16})?([eE][-+]?[0-9]{1,2})?/";

/// The Lark expression of a typed value: bounded regexes for numbers and
/// booleans, compact JSON (llguidance's schema compiler) for integers (whose
/// type range it turns into an exact regex), lists, structs and anything else.
fn typed_value(kind: &ValueKind, max_text_chars: usize) -> String {
    match kind {
        ValueKind::Number => NUMBER.to_string(),
        ValueKind::Boolean => r#""true" | "false""#.to_string(),
        ValueKind::Optional(inner) if matches!(**inner, ValueKind::Number | ValueKind::Boolean) => {
            format!(r#"{} | "null""#, typed_value(inner, max_text_chars))
        }
        other => {
            let mut schema = other.json_schema();
            bound_schema(&mut schema, max_text_chars);
            if let Value::Object(map) = &mut schema {
                map.insert(
                    "x-guidance".into(),
                    json!({"whitespace_flexible": false, "item_separator": ",", "key_separator": ":"}),
                );
            }
            format!("%json {schema}")
        }
    }
}

fn lark_string(text: &str) -> String {
    // Lark string literals take JSON escapes.
    Value::String(text.to_string()).to_string()
}

/// Bounds every part of a JSON schema so generation always ends: strings get
/// a length cap and a pattern that forbids `[[` (no forged markers), lists an
/// item cap, integers a range.
fn bound_schema(schema: &mut Value, max_text_chars: usize) {
    match schema {
        Value::Object(map) => {
            match map.get("type").and_then(Value::as_str) {
                Some("string") => {
                    map.entry("pattern")
                        .or_insert_with(|| Value::String(r"^([^\[]|\[[^\[])*\[?$".into()));
                    map.entry("maxLength")
                        .or_insert_with(|| json!(max_text_chars));
                }
                Some("array") => {
                    map.entry("maxItems")
                        .or_insert_with(|| json!((max_text_chars / 16).max(1)));
                }
                Some("integer") => {
                    map.entry("minimum")
                        .or_insert_with(|| json!(-999_999_999_999_999_999i64));
                    map.entry("maximum")
                        .or_insert_with(|| json!(999_999_999_999_999_999i64));
                }
                _ => {}
            }
            map.values_mut()
                .for_each(|v| bound_schema(v, max_text_chars));
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| bound_schema(v, max_text_chars)),
        _ => {}
    }
}

/// A model vocabulary as the constraint engine sees it: each token's bytes.
#[derive(Debug, Clone)]
pub struct TokenVocabulary {
    /// Bytes of each token id. Special tokens (control tokens with no text)
    /// should be given as `0xFF` followed by their name so that no grammar
    /// can produce them as text.
    pub tokens: Vec<Vec<u8>>,
    /// End-of-generation tokens; the first is the primary one.
    pub end_of_generation: Vec<u32>,
}

/// Compiles grammars against one model's vocabulary. Build once per model
/// (it indexes the whole vocabulary) and share it.
#[derive(Clone)]
pub struct ConstraintCompiler {
    factory: Arc<ParserFactory>,
    vocab_size: usize,
}

impl std::fmt::Debug for ConstraintCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintCompiler")
            .field("vocab_size", &self.vocab_size)
            .finish_non_exhaustive()
    }
}

impl ConstraintCompiler {
    /// Indexes a vocabulary.
    pub fn new(vocabulary: &TokenVocabulary) -> Result<Self> {
        let primary_eos = *vocabulary.end_of_generation.first().ok_or_else(|| {
            Error::Constraint("the vocabulary has no end-of-generation token".into())
        })?;
        let vocab_size = vocabulary.tokens.len();
        let size = u32::try_from(vocab_size).map_err(|_| {
            Error::Constraint(format!("vocabulary of {vocab_size} tokens is too large"))
        })?;
        let info = TokRxInfo::new(size, primary_eos);
        let trie =
            TokTrie::from(&info, &vocabulary.tokens).with_eos_tokens(&vocabulary.end_of_generation);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        Self::from_env(env, vocab_size)
    }

    /// A vocabulary of the 256 single bytes plus an end token: lets tests check
    /// what a grammar accepts byte by byte, with no model.
    pub fn single_byte() -> Result<Self> {
        let env = ApproximateTokEnv::single_byte_env();
        let vocab_size = env.tok_trie().vocab_size();
        Self::from_env(env, vocab_size)
    }

    fn from_env(env: TokEnv, vocab_size: usize) -> Result<Self> {
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| Error::Constraint(e.to_string()))?;
        factory.quiet();
        Ok(ConstraintCompiler {
            factory: Arc::new(factory),
            vocab_size,
        })
    }

    /// Starts matching a reply against `constraint`.
    pub fn matcher(&self, constraint: &OutputConstraint) -> Result<ConstraintMatcher> {
        let grammar = TopLevelGrammar::from_lark(constraint.lark.clone());
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| Error::Constraint(format!("the grammar does not compile: {e}")))?;
        Ok(ConstraintMatcher {
            matcher: Matcher::new(Ok(parser)),
            tok_env: self.factory.tok_env().clone(),
        })
    }
}

/// The state of one reply under a constraint.
pub struct ConstraintMatcher {
    matcher: Matcher,
    tok_env: TokEnv,
}

impl std::fmt::Debug for ConstraintMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintMatcher")
            .field("stopped", &self.matcher.is_stopped())
            .finish_non_exhaustive()
    }
}

impl ConstraintMatcher {
    /// Sets the logit of every token the grammar does not allow next to −∞.
    /// Once the grammar is complete only end-of-generation tokens stay allowed.
    pub fn mask_logits(&mut self, logits: &mut [f32]) -> Result<()> {
        let mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| Error::Constraint(e.to_string()))?;
        // Ids past the vocabulary (padded output layers) are never allowed.
        let known = mask.len().min(logits.len());
        for (id, logit) in logits[..known].iter_mut().enumerate() {
            if !mask.is_allowed(id as u32) {
                *logit = f32::NEG_INFINITY;
            }
        }
        logits[known..].fill(f32::NEG_INFINITY);
        Ok(())
    }

    /// Advances the grammar by a sampled token.
    pub fn accept(&mut self, token: u32) -> Result<()> {
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| Error::Constraint(e.to_string()))
    }

    /// True once the grammar has been completed (only an end token may follow).
    pub fn is_complete(&mut self) -> bool {
        self.matcher.is_stopped() || self.matcher.is_accepting().unwrap_or(false)
    }

    /// Feeds `text` token by token (tokenized greedily by the constraint's own
    /// vocabulary) and reports whether the grammar accepts it as a whole reply.
    /// Meant for tests and diagnostics.
    pub fn accepts_text(&mut self, text: &str) -> bool {
        let tokens = self.tok_env.tokenize_bytes(text.as_bytes());
        for token in tokens {
            let Ok(mask) = self.matcher.compute_mask() else {
                return false;
            };
            if !mask.is_allowed(token) || self.matcher.consume_token(token).is_err() {
                return false;
            }
        }
        self.is_complete()
    }
}
