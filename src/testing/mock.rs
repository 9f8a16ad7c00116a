//! A backend that replays scripted replies, so the whole adapter path —
//! `configure(lm, adapter)`, `Predict::forward`, parsing, usage — can be
//! tested without a model.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::backend::{Backend, FinishReason, Generation, GenerationRequest, Timings};
use crate::prompt::ChatTemplate;
use crate::{Error, Result};

/// Replies with scripted texts, in order, and records every request it gets.
///
/// Token counts are whitespace-separated words, a stand-in tokenizer.
#[derive(Debug)]
pub struct ScriptedBackend {
    template: ChatTemplate,
    replies: Mutex<VecDeque<String>>,
    fallback: Option<String>,
    requests: Mutex<Vec<GenerationRequest>>,
}

impl ScriptedBackend {
    /// Replays `replies` in order, then fails with an inference error.
    pub fn new<S: Into<String>>(replies: impl IntoIterator<Item = S>) -> Self {
        ScriptedBackend {
            template: ChatTemplate::chatml("", "<|im_end|>"),
            replies: Mutex::new(replies.into_iter().map(Into::into).collect()),
            fallback: None,
            requests: Mutex::new(Vec::new()),
        }
    }

    /// Always replies with `reply`.
    pub fn always(reply: impl Into<String>) -> Self {
        let mut backend = Self::new(Vec::<String>::new());
        backend.fallback = Some(reply.into());
        backend
    }

    /// Uses `template` instead of ChatML.
    #[must_use]
    pub fn with_template(mut self, template: ChatTemplate) -> Self {
        self.template = template;
        self
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<GenerationRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

impl Backend for ScriptedBackend {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    fn count_tokens(&self, prompt: &str) -> Result<usize> {
        Ok(words(prompt))
    }

    fn generate(&self, request: &GenerationRequest) -> Result<Generation> {
        fn poisoned<T>(_: T) -> Error {
            Error::TaskFailed("scripted backend lock poisoned".into())
        }
        self.requests
            .lock()
            .map_err(poisoned)?
            .push(request.clone());
        let next = self.replies.lock().map_err(poisoned)?.pop_front();
        let text = next
            .or_else(|| self.fallback.clone())
            .ok_or(Error::Inference {
                backend: "scripted",
                reason: "no scripted reply left".into(),
            })?;
        Ok(Generation {
            completion_tokens: words(&text),
            prompt_tokens: words(&request.prompt),
            cached_prompt_tokens: 0,
            text,
            finish_reason: FinishReason::Stop,
            timings: Timings::default(),
        })
    }
}
