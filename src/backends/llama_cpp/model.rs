//! A GGUF model loaded into llama.cpp, shared through `Arc`.

use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{LlamaModelLoadError, LogOptions, send_logs_to_tracing};

use crate::gguf::GgufHeader;
use crate::prompt::{ChatTemplate, ConstraintCompiler, TokenVocabulary};
use crate::{Error, Result};

pub(super) const BACKEND: &str = "llama.cpp";

/// Context length used when neither the load nor the adapter sets one.
const DEFAULT_CONTEXT_CAP: u32 = 4096;

/// llama.cpp's process-wide state. `LlamaBackend::init` succeeds once per
/// process, so it lives here for the life of the process.
fn llama_backend() -> Result<&'static LlamaBackend> {
    static BACKEND_STATE: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND_STATE
        .get_or_init(|| {
            // llama.cpp's own log lines go to `tracing`, not to stderr.
            send_logs_to_tracing(LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|reason| Error::Inference {
            backend: BACKEND,
            reason: format!("initialising llama.cpp failed: {reason}"),
        })
}

/// How to load a model.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LlamaCppLoadOptions {
    /// Layers to offload to the GPU (0 = CPU only; more than the model has =
    /// all, the default, as in llama.cpp: it changes nothing in a build or on
    /// a machine without a GPU). `ModelPool` sizes this to the memory found.
    pub gpu_layers: u32,
    /// Map the file instead of reading it (llama.cpp's default).
    pub use_mmap: bool,
    /// Load the vocabulary only (no weights): enough to tokenize.
    pub vocab_only: bool,
    /// Context length adapters on this model use unless their config sets one
    /// (the pool sets it from its plan).
    pub context_length: Option<u32>,
    /// Show a progress bar on the terminal while loading.
    pub show_progress: bool,
}

impl Default for LlamaCppLoadOptions {
    fn default() -> Self {
        LlamaCppLoadOptions {
            gpu_layers: u32::MAX,
            use_mmap: true,
            vocab_only: false,
            context_length: None,
            show_progress: true,
        }
    }
}

impl LlamaCppLoadOptions {
    /// Offloads this many layers to the GPU.
    #[must_use]
    pub fn with_gpu_layers(mut self, gpu_layers: u32) -> Self {
        self.gpu_layers = gpu_layers;
        self
    }
    /// Turns the terminal progress bar on or off.
    #[must_use]
    pub fn with_progress(mut self, show: bool) -> Self {
        self.show_progress = show;
        self
    }
    /// Sets the default context length of adapters on this model.
    #[must_use]
    pub fn with_context_length(mut self, tokens: u32) -> Self {
        self.context_length = Some(tokens);
        self
    }
    /// Loads only the vocabulary (for tokenizing; generation needs the weights).
    #[must_use]
    pub fn with_vocab_only(mut self, vocab_only: bool) -> Self {
        self.vocab_only = vocab_only;
        self
    }
    /// Turns memory-mapping on or off.
    #[must_use]
    pub fn with_mmap(mut self, use_mmap: bool) -> Self {
        self.use_mmap = use_mmap;
        self
    }
}

/// A model loaded by llama.cpp: weights, vocabulary, chat template.
///
/// Share it with `Arc`; any number of adapters can run on one loaded model.
pub struct LlamaCppModel {
    /// Dropped by hand, under the device-memory lock (`Drop` below).
    model: ManuallyDrop<LlamaModel>,
    path: PathBuf,
    architecture: String,
    template: ChatTemplate,
    /// Bytes of every token, rendered without special tokens.
    pieces: Vec<Vec<u8>>,
    end_of_generation: Vec<u32>,
    add_bos: bool,
    default_context: Option<u32>,
    constraint: OnceLock<std::result::Result<ConstraintCompiler, String>>,
    /// Creating contexts on one model concurrently is unsound in llama.cpp
    /// (it mutates the model), so creation is serialised.
    context_creation: Mutex<()>,
}

impl std::fmt::Debug for LlamaCppModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaCppModel")
            .field("path", &self.path)
            .field("architecture", &self.architecture)
            .field("vocab", &self.pieces.len())
            .finish_non_exhaustive()
    }
}

impl Drop for LlamaCppModel {
    fn drop(&mut self) {
        let _alone = super::device_memory::changing();
        // SAFETY: `model` is dropped once, here, and never used after.
        unsafe { ManuallyDrop::drop(&mut self.model) };
    }
}

impl LlamaCppModel {
    /// Loads a GGUF file. Missing, foreign, truncated and unsupported files are
    /// typed errors, checked before llama.cpp sees the file.
    pub fn load(path: impl AsRef<Path>, options: LlamaCppLoadOptions) -> Result<Self> {
        let path = path.as_ref();
        let _span =
            tracing::info_span!("dsrs.load", backend = BACKEND, path = %path.display()).entered();
        let header = GgufHeader::read(path)?;
        let architecture = header.architecture().unwrap_or("unknown").to_string();
        let backend = llama_backend()?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let bar = crate::progress::load_bar(&name, options.show_progress, true);
        let reporter = bar.clone();
        let params = LlamaModelParams::default()
            .with_n_gpu_layers(options.gpu_layers)
            .with_use_mmap(options.use_mmap)
            .with_vocab_only(options.vocab_only)
            .with_progress_callback(move |fraction| {
                crate::progress::set_fraction(&reporter, fraction);
                true
            });
        let loaded = {
            let _alone = super::device_memory::changing();
            LlamaModel::load_from_file(backend, path, &params)
        };
        bar.finish_and_clear();
        let model = match loaded {
            Ok(model) => model,
            Err(error) => {
                return Err(diagnose_load_failure(
                    backend,
                    path,
                    &architecture,
                    &error.to_string(),
                ));
            }
        };

        let vocab = model.vocab();
        let n_vocab = usize::try_from(model.n_vocab()).unwrap_or(0);
        let mut pieces = Vec::with_capacity(n_vocab);
        let mut end_of_generation = Vec::new();
        for id in 0..n_vocab {
            let token = LlamaToken(id as i32);
            pieces.push(vocab.token_to_piece(token, false, None));
            if vocab.is_eog(token) {
                end_of_generation.push(id as u32);
            }
        }
        let special_text = |token: LlamaToken| -> String {
            if token.0 < 0 {
                return String::new();
            }
            String::from_utf8_lossy(&vocab.token_to_piece(token, true, None)).into_owned()
        };
        let bos_text = special_text(vocab.bos());
        let eos_text = special_text(vocab.eos());
        let add_bos = vocab.should_add_bos();
        let template = ChatTemplate::from_model(
            header.chat_template().map(str::to_string),
            bos_text,
            eos_text,
        )?;
        Ok(LlamaCppModel {
            model: ManuallyDrop::new(model),
            path: path.to_path_buf(),
            architecture,
            template,
            pieces,
            end_of_generation,
            add_bos,
            default_context: options.context_length,
            constraint: OnceLock::new(),
            context_creation: Mutex::new(()),
        })
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `general.architecture` of the file.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The chat template prompts are rendered with.
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The context length the model was trained with.
    pub fn trained_context_length(&self) -> u32 {
        self.model.n_ctx_train()
    }

    /// The context length adapters use unless configured otherwise.
    pub fn default_context_length(&self) -> u32 {
        self.default_context
            .unwrap_or_else(|| self.trained_context_length().clamp(1, DEFAULT_CONTEXT_CAP))
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Token ids that end generation.
    pub fn end_of_generation(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// The llama-cpp-2 model, for callers that need the raw engine.
    pub fn llama_model(&self) -> &LlamaModel {
        &self.model
    }

    /// Tokenizes a rendered prompt. Special-token text in it (such as the BOS
    /// a template prints) becomes the special token; a BOS is added only when
    /// the model wants one and the template did not already print it.
    pub fn tokenize_prompt(&self, prompt: &str) -> Result<Vec<LlamaToken>> {
        let add_bos = self.template.needs_bos(prompt, self.add_bos);
        let tokens = self
            .model
            .vocab()
            .tokenize(prompt.as_bytes(), add_bos, true);
        if tokens.is_empty() && !prompt.is_empty() {
            return Err(Error::Tokenizer(format!(
                "llama.cpp produced no tokens for a prompt of {} bytes",
                prompt.len()
            )));
        }
        Ok(tokens)
    }

    /// The bytes of a token as it appears in generated text.
    pub fn token_bytes(&self, token: u32) -> &[u8] {
        self.pieces.get(token as usize).map_or(&[], Vec::as_slice)
    }

    /// The grammar compiler for this vocabulary (indexed once, on first use).
    pub fn constraint_compiler(&self) -> Result<&ConstraintCompiler> {
        self.constraint
            .get_or_init(|| {
                let vocabulary = TokenVocabulary {
                    tokens: self.constraint_tokens(),
                    end_of_generation: self.end_of_generation.clone(),
                };
                ConstraintCompiler::new(&vocabulary).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|reason| Error::Constraint(reason.clone()))
    }

    /// Token bytes for the grammar engine: special tokens carry the 0xFF marker
    /// so that no grammar can produce them as text.
    fn constraint_tokens(&self) -> Vec<Vec<u8>> {
        let vocab = self.model.vocab();
        self.pieces
            .iter()
            .enumerate()
            .map(|(id, piece)| {
                if !piece.is_empty() {
                    return piece.clone();
                }
                let special = vocab.token_to_piece(LlamaToken(id as i32), true, None);
                if special.is_empty() {
                    Vec::new()
                } else {
                    let mut marked = Vec::with_capacity(special.len() + 1);
                    marked.push(0xFF);
                    marked.extend(special);
                    marked
                }
            })
            .collect()
    }

    /// The logits for the token after `text` (tokenized as a prompt, with no
    /// chat template): a direct look at what the model computes.
    pub fn next_token_logits(&self, text: &str) -> Result<Vec<f32>> {
        let tokens = self.tokenize_prompt(text)?;
        let length = u32::try_from(tokens.len() + 1).unwrap_or(u32::MAX);
        let params = LlamaContextParams::default()
            .with_n_ctx(std::num::NonZeroU32::new(length.max(8)))
            .with_n_batch(length.max(8))
            .with_n_ubatch(length.max(8));
        let mut context = self.new_context(params)?;
        let mut batch = llama_cpp_2::llama_batch::LlamaBatch::new(tokens.len().max(1), 1);
        let last = tokens.len().saturating_sub(1);
        for (position, token) in tokens.iter().enumerate() {
            batch
                .add(*token, position as i32, &[0], position == last)
                .map_err(|e| Error::Inference {
                    backend: BACKEND,
                    reason: e.to_string(),
                })?;
        }
        {
            let _shared = super::device_memory::decoding();
            context.decode(&mut batch).map_err(|e| Error::Inference {
                backend: BACKEND,
                reason: e.to_string(),
            })?;
        }
        let logits = context.get_logits_ith(last as i32).to_vec();
        let _alone = super::device_memory::changing();
        drop(context);
        Ok(logits)
    }

    /// Creates a llama-cpp-2 context on this model, for callers that drive
    /// the engine themselves (the benchmark's bare decode loop). Creation is
    /// serialised per model, as llama.cpp mutates the model there.
    pub fn new_context(&self, params: LlamaContextParams) -> Result<LlamaContext<'_>> {
        let backend = llama_backend()?;
        let _guard = self
            .context_creation
            .lock()
            .map_err(|_| Error::TaskFailed("context creation lock poisoned".into()))?;
        let _alone = super::device_memory::changing();
        self.model
            .new_context(backend, params)
            .map_err(|e| Error::Inference {
                backend: BACKEND,
                reason: format!("creating a context failed: {e}"),
            })
    }
}

/// Tells an unknown architecture apart from a damaged file: llama.cpp refuses
/// an architecture it does not know even when asked for the vocabulary only.
fn diagnose_load_failure(
    backend: &LlamaBackend,
    path: &Path,
    architecture: &str,
    reason: &str,
) -> Error {
    let vocab_only = LlamaModelParams::default().with_vocab_only(true);
    match LlamaModel::load_from_file(backend, path, &vocab_only) {
        // A path llama.cpp cannot take (not UTF-8, a NUL byte) says nothing about the model.
        Err(LlamaModelLoadError::PathToStrError(_) | LlamaModelLoadError::NullError(_)) => {
            Error::ModelLoad {
                backend: BACKEND,
                path: path.to_path_buf(),
                reason: reason.to_string(),
            }
        }
        Err(LlamaModelLoadError::NullResult) => Error::UnsupportedArchitecture {
            architecture: architecture.to_string(),
            backend: BACKEND,
        },
        Ok(_) => Error::ModelLoad {
            backend: BACKEND,
            path: path.to_path_buf(),
            reason: format!(
                "{reason} (architecture `{architecture}`; its tensors do not match what llama.cpp expects)"
            ),
        },
    }
}

impl crate::pool::PoolModel for LlamaCppModel {
    const BACKEND: &'static str = BACKEND;

    fn load_planned(path: &Path, plan: &crate::pool::plan::LoadPlan) -> Result<Self> {
        let options = LlamaCppLoadOptions::default()
            .with_gpu_layers(plan.llama_gpu_layers())
            .with_context_length(plan.context);
        Self::load(path, options)
    }
}
