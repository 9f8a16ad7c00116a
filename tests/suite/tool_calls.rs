//! Tools on real models, per backend (instantiated by `conformance_suite!`):
//! constrained calls on random schemas always parse and fit them; on the
//! crate's own model `Predict::new_with_tools` looks the answer up (alone,
//! with `#[Signature(cot)]`, concurrently, and through dspy-rs's own `LM`
//! over the loopback server), and a second round reuses the first's cache.

use std::sync::Arc;

use dspy_rs::adapter::Adapter;
use dspy_rs::{Predict, Predictor, configure, example};
use dsrs_local::prompt::{
    OutputConstraint, SignatureFields, ToolChoice, ToolFormat, ToolSpec, Turn, format_chat,
};
use dsrs_local::testing::task_model_path;
use dsrs_local::testing::tasks::{TaskFamily, TaskStream};
use dsrs_local::testing::tool_task::{CodeLookup, LOOKUP_TOOL, code_of, tools_for};
use dsrs_local::{Backend, GenerationConfig, GenerationRequest, LocalAdapter, Sampling};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use crate::conformance::{Harness, TINY_CHAT_MODEL};
use crate::support::GLOBAL_CONFIG;
use crate::{ItemCode, ItemCodeReasoned};

/// A JSON schema of the shapes tool arguments take: scalars, enums,
/// lists, and objects of them with some properties required.
fn random_schema() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(json!({"type": "string"})),
        Just(json!({"type": "integer"})),
        Just(json!({"type": "number"})),
        Just(json!({"type": "boolean"})),
        proptest::collection::vec("[a-z]{1,6}", 1..4).prop_map(|options| json!({"enum": options})),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            inner
                .clone()
                .prop_map(|items| json!({"type": "array", "items": items})),
            object_schema(inner),
        ]
    })
}

fn object_schema(property: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
    proptest::collection::btree_map("[a-z][a-z_]{0,7}", property, 0..4).prop_flat_map(|map| {
        let names: Vec<String> = map.keys().cloned().collect();
        let count = names.len();
        (Just(map), proptest::sample::subsequence(names, 0..=count)).prop_map(|(map, required)| {
            json!({
                "type": "object",
                "properties": map,
                "required": required,
            })
        })
    })
}

fn random_tools() -> impl Strategy<Value = Vec<ToolSpec>> {
    proptest::collection::btree_map("[a-z][a-z_]{0,11}", object_schema(random_schema()), 1..4)
        .prop_map(|tools| {
            tools
                .into_iter()
                .map(|(name, parameters)| ToolSpec::new(name, "A tool.", parameters))
                .collect()
        })
}

pub async fn tool_calls_on_random_schemas_always_parse<H: Harness>() {
    let adapter = H::adapter_on(&TINY_CHAT_MODEL.1, GenerationConfig::default(), 2048)
        .expect("the tiny model loads");
    let backend = Arc::clone(adapter.backend());
    let mut runner = TestRunner::new(Config::with_cases(24));
    let strategy = (
        random_tools(),
        any::<u64>(),
        prop_oneof![Just(ToolFormat::Hermes), Just(ToolFormat::Llama3Json)],
        prop_oneof![8usize..60, Just(400usize)],
    );
    let result = tokio::task::block_in_place(|| {
        runner.run(&strategy, |(tools, seed, format, max_tokens)| {
            let constraint = OutputConstraint::free_text()
                .with_tool_calls(&tools, format, &ToolChoice::Required, 40)
                .expect("a grammar for the tools");
            let request = GenerationRequest {
                sampling: Sampling {
                    temperature: 1.0,
                    seed,
                    ..Sampling::greedy()
                },
                constraint: Some(constraint),
                ..GenerationRequest::new(
                    "<|im_start|>user\nCall a tool.<|im_end|>\n<|im_start|>assistant\n",
                    max_tokens,
                )
            };
            // A budget short of the shortest call is refused; any other
            // ends in a whole call, closed early if it must be.
            let generation = match backend.generate(&request) {
                Err(dsrs_local::Error::BudgetTooSmall { needed, .. }) => {
                    prop_assert!(needed > max_tokens);
                    return Ok(());
                }
                other => other.expect("generates"),
            };
            let calls = format
                .parse_calls(&generation.text)
                .map_err(|e| TestCaseError::fail(format!("{e}: {}", generation.text)))?;
            prop_assert_eq!(calls.len(), 1, "{}", generation.text);
            let tool = tools.iter().find(|t| t.name == calls[0].name);
            prop_assert!(tool.is_some(), "unknown tool in {}", generation.text);
            let schema = &tool.map(|t| t.parameters.clone()).unwrap_or_default();
            prop_assert!(
                conforms(&calls[0].arguments, schema),
                "{} does not fit {schema}",
                calls[0].arguments
            );
            Ok(())
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

fn own_model<H: Harness>() -> LocalAdapter<H::Backend> {
    H::adapter_on(&task_model_path(), GenerationConfig::default(), 2048)
        .expect("the committed task model loads")
}

/// Items the model never saw in training, and their codes.
fn held_out_items(count: usize) -> Vec<(String, u32)> {
    let mut stream = TaskStream::held_out(7);
    (0..count)
        .map(|_| {
            let example = stream.sample(TaskFamily::ToolLookup, 0);
            let item = example
                .tool_round
                .map(|r| {
                    r.call.arguments["item"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
                .unwrap_or_default();
            let code = code_of(&item);
            (item, code)
        })
        .collect()
}

/// The round trip the own model was taught: one call of the lookup tool
/// with the item copied from the question, its result, and the result as the
/// typed answer.
fn assert_looked_up(prediction: &dspy_rs::Prediction, item: &str, code: u32) {
    let calls = prediction.get("tool_calls", None);
    let executions = prediction.get("tool_executions", None);
    let call = &calls[0];
    assert_eq!(calls.as_array().map(Vec::len), Some(1), "{prediction:?}");
    assert_eq!(call["function"]["name"], LOOKUP_TOOL, "{prediction:?}");
    assert_eq!(
        call["function"]["arguments"]["item"], item,
        "{prediction:?}"
    );
    assert_eq!(executions[0], json!(code.to_string()), "{prediction:?}");
    assert_eq!(prediction.get("code", None), json!(code), "{prediction:?}");
}

/// The own model calls the tool with the question's item, reads the result
/// and answers with it, alone and eight calls at once (items held out of
/// training, so the call must copy); with a reasoning field first, a
/// signature it never saw, the answer stays typed.
pub async fn predict_with_tools_on_the_task_model_looks_the_answer_up<H: Harness>() {
    let adapter = own_model::<H>();
    {
        let _guard = GLOBAL_CONFIG.lock().await;
        configure(adapter.lm().await.unwrap(), adapter.clone());
        for (item, code) in held_out_items(3) {
            let prediction = Predict::new_with_tools(ItemCode::new(), vec![Box::new(CodeLookup)])
                .forward(example! { "item": "input" => item.clone() })
                .await
                .unwrap();
            assert_looked_up(&prediction, &item, code);
        }
        // A signature the family never had (a reasoning field first): the
        // answer stays typed; whether it looks up is the model's choice.
        let (item, _) = &held_out_items(1)[0];
        let prediction =
            Predict::new_with_tools(ItemCodeReasoned::new(), vec![Box::new(CodeLookup)])
                .forward(example! { "item": "input" => item.clone() })
                .await
                .unwrap();
        assert!(
            prediction.get("reasoning", None).is_string(),
            "{prediction:?}"
        );
        assert!(prediction.get("code", None).is_i64(), "{prediction:?}");
    }

    let lm = Arc::new(adapter.lm().await.unwrap());
    let items = held_out_items(8);
    let answers = futures::future::join_all(items.iter().map(|(item, _)| {
        let (adapter, lm) = (adapter.clone(), Arc::clone(&lm));
        let tools = tools_for(&[dsrs_local::testing::tool_task::lookup_spec()]);
        async move {
            adapter
                .call(
                    lm,
                    &ItemCode::new(),
                    example! { "item": "input" => item.clone() },
                    tools,
                )
                .await
        }
    }))
    .await;
    for ((item, code), answer) in items.iter().zip(answers) {
        let prediction = answer.unwrap_or_else(|e| panic!("{item}: {e:#}"));
        assert_looked_up(&prediction, item, *code);
    }
}

pub async fn a_round_reuses_the_cache_of_the_round_before<H: Harness>() {
    let adapter = own_model::<H>();
    let (item, code) = held_out_items(1).remove(0);
    let template = adapter.backend().chat_template();
    let format = template.tool_support().format;
    let chat =
        format_chat(&ItemCode::new(), &example! { "item": "input" => item }).expect("formats");
    let mut turns = Turn::from_chat(&chat);
    let tools = [dsrs_local::testing::tool_task::lookup_spec()];
    let fields = SignatureFields::of(&ItemCode::new()).expect("fields");
    let constraint = OutputConstraint::for_fields(&fields, 200)
        .with_tool_calls(&tools, format, &ToolChoice::Auto, 200)
        .expect("a grammar");
    // The first round is held to a call (the model would call anyway), the
    // second may answer.
    let required = OutputConstraint::for_fields(&fields, 200)
        .with_tool_calls(&tools, format, &ToolChoice::Required, 200)
        .expect("a grammar");
    let round = |turns: &[Turn], constraint: &OutputConstraint| GenerationRequest {
        constraint: Some(constraint.clone()),
        ..GenerationRequest::new(
            template
                .render_conversation(turns, &tools, true)
                .expect("renders"),
            200,
        )
    };
    let first = adapter
        .generate(round(&turns, &required))
        .await
        .expect("generates");
    let calls = format.parse_calls(&first.text).expect("a call");
    assert_eq!(calls.len(), 1, "{}", first.text);
    turns.push(Turn::calls("", calls.clone()));
    turns.push(Turn::tool_result(&calls[0], code.to_string()));
    let second = adapter
        .generate(round(&turns, &constraint))
        .await
        .expect("generates");
    // The first prompt is not read again. (The call is: its text, read
    // whole, splits into other tokens than the model wrote it in, since a
    // merge may join the end of the prompt and the start of the call.)
    assert!(
        second.cached_prompt_tokens + 1 >= first.prompt_tokens,
        "{} cached of {}; the first round read {} and wrote {}",
        second.cached_prompt_tokens,
        second.prompt_tokens,
        first.prompt_tokens,
        first.completion_tokens
    );
    assert!(second.prompt_tokens > first.prompt_tokens + first.completion_tokens / 2);
}

pub async fn dspy_rs_tool_loop_runs_over_the_loopback_server<H: Harness>() {
    let adapter = own_model::<H>();
    let lm = Arc::new(adapter.lm().await.unwrap());
    let (item, _) = &held_out_items(1)[0];
    // dspy-rs's `LM` sends the tools with `tool_choice: auto` and would
    // loop over our `tool_calls` (it never runs a tool: it tells the model
    // "Called tool …"). What must hold: the request with tools is served
    // and the reply parses into typed fields.
    let prediction = Predict::new_with_tools(ItemCode::new(), vec![Box::new(CodeLookup)])
        .forward_with_config(example! { "item": "input" => item.clone() }, lm)
        .await
        .unwrap();
    // dspy-rs parses the reply itself: an integer field's `-0` becomes -0.0.
    assert!(prediction.get("code", None).is_number(), "{prediction:?}");
    if let Some(calls) = prediction.get("tool_calls", None).as_array() {
        assert!(calls.iter().all(|c| c["function"]["name"] == LOOKUP_TOOL));
    }
}

/// `value` is valid for `schema`, for the schemas [`random_schema`] makes.
fn conforms(value: &Value, schema: &Value) -> bool {
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        return options.contains(value);
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some("array") => value
            .as_array()
            .is_some_and(|items| items.iter().all(|item| conforms(item, &schema["items"]))),
        Some("object") => {
            let Some(object) = value.as_object() else {
                return false;
            };
            let properties = schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let required = schema["required"].as_array().cloned().unwrap_or_default();
            required
                .iter()
                .all(|name| name.as_str().is_some_and(|n| object.contains_key(n)))
                && object.iter().all(|(key, item)| {
                    properties
                        .get(key)
                        .is_some_and(|property| conforms(item, property))
                })
        }
        _ => true,
    }
}
