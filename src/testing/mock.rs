//! A backend that replays scripted replies, so the whole adapter path —
//! `configure(lm, adapter)`, `Predict::forward`, parsing, usage — can be
//! tested without a model.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;

use crate::backend::{
    Backend, EngineStats, FinishReason, Generation, GenerationRequest, LocalModel, Timings,
};
use crate::gguf::{GgufHeader, MetadataValue};
use crate::model_card::{ModelCard, TokenTexts};
use crate::{Error, Result};

/// Replies with scripted texts, in order, and records every request it gets.
///
/// Token counts are whitespace-separated words, a stand-in tokenizer.
#[derive(Debug)]
pub struct ScriptedBackend {
    card: ModelCard,
    replies: Mutex<VecDeque<String>>,
    fallback: Option<String>,
    requests: Mutex<Vec<GenerationRequest>>,
}

impl ScriptedBackend {
    /// Replays `replies` in order, then fails with an inference error.
    pub fn new<S: Into<String>>(replies: impl IntoIterator<Item = S>) -> Self {
        ScriptedBackend {
            card: scripted_card(),
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

    /// The requests received so far.
    pub fn requests(&self) -> Vec<GenerationRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// The card of a model with no file: ChatML, an empty vocabulary.
fn scripted_card() -> ModelCard {
    let header = GgufHeader {
        path: PathBuf::from("scripted"),
        version: 3,
        metadata: BTreeMap::from([(
            "general.architecture".to_string(),
            MetadataValue::String("scripted".into()),
        )]),
        tensors: Vec::new(),
        file_size: 0,
        data_offset: 0,
    };
    let tokens = TokenTexts {
        eos_text: "<|im_end|>".into(),
        ..TokenTexts::default()
    };
    // ChatML compiles, and a header with no template gets ChatML.
    ModelCard::new("scripted", &header, tokens, None)
        .unwrap_or_else(|_| unreachable!("the built-in ChatML template compiles"))
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// A stand-in tokenizer: one token per white-space separated word.
impl LocalModel for ScriptedBackend {
    fn card(&self) -> &ModelCard {
        &self.card
    }

    fn encode(&self, text: &str, _add_bos: bool) -> Vec<u32> {
        (0..words(text) as u32).collect()
    }
}

impl Backend for ScriptedBackend {
    fn loaded_model(&self) -> &dyn LocalModel {
        self
    }

    fn context_length(&self) -> usize {
        usize::MAX
    }

    fn generate(&self, request: &GenerationRequest) -> Result<Generation> {
        fn poisoned<T>(_: T) -> Error {
            Error::LockPoisoned {
                what: "scripted backend",
            }
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
                source: None,
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

    /// A scripted reply holds nothing and samples nothing.
    fn stats(&self) -> EngineStats {
        EngineStats::default()
    }
}
