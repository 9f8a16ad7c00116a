//! [`Chat`] → the exact prompt text a model sees, through the model's own chat template.
//!
//! GGUF files carry their chat template as Jinja (`tokenizer.chat_template`).
//! We render it with `minijinja` the way Hugging Face and llama.cpp do
//! (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`),
//! passing `messages`, `add_generation_prompt`, `bos_token` and `eos_token`.
//! A model without a template gets one by architecture, as llama.cpp picks
//! one: Gemma's turns for the Gemma families, ChatML for the rest.

use std::sync::Arc;

use dspy_rs::{Chat, Message};
use minijinja::value::Kwargs;
use minijinja::{Environment, ErrorKind, context};
use serde_json::{Value, json};

use super::json_text::python_json;
use super::tools::{ToolCall, ToolFormat, ToolSpec, fallback_results, fallback_section};
use crate::error::{TemplateStage, cause};
use crate::{Error, Result};

/// ChatML, used when a model ships no template (the format of Qwen, SmolLM and
/// most small instruction models; also the default of llama.cpp's server).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}\
{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Gemma's turns (llama.cpp's built-in `gemma` template, with the BOS the
/// Gemma tokenizer configs print): roles `user` and `model`, no system role —
/// a system message opens the first user turn, followed by a blank line.
pub const GEMMA_TEMPLATE: &str = "{{ bos_token }}\
{% set system = namespace(text='') %}\
{% for message in messages %}\
{% if message['role'] == 'system' %}{% set system.text = system.text + message['content'] + '\n\n' %}\
{% else %}\
{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}\
{{ '<start_of_turn>' + role + '\n' + system.text + message['content'] | trim + '<end_of_turn>\n' }}\
{% set system.text = '' %}\
{% endif %}\
{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

const TEMPLATE_NAME: &str = "chat";

/// What one render may do. Templates come inside model files downloaded
/// from strangers: a loop without end, runaway recursion or a flood of
/// output becomes a [`TemplateStage::Render`] error instead of a hang, a
/// stack overflow or an exhausted memory. Real templates render a
/// 1024-message conversation with tools in well under 1 % of the fuel
/// (tested), and no prompt a context can hold comes near the output limit.
const TEMPLATE_FUEL: u64 = 50_000_000;
const TEMPLATE_RECURSION: usize = 100;
const TEMPLATE_MAX_OUTPUT: usize = 64 << 20;

/// ChatML that renders tools, calls and results as Qwen2.5's template does
/// (without Qwen's default system line): the template of the crate's own
/// model. With no tools it renders exactly as [`CHATML_TEMPLATE`].
pub const CHATML_TOOLS_TEMPLATE: &str = r#"{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- endif %}
{{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
{%- for tool in tools %}{{- "\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'system' and loop.first and tools %}
{%- elif message.role == 'assistant' and message.tool_calls %}
{{- '<|im_start|>assistant' }}
{%- if message.content %}{{- '\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\n<tool_call>\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\n<tool_response>\n' }}{{- message.content }}{{- '\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
{%- else %}
{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"#;

/// One turn of a conversation, as OpenAI messages and chat templates carry it.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text (empty for an assistant turn that only calls tools).
    pub content: String,
    /// The calls an assistant turn makes.
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` turn answers.
    pub tool_call_id: Option<String>,
    /// The tool a `tool` turn comes from.
    pub name: Option<String>,
}

impl Turn {
    /// A plain turn.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Turn {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }

    /// The turns of a dspy-rs chat.
    pub fn from_chat(chat: &Chat) -> Vec<Turn> {
        chat.messages
            .iter()
            .map(|message| Turn::new(role_of(message), message.content()))
            .collect()
    }

    /// An assistant turn that calls tools.
    pub fn calls(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        Turn {
            tool_calls: calls,
            ..Turn::new("assistant", content)
        }
    }

    /// The result of `call`.
    pub fn tool_result(call: &ToolCall, content: impl Into<String>) -> Self {
        Turn {
            tool_call_id: Some(call.id.clone()),
            name: Some(call.name.clone()),
            ..Turn::new("tool", content)
        }
    }

    fn to_template(&self) -> Value {
        let mut message = json!({"role": self.role, "content": self.content});
        if !self.tool_calls.is_empty() {
            message["tool_calls"] = self.tool_calls.iter().map(ToolCall::to_template).collect();
        }
        if let Some(id) = &self.tool_call_id {
            message["tool_call_id"] = json!(id);
        }
        if let Some(name) = &self.name {
            message["name"] = json!(name);
        }
        message
    }
}

/// How a template takes tools: itself (its `tools` variable, `tool_calls`
/// and the `tool` role), or through the fallback text; and the format its
/// model writes calls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolSupport {
    /// The template renders tools, calls and results itself.
    pub native: bool,
    /// How the model writes a call.
    pub format: ToolFormat,
}

/// A compiled chat template plus the special-token texts it may print.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Arc<Environment<'static>>,
    source: Arc<str>,
    bos_token: String,
    eos_token: String,
    is_fallback: bool,
    tool_support: ToolSupport,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("is_fallback", &self.is_fallback)
            .field("tool_support", &self.tool_support)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles a Jinja chat template. `bos_token`/`eos_token` are the texts of
    /// the model's special tokens (templates usually print `bos_token` first).
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self> {
        Self::build(source.into(), bos_token.into(), eos_token.into(), false)
    }

    /// ChatML, for models that ship no template.
    pub fn chatml(bos_token: impl Into<String>, eos_token: impl Into<String>) -> Self {
        Self::build(
            CHATML_TEMPLATE.to_string(),
            bos_token.into(),
            eos_token.into(),
            true,
        )
        .unwrap_or_else(|_| unreachable!("the built-in ChatML template compiles"))
    }

    /// The model's template when it has one; otherwise the one its
    /// architecture uses (Gemma's turns for `gemma*`, ChatML for the rest).
    pub fn for_model(
        source: Option<&str>,
        architecture: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<Self> {
        match source.filter(|s| !s.trim().is_empty()) {
            Some(source) => Self::new(source, bos_token, eos_token),
            None if architecture.starts_with("gemma") => Self::build(
                GEMMA_TEMPLATE.to_string(),
                bos_token.to_string(),
                eos_token.to_string(),
                true,
            ),
            None => Ok(Self::chatml(bos_token, eos_token)),
        }
    }

    fn build(
        source: String,
        bos_token: String,
        eos_token: String,
        is_fallback: bool,
    ) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_recursion_limit(TEMPLATE_RECURSION);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| template_error(TemplateStage::Compile, e))?;
        let mut template = ChatTemplate {
            env: Arc::new(env),
            source: source.into(),
            bos_token,
            eos_token,
            is_fallback,
            tool_support: ToolSupport {
                native: false,
                format: ToolFormat::Hermes,
            },
        };
        template.tool_support = template.probe_tool_support();
        Ok(template)
    }

    /// Whether this template renders tools itself, found as llama.cpp finds
    /// it: by rendering a made-up tool, call and result and looking for them
    /// in the text; the call format from the template's own words.
    fn probe_tool_support(&self) -> ToolSupport {
        let format = if self.source.contains("<tool_call>") {
            Some(ToolFormat::Hermes)
        } else if self.source.contains("<|python_tag|>") || self.source.contains("ipython") {
            Some(ToolFormat::Llama3Json)
        } else {
            None
        };
        let probe = ToolSpec::new(
            "dsrs_probe_tool",
            "probe",
            json!({"type": "object", "properties": {}}),
        );
        let call = ToolCall {
            id: "call_0".into(),
            name: "dsrs_probe_call".into(),
            arguments: json!({}),
        };
        let turns = [
            Turn::new("system", "s"),
            Turn::new("user", "u"),
            Turn::calls("", vec![call.clone()]),
            Turn::tool_result(&call, "dsrs_probe_result"),
        ];
        let native = format.is_some()
            && self
                .render_native(&turns, &[probe], true)
                .is_ok_and(|text| {
                    ["dsrs_probe_tool", "dsrs_probe_call", "dsrs_probe_result"]
                        .iter()
                        .all(|needle| text.contains(needle))
                });
        ToolSupport {
            native,
            format: format.filter(|_| native).unwrap_or(ToolFormat::Hermes),
        }
    }

    /// How this template takes tools and how its model writes calls.
    pub fn tool_support(&self) -> ToolSupport {
        self.tool_support
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text of the beginning-of-sequence token handed to the template.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The text of the end-of-sequence token handed to the template.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// True when this is a built-in template (ChatML or Gemma's) rather than the model's own.
    pub fn is_fallback(&self) -> bool {
        self.is_fallback
    }

    /// Whether a BOS token must be added in front of a rendered `prompt`: when
    /// the model wants one and the template did not already print it.
    pub fn needs_bos(&self, prompt: &str, model_adds_bos: bool) -> bool {
        let printed = !self.bos_token.is_empty() && prompt.starts_with(&self.bos_token);
        model_adds_bos && !printed
    }

    /// `prompt` as an engine that adds the BOS token itself must read it
    /// (a serving engine tokenizing text): the BOS the template printed is
    /// taken off when the model adds one, so it is not there twice.
    pub fn without_printed_bos<'p>(&self, prompt: &'p str, model_adds_bos: bool) -> &'p str {
        match prompt.strip_prefix(self.bos_token.as_str()) {
            Some(rest) if model_adds_bos && !self.bos_token.is_empty() => rest,
            _ => prompt,
        }
    }

    /// Renders `chat` ending with the opening of the assistant's turn, ready for generation.
    pub fn render(&self, chat: &Chat) -> Result<String> {
        self.render_with(chat, true)
    }

    /// Renders `chat`; `add_generation_prompt` opens the assistant's turn at the end.
    pub fn render_with(&self, chat: &Chat, add_generation_prompt: bool) -> Result<String> {
        self.render_conversation(&Turn::from_chat(chat), &[], add_generation_prompt)
    }

    /// Renders a conversation given as `(role, content)` turns (`system`,
    /// `user`, `assistant`, `tool`), as an OpenAI request carries it.
    pub fn render_turns(
        &self,
        turns: &[(String, String)],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let turns: Vec<Turn> = turns
            .iter()
            .map(|(role, content)| Turn::new(role.as_str(), content.as_str()))
            .collect();
        self.render_conversation(&turns, &[], add_generation_prompt)
    }

    /// Renders a conversation with the tools the model may call, its calls
    /// and their results: through the template when it renders tools
    /// itself, otherwise with the tools in a section of the system message,
    /// calls as the text the model writes and results as a user turn.
    pub fn render_conversation(
        &self,
        turns: &[Turn],
        tools: &[ToolSpec],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let has_tool_turns = turns
            .iter()
            .any(|t| !t.tool_calls.is_empty() || t.role == "tool");
        if self.tool_support.native || (tools.is_empty() && !has_tool_turns) {
            return self.render_native(turns, tools, add_generation_prompt);
        }
        let turns = self.without_tool_turns(turns, tools);
        self.render_native(&turns, &[], add_generation_prompt)
    }

    /// The conversation rewritten for a template that knows no tools.
    fn without_tool_turns(&self, turns: &[Turn], tools: &[ToolSpec]) -> Vec<Turn> {
        let format = self.tool_support.format;
        let mut rewritten: Vec<Turn> = Vec::with_capacity(turns.len() + 1);
        if !tools.is_empty() {
            match turns.first().filter(|t| t.role == "system") {
                Some(system) => rewritten.push(Turn::new(
                    "system",
                    format!("{}{}", system.content, fallback_section(tools)),
                )),
                None => rewritten.push(Turn::new(
                    "system",
                    fallback_section(tools).trim_start().to_string(),
                )),
            }
        }
        let skip =
            usize::from(!tools.is_empty() && turns.first().is_some_and(|t| t.role == "system"));
        let mut results: Vec<&str> = Vec::new();
        for turn in &turns[skip..] {
            if turn.role == "tool" {
                results.push(&turn.content);
                continue;
            }
            if !results.is_empty() {
                rewritten.push(Turn::new("user", fallback_results(results.drain(..))));
            }
            if turn.tool_calls.is_empty() {
                rewritten.push(Turn::new(turn.role.as_str(), turn.content.as_str()));
            } else {
                let mut parts: Vec<String> = Vec::new();
                if !turn.content.is_empty() {
                    parts.push(turn.content.clone());
                }
                parts.extend(turn.tool_calls.iter().map(|c| format.call_text(c)));
                rewritten.push(Turn::new("assistant", parts.join("\n")));
            }
        }
        if !results.is_empty() {
            rewritten.push(Turn::new("user", fallback_results(results)));
        }
        rewritten
    }

    fn render_native(
        &self,
        turns: &[Turn],
        tools: &[ToolSpec],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let messages: Vec<Value> = turns.iter().map(Turn::to_template).collect();
        let tools: Option<Vec<Value>> =
            (!tools.is_empty()).then(|| tools.iter().map(ToolSpec::to_openai).collect());
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| template_error(TemplateStage::Render, e))?;
        let mut output = BoundedOutput(Vec::new());
        template
            .render_captured_to(
                context! {
                    messages => messages,
                    tools => tools,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => self.bos_token,
                    eos_token => self.eos_token,
                },
                &mut output,
            )
            .map_err(|e| template_error(TemplateStage::Render, e))?;
        String::from_utf8(output.0).map_err(|_| Error::ChatTemplate {
            stage: TemplateStage::Render,
            source: cause(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "the template wrote text that is not UTF-8",
            )),
        })
    }
}

/// A render's output, refused past [`TEMPLATE_MAX_OUTPUT`] bytes.
struct BoundedOutput(Vec<u8>);

impl std::io::Write for BoundedOutput {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + bytes.len() > TEMPLATE_MAX_OUTPUT {
            return Err(std::io::Error::other(format!(
                "the template wrote more than {TEMPLATE_MAX_OUTPUT} bytes"
            )));
        }
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `tojson` as Hugging Face's and llama.cpp's template engines write it
/// (Python's `json.dumps`), not minijinja's HTML-safe compact form.
fn tojson(
    value: &minijinja::Value,
    indent: Option<minijinja::Value>,
    kwargs: Kwargs,
) -> std::result::Result<minijinja::Value, minijinja::Error> {
    let indent = match indent {
        Some(indent) => Some(indent),
        None => kwargs.get("indent")?,
    };
    let indent = indent.and_then(|v| usize::try_from(v).ok());
    let value = serde_json::to_value(value).map_err(|e| {
        minijinja::Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON")
            .with_source(e)
    })?;
    Ok(minijinja::Value::from_safe_string(python_json(
        &value, indent,
    )))
}

fn template_error(stage: TemplateStage, error: minijinja::Error) -> Error {
    Error::ChatTemplate {
        stage,
        source: cause(error),
    }
}

fn role_of(message: &Message) -> &'static str {
    match message {
        Message::System { .. } => "system",
        Message::User { .. } => "user",
        Message::Assistant { .. } => "assistant",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_fallback_renders_roles_and_generation_prompt() {
        let chat = Chat::new(vec![Message::system("S"), Message::user("U")]);
        let text = ChatTemplate::chatml("", "<|im_end|>")
            .render(&chat)
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_template_that_does_not_compile_is_an_error() {
        let err = ChatTemplate::new("{% for %}", "", "").unwrap_err();
        assert!(
            matches!(
                err,
                Error::ChatTemplate {
                    stage: TemplateStage::Compile,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let template =
            ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        let err = template.render(&Chat::new(vec![])).unwrap_err();
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        assert!(cause.is_some_and(|c| c.contains("no system role")), "{err}");
    }

    #[test]
    fn models_without_a_template_get_their_architectures_turns() {
        let chat = Chat::new(vec![
            Message::system("Be brief."),
            Message::user("Hi"),
            Message::assistant("Hello"),
            Message::user("Capital of France?"),
        ]);
        let gemma = ChatTemplate::for_model(None, "gemma3", "<bos>", "<eos>").unwrap();
        assert_eq!(
            gemma.render(&chat).unwrap(),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n\
             <start_of_turn>model\nHello<end_of_turn>\n\
             <start_of_turn>user\nCapital of France?<end_of_turn>\n\
             <start_of_turn>model\n"
        );
        let llama = ChatTemplate::for_model(Some("  "), "llama", "<s>", "</s>").unwrap();
        assert!(llama.is_fallback());
        assert!(
            llama
                .render(&chat)
                .unwrap()
                .starts_with("<|im_start|>system\nBe brief.")
        );
    }
}
