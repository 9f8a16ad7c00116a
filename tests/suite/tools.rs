//! Tools without a model: the loop's turns, errors and limit on a scripted
//! backend (through dspy-rs's `Predict::new_with_tools`), how templates take
//! tools, and calls as they are written and read back.

use std::sync::Arc;

use dspy_rs::adapter::Adapter;
use dspy_rs::{Predict, Predictor, configure, example};
use dsrs_local::prompt::{
    CHATML_TEMPLATE, CHATML_TOOLS_TEMPLATE, ChatTemplate, OutputConstraint, SignatureFields,
    ToolCall, ToolChoice, ToolFormat, ToolSpec, Turn,
};
use dsrs_local::testing::ScriptedBackend;
use dsrs_local::testing::tool_task::{
    CodeLookup, FixedTool, code_of, distractor_specs, lookup_spec,
};
use dsrs_local::{Error, GenerationConfig, LocalAdapter};
use rig::completion::ToolDefinition;
use rig::tool::{ToolDyn, ToolError};
use rig::wasm_compat::WasmBoxedFuture;
use serde_json::json;

use crate::ItemCode;
use crate::support::GLOBAL_CONFIG;

fn lookup_call(item: &str) -> String {
    format!(
        "<tool_call>\n{{\"name\": \"lookup_code\", \"arguments\": {{\"item\": \"{item}\"}}}}\n</tool_call>"
    )
}

fn answer(code: u32) -> String {
    format!("[[ ## code ## ]]\n{code}\n\n[[ ## completed ## ]]")
}

#[tokio::test]
async fn predict_with_tools_calls_the_tool_and_answers_from_its_result() {
    let code = code_of("red lamp");
    let backend = Arc::new(ScriptedBackend::new([
        lookup_call("red lamp"),
        answer(code),
    ]));
    let _guard = GLOBAL_CONFIG.lock().await;
    let adapter = LocalAdapter::new(Arc::clone(&backend), GenerationConfig::default());
    configure(adapter.lm().await.unwrap(), adapter);
    let predict = Predict::new_with_tools(ItemCode::new(), vec![Box::new(CodeLookup)]);
    let prediction = predict
        .forward(example! { "item": "input" => "red lamp" })
        .await
        .unwrap();

    assert_eq!(prediction.get("code", None), json!(code));
    let calls = prediction.get("tool_calls", None);
    assert_eq!(calls[0]["function"]["name"], "lookup_code");
    assert_eq!(
        calls[0]["function"]["arguments"],
        json!({"item": "red lamp"})
    );
    assert_eq!(
        prediction.get("tool_executions", None),
        json!([code.to_string()])
    );

    let requests = backend.requests();
    assert_eq!(requests.len(), 2);
    let (first, second) = (&requests[0].prompt, &requests[1].prompt);
    // The tools in the system message (the scripted model's ChatML has no
    // tools of its own: the fallback section).
    assert!(first.contains("# Tools\n"), "{first}");
    assert!(first.contains("\"name\": \"lookup_code\""), "{first}");
    // The second round extends the first: the call as written, then the result.
    let expected = format!(
        "{first}{}<|im_end|>\n<|im_start|>user\n<tool_response>\n{code}\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
        lookup_call("red lamp")
    );
    assert_eq!(second, &expected);
    // Both rounds are held to "a call or the fields".
    for request in &requests {
        let lark = request.constraint.as_ref().map(OutputConstraint::lark);
        assert!(
            lark.is_some_and(|l| l.starts_with("start: reply | tool_call")),
            "{lark:?}"
        );
    }
    // Usage adds up both rounds (the scripted backend counts words).
    let words = |text: &str| text.split_whitespace().count() as u64;
    assert_eq!(
        prediction.lm_usage.prompt_tokens,
        words(first) + words(second)
    );
    assert_eq!(
        prediction.lm_usage.completion_tokens,
        words(&lookup_call("red lamp")) + words(&answer(code))
    );
}

/// A tool that panics when called.
struct Panicking;

impl ToolDyn for Panicking {
    fn name(&self) -> String {
        "explode".into()
    }

    fn definition<'a>(&'a self, _prompt: String) -> WasmBoxedFuture<'a, ToolDefinition> {
        Box::pin(async {
            ToolDefinition {
                name: "explode".into(),
                description: "Panics.".into(),
                parameters: json!({"type": "object", "properties": {}}),
            }
        })
    }

    fn call<'a>(&'a self, _args: String) -> WasmBoxedFuture<'a, Result<String, ToolError>> {
        Box::pin(async { panic!("the tool blew up") })
    }
}

/// What the model reads back for one call, given the tools.
async fn tool_result_for(call: &str, tools: Vec<Arc<dyn ToolDyn>>) -> String {
    let backend = Arc::new(ScriptedBackend::new([call.to_string(), answer(1)]));
    let adapter = LocalAdapter::new(Arc::clone(&backend), GenerationConfig::default());
    let lm = Arc::new(adapter.lm().await.unwrap());
    let prediction = adapter
        .call(
            lm,
            &ItemCode::new(),
            example! { "item": "input" => "x" },
            tools,
        )
        .await
        .unwrap();
    assert_eq!(
        prediction.get("code", None),
        json!(1),
        "the model still answers"
    );
    let second = &backend.requests()[1].prompt;
    let result = prediction.get("tool_executions", None)[0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        second.contains(&format!("<tool_response>\n{result}\n</tool_response>")),
        "{second}"
    );
    result
}

#[tokio::test]
async fn a_failing_panicking_or_unknown_tool_becomes_a_result_the_model_reads() {
    let failing: Arc<dyn ToolDyn> =
        Arc::new(FixedTool::failing(lookup_spec(), "the table is locked"));
    let result = tool_result_for(&lookup_call("lamp"), vec![failing]).await;
    assert!(
        result.contains("`lookup_code` failed") && result.contains("the table is locked"),
        "{result}"
    );

    let call = "<tool_call>\n{\"name\": \"explode\", \"arguments\": {}}\n</tool_call>";
    let result = tool_result_for(call, vec![Arc::new(Panicking)]).await;
    assert!(
        result.contains("`explode` panicked") && result.contains("the tool blew up"),
        "{result}"
    );

    let call = "<tool_call>\n{\"name\": \"fetch_code\", \"arguments\": {}}\n</tool_call>";
    let result = tool_result_for(call, vec![Arc::new(CodeLookup)]).await;
    assert!(
        result.contains("no tool named `fetch_code`") && result.contains("`lookup_code`"),
        "{result}"
    );

    // A call that does not parse (possible only without the constraint) is
    // a typed error, not a guess.
    let backend = Arc::new(ScriptedBackend::new(["<tool_call>\n{\"name\": "]));
    let adapter = LocalAdapter::new(backend, GenerationConfig::default().with_constraint(false));
    let lm = Arc::new(adapter.lm().await.unwrap());
    let error = adapter
        .call(
            lm,
            &ItemCode::new(),
            example! { "item": "input" => "x" },
            vec![Arc::new(CodeLookup)],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.downcast_ref::<Error>(),
            Some(Error::MalformedToolCall { .. })
        ),
        "{error:#}"
    );
}

#[tokio::test]
async fn a_model_that_keeps_calling_stops_at_max_tool_iterations_with_its_last_call() {
    let backend = Arc::new(ScriptedBackend::always(lookup_call("lamp")));
    let adapter = LocalAdapter::new(Arc::clone(&backend), GenerationConfig::default());
    let mut lm = adapter.lm().await.unwrap();
    lm.max_tool_iterations = 3;
    let error = adapter
        .call(
            Arc::new(lm),
            &ItemCode::new(),
            example! { "item": "input" => "lamp" },
            vec![Arc::new(CodeLookup)],
        )
        .await
        .unwrap_err();
    match error.downcast_ref::<Error>() {
        Some(Error::ToolLoopLimit { limit, last_call }) => {
            assert_eq!(*limit, 3);
            assert!(last_call.contains("lookup_code"), "{last_call}");
        }
        other => panic!("expected the loop limit, got {other:?}"),
    }
    assert!(error.to_string().contains("max_tool_iterations"), "{error}");
    // Three rounds of calls were run, and the fourth reply was one too many.
    assert_eq!(backend.requests().len(), 4);
}

fn conversation() -> (Vec<Turn>, Vec<ToolSpec>) {
    let call = ToolCall {
        id: "call_1".into(),
        name: "lookup_code".into(),
        arguments: json!({"item": "lamp"}),
    };
    let mut tools = vec![lookup_spec()];
    tools.extend(distractor_specs());
    let turns = vec![
        Turn::new("system", "Answer with codes."),
        Turn::new("user", "The lamp?"),
        Turn::calls("", vec![call.clone()]),
        Turn::tool_result(&call, "417"),
        Turn::new("assistant", "417"),
        Turn::new("user", "And the boat?"),
    ];
    (turns, tools)
}

#[test]
fn a_chatml_model_reads_tools_as_qwen_templates_write_them() {
    let plain = ChatTemplate::new(CHATML_TEMPLATE, "", "<|im_end|>").unwrap();
    let tooled = ChatTemplate::new(CHATML_TOOLS_TEMPLATE, "", "<|im_end|>").unwrap();
    assert!(!plain.tool_support().native);
    assert!(tooled.tool_support().native);
    assert_eq!(tooled.tool_support().format, ToolFormat::Hermes);
    assert_eq!(plain.tool_support().format, ToolFormat::Hermes);

    let (turns, tools) = conversation();
    let native = tooled.render_conversation(&turns, &tools, true).unwrap();
    let fallback = plain.render_conversation(&turns, &tools, true).unwrap();
    assert_eq!(
        native, fallback,
        "the fallback writes what the template does"
    );
    assert!(native.starts_with(
        "<|im_start|>system\nAnswer with codes.\n\n# Tools\n\nYou may call one or more functions"
    ));
    assert!(native.contains(
        "<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"lookup_code\", \"description\""
    ));
    assert!(native.contains(
        "<|im_start|>assistant\n<tool_call>\n{\"name\": \"lookup_code\", \"arguments\": {\"item\": \"lamp\"}}\n</tool_call><|im_end|>\n\
         <|im_start|>user\n<tool_response>\n417\n</tool_response><|im_end|>\n"
    ));
    // Without tools the tool template is plain ChatML.
    let chat_only = [Turn::new("system", "S"), Turn::new("user", "U")];
    assert_eq!(
        tooled.render_conversation(&chat_only, &[], true).unwrap(),
        plain.render_conversation(&chat_only, &[], true).unwrap()
    );
}

/// Llama 3.1's tool handling, cut to its parts: tools in the first user
/// message as JSON (`tojson(indent=4)`), calls as `{"name", "parameters"}`,
/// results in `ipython` turns.
const LLAMA31_LIKE: &str = r#"{{- bos_token }}
{%- for message in messages %}
{%- if message.role == 'user' and loop.index0 == 1 and tools %}
{{- '<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, respond with a JSON for a function call with its proper arguments.\n\n' }}
{%- for t in tools %}{{- t | tojson(indent=4) }}{{- "\n\n" }}{%- endfor %}
{{- message.content + '<|eot_id|>' }}
{%- elif message.tool_calls %}
{%- set tool_call = message.tool_calls[0].function %}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "' + tool_call.name + '", "parameters": ' + tool_call.arguments | tojson + '}<|eot_id|>' }}
{%- elif message.role == 'tool' %}
{{- '<|start_header_id|>ipython<|end_header_id|>\n\n' + message.content + '<|eot_id|>' }}
{%- else %}
{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\n\n' + message.content + '<|eot_id|>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"#;

#[test]
fn a_llama_3_template_takes_tools_itself_and_calls_are_bare_json() {
    let template = ChatTemplate::new(LLAMA31_LIKE, "<|begin_of_text|>", "<|eot_id|>").unwrap();
    assert_eq!(
        template.tool_support(),
        dsrs_local::prompt::ToolSupport {
            native: true,
            format: ToolFormat::Llama3Json
        }
    );
    let (turns, tools) = conversation();
    let text = template.render_conversation(&turns, &tools, true).unwrap();
    assert!(
        text.contains("{\n    \"type\": \"function\",\n    \"function\": {"),
        "{text}"
    );
    assert!(text.contains(
        "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"lookup_code\", \"parameters\": {\"item\": \"lamp\"}}<|eot_id|>"
    ));
    assert!(text.contains("<|start_header_id|>ipython<|end_header_id|>\n\n417<|eot_id|>"));
    // What the model writes is what the template writes back.
    let call = ToolCall {
        id: "x".into(),
        name: "lookup_code".into(),
        arguments: json!({"item": "lamp"}),
    };
    let written = ToolFormat::Llama3Json.call_text(&call);
    assert!(text.contains(&written), "{written}");
    assert_eq!(
        ToolFormat::Llama3Json.parse_calls(&written).unwrap()[0].arguments,
        call.arguments
    );
}

#[test]
fn tool_choice_shapes_the_grammar() {
    let fields = SignatureFields::of(&ItemCode::new()).unwrap();
    let tools = [lookup_spec()];
    let reply = || OutputConstraint::for_fields(&fields, 100);
    let auto = reply()
        .with_tool_calls(&tools, ToolFormat::Hermes, &ToolChoice::Auto, 100)
        .unwrap();
    assert!(auto.lark().starts_with("start: reply | tool_call\nreply: "));
    let required = reply()
        .with_tool_calls(&tools, ToolFormat::Hermes, &ToolChoice::Required, 100)
        .unwrap();
    assert!(required.lark().starts_with("start: tool_call\n"));
    assert!(!required.lark().contains("[[ ## code ## ]]"));
    let none = reply()
        .with_tool_calls(&tools, ToolFormat::Hermes, &ToolChoice::None, 100)
        .unwrap();
    assert_eq!(none, reply());
    let unknown = reply().with_tool_calls(
        &tools,
        ToolFormat::Hermes,
        &ToolChoice::Named("nope".into()),
        100,
    );
    assert!(matches!(unknown, Err(Error::InvalidConfig { .. })));
}
