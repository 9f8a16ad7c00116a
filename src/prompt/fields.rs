//! What a signature's fields are: names, declared Rust types and the JSON shape
//! each output value must take.
//!
//! dspy-rs describes fields as JSON objects in declaration order:
//! `{"type": "Vec < String >", "desc": "...", "schema": "" | {..properties..}}`.

use serde_json::{Map, Value, json};

use dspy_rs::MetaSignature;

use crate::{Error, Result};

/// The shape of a field's value, derived from its declared Rust type.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueKind {
    /// `String` and friends: free text, written raw after the marker.
    Text,
    /// Any integer type (`i32`, `u64`, …), with the type's range.
    Integer {
        /// Smallest value of the type.
        min: i128,
        /// Largest value of the type.
        max: i128,
    },
    /// `f32` / `f64`.
    Number,
    /// `bool`.
    Boolean,
    /// `Vec<T>` and other sequences: a JSON array.
    List(Box<ValueKind>),
    /// `Option<T>`: the value or JSON `null`.
    Optional(Box<ValueKind>),
    /// A type with a JSON schema (a struct deriving `JsonSchema`, or a
    /// schema a DSPy prompt states): JSON following it.
    Object(Value),
    /// A type we know nothing about: any JSON value.
    Any,
}

impl ValueKind {
    /// Derives the kind from dspy-rs's type string (`quote!` output such as
    /// `"Vec < String >"`) and the field's schema (`""` or an object of properties).
    pub fn from_declared(type_name: &str, schema: &Value) -> Self {
        let compact: String = type_name.chars().filter(|c| !c.is_whitespace()).collect();
        Self::from_compact_type(&compact, schema)
    }

    fn from_compact_type(ty: &str, schema: &Value) -> Self {
        let ty = ty.trim_start_matches('&');
        if let Some(inner) = generic_argument(ty, &["Vec", "VecDeque", "HashSet", "BTreeSet"]) {
            return ValueKind::List(Box::new(Self::from_compact_type(inner, &Value::Null)));
        }
        if let Some(inner) = generic_argument(ty, &["Option"]) {
            return ValueKind::Optional(Box::new(Self::from_compact_type(inner, schema)));
        }
        match last_path_segment(ty) {
            "String" | "str" | "char" => ValueKind::Text,
            "i8" => integer(i8::MIN.into(), i8::MAX.into()),
            "i16" => integer(i16::MIN.into(), i16::MAX.into()),
            "i32" => integer(i32::MIN.into(), i32::MAX.into()),
            "i64" | "isize" => integer(i64::MIN.into(), i64::MAX.into()),
            "i128" => integer(i128::MIN, i128::MAX),
            "u8" => integer(0, u8::MAX.into()),
            "u16" => integer(0, u16::MAX.into()),
            "u32" => integer(0, u32::MAX.into()),
            "u64" | "usize" => integer(0, u64::MAX.into()),
            "u128" => integer(0, i128::MAX),
            "f32" | "f64" => ValueKind::Number,
            "bool" => ValueKind::Boolean,
            _ => match schema {
                Value::Object(properties) if !properties.is_empty() => {
                    ValueKind::Object(object_schema(properties))
                }
                _ => ValueKind::Any,
            },
        }
    }

    /// The kind of values that follow a JSON schema: a whole schema
    /// (`{"type": "array", …}`) or, as dspy-rs writes a struct's, just its
    /// properties (`{"name": {…}, "population": {…}}`).
    pub fn from_schema(schema: Value) -> Self {
        const SCHEMA_KEYWORDS: [&str; 7] = [
            "type",
            "properties",
            "items",
            "anyOf",
            "oneOf",
            "enum",
            "const",
        ];
        match &schema {
            Value::Object(map) if SCHEMA_KEYWORDS.iter().any(|k| map.contains_key(*k)) => {
                let mut schema = schema;
                strip_unsupported_keywords(&mut schema);
                ValueKind::Object(schema)
            }
            Value::Object(properties) if !properties.is_empty() => {
                ValueKind::Object(object_schema(properties))
            }
            _ => ValueKind::Any,
        }
    }

    /// A JSON schema for values of this kind (used for typed fields of the grammar).
    pub fn json_schema(&self) -> Value {
        match self {
            ValueKind::Text => json!({"type": "string"}),
            // The grammar engine works in 64 bits: wider ranges are capped at 18 digits.
            ValueKind::Integer { min, max } => json!({
                "type": "integer",
                "minimum": (*min).max(-GRAMMAR_INTEGER_LIMIT) as i64,
                "maximum": (*max).min(GRAMMAR_INTEGER_LIMIT) as i64,
            }),
            ValueKind::Number => json!({"type": "number"}),
            ValueKind::Boolean => json!({"type": "boolean"}),
            ValueKind::List(item) => json!({"type": "array", "items": item.json_schema()}),
            ValueKind::Optional(inner) => json!({"anyOf": [inner.json_schema(), {"type": "null"}]}),
            ValueKind::Object(schema) => schema.clone(),
            ValueKind::Any => json!({}),
        }
    }

    /// A short human name used in error messages.
    pub fn describe(&self) -> String {
        match self {
            ValueKind::Text => "text".into(),
            ValueKind::Integer { min, max } => format!("an integer from {min} to {max}"),
            ValueKind::Number => "a number".into(),
            ValueKind::Boolean => "a boolean".into(),
            ValueKind::List(item) => format!("a JSON list of {}", item.describe()),
            ValueKind::Optional(inner) => format!("{} or null", inner.describe()),
            ValueKind::Object(_) => "a JSON object".into(),
            ValueKind::Any => "a JSON value".into(),
        }
    }
}

/// Largest magnitude of an integer the output grammar allows (18 digits).
const GRAMMAR_INTEGER_LIMIT: i128 = 999_999_999_999_999_999;

fn integer(min: i128, max: i128) -> ValueKind {
    ValueKind::Integer { min, max }
}

/// `Vec<String>` → `Some("String")` when the outer name is one of `names`.
fn generic_argument<'a>(ty: &'a str, names: &[&str]) -> Option<&'a str> {
    let open = ty.find('<')?;
    let inner = ty.strip_suffix('>')?;
    let outer = last_path_segment(&ty[..open]);
    names.contains(&outer).then(|| &inner[open + 1..])
}

fn last_path_segment(ty: &str) -> &str {
    ty.rsplit("::").next().unwrap_or(ty)
}

/// dspy-rs keeps only a struct's `properties`; rebuild a schema that requires
/// them all and allows no others (as the struct's `Deserialize` expects). Schemars' `format` hints (`int32`…) and `$ref`s into the dropped
/// `$defs` are removed so the grammar compiler accepts the schema.
fn object_schema(properties: &Map<String, Value>) -> Value {
    let mut properties = Value::Object(properties.clone());
    strip_unsupported_keywords(&mut properties);
    let required: Vec<Value> = properties
        .as_object()
        .map(|p| p.keys().cloned().map(Value::String).collect())
        .unwrap_or_default();
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

fn strip_unsupported_keywords(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("format");
            if map.remove("$ref").is_some() {
                // The definition it points to was dropped by dspy-rs: accept any value.
                map.clear();
            }
            map.values_mut().for_each(strip_unsupported_keywords);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_unsupported_keywords),
        _ => {}
    }
}

/// One field of a signature.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    /// The field's name, as it appears in the `[[ ## name ## ]]` marker.
    pub name: String,
    /// The declared Rust type, as dspy-rs wrote it.
    pub type_name: String,
    /// The shape its value takes.
    pub kind: ValueKind,
}

/// The input and output fields of a signature, in declaration order.
#[derive(Debug, Clone, PartialEq)]
pub struct SignatureFields {
    /// Input fields.
    pub inputs: Vec<FieldSpec>,
    /// Output fields (for `cot` signatures `reasoning` comes first).
    pub outputs: Vec<FieldSpec>,
}

impl SignatureFields {
    /// Reads the fields of a dspy-rs signature. Fails when the signature has no
    /// output field or a field description is not a JSON object.
    pub fn of(signature: &dyn MetaSignature) -> Result<Self> {
        let inputs = field_list(&signature.input_fields(), "input")?;
        let outputs = field_list(&signature.output_fields(), "output")?;
        if outputs.is_empty() {
            return Err(Error::InvalidSignature {
                reason: "the signature declares no output field".into(),
            });
        }
        Ok(SignatureFields { inputs, outputs })
    }

    /// A JSON schema of an object holding every output field (DSPy's
    /// `JSONAdapter` replies with one).
    pub fn json_schema(&self) -> Value {
        let properties: Map<String, Value> = self
            .outputs
            .iter()
            .map(|f| (f.name.clone(), f.kind.json_schema()))
            .collect();
        let required: Vec<Value> = self
            .outputs
            .iter()
            .map(|f| Value::String(f.name.clone()))
            .collect();
        json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
    }

    /// The output field with this name.
    pub fn output(&self, name: &str) -> Option<&FieldSpec> {
        self.outputs.iter().find(|f| f.name == name)
    }
}

fn field_list(fields: &Value, side: &str) -> Result<Vec<FieldSpec>> {
    let map = fields.as_object().ok_or_else(|| Error::InvalidSignature {
        reason: format!("{side} fields are not a JSON object: {fields}"),
    })?;
    Ok(map
        .iter()
        .map(|(name, field)| {
            let type_name = field["type"].as_str().unwrap_or("String").to_string();
            let kind = ValueKind::from_declared(&type_name, &field["schema"]);
            FieldSpec {
                name: name.clone(),
                type_name,
                kind,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_declared_types() {
        let none = Value::String(String::new());
        assert_eq!(ValueKind::from_declared("String", &none), ValueKind::Text);
        assert_eq!(
            ValueKind::from_declared("i32", &none),
            ValueKind::Integer {
                min: i32::MIN.into(),
                max: i32::MAX.into()
            }
        );
        assert_eq!(
            ValueKind::from_declared("u8", &none).json_schema(),
            json!({"type": "integer", "minimum": 0, "maximum": 255})
        );
        assert_eq!(ValueKind::from_declared("f64", &none), ValueKind::Number);
        assert_eq!(ValueKind::from_declared("bool", &none), ValueKind::Boolean);
        assert_eq!(
            ValueKind::from_declared("Vec < String >", &none),
            ValueKind::List(Box::new(ValueKind::Text))
        );
        assert_eq!(
            ValueKind::from_declared("Option < Vec < i64 > >", &none),
            ValueKind::Optional(Box::new(ValueKind::List(Box::new(integer(
                i64::MIN.into(),
                i64::MAX.into()
            )))))
        );
        assert_eq!(
            ValueKind::from_declared("std :: string :: String", &none),
            ValueKind::Text
        );
        assert_eq!(ValueKind::from_declared("Mystery", &none), ValueKind::Any);
    }

    #[test]
    fn struct_schema_requires_every_property_and_drops_formats() {
        let props = json!({"city": {"type": "string"}, "population": {"type": "integer", "format": "uint64"}});
        let ValueKind::Object(schema) = ValueKind::from_declared("City", &props) else {
            panic!("a schema with properties is an object kind");
        };
        assert_eq!(schema["required"], json!(["city", "population"]));
        assert!(schema["properties"]["population"].get("format").is_none());
    }
}
