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
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};

use super::fields::{SignatureFields, ValueKind};
use super::tools::{ToolChoice, ToolFormat, ToolSpec};
use crate::error::message_cause;
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
    closing: ClosingPlan,
    /// When the reply may (or must) be a tool call instead.
    tool_call: Option<ToolClosing>,
}

/// A tool call as the closing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ToolClosing {
    /// Text before the call's JSON object (empty for a bare object).
    pub(crate) opening: String,
    /// Text after it.
    pub(crate) closing: String,
    /// The shortest whole call (of the first tool), when one can be named.
    pub(crate) minimal: Option<String>,
    /// Whether an answer may stand instead of the call.
    pub(crate) answer_allowed: bool,
}

/// How a reply under a constraint can be brought to its end when the token
/// budget runs short: the text that follows each part, and the shortest
/// valid value of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClosingPlan {
    /// A DSPy reply: its fields in order.
    Fields(Vec<FieldClosing>),
    /// One JSON value.
    Json {
        /// The shortest value the schema allows, if one could be found.
        minimal: Option<String>,
    },
    /// Free text: nothing to close.
    Free,
}

/// One field of a DSPy reply, as the closing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldClosing {
    /// The line that opens the value (`[[ ## answer ## ]]\n`).
    pub(crate) opening: String,
    /// Free text (ends at its separator) rather than a typed value.
    pub(crate) is_text: bool,
    /// The shortest valid value.
    pub(crate) minimal: String,
    /// What follows the value: the next field's opening, or the completed marker.
    pub(crate) separator: String,
}

impl ClosingPlan {
    /// The text that completes a reply after field `index`'s value.
    pub(crate) fn rest_after(&self, index: usize) -> String {
        match self {
            ClosingPlan::Fields(fields) => {
                let mut rest = fields
                    .get(index)
                    .map_or_else(String::new, |f| f.separator.clone());
                for field in fields.iter().skip(index + 1) {
                    rest.push_str(&field.minimal);
                    rest.push_str(&field.separator);
                }
                rest
            }
            ClosingPlan::Json { .. } | ClosingPlan::Free => String::new(),
        }
    }
}

impl OutputConstraint {
    /// Builds the grammar for a signature's output fields. Every value is
    /// bounded: free text to `max_text_chars` characters, strings inside JSON
    /// likewise, lists to `max_text_chars / 16` items, numbers to 16 digits.
    pub fn for_fields(fields: &SignatureFields, max_text_chars: usize) -> Self {
        let max_text_chars = max_text_chars.max(1);
        let mut start = Vec::new();
        let mut rules = Vec::new();
        let mut closing = Vec::new();
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
            closing.push(FieldClosing {
                opening: format!("{}\n", field_marker(&field.name)),
                is_text: field.kind == ValueKind::Text,
                minimal: minimal_value(&field.kind),
                separator: separator.clone(),
            });
            match &field.kind {
                ValueKind::Text => {
                    // A lazy gen: the text ends at the first separator, which it
                    // emits (suffix). Its body is bounded and cannot contain `[[`
                    // or `[#` (nothing that starts like a marker, which small
                    // models otherwise copy into values).
                    let body = format!(
                        r"([^\s\[]|\[[^\[#])([^\[]|\[[^\[#]){{0,{}}}\[?",
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
        OutputConstraint {
            lark,
            closing: ClosingPlan::Fields(closing),
            tool_call: None,
        }
    }

    /// Any text (bounded only by the token budget): the reply a plain chat
    /// gets, so that a tool call can be offered beside it.
    pub fn free_text() -> Self {
        OutputConstraint {
            lark: "start: /(.|\\n)+/\n".to_string(),
            closing: ClosingPlan::Free,
            tool_call: None,
        }
    }

    /// This reply, or one call of a tool in `format` instead: a known
    /// tool's name and arguments valid for its schema (strings and lists
    /// bounded as in a reply). `Required` and `Named` leave the call
    /// only; `None` leaves the reply only. A named tool that is not among
    /// `tools` is an error.
    pub fn with_tool_calls(
        self,
        tools: &[ToolSpec],
        format: ToolFormat,
        choice: &ToolChoice,
        max_text_chars: usize,
    ) -> Result<Self> {
        let callable: Vec<&ToolSpec> = match choice {
            ToolChoice::None => return Ok(self),
            ToolChoice::Auto | ToolChoice::Required => tools.iter().collect(),
            ToolChoice::Named(name) => tools.iter().filter(|t| &t.name == name).collect(),
        };
        if callable.is_empty() {
            return match choice {
                ToolChoice::Named(name) => Err(Error::InvalidConfig {
                    reason: format!("`tool_choice` names `{name}`, which is not among the tools"),
                }),
                ToolChoice::Required => Err(Error::InvalidConfig {
                    reason: "`tool_choice` requires a call but no tool is given".into(),
                }),
                _ => Ok(self),
            };
        }
        let call_schemas: Vec<Value> = callable
            .iter()
            .map(|tool| call_schema(tool, format, max_text_chars))
            .collect();
        let mut schema = json!({"oneOf": call_schemas});
        if let Value::Object(map) = &mut schema {
            map.insert("x-guidance".into(), python_json_options());
        }
        let call_rule = format!(
            "tool_call: {} %json {schema} {}",
            lark_string(format.opening()),
            lark_string(format.closing())
        );
        let minimal = call_schemas.first().and_then(minimal_json).map(|call| {
            format!(
                "{}{}{}",
                format.opening(),
                super::json_text::python_json(&call, None),
                format.closing()
            )
        });
        let answer_allowed = matches!(choice, ToolChoice::Auto);
        let lark = if answer_allowed {
            format!(
                "start: reply | tool_call\nreply{}{call_rule}\n",
                self.lark.strip_prefix("start").unwrap_or(&self.lark)
            )
        } else {
            format!("start: tool_call\n{call_rule}\n")
        };
        Ok(OutputConstraint {
            lark,
            closing: self.closing,
            tool_call: Some(ToolClosing {
                opening: format.opening().to_string(),
                closing: format.closing().to_string(),
                minimal,
                answer_allowed,
            }),
        })
    }

    /// How a tool call in the reply is closed, when one may be made.
    pub(crate) fn tool_closing(&self) -> Option<&ToolClosing> {
        self.tool_call.as_ref()
    }

    /// A grammar for a reply that is one JSON value following `schema` (an
    /// OpenAI `response_format`), compact, with strings and lists bounded
    /// as for signature fields so that generation always ends.
    pub fn json(schema: &Value, max_text_chars: usize) -> Self {
        let mut schema = schema.clone();
        bound_lengths(&mut schema, max_text_chars.max(1), false);
        if let Value::Object(map) = &mut schema {
            map.insert("x-guidance".into(), compact_json_options());
        }
        OutputConstraint {
            lark: format!("start: %json {schema}\n"),
            closing: ClosingPlan::Json {
                minimal: minimal_json(&schema).map(|v| v.to_string()),
            },
            tool_call: None,
        }
    }

    /// A grammar given as llguidance Lark text (a request's own, as a serving
    /// engine takes it). Nothing is known of its structure, so a reply that
    /// runs out of budget is cut, not closed.
    pub fn from_lark(lark: impl Into<String>) -> Self {
        OutputConstraint {
            lark: lark.into(),
            closing: ClosingPlan::Free,
            tool_call: None,
        }
    }

    /// How to bring a reply to its end when the budget runs short.
    pub(crate) fn closing(&self) -> &ClosingPlan {
        &self.closing
    }

    /// The grammar in llguidance's Lark syntax.
    pub fn lark(&self) -> &str {
        &self.lark
    }
}

/// The shortest valid value of a field, as the grammar writes it.
fn minimal_value(kind: &ValueKind) -> String {
    match kind {
        ValueKind::Text => "-".into(),
        ValueKind::Number => "0".into(),
        ValueKind::Boolean => "false".into(),
        other => {
            minimal_json(&other.json_schema()).map_or_else(|| "null".into(), |v| v.to_string())
        }
    }
}

/// The smallest JSON instance of `schema`, where one is easy to name: `{}`
/// with the required properties, `[]` (or `minItems` smallest items), `""`,
/// `0` (or the minimum), `false`, `null`, the first `enum` or `anyOf` choice.
/// `None` for what needs more (a string pattern, a length minimum).
pub(crate) fn minimal_json(schema: &Value) -> Option<Value> {
    let Value::Object(map) = schema else {
        return Some(Value::Null);
    };
    if let Some(value) = map.get("const") {
        return Some(value.clone());
    }
    if let Some(first) = map
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return Some(first.clone());
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = map.get(key).and_then(Value::as_array) {
            return options.iter().find_map(minimal_json);
        }
    }
    let kind = match map.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(Value::Array(kinds)) => kinds.first().and_then(Value::as_str).unwrap_or("null"),
        _ if map.contains_key("properties") => "object",
        _ => return Some(Value::Null),
    };
    match kind {
        "object" => {
            let properties = map.get("properties").and_then(Value::as_object);
            let mut object = serde_json::Map::new();
            for name in map
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = name.as_str()?;
                let property = properties
                    .and_then(|p| p.get(name))
                    .cloned()
                    .unwrap_or(Value::Null);
                object.insert(name.to_string(), minimal_json(&property)?);
            }
            Some(Value::Object(object))
        }
        "array" => {
            let count = map.get("minItems").and_then(Value::as_u64).unwrap_or(0);
            let item = map.get("items").map_or(Some(Value::Null), minimal_json)?;
            Some(Value::Array(vec![item; usize::try_from(count).ok()?]))
        }
        "string" => {
            let needs_more = map.get("minLength").and_then(Value::as_u64).unwrap_or(0) > 0
                || map.contains_key("pattern")
                || map.contains_key("format");
            (!needs_more).then(|| Value::String(String::new()))
        }
        "integer" | "number" => {
            let low = map.get("minimum").and_then(Value::as_f64).unwrap_or(0.0);
            let high = map.get("maximum").and_then(Value::as_f64).unwrap_or(0.0);
            let value = if low > 0.0 {
                low
            } else if high < 0.0 {
                high
            } else {
                0.0
            };
            if kind == "integer" {
                Some(json!(value.ceil() as i64))
            } else {
                serde_json::Number::from_f64(value).map(Value::Number)
            }
        }
        "boolean" => Some(Value::Bool(false)),
        _ => Some(Value::Null),
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
            bound_lengths(&mut schema, max_text_chars, true);
            if let Value::Object(map) = &mut schema {
                map.insert("x-guidance".into(), compact_json_options());
            }
            format!("%json {schema}")
        }
    }
}

fn lark_string(text: &str) -> String {
    // Lark string literals take JSON escapes.
    Value::String(text.to_string()).to_string()
}

/// The schema of one call of `tool`: its name, then its arguments.
fn call_schema(tool: &ToolSpec, format: ToolFormat, max_text_chars: usize) -> Value {
    let mut arguments = match &tool.parameters {
        Value::Object(map) if !map.is_empty() => tool.parameters.clone(),
        // No schema: an object with no arguments.
        _ => json!({"type": "object", "properties": {}}),
    };
    bound_lengths(&mut arguments, max_text_chars, false);
    close_objects(&mut arguments);
    json!({
        "type": "object",
        "properties": {
            "name": {"const": tool.name},
            format.arguments_key(): arguments,
        },
        "required": ["name", format.arguments_key()],
        "additionalProperties": false,
    })
}

/// Objects get no properties beyond those named (unless the schema says
/// otherwise), so a call ends with what the tool takes.
fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") {
                map.entry("additionalProperties")
                    .or_insert(Value::Bool(false));
            }
            for (key, value) in map.iter_mut() {
                if key != "const" && key != "enum" && key != "default" && key != "examples" {
                    close_objects(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// llguidance's options for JSON written as Python writes it (`", "`,
/// `": "`), which is how chat templates render calls back.
fn python_json_options() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// llguidance's options for JSON with no optional white space.
fn compact_json_options() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ",", "key_separator": ":"})
}

/// Bounds every part of a JSON schema so generation always ends: strings get
/// a length cap (and, in a DSPy reply, a pattern that forbids `[[`, so no
/// marker can be forged), lists an item cap, integers a range. Bounds the
/// schema already has are kept.
fn bound_lengths(schema: &mut Value, max_text_chars: usize, forbid_markers: bool) {
    match schema {
        Value::Object(map) => {
            match map.get("type").and_then(Value::as_str) {
                Some("string") => {
                    if forbid_markers {
                        map.entry("pattern")
                            .or_insert_with(|| Value::String(r"^([^\[]|\[[^\[])*\[?$".into()));
                    }
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
                // A range keeps exponents small enough for an f64 (JSON's
                // grammar alone allows `1e99999`, which no parser reads).
                Some("number") => {
                    map.entry("minimum").or_insert_with(|| json!(-1e15));
                    map.entry("maximum").or_insert_with(|| json!(1e15));
                }
                _ => {}
            }
            map.values_mut()
                .for_each(|v| bound_lengths(v, max_text_chars, forbid_markers));
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| bound_lengths(v, max_text_chars, forbid_markers)),
        _ => {}
    }
}

/// An llguidance error (an `anyhow` error) as our error's source.
fn engine_error(reason: &str, error: impl std::fmt::Display) -> Error {
    Error::Constraint {
        reason: reason.to_string(),
        source: Some(message_cause(error)),
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
        let primary_eos = *vocabulary
            .end_of_generation
            .first()
            .ok_or_else(|| Error::constraint("the vocabulary has no end-of-generation token"))?;
        let vocab_size = vocabulary.tokens.len();
        let size = u32::try_from(vocab_size).map_err(|_| {
            Error::constraint(format!("vocabulary of {vocab_size} tokens is too large"))
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
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| engine_error("indexing the vocabulary failed", e))?;
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
            .map_err(|e| engine_error("the grammar does not compile", e))?;
        Ok(ConstraintMatcher {
            matcher: Matcher::new(Ok(parser)),
            tok_env: self.factory.tok_env().clone(),
            prepared_mask: None,
        })
    }
}

/// The state of one reply under a constraint.
pub struct ConstraintMatcher {
    matcher: Matcher,
    tok_env: TokEnv,
    /// The mask of the current state, computed ahead
    /// ([`prepare_mask`](Self::prepare_mask)); dropped by every change of state.
    prepared_mask: Option<SimpleVob>,
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
        let mask = self.current_mask()?;
        super::token_mask::mask(logits, mask.as_slice(), mask.len());
        Ok(())
    }

    /// The id of the most likely token the grammar allows next (the lowest
    /// on ties): what [`mask_logits`](Self::mask_logits) and then the
    /// largest logit would give, read without masking a copy. `None` when
    /// the grammar allows no token with a finite logit.
    pub(crate) fn most_likely_allowed(&mut self, logits: &[f32]) -> Result<Option<u32>> {
        let mask = self.current_mask()?;
        Ok(super::token_mask::argmax_allowed(
            logits,
            mask.as_slice(),
            mask.len(),
        ))
    }

    /// The mask prepared ahead, or computed now.
    fn current_mask(&mut self) -> Result<SimpleVob> {
        // A check since (`allows`) may have put the matcher in its error
        // state: the mask prepared before no longer says what is allowed.
        match self.prepared_mask.take() {
            Some(mask) if !self.matcher.is_error() => Ok(mask),
            _ => self.compute_mask(),
        }
    }

    /// Computes the mask of the current state now, for the next
    /// [`mask_logits`](Self::mask_logits): it does not depend on the
    /// logits, so a backend computes it while the device runs the pass.
    /// An error is left for `mask_logits` to report.
    pub(crate) fn prepare_mask(&mut self) {
        if self.prepared_mask.is_none() {
            self.prepared_mask = self.compute_mask().ok();
        }
    }

    fn compute_mask(&mut self) -> Result<SimpleVob> {
        self.matcher
            .compute_mask_or_eos()
            .map_err(|e| engine_error("computing the token mask failed", e))
    }

    /// Whether the grammar allows `token` next (nothing changes): what
    /// [`mask_logits`](Self::mask_logits) would leave, for one token.
    pub(crate) fn allows(&mut self, token: u32) -> bool {
        !self.matcher.is_stopped() && self.validates(&[token])
    }

    /// Tokens of the text the grammar forces next (a marker, a separator),
    /// split greedily by this vocabulary, as far as the grammar takes them;
    /// empty when the next byte is the model's choice. A guess at what the
    /// model will write, which the decoder checks (`Decoder::choose`): the
    /// model may split the same text differently.
    pub(crate) fn forced_tokens(&mut self) -> Vec<u32> {
        if self.matcher.is_stopped() {
            return Vec::new();
        }
        let bytes = self.matcher.compute_ff_bytes();
        if bytes.is_empty() {
            return Vec::new();
        }
        let mut tokens = self.tok_env.tokenize_bytes(&bytes);
        let allowed = self.matcher.validate_tokens(&tokens).unwrap_or(0);
        tokens.truncate(allowed);
        tokens
    }

    /// Advances the grammar by a sampled token.
    pub fn accept(&mut self, token: u32) -> Result<()> {
        self.prepared_mask = None;
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| engine_error("the grammar rejected a token", e))
    }

    /// True once the grammar has been completed (only an end token may follow).
    pub fn is_complete(&mut self) -> bool {
        self.matcher.is_stopped() || self.matcher.is_accepting().unwrap_or(false)
    }

    /// `text` as tokens of this vocabulary (greedy longest match), for text
    /// the reply must end with.
    pub(crate) fn tokenize(&self, text: &str) -> Vec<u32> {
        self.tok_env.tokenize_bytes(text.as_bytes())
    }

    /// Whether the grammar allows all of `tokens` from here (nothing changes).
    pub(crate) fn validates(&mut self, tokens: &[u32]) -> bool {
        matches!(self.matcher.validate_tokens(tokens), Ok(n) if n == tokens.len())
    }

    /// The bytes of a token of this vocabulary.
    pub(crate) fn token_bytes(&self, token: u32) -> Vec<u8> {
        self.tok_env.tok_trie().token(token).to_vec()
    }

    /// Advances by all of `tokens` if the grammar allows every one; otherwise
    /// changes nothing and returns false.
    pub(crate) fn accept_all(&mut self, tokens: &[u32]) -> bool {
        self.prepared_mask = None;
        self.validates(tokens) && self.matcher.consume_tokens(tokens).is_ok()
    }

    /// Takes back the last `tokens` tokens.
    pub(crate) fn rollback(&mut self, tokens: usize) -> bool {
        if tokens > 0 {
            self.prepared_mask = None;
        }
        tokens == 0 || self.matcher.rollback(tokens).is_ok()
    }

    /// Feeds `text` token by token (tokenized greedily by the constraint's own
    /// vocabulary) and reports whether the grammar accepts it as a whole reply.
    /// Meant for tests and diagnostics.
    pub fn accepts_text(&mut self, text: &str) -> bool {
        self.prepared_mask = None;
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
