//! The crate's one error type.
//!
//! Every fallible public function returns [`Result`]. Variants carry the facts a
//! caller needs to act (paths, sizes, names); the conversion to `anyhow` that
//! dspy-rs wants happens once, in the adapter's `call`.

use std::path::PathBuf;

use crate::prompt::ParseError;

/// Errors from loading models, rendering prompts, generating and parsing replies.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- model files ---
    /// The model file does not exist or cannot be read.
    #[error("model file {path} cannot be read: {reason}")]
    ModelNotFound {
        /// The path that was tried.
        path: PathBuf,
        /// What the operating system said.
        reason: String,
    },
    /// A model named by repo or by Ollama name was not found on this machine.
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
    #[error("architecture `{architecture}` is not supported by the {backend} backend")]
    UnsupportedArchitecture {
        /// The `general.architecture` of the file.
        architecture: String,
        /// The backend that refused it.
        backend: &'static str,
    },
    /// The backend failed to load the model for another reason.
    #[error("the {backend} backend could not load {path}: {reason}")]
    ModelLoad {
        /// The backend that tried.
        backend: &'static str,
        /// The file.
        path: PathBuf,
        /// The backend's message.
        reason: String,
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
    #[error("invalid signature: {0}")]
    InvalidSignature(String),
    /// The model's chat template failed to compile or render.
    #[error("chat template error: {0}")]
    ChatTemplate(String),
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
    /// The output grammar could not be built or compiled for this model's vocabulary.
    #[error("output constraint error: {0}")]
    Constraint(String),

    // --- generation ---
    /// Tokenization or detokenization failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// The backend failed while evaluating the model.
    #[error("{backend} inference failed: {reason}")]
    Inference {
        /// The backend that failed.
        backend: &'static str,
        /// The backend's message.
        reason: String,
    },
    /// The model's reply could not be parsed into the signature's output fields.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A blocking generation task was cancelled or panicked.
    #[error("generation task failed: {0}")]
    TaskFailed(String),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
