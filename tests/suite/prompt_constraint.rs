//! The output grammar accepts what `ChatAdapter` writes for demos and rejects
//! malformed replies. Checked byte by byte with a single-byte vocabulary; the
//! builder on random signatures under proptest.

use std::sync::LazyLock;

use dspy_rs::{ChatAdapter, Example, MetaSignature, adapter::Adapter, example};
use dsrs_local::prompt::{
    ConstraintCompiler, FieldSpec, OutputConstraint, SignatureFields, ValueKind,
};
use proptest::prelude::*;

use crate::support::fuzz_cases;
use crate::{Arithmetic, CapitalFacts, MultiField, QA};

fn accepts(signature: &dyn MetaSignature, reply: &str) -> bool {
    let fields = SignatureFields::of(signature).unwrap();
    let constraint = OutputConstraint::for_fields(&fields, 10_000);
    let compiler = ConstraintCompiler::single_byte().unwrap();
    compiler.matcher(&constraint).unwrap().accepts_text(reply)
}

/// The assistant message `ChatAdapter` formats for a demo, without its final newline.
fn demo_reply<S: MetaSignature>(mut signature: S, demo: Example, input: Example) -> (S, String) {
    signature.set_demos(vec![demo]).unwrap();
    let chat = ChatAdapter.format(&signature, input);
    let reply = chat.messages[2].content();
    (signature, reply.trim_end_matches('\n').to_string())
}

#[test]
fn accepts_chat_adapter_demo_replies() {
    let (sig, reply) = demo_reply(
        QA::new(),
        example! { "question": "input" => "q", "answer": "output" => "Paris, France.\n\nA second [paragraph]." },
        example! { "question": "input" => "q2" },
    );
    assert!(accepts(&sig, &reply), "{reply}");

    let (sig, reply) = demo_reply(
        MultiField::new(),
        example! {
            "number": "input" => 12, "language": "input" => "English",
            "doubled": "output" => 24, "half": "output" => 6.5, "is_even": "output" => true,
            "digits": "output" => vec!["one", "two"], "comment": "output" => "a dozen"
        },
        example! { "number": "input" => 7, "language": "input" => "English" },
    );
    assert!(accepts(&sig, &reply), "{reply}");

    let (sig, reply) = demo_reply(
        CapitalFacts::new(),
        example! { "country": "input" => "France", "capital": "output" => serde_json::json!({"name": "Paris", "population": 2100000}) },
        example! { "country": "input" => "Peru" },
    );
    assert!(accepts(&sig, &reply), "{reply}");

    let (sig, reply) = demo_reply(
        Arithmetic::new(),
        example! { "a": "input" => 2, "b": "input" => 3, "reasoning": "output" => "2 + 3 = 5", "sum": "output" => 5 },
        example! { "a": "input" => 1, "b": "input" => 1 },
    );
    assert!(accepts(&sig, &reply), "{reply}");
}

#[test]
fn rejects_malformed_replies() {
    let qa = QA::new();
    assert!(!accepts(&qa, "Paris"), "no marker");
    assert!(
        !accepts(&qa, "[[ ## answer ## ]]\nParis"),
        "no completed marker"
    );
    assert!(
        !accepts(&qa, "[[ ## answer ## ]]\n\n\n[[ ## completed ## ]]"),
        "empty text"
    );
    assert!(
        !accepts(
            &qa,
            "[[ ## answer ## ]]\nParis [[ ## answer ## ]]\n\n[[ ## completed ## ]]"
        ),
        "forged marker inside text"
    );

    let multi = MultiField::new();
    let good = "[[ ## doubled ## ]]\n28\n\n[[ ## half ## ]]\n7.0\n\n[[ ## is_even ## ]]\ntrue\n\n\
                [[ ## digits ## ]]\n[\"one\",\"four\"]\n\n[[ ## comment ## ]]\nok\n\n[[ ## completed ## ]]";
    assert!(accepts(&multi, good));
    assert!(
        !accepts(&multi, &good.replace("\n28\n", "\ntwenty-eight\n")),
        "integer field"
    );
    assert!(
        !accepts(&multi, &good.replace("\n28\n", "\n99999999999\n")),
        "an i32 field beyond i32's range"
    );
    assert!(
        !accepts(&multi, &good.replace("\n28\n", "\n28.5\n")),
        "integer field with a fraction"
    );
    assert!(
        !accepts(&multi, &good.replace("\ntrue\n", "\nyes\n")),
        "boolean field"
    );
    assert!(
        !accepts(&multi, &good.replace("[\"one\",\"four\"]", "one, four")),
        "list field"
    );
    assert!(
        !accepts(&multi, &good.replace("[\"one\",\"four\"]", "[1,4]")),
        "list of strings"
    );
    assert!(
        !accepts(&multi, &good.replace("[[ ## half ## ]]\n7.0\n\n", "")),
        "a field left out"
    );

    let facts = CapitalFacts::new();
    assert!(
        !accepts(
            &facts,
            "[[ ## capital ## ]]\n{\"name\":\"Paris\"}\n\n[[ ## completed ## ]]"
        ),
        "required property"
    );
    assert!(
        !accepts(
            &facts,
            "[[ ## capital ## ]]\nParis\n\n[[ ## completed ## ]]"
        ),
        "object field"
    );
}

/// Any JSON value, a few levels deep (random field schemas).
fn any_schema() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    let leaf = prop_oneof![
        Just(json!({"type": "string"})),
        Just(json!({"type": "integer", "minimum": 3, "maximum": 1})),
        Just(json!({"type": "number"})),
        Just(json!({"type": "frobnicate"})),
        Just(json!({"enum": []})),
        Just(json!({"const": null})),
        Just(Value::Null),
        ".{0,8}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3)
                .prop_map(|items| json!({"anyOf": items})),
            inner
                .clone()
                .prop_map(|items| json!({"type": "array", "items": items})),
            proptest::collection::btree_map("[a-z]{1,6}|.{0,4}", inner, 0..3)
                .prop_map(|p| json!({"type": "object", "properties": p})),
        ]
    })
}

/// A field: mostly a plain name and a declared Rust type, sometimes a name
/// that looks like the markers and a random schema.
fn any_field() -> impl Strategy<Value = FieldSpec> {
    let name = prop_oneof![
        4 => "[a-z][a-z_0-9]{0,12}",
        1 => ".{0,12}",
        1 => Just("completed".to_string()),
        1 => Just("a ## ]]".to_string()),
    ];
    let declared = prop_oneof![
        Just("String"),
        Just("i32"),
        Just("u8"),
        Just("f64"),
        Just("bool"),
        Just("Vec < String >"),
        Just("Option < i64 >"),
        Just("Vec < Vec < bool > >"),
        Just("Unknown"),
    ];
    prop_oneof![
        3 => (name.clone(), declared).prop_map(|(name, ty)| FieldSpec {
            name,
            type_name: ty.to_string(),
            kind: ValueKind::from_declared(ty, &serde_json::Value::Null),
        }),
        1 => (name, any_schema()).prop_map(|(name, schema)| FieldSpec {
            name,
            type_name: "Custom".to_string(),
            kind: ValueKind::from_schema(schema),
        }),
    ]
}

static SINGLE_BYTE: LazyLock<ConstraintCompiler> =
    LazyLock::new(|| ConstraintCompiler::single_byte().unwrap());

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(300), failure_persistence: None, ..ProptestConfig::default() })]

    /// The grammar builder on random signatures: the field grammar and the
    /// JSON one compile or are a typed error, never a panic; a signature of
    /// plain text fields accepts the reply `ChatAdapter` writes for it.
    #[test]
    fn random_signatures_give_a_grammar_or_a_typed_error(
        outputs in proptest::collection::vec(any_field(), 1..5),
        max_text_chars in 0usize..300,
    ) {
        let fields = SignatureFields { inputs: vec![], outputs };
        for constraint in [
            OutputConstraint::for_fields(&fields, max_text_chars),
            OutputConstraint::json(&fields.json_schema(), max_text_chars),
        ] {
            if let Err(error) = SINGLE_BYTE.matcher(&constraint) {
                prop_assert!(!error.to_string().is_empty());
            }
        }
        let plain = fields.outputs.iter().all(|f| {
            f.kind == ValueKind::Text
                && f.name != "completed"
                && f.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        let mut names: Vec<&str> = fields.outputs.iter().map(|f| f.name.as_str()).collect();
        names.dedup();
        if plain && names.len() == fields.outputs.len() && max_text_chars >= 5 {
            let reply: String = fields
                .outputs
                .iter()
                .map(|f| format!("[[ ## {} ## ]]\nvalue\n\n", f.name))
                .chain(["[[ ## completed ## ]]".to_string()])
                .collect();
            let mut matcher = SINGLE_BYTE
                .matcher(&OutputConstraint::for_fields(&fields, max_text_chars))
                .unwrap();
            prop_assert!(matcher.accepts_text(&reply), "{reply}");
        }
    }
}
