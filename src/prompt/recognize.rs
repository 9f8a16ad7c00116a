//! Reading a DSPy `ChatAdapter` system message back into its fields, so a
//! server that receives one (from dspy-rs's `LM`, an optimizer, or Python
//! DSPy) can hold the reply to the same output grammar as the adapters.
//!
//! Both DSPys write the same shape:
//!
//! ```text
//! Your input fields are:
//! 1. `question` (String): …
//! Your output fields are:
//! 1. `answer` (i32): …
//! All interactions will be structured in the following way, …
//! [[ ## answer ## ]]
//! answer    # note: the value you produce must be a single i32 value
//! ```
//!
//! Types are Rust's (dspy-rs) or Python's (`str`, `int`, `list[str]`); a
//! `JSON schema` note after a field's marker gives its exact shape.

use serde_json::Value;

use super::fields::{FieldSpec, SignatureFields, ValueKind};

const OUTPUTS_HEADING: &str = "Your output fields are:";
/// Python DSPy's `JSONAdapter` says this of its replies.
const JSON_REPLY: &str = "Outputs will be a JSON object with the following fields";
const INPUTS_HEADING: &str = "Your input fields are:";
const SCHEMA_NOTE: &str = "must adhere to the JSON schema:";

/// The shape a DSPy prompt asks its reply to take.
#[derive(Debug, Clone, PartialEq)]
pub enum DspyReply {
    /// `[[ ## field ## ]]` markers and values (`ChatAdapter`, both DSPys).
    Markers(SignatureFields),
    /// One JSON object holding the fields (Python DSPy's `JSONAdapter`).
    JsonObject(SignatureFields),
}

/// What a DSPy system message asks the reply to be, or `None` when `system`
/// is not one.
pub fn dspy_reply(system: &str) -> Option<DspyReply> {
    let fields = dspy_fields(system)?;
    Some(if system.contains(JSON_REPLY) {
        DspyReply::JsonObject(fields)
    } else {
        DspyReply::Markers(fields)
    })
}

/// The fields a DSPy `ChatAdapter` system message declares, or `None` when
/// `system` is not one (no output field list).
pub fn dspy_fields(system: &str) -> Option<SignatureFields> {
    let outputs = field_list(system, OUTPUTS_HEADING)?;
    if outputs.is_empty() {
        return None;
    }
    let inputs = field_list(system, INPUTS_HEADING).unwrap_or_default();
    let with_kinds = |fields: Vec<(String, String)>| -> Vec<FieldSpec> {
        fields
            .into_iter()
            .map(|(name, type_name)| FieldSpec {
                kind: kind_of(system, &name, &type_name),
                name,
                type_name,
            })
            .collect()
    };
    Some(SignatureFields {
        inputs: with_kinds(inputs),
        outputs: with_kinds(outputs),
    })
}

/// The `N. `name` (Type)` lines under `heading`, in order.
fn field_list(system: &str, heading: &str) -> Option<Vec<(String, String)>> {
    let start = system.find(heading)? + heading.len();
    let mut fields = Vec::new();
    for line in system[start..].lines().skip(1) {
        let line = line.trim_end();
        if line.is_empty() {
            if fields.is_empty() {
                continue;
            }
            break;
        }
        match numbered_field(line) {
            Some(field) => fields.push(field),
            // A description's continuation line (Python indents them).
            None if line.starts_with(char::is_whitespace) => {}
            None => break,
        }
    }
    Some(fields)
}

/// `1. `answer` (i32): …` → (`answer`, `i32`).
fn numbered_field(line: &str) -> Option<(String, String)> {
    let (number, rest) = line.split_once(". `")?;
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (name, rest) = rest.split_once('`')?;
    let valid_name =
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        return None;
    }
    let type_name = rest
        .trim_start()
        .strip_prefix('(')
        .and_then(|t| balanced_until_close(t))
        .unwrap_or("String");
    Some((name.to_string(), type_name.to_string()))
}

/// The text up to the `)` that closes an already opened `(`.
fn balanced_until_close(text: &str) -> Option<&str> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' | '[' | '<' => depth += 1,
            ']' | '>' => depth = depth.saturating_sub(1),
            ')' if depth == 0 => return Some(&text[..i]),
            ')' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// A field's kind: its JSON-schema note when the message has one, else its
/// declared type (Rust's or Python's).
fn kind_of(system: &str, name: &str, type_name: &str) -> ValueKind {
    if let Some(schema) = schema_note(system, name) {
        return ValueKind::from_schema(schema);
    }
    let rust = python_as_rust(type_name);
    match ValueKind::from_declared(&rust, &Value::Null) {
        // A type neither language names plainly: free text, which every
        // DSPy parser accepts.
        ValueKind::Any => ValueKind::Text,
        kind => kind,
    }
}

/// The JSON schema noted after `[[ ## name ## ]]`, if any.
fn schema_note(system: &str, name: &str) -> Option<Value> {
    let marker = super::field_marker(name);
    let after = &system[system.find(&marker)? + marker.len()..];
    let note_line = after.lines().nth(1)?;
    let json = note_line.split_once(SCHEMA_NOTE)?.1.trim();
    serde_json::from_str(json).ok()
}

/// Python DSPy's type names as the Rust names `ValueKind` reads.
fn python_as_rust(type_name: &str) -> String {
    let compact: String = type_name.chars().filter(|c| !c.is_whitespace()).collect();
    let lowered = compact.to_ascii_lowercase();
    if let Some(inner) = lowered
        .strip_prefix("list[")
        .and_then(|r| r.strip_suffix(']'))
    {
        return format!("Vec<{}>", python_as_rust(inner));
    }
    if let Some(inner) = compact
        .strip_prefix("Optional[")
        .and_then(|r| r.strip_suffix(']'))
    {
        return format!("Option<{}>", python_as_rust(inner));
    }
    match lowered.as_str() {
        "str" => "String".into(),
        "int" => "i64".into(),
        "float" => "f64".into(),
        "bool" => "bool".into(),
        _ => compact,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUST: &str = "Your input fields are:\n1. `question` (String)\n\nYour output fields are:\n\
        1. `reasoning` (String): think first\n2. `sum` (i32)\n3. `words` (Vec < String >)\n\n\
        All interactions will be structured in the following way, with the appropriate values filled in.\n\n\
        [[ ## question ## ]]\nquestion\n\n[[ ## reasoning ## ]]\nreasoning\n\n\
        [[ ## sum ## ]]\nsum\t# note: the value you produce must be a single i32 value\n\n\
        [[ ## words ## ]]\nwords\t# note: the value you produce must be a single Vec < String > value\n\n\
        [[ ## completed ## ]]\n\nIn adhering to this structure, your objective is:\n\tAdd.";

    const PYTHON: &str = "Your input fields are:\n1. `question` (str):\nYour output fields are:\n\
        1. `answer` (int): the answer,\n        over two lines\n2. `tags` (list[str])\n\
        All interactions will be structured in the following way, with the appropriate values filled in.\n\n\
        [[ ## question ## ]]\n{question}\n\n[[ ## answer ## ]]\n{answer}        # note: the value you produce must be a single int value\n\n\
        [[ ## tags ## ]]\n{tags}        # note: the value you produce must adhere to the JSON schema: {\"items\": {\"type\": \"string\"}, \"type\": \"array\"}\n\n\
        [[ ## completed ## ]]\nIn adhering to this structure, your objective is: \n        Answer.";

    #[test]
    fn dspy_rs_and_python_system_messages_give_their_output_fields() {
        let fields = dspy_fields(RUST).unwrap();
        let names: Vec<&str> = fields.outputs.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["reasoning", "sum", "words"]);
        assert_eq!(fields.outputs[0].kind, ValueKind::Text);
        assert!(matches!(fields.outputs[1].kind, ValueKind::Integer { .. }));
        assert_eq!(
            fields.outputs[2].kind,
            ValueKind::List(Box::new(ValueKind::Text))
        );
        assert_eq!(fields.inputs[0].name, "question");

        let fields = dspy_fields(PYTHON).unwrap();
        let names: Vec<&str> = fields.outputs.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["answer", "tags"]);
        assert!(matches!(fields.outputs[0].kind, ValueKind::Integer { .. }));
        assert_eq!(
            fields.outputs[1].kind.json_schema(),
            serde_json::json!({"items": {"type": "string"}, "type": "array"})
        );
    }

    #[test]
    fn a_json_adapter_prompt_asks_for_an_object() {
        let json = PYTHON.replace(
            "All interactions will be structured",
            "Outputs will be a JSON object with the following fields.\nAll interactions will be structured",
        );
        assert!(matches!(dspy_reply(&json), Some(DspyReply::JsonObject(_))));
        assert!(matches!(dspy_reply(PYTHON), Some(DspyReply::Markers(_))));
    }

    #[test]
    fn other_system_messages_are_not_dspy() {
        assert!(dspy_fields("You are a helpful assistant.").is_none());
        assert!(dspy_fields("Your output fields are:\nnone at all").is_none());
    }
}
