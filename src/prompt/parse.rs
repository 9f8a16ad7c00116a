//! Reply text → output fields as typed `serde_json::Value`s. Never panics.
//!
//! Tolerant where dspy-rs's `ChatAdapter::parse_response` is strict:
//! - content on the marker's own line (`[[ ## answer ## ]] 42`), no newline
//!   after a marker, extra spaces inside a marker, markers in any order;
//! - the first occurrence of a field wins;
//! - `<think>…</think>` blocks are dropped;
//! - a JSON object with the field names (also inside a ```` ```json ```` fence)
//!   fills fields the markers did not give;
//! - `field: value` lines without markers (`Answer: Paris`, also `**Answer:**`
//!   and `- answer:`) fill fields neither markers nor JSON gave;
//! - with a single output field and no marker or label, the whole reply is its value;
//! - typed values are coerced (`"42"` → 42, `"yes"` → true, a list, an
//!   object), Python literals included (`['a', 'b']`, `True`, `None`,
//!   `{'key': 1}`).
//!
//! When some field is missing or cannot be coerced the result is a
//! [`ParseError`] naming each one and keeping what did parse.

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Number, Value};

use super::fields::{SignatureFields, ValueKind};

static MARKER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\[\[\s*##\s*([A-Za-z_][A-Za-z0-9_]*)\s*##\s*\]\]").expect("static regex")
});
static THINK_BLOCK: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)<think>.*?(</think>|\z)").expect("static regex"));
static JSON_FENCE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)```(?:json|JSON)?\s*\n?(.*?)```").expect("static regex"));

/// A field that was found but whose text is not a value of its declared type.
#[derive(Debug, Clone, PartialEq)]
pub struct MistypedField {
    /// The field's name.
    pub field: String,
    /// What the signature declares, in words.
    pub expected: String,
    /// The text that was found.
    pub found: String,
}

/// The reply did not yield every output field.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    /// Output fields with no value in the reply.
    pub missing: Vec<String>,
    /// Output fields whose value has the wrong type.
    pub mistyped: Vec<MistypedField>,
    /// The fields that did parse.
    pub parsed: HashMap<String, Value>,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut problems = Vec::new();
        if !self.missing.is_empty() {
            problems.push(format!("missing field(s) {}", quoted(&self.missing)));
        }
        for m in &self.mistyped {
            let found: String = m.found.chars().take(80).collect();
            problems.push(format!(
                "`{}` should be {} but is {found:?}",
                m.field, m.expected
            ));
        }
        write!(
            f,
            "the model's reply could not be parsed: {}",
            problems.join("; ")
        )
    }
}

impl std::error::Error for ParseError {}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a model's reply into the signature's output fields.
pub fn parse_reply(
    fields: &SignatureFields,
    reply: &str,
) -> Result<HashMap<String, Value>, ParseError> {
    let reply = THINK_BLOCK.replace_all(reply, "");
    let mut raw = marker_sections(&reply, fields);

    let missing_before_fallbacks = fields.outputs.iter().any(|f| !raw.contains_key(&f.name));
    if missing_before_fallbacks && let Some(object) = json_object_in(&reply) {
        for field in &fields.outputs {
            if !raw.contains_key(&field.name)
                && let Some(value) = object.get(&field.name)
            {
                raw.insert(field.name.clone(), RawValue::Json(value.clone()));
            }
        }
    }
    if fields.outputs.iter().any(|f| !raw.contains_key(&f.name)) {
        for (name, text) in labeled_lines(&reply, fields) {
            raw.entry(name).or_insert(RawValue::Text(text));
        }
    }
    if let [only] = fields.outputs.as_slice()
        && raw.is_empty()
    {
        let whole = MARKER.replace_all(&reply, "");
        if !whole.trim().is_empty() {
            raw.insert(only.name.clone(), RawValue::Text(whole.trim().to_string()));
        }
    }

    let mut error = ParseError {
        missing: Vec::new(),
        mistyped: Vec::new(),
        parsed: HashMap::new(),
    };
    for field in &fields.outputs {
        match raw.remove(&field.name) {
            None => error.missing.push(field.name.clone()),
            Some(value) => match coerce(&value, &field.kind) {
                Some(v) => {
                    error.parsed.insert(field.name.clone(), v);
                }
                None => error.mistyped.push(MistypedField {
                    field: field.name.clone(),
                    expected: field.kind.describe(),
                    found: value.to_text(),
                }),
            },
        }
    }
    if error.missing.is_empty() && error.mistyped.is_empty() {
        Ok(error.parsed)
    } else {
        Err(error)
    }
}

/// A value as found in the reply: marker text, or JSON from the object fallback.
enum RawValue {
    Text(String),
    Json(Value),
}

impl RawValue {
    fn to_text(&self) -> String {
        match self {
            RawValue::Text(s) => s.clone(),
            RawValue::Json(Value::String(s)) => s.clone(),
            RawValue::Json(v) => v.to_string(),
        }
    }
}

/// The text after each output field's first marker, up to the next marker.
fn marker_sections(reply: &str, fields: &SignatureFields) -> HashMap<String, RawValue> {
    let markers: Vec<(usize, usize, &str)> = MARKER
        .captures_iter(reply)
        .filter_map(|c| {
            let whole = c.get(0)?;
            let name = c.get(1)?.as_str();
            Some((whole.start(), whole.end(), name))
        })
        .collect();
    let mut sections = HashMap::new();
    for (i, &(_, end, name)) in markers.iter().enumerate() {
        if fields.output(name).is_none() || sections.contains_key(name) {
            continue;
        }
        let next_start = markers.get(i + 1).map_or(reply.len(), |m| m.0);
        let text = reply.get(end..next_start).unwrap_or("").trim();
        sections.insert(name.to_string(), RawValue::Text(text.to_string()));
    }
    sections
}

/// `field: value` lines, the shape a model writes when it drops the markers:
/// a line that starts with an output field's name (any case, `_` or space,
/// optionally bulleted or in `**bold**`) and a colon opens that field; its
/// value runs to the next such line. The first line of a field wins.
fn labeled_lines(reply: &str, fields: &SignatureFields) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = Vec::new();
    let mut current: Option<usize> = None;
    for line in reply.lines() {
        match line_label(line, fields) {
            Some((name, rest)) if !found.iter().any(|(n, _)| n == name) => {
                found.push((name.to_string(), rest.to_string()));
                current = Some(found.len() - 1);
            }
            Some(_) => current = None,
            None => {
                if let Some(i) = current {
                    found[i].1.push('\n');
                    found[i].1.push_str(line);
                }
            }
        }
    }
    found
        .into_iter()
        .map(|(name, text)| (name, text.trim().to_string()))
        .collect()
}

/// The output field a line is labelled with, and the text after the colon.
fn line_label<'a>(line: &'a str, fields: &'a SignatureFields) -> Option<(&'a str, &'a str)> {
    let line = line
        .trim_start()
        .trim_start_matches(['-', '*', '#', '•'])
        .trim_start();
    let (label, rest) = line.split_once(':')?;
    let label = label.trim().trim_matches('*').trim();
    let rest = rest.trim_start().trim_start_matches('*').trim_start();
    let same = |name: &str| {
        name.len() == label.len()
            && name
                .chars()
                .zip(label.chars())
                .all(|(a, b)| a.eq_ignore_ascii_case(&b) || (a == '_' && b == ' '))
    };
    fields
        .outputs
        .iter()
        .find(|f| same(&f.name))
        .map(|f| (f.name.as_str(), rest))
}

/// A JSON object in the reply: inside a code fence, or from the first `{` to the last `}`.
fn json_object_in(reply: &str) -> Option<Map<String, Value>> {
    let fenced = JSON_FENCE
        .captures_iter(reply)
        .filter_map(|c| c.get(1))
        .find_map(|m| as_object(m.as_str()));
    fenced.or_else(|| {
        let start = reply.find('{')?;
        let end = reply.rfind('}')?;
        (start < end)
            .then(|| as_object(&reply[start..=end]))
            .flatten()
    })
}

fn as_object(text: &str) -> Option<Map<String, Value>> {
    match json_or_python(text) {
        Some(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// A JSON value, or a Python literal read as one (`['a', 'b']`, `True`,
/// `None`, `{'key': 1}`), which small models write for typed fields.
fn json_or_python(text: &str) -> Option<Value> {
    let text = text.trim();
    serde_json::from_str(text)
        .ok()
        .or_else(|| serde_json::from_str(&python_to_json(text)?).ok())
}

/// Rewrites a Python literal as JSON: single-quoted strings become
/// double-quoted ones, and `True`, `False`, `None` outside strings become
/// `true`, `false`, `null`. `None` when the text has no Python in it.
fn python_to_json(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // A JSON string: copy it whole, escapes included.
                out.push(c);
                while let Some(c) = chars.next() {
                    out.push(c);
                    match c {
                        '\\' => out.extend(chars.next()),
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '\'' => {
                changed = true;
                out.push('"');
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some('\'') => out.push('\''),
                            Some(other) => {
                                out.push('\\');
                                out.push(other);
                            }
                            None => {}
                        },
                        '\'' => break,
                        '"' => out.push_str("\\\""),
                        other => out.push(other),
                    }
                }
                out.push('"');
            }
            c if c.is_ascii_alphabetic() => {
                let mut word = String::from(c);
                while let Some(&next) = chars.peek() {
                    if !next.is_ascii_alphanumeric() && next != '_' {
                        break;
                    }
                    word.push(next);
                    chars.next();
                }
                let replaced = match word.as_str() {
                    "True" => "true",
                    "False" => "false",
                    "None" => "null",
                    other => other,
                };
                changed |= replaced != word;
                out.push_str(replaced);
            }
            other => out.push(other),
        }
    }
    changed.then_some(out)
}

fn coerce(raw: &RawValue, kind: &ValueKind) -> Option<Value> {
    match raw {
        RawValue::Json(value) => coerce_json(value, kind),
        RawValue::Text(text) => coerce_text(text, kind),
    }
}

/// Coerces the text of a marker section to `kind`.
fn coerce_text(text: &str, kind: &ValueKind) -> Option<Value> {
    let text = strip_fence(text.trim());
    match kind {
        ValueKind::Text => Some(Value::String(text.to_string())),
        ValueKind::Integer { min, max } => parse_integer(text, *min, *max),
        ValueKind::Number => parse_number(text),
        ValueKind::Boolean => parse_bool(text),
        ValueKind::Optional(inner) => {
            if matches!(text, "" | "null" | "None" | "none") {
                Some(Value::Null)
            } else {
                coerce_text(text, inner)
            }
        }
        ValueKind::List(item) => match json_or_python(text) {
            Some(value) => coerce_json(&value, kind),
            None => list_from_lines(text, item),
        },
        ValueKind::Object(_) | ValueKind::Any => match json_or_python(text) {
            Some(value) => coerce_json(&value, kind),
            None if *kind == ValueKind::Any && !text.is_empty() => {
                Some(Value::String(text.to_string()))
            }
            None => None,
        },
    }
}

/// Coerces a JSON value (from the object fallback, or a parsed list/object) to `kind`.
fn coerce_json(value: &Value, kind: &ValueKind) -> Option<Value> {
    match (kind, value) {
        (ValueKind::Any, v) => Some(v.clone()),
        (ValueKind::Optional(_), Value::Null) => Some(Value::Null),
        (ValueKind::Optional(inner), v) => coerce_json(v, inner),
        (ValueKind::Text, Value::String(s)) => Some(Value::String(s.clone())),
        (ValueKind::Text, v) => Some(Value::String(v.to_string())),
        (ValueKind::Integer { .. } | ValueKind::Number | ValueKind::Boolean, Value::String(s)) => {
            coerce_text(s, kind)
        }
        (ValueKind::Integer { .. } | ValueKind::Number | ValueKind::Boolean, v) => {
            coerce_text(&v.to_string(), kind)
        }
        (ValueKind::List(item), Value::Array(items)) => items
            .iter()
            .map(|v| coerce_json(v, item))
            .collect::<Option<Vec<_>>>()
            .map(Value::Array),
        (ValueKind::List(_), Value::String(s)) => coerce_text(s, kind),
        (ValueKind::Object(_), Value::Object(_)) => Some(value.clone()),
        (ValueKind::Object(_), Value::String(s)) => match json_or_python(s) {
            Some(v @ Value::Object(_)) => Some(v),
            _ => None,
        },
        _ => None,
    }
}

fn strip_fence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

/// Trims what small models add around a scalar: quotes, a final period.
fn bare_scalar(text: &str) -> &str {
    let quote = |c| c == '"' || c == '\'' || c == '`';
    text.trim()
        .trim_end_matches('.')
        .trim_matches(quote)
        .trim_end_matches('.')
        .trim()
}

/// An integer of the field's range: `"42"`, `42.0` and `"42".` are 42.
fn parse_integer(text: &str, min: i128, max: i128) -> Option<Value> {
    let text = bare_scalar(text);
    let value: i128 = match text.parse::<i128>() {
        Ok(v) => v,
        Err(_) => {
            let f = text.parse::<f64>().ok()?;
            // "42.0" is an integer; "42.5" is not. The range check keeps the cast exact.
            if f.fract() != 0.0 || f.abs() >= 9.0e15 {
                return None;
            }
            f as i128
        }
    };
    if value < min || value > max {
        return None;
    }
    if let Ok(v) = i64::try_from(value) {
        Some(Value::Number(v.into()))
    } else {
        u64::try_from(value).ok().map(|v| Value::Number(v.into()))
    }
}

fn parse_number(text: &str) -> Option<Value> {
    let f = bare_scalar(text).parse::<f64>().ok()?;
    Number::from_f64(f).map(Value::Number)
}

fn parse_bool(text: &str) -> Option<Value> {
    match bare_scalar(text).to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "1" => Some(Value::Bool(true)),
        "false" | "no" | "n" | "0" => Some(Value::Bool(false)),
        _ => None,
    }
}

/// `- a\n- b` or `a, b` → a list, when the reply is not JSON.
fn list_from_lines(text: &str, item: &ValueKind) -> Option<Value> {
    if text.is_empty() {
        return Some(Value::Array(vec![]));
    }
    let bulleted: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let pieces: Vec<&str> = if bulleted.len() > 1 || bulleted.iter().any(|l| l.starts_with("- ")) {
        bulleted
            .into_iter()
            .map(|l| l.trim_start_matches(['-', '*', '•']).trim())
            .collect()
    } else {
        text.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect()
    };
    pieces
        .into_iter()
        .map(|p| coerce_text(p, item))
        .collect::<Option<Vec<_>>>()
        .map(Value::Array)
}
