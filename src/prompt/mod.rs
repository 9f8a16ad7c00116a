//! The DSPy prompt protocol, with no backend in sight.
//!
//! - [`format_chat`]: signature + inputs (+ demos) → [`dspy_rs::Chat`], the
//!   same messages dspy-rs's `ChatAdapter` builds;
//! - [`ChatTemplate`]: `Chat` → the prompt text, through the model's own Jinja
//!   chat template (ChatML when it has none);
//! - [`parse_reply`]: reply text → typed output fields, tolerant, never panics;
//! - [`OutputConstraint`]: the grammar every reply must follow, enforced while
//!   sampling by [`ConstraintCompiler`] / [`ConstraintMatcher`];
//! - [`ToolSpec`], [`ToolCall`], [`ToolFormat`]: tools in the prompt, the
//!   call a reply may make instead of answering, and how each model family
//!   writes it.
//!
//! Both backends call these; neither has its own copy.

mod constraint;
mod fields;
mod format;
mod json_text;
mod parse;
mod recognize;
mod render;
pub(crate) mod token_mask;
mod tools;

pub use constraint::{
    COMPLETED_MARKER, ConstraintCompiler, ConstraintMatcher, DEFAULT_MAX_TEXT_CHARS,
    OutputConstraint, TokenVocabulary, field_marker,
};
pub(crate) use constraint::{ClosingPlan, ToolClosing};
pub use fields::{FieldSpec, SignatureFields, ValueKind};
pub use format::{format_chat, neutralize_markers};
pub use parse::{MistypedField, ParseError, parse_reply};
pub use recognize::{DspyReply, dspy_fields, dspy_reply};
pub use render::{
    CHATML_TEMPLATE, CHATML_TOOLS_TEMPLATE, ChatTemplate, GEMMA_TEMPLATE, ToolSupport, Turn,
};
pub use tools::{ToolCall, ToolChoice, ToolFormat, ToolSpec, fallback_section};
