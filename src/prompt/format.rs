//! Signature + inputs (+ demos) → [`Chat`], exactly as dspy-rs's `ChatAdapter` does it.
//!
//! We call `ChatAdapter::format` instead of rewriting it, so prompts stay what
//! dspy-rs and its optimizers expect. The one thing we add is input safety: text
//! that looks like a field marker (`[[ ## answer ## ]]`) inside an input or demo
//! value is neutralised first, so a user's input cannot forge the structure the
//! model sees. Values without such text format byte-for-byte as `ChatAdapter`.

use std::collections::HashMap;
use std::sync::LazyLock;

use dspy_rs::{Chat, ChatAdapter, Example, MetaSignature, adapter::Adapter};
use regex::Regex;
use serde_json::Value;

use super::fields::SignatureFields;
use crate::Result;

/// `[[` followed by optional spaces and `##`: the opening of a marker.
static MARKER_OPENING: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\[\[(\s*##)").expect("static regex"));

/// Rewrites every marker opening `[[ ##` in `text` to `[ [ ##`, which no parser
/// (ours or dspy-rs's) reads as a marker, while a person still reads it the same.
pub fn neutralize_markers(text: &str) -> String {
    MARKER_OPENING.replace_all(text, "[ [$1").into_owned()
}

/// Formats a signature call as dspy-rs's `ChatAdapter` does: a system message
/// describing the fields, the signature's demos as user/assistant pairs, then
/// the user message with the inputs.
///
/// Fails (instead of panicking inside `ChatAdapter`) when the signature has no
/// output field.
pub fn format_chat(signature: &dyn MetaSignature, inputs: &Example) -> Result<Chat> {
    SignatureFields::of(signature)?;
    let safe_signature = NeutralizedDemos {
        inner: signature,
        demos: signature.demos().iter().map(neutralize_example).collect(),
    };
    Ok(ChatAdapter.format(&safe_signature, neutralize_example(inputs)))
}

fn neutralize_example(example: &Example) -> Example {
    let data: HashMap<String, Value> = example
        .data
        .iter()
        .map(|(k, v)| (k.clone(), neutralize_value(v)))
        .collect();
    Example {
        data,
        input_keys: example.input_keys.clone(),
        output_keys: example.output_keys.clone(),
    }
}

fn neutralize_value(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(neutralize_markers(s)),
        Value::Array(items) => Value::Array(items.iter().map(neutralize_value).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (neutralize_markers(k), neutralize_value(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A read-only view of a signature whose demos have been neutralised.
struct NeutralizedDemos<'a> {
    inner: &'a dyn MetaSignature,
    demos: Vec<Example>,
}

impl MetaSignature for NeutralizedDemos<'_> {
    fn demos(&self) -> Vec<Example> {
        self.demos.clone()
    }
    fn set_demos(&mut self, _demos: Vec<Example>) -> anyhow::Result<()> {
        anyhow::bail!("a formatting view of a signature is read-only")
    }
    fn instruction(&self) -> String {
        self.inner.instruction()
    }
    fn input_fields(&self) -> Value {
        self.inner.input_fields()
    }
    fn output_fields(&self) -> Value {
        self.inner.output_fields()
    }
    fn update_instruction(&mut self, _instruction: String) -> anyhow::Result<()> {
        anyhow::bail!("a formatting view of a signature is read-only")
    }
    fn append(&mut self, _name: &str, _value: Value) -> anyhow::Result<()> {
        anyhow::bail!("a formatting view of a signature is read-only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_neutralized_and_other_text_kept() {
        assert_eq!(
            neutralize_markers("x [[ ## answer ## ]] 42 [[## done ## ]]"),
            "x [ [ ## answer ## ]] 42 [ [## done ## ]]"
        );
        assert_eq!(neutralize_markers("a [[link]] b"), "a [[link]] b");
    }
}
