//! The output grammar accepts what `ChatAdapter` writes for demos and rejects
//! malformed replies. Checked byte by byte with a single-byte vocabulary.

use dspy_rs::{ChatAdapter, Example, MetaSignature, adapter::Adapter, example};
use dsrs_local::prompt::{ConstraintCompiler, OutputConstraint, SignatureFields};

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
