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
use minijinja::{Environment, ErrorKind, context};
use serde::Serialize;

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

/// A compiled chat template plus the special-token texts it may print.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Arc<Environment<'static>>,
    source: Arc<str>,
    bos_token: String,
    eos_token: String,
    is_fallback: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("is_fallback", &self.is_fallback)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct TemplateMessage<'a> {
    role: &'a str,
    content: &'a str,
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
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| template_error(TemplateStage::Compile, e))?;
        Ok(ChatTemplate {
            env: Arc::new(env),
            source: source.into(),
            bos_token,
            eos_token,
            is_fallback,
        })
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

    /// Renders `chat` ending with the opening of the assistant's turn, ready for generation.
    pub fn render(&self, chat: &Chat) -> Result<String> {
        self.render_with(chat, true)
    }

    /// Renders `chat`; `add_generation_prompt` opens the assistant's turn at the end.
    pub fn render_with(&self, chat: &Chat, add_generation_prompt: bool) -> Result<String> {
        let turns: Vec<(String, String)> = chat
            .messages
            .iter()
            .map(|message| (role_of(message).to_string(), message.content()))
            .collect();
        self.render_turns(&turns, add_generation_prompt)
    }

    /// Renders a conversation given as `(role, content)` turns (`system`,
    /// `user`, `assistant`, `tool`), as an OpenAI request carries it.
    pub fn render_turns(
        &self,
        turns: &[(String, String)],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let messages: Vec<TemplateMessage<'_>> = turns
            .iter()
            .map(|(role, content)| TemplateMessage {
                role,
                content: content.as_str(),
            })
            .collect();
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| template_error(TemplateStage::Render, e))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| template_error(TemplateStage::Render, e))
    }
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
