//! JSON written as Python's `json.dumps` writes it (`", "` and `": "`
//! between items, non-ASCII kept, keys in their order): what chat templates'
//! `tojson` prints under Hugging Face and llama.cpp, so tools and calls read
//! the same to a model here as where it was trained.

use std::io;

use serde::Serialize;
use serde_json::Value;
use serde_json::ser::{Formatter, PrettyFormatter, Serializer};

/// `value` as `json.dumps(value, ensure_ascii=False)` writes it, or with
/// `indent` spaces per level as `json.dumps(value, indent=indent)`.
pub(crate) fn python_json(value: &Value, indent: Option<usize>) -> String {
    let mut out = Vec::new();
    let written = match indent {
        Some(width) => {
            let spaces = vec![b' '; width];
            let mut serializer =
                Serializer::with_formatter(&mut out, PrettyFormatter::with_indent(&spaces));
            value.serialize(&mut serializer)
        }
        None => value.serialize(&mut Serializer::with_formatter(&mut out, PythonFormatter)),
    };
    // Serializing a `Value` into memory cannot fail, and its text is UTF-8.
    match written {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(_) => value.to_string(),
    }
}

/// One line, with Python's separators.
struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_is_written_with_pythons_separators() {
        let value = json!({"b": [1, "é", {"c": null}], "a": {}});
        assert_eq!(
            python_json(&value, None),
            r#"{"b": [1, "é", {"c": null}], "a": {}}"#
        );
        assert_eq!(
            python_json(&json!({"a": [1]}), Some(2)),
            "{\n  \"a\": [\n    1\n  ]\n}"
        );
    }
}
