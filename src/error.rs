//! The crate's one error type.
//!
//! Every fallible public function returns [`Result`]. Variants carry the facts a
//! caller needs to act (paths, sizes, names) and, where a dependency failed,
//! its error as the [`source`](std::error::Error::source), so nothing is
//! flattened into a string. Sources are shared (`Arc`), which makes [`Error`]
//! `Clone`: one failed load or decode can be reported to every caller waiting
//! on it. The conversion to `anyhow` that dspy-rs wants happens once, in the
//! adapter's `call`.

use std::path::PathBuf;
use std::sync::Arc;

use crate::prompt::ParseError;

/// A dependency's error, kept whole as the source of ours.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Wraps any error as a [`Cause`].
pub(crate) fn cause(error: impl std::error::Error + Send + Sync + 'static) -> Cause {
    Arc::new(error)
}

/// A panic's message, when its payload has one.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".into())
}

/// A cause made of our own words, where a dependency reports only a message.
pub(crate) fn message_cause(message: impl std::fmt::Display) -> Cause {
    #[derive(Debug)]
    struct Message(String);
    impl std::fmt::Display for Message {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Message {}
    Arc::new(Message(message.to_string()))
}

/// Which step of a chat template failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateStage {
    /// Compiling the Jinja source (from the model file).
    Compile,
    /// Rendering a conversation.
    Render,
}

impl std::fmt::Display for TemplateStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TemplateStage::Compile => "does not compile",
            TemplateStage::Render => "failed to render",
        })
    }
}

/// Errors from loading models, rendering prompts, generating and parsing replies.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- model files ---
    /// No model file at this path.
    #[error("model file {path} was not found: {hint}")]
    ModelNotFound {
        /// The path that was tried.
        path: PathBuf,
        /// How to name a model that exists.
        hint: String,
    },
    /// The model file exists but cannot be opened or read.
    #[error("model file {path} cannot be read")]
    ModelUnreadable {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A model named by repo, by Ollama name or by short name was not found on this machine.
    #[error("model `{model}` was not found; looked in: {}; {hint}", looked.join(", "))]
    ModelLookup {
        /// The model as the user named it.
        model: String,
        /// Every place looked.
        looked: Vec<String>,
        /// How to get the file.
        hint: String,
    },
    /// The file exists but is not a GGUF file, or its header is damaged or truncated.
    #[error("{path} is not a valid GGUF model: {reason}")]
    InvalidModelFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend cannot run this model architecture.
    #[error(
        "architecture `{architecture}` is not supported by the {backend} backend{}",
        supported_list(supported)
    )]
    UnsupportedArchitecture {
        /// The `general.architecture` of the file.
        architecture: String,
        /// The backend that refused it.
        backend: &'static str,
        /// The architectures it runs (empty when it does not say).
        supported: Vec<&'static str>,
    },
    /// The backend failed to load the model for another reason.
    #[error("the {backend} backend could not load {path}: {reason}")]
    ModelLoad {
        /// The backend that tried.
        backend: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong, in our words.
        reason: String,
        /// The engine's own error, when it gave one.
        #[source]
        source: Option<Cause>,
    },
    /// The model cannot fit in the memory of this machine.
    #[error("the model needs {needed} bytes of memory but {available} are available: {detail}")]
    InsufficientMemory {
        /// Bytes the plan needs.
        needed: u64,
        /// Bytes available.
        available: u64,
        /// What the estimate is made of.
        detail: String,
    },

    // --- prompts ---
    /// The signature cannot be turned into a prompt (for example it has no output field).
    #[error("invalid signature: {reason}")]
    InvalidSignature {
        /// What is wrong with it.
        reason: String,
    },
    /// The model's chat template failed to compile or render.
    #[error("the chat template {stage}")]
    ChatTemplate {
        /// Compiling or rendering.
        stage: TemplateStage,
        /// minijinja's error.
        #[source]
        source: Cause,
    },
    /// The prompt is empty or only white space: there is nothing to continue.
    #[error("the prompt is empty (or only white space); there is nothing to generate from")]
    EmptyPrompt,
    /// The rendered prompt does not fit the model's context window.
    #[error(
        "the prompt is {prompt_tokens} tokens but the context holds {context_length}; \
         shorten the inputs or demos, or load the model with a larger context"
    )]
    PromptTooLong {
        /// Tokens in the rendered prompt.
        prompt_tokens: usize,
        /// The context window the request ran with.
        context_length: usize,
    },
    /// `max_tokens` cannot hold even the shortest reply the output
    /// constraint accepts (every field's marker and shortest value).
    #[error(
        "max_tokens is {max_tokens} but the shortest reply this signature accepts is \
         {needed} tokens; raise max_tokens"
    )]
    BudgetTooSmall {
        /// The request's token budget.
        max_tokens: usize,
        /// Tokens of the shortest reply the constraint accepts.
        needed: usize,
    },
    /// The output grammar could not be built or compiled for this model's vocabulary.
    #[error("output constraint error: {reason}")]
    Constraint {
        /// What failed.
        reason: String,
        /// The grammar engine's error, when it gave one.
        #[source]
        source: Option<Cause>,
    },

    // --- generation ---
    /// Tokenization or detokenization failed.
    #[error("{backend} tokenizer error: {reason}")]
    Tokenizer {
        /// The backend whose tokenizer failed.
        backend: &'static str,
        /// What failed.
        reason: String,
    },
    /// The backend failed while evaluating the model.
    #[error("{backend} inference failed: {reason}")]
    Inference {
        /// The backend that failed.
        backend: &'static str,
        /// What failed, in our words.
        reason: String,
        /// The engine's own error, when it gave one.
        #[source]
        source: Option<Cause>,
    },
    /// The model's reply could not be parsed into the signature's output fields.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The model opened a tool call it did not write whole (possible only
    /// without the output constraint).
    #[error("the model wrote a tool call that cannot be read: {reason}")]
    MalformedToolCall {
        /// What is wrong with it.
        reason: String,
    },
    /// The model went on calling tools past the `LM`'s `max_tool_iterations`.
    #[error(
        "the model was still calling tools after {limit} rounds (max_tool_iterations); \
         its last call: {last_call}"
    )]
    ToolLoopLimit {
        /// The limit.
        limit: u32,
        /// The last call, as the model wrote it.
        last_call: String,
    },
    /// A serving engine behind the remote backend failed a call: it could
    /// not be reached, refused the request, or sent a reply that does not
    /// read as an OpenAI completion.
    #[error("remote engine {endpoint}: {reason}")]
    Remote {
        /// The endpoint's base URL (or `"fleet"` when none could be tried).
        endpoint: String,
        /// What failed.
        reason: String,
        /// The HTTP client's error, when there was one.
        #[source]
        source: Option<Cause>,
    },
    /// The backend's worker thread is gone, so it cannot take requests.
    #[error("the {backend} worker thread has stopped")]
    WorkerStopped {
        /// The backend.
        backend: &'static str,
    },
    /// A generation panicked: a bug, reported rather than propagated.
    #[error("a {backend} generation panicked: {message}")]
    GenerationPanicked {
        /// The backend.
        backend: &'static str,
        /// The panic's message, when it had one.
        message: String,
    },
    /// A lock was poisoned by a panic in another thread.
    #[error("the {what} lock was poisoned by a panic")]
    LockPoisoned {
        /// Whose lock.
        what: &'static str,
    },
    /// A state the crate's own logic rules out: a bug, reported rather than a panic.
    #[error("internal error: {what}")]
    Internal {
        /// What went wrong.
        what: &'static str,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// Which value, and why.
        reason: String,
    },
}

fn supported_list(supported: &[&'static str]) -> String {
    if supported.is_empty() {
        String::new()
    } else {
        format!(" (it runs: {})", supported.join(", "))
    }
}

impl Error {
    /// An inference error with the engine's error as its source.
    pub(crate) fn inference(
        backend: &'static str,
        reason: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Inference {
            backend,
            reason: reason.into(),
            source: Some(cause(source)),
        }
    }

    /// A constraint error in our own words, with no source.
    pub(crate) fn constraint(reason: impl Into<String>) -> Self {
        Error::Constraint {
            reason: reason.into(),
            source: None,
        }
    }

    /// An out-of-range configuration value.
    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            reason: reason.into(),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn sources_are_kept_and_errors_clone() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let error = Error::ModelUnreadable {
            path: "m.gguf".into(),
            source: Arc::new(io),
        };
        let copy = error.clone();
        assert_eq!(
            copy.source().map(|s| s.to_string()).as_deref(),
            Some("denied")
        );
        let unsupported = Error::UnsupportedArchitecture {
            architecture: "mamba".into(),
            backend: "candle",
            supported: vec!["llama", "qwen2"],
        };
        assert!(
            unsupported.to_string().ends_with("(it runs: llama, qwen2)"),
            "{unsupported}"
        );
    }
}
