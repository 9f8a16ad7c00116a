//! The reply parser: tolerant of what small models write, typed, never panics.

use dsrs_local::prompt::{SignatureFields, parse_reply};
use proptest::prelude::*;
use serde_json::json;

use crate::{Arithmetic, CapitalFacts, MultiField, QA};

fn qa() -> SignatureFields {
    SignatureFields::of(&QA::new()).unwrap()
}
fn multi() -> SignatureFields {
    SignatureFields::of(&MultiField::new()).unwrap()
}

#[test]
fn the_chat_adapter_format_parses() {
    let reply = "[[ ## doubled ## ]]\n28\n\n[[ ## half ## ]]\n7.0\n\n[[ ## is_even ## ]]\ntrue\n\n\
                 [[ ## digits ## ]]\n[\"one\",\"four\"]\n\n[[ ## comment ## ]]\nfourteen\n\n[[ ## completed ## ]]\n";
    let out = parse_reply(&multi(), reply).unwrap();
    assert_eq!(out["doubled"], json!(28));
    assert_eq!(out["half"], json!(7.0));
    assert_eq!(out["is_even"], json!(true));
    assert_eq!(out["digits"], json!(["one", "four"]));
    assert_eq!(out["comment"], json!("fourteen"));
}

#[test]
fn content_on_the_marker_line_and_missing_newlines() {
    let out = parse_reply(&qa(), "[[ ## answer ## ]] Paris [[ ## completed ## ]]").unwrap();
    assert_eq!(out["answer"], "Paris");
    let out = parse_reply(&qa(), "[[## answer##]]Paris").unwrap();
    assert_eq!(out["answer"], "Paris");
    let out = parse_reply(&qa(), "  \n[[ ##   answer   ## ]]  \n\n  Paris  \n\n").unwrap();
    assert_eq!(out["answer"], "Paris");
}

#[test]
fn markers_in_any_order_and_first_occurrence_wins() {
    let fields = SignatureFields::of(&Arithmetic::new()).unwrap();
    let reply = "[[ ## sum ## ]]\n5\n\n[[ ## reasoning ## ]]\n2 plus 3\n\n[[ ## sum ## ]]\n6";
    let out = parse_reply(&fields, reply).unwrap();
    assert_eq!(out["sum"], json!(5));
    assert_eq!(out["reasoning"], "2 plus 3");
}

#[test]
fn think_blocks_are_dropped() {
    let reply =
        "<think>the answer might be [[ ## answer ## ]] Lyon</think>\n[[ ## answer ## ]]\nParis";
    assert_eq!(parse_reply(&qa(), reply).unwrap()["answer"], "Paris");
    // An unterminated think block hides everything after it.
    assert!(parse_reply(&multi(), "<think>[[ ## doubled ## ]] 4").is_err());
}

#[test]
fn json_object_fallback_also_in_a_fence() {
    let reply = "Sure!\n```json\n{\"doubled\": \"28\", \"half\": 7, \"is_even\": \"yes\", \"digits\": [\"one\", \"four\"], \"comment\": 14}\n```";
    let out = parse_reply(&multi(), reply).unwrap();
    assert_eq!(out["doubled"], json!(28));
    assert_eq!(out["half"], json!(7.0));
    assert_eq!(out["is_even"], json!(true));
    assert_eq!(out["comment"], json!("14"));
    let out = parse_reply(&qa(), "{\"answer\": \"Paris\"}").unwrap();
    assert_eq!(out["answer"], "Paris");
}

#[test]
fn a_single_output_field_takes_the_whole_reply() {
    let out = parse_reply(&qa(), "  The capital is Paris.\n").unwrap();
    assert_eq!(out["answer"], "The capital is Paris.");
    let out = parse_reply(&qa(), "Paris\n\n[[ ## completed ## ]]").unwrap();
    assert_eq!(out["answer"], "Paris");
}

#[test]
fn typed_values_are_coerced() {
    let reply = "[[ ## doubled ## ]] \"28\".\n[[ ## half ## ]] 7\n[[ ## is_even ## ]] True\n\
                 [[ ## digits ## ]]\n- one\n- four\n[[ ## comment ## ]] ok";
    let out = parse_reply(&multi(), reply).unwrap();
    assert_eq!(out["doubled"], json!(28));
    assert_eq!(out["half"], json!(7.0));
    assert_eq!(out["is_even"], json!(true));
    assert_eq!(out["digits"], json!(["one", "four"]));

    let reply = "[[ ## doubled ## ]] 28.0\n[[ ## half ## ]] 7.5\n[[ ## is_even ## ]] no\n\
                 [[ ## digits ## ]] one, four\n[[ ## comment ## ]] ok";
    let out = parse_reply(&multi(), reply).unwrap();
    assert_eq!(out["doubled"], json!(28));
    assert_eq!(out["is_even"], json!(false));
    assert_eq!(out["digits"], json!(["one", "four"]));

    let fields = SignatureFields::of(&CapitalFacts::new()).unwrap();
    let out = parse_reply(
        &fields,
        "[[ ## capital ## ]]\n{\"name\":\"Paris\",\"population\":2100000}",
    )
    .unwrap();
    assert_eq!(
        out["capital"],
        json!({"name": "Paris", "population": 2100000})
    );
}

#[test]
fn errors_name_missing_and_mistyped_fields_and_keep_the_rest() {
    let reply = "[[ ## doubled ## ]]\ntwenty\n\n[[ ## half ## ]]\n7\n\n[[ ## comment ## ]]\nhi";
    let err = parse_reply(&multi(), reply).unwrap_err();
    assert_eq!(
        err.missing,
        vec!["is_even".to_string(), "digits".to_string()]
    );
    assert_eq!(err.mistyped.len(), 1);
    assert_eq!(err.mistyped[0].field, "doubled");
    assert_eq!(err.mistyped[0].found, "twenty");
    assert_eq!(err.parsed["half"], json!(7.0));
    assert_eq!(err.parsed["comment"], json!("hi"));
    let message = err.to_string();
    assert!(
        message.contains("`is_even`") && message.contains("`doubled` should be an integer"),
        "{message}"
    );

    // Only a type wrong: the message lists it with no empty part before it.
    let reply = "[[ ## doubled ## ]] x [[ ## half ## ]] 1 [[ ## is_even ## ]] true \
                 [[ ## digits ## ]] [] [[ ## comment ## ]] ok";
    let message = parse_reply(&multi(), reply).unwrap_err().to_string();
    assert_eq!(
        message,
        "the model's reply could not be parsed: `doubled` should be an integer from \
         -2147483648 to 2147483647 but is \"x\""
    );

    let fields = SignatureFields::of(&CapitalFacts::new()).unwrap();
    assert!(parse_reply(&fields, "[[ ## capital ## ]]\nParis").is_err());

    // An integer outside the declared type's range is mistyped, not wrapped.
    let reply = "[[ ## doubled ## ]] 99999999999 [[ ## half ## ]] 1 [[ ## is_even ## ]] true \
                 [[ ## digits ## ]] [] [[ ## comment ## ]] ok";
    let err = parse_reply(&multi(), reply).unwrap_err();
    assert_eq!(err.mistyped[0].field, "doubled");
    assert!(
        err.to_string().contains("from -2147483648 to 2147483647"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_on_arbitrary_text(reply in ".*") {
        let _ = parse_reply(&multi(), &reply);
        let _ = parse_reply(&qa(), &reply);
    }

    #[test]
    fn never_panics_on_marker_soup(
        pieces in proptest::collection::vec(
            prop_oneof![
                Just("[[ ## doubled ## ]]".to_string()),
                Just("[[ ## digits ## ]]".to_string()),
                Just("[[ ## completed ## ]]".to_string()),
                Just("<think>".to_string()),
                Just("</think>".to_string()),
                Just("```json\n".to_string()),
                Just("{\"half\": ".to_string()),
                Just("}".to_string()),
                Just("[".to_string()),
                "[^\\[]{0,8}",
                "-?[0-9]{1,30}(\\.[0-9]+)?(e[0-9]{1,4})?",
            ],
            0..24,
        )
    ) {
        let reply = pieces.concat();
        let _ = parse_reply(&multi(), &reply);
        let fields = SignatureFields::of(&CapitalFacts::new()).unwrap();
        let _ = parse_reply(&fields, &reply);
    }
}

/// The seeds' first shape: `Field: value` lines with no markers at all.
#[test]
fn field_colon_value_lines_without_markers() {
    assert_eq!(
        parse_reply(&qa(), "Answer: Paris").unwrap()["answer"],
        "Paris"
    );
    assert_eq!(
        parse_reply(&qa(), "**Answer:** Paris, of course.").unwrap()["answer"],
        "Paris, of course."
    );
    let reply = "Doubled: 28\nhalf: 7.5\n- is_even: True\nDigits: ['two', 'eight']\n\
                 Comment: it is\nfairly small";
    let out = parse_reply(&multi(), reply).unwrap();
    assert_eq!(out["doubled"], json!(28));
    assert_eq!(out["half"], json!(7.5));
    assert_eq!(out["is_even"], json!(true));
    assert_eq!(out["digits"], json!(["two", "eight"]));
    assert_eq!(
        out["comment"], "it is\nfairly small",
        "a value runs to the next label"
    );
    // A marker for one field, a label for the next (a cot reply that forgot
    // the second marker): each field gets its own.
    let fields = SignatureFields::of(&Arithmetic::new()).unwrap();
    let out = parse_reply(&fields, "[[ ## reasoning ## ]]\n2 plus 3 makes 5\nSum: 5").unwrap();
    assert_eq!(out["reasoning"], "2 plus 3 makes 5\nSum: 5");
    assert_eq!(out["sum"], json!(5));
}

/// Python literals, as small models trained on Python write them.
#[test]
fn python_literals_for_typed_fields() {
    let reply = "[[ ## doubled ## ]]\n4\n\n[[ ## half ## ]]\n1\n\n[[ ## is_even ## ]]\nFalse\n\n\
                 [[ ## digits ## ]]\n['it\\'s', \"two\", 'say \"hi\"']\n\n[[ ## comment ## ]]\nok";
    let out = parse_reply(&multi(), reply).unwrap();
    assert_eq!(out["is_even"], json!(false));
    assert_eq!(out["digits"], json!(["it's", "two", "say \"hi\""]));
    let fields = SignatureFields::of(&CapitalFacts::new()).unwrap();
    let out = parse_reply(
        &fields,
        "[[ ## capital ## ]]\n{'name': 'Paris', 'population': 2102650, 'note': None}",
    );
    // `note` is not a property of City: the object still parses (extra keys are the struct's business).
    let capital = out.map(|o| o["capital"].clone());
    assert_eq!(
        capital
            .ok()
            .and_then(|c| c["name"].as_str().map(String::from)),
        Some("Paris".into())
    );
}
