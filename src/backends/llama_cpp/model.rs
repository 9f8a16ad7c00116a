//! A GGUF model loaded into llama.cpp, shared through `Arc`.

use std::mem::ManuallyDrop;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::{LlamaModelParams, LlamaSplitMode};
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{
    LlamaModelLoadError, LogOptions, list_llama_ggml_backend_devices, send_logs_to_tracing,
};

use super::device_memory;
use crate::backend::{LoadModel, LocalModel, Placement};
use crate::backends::common::LoadOptions;
use crate::error::cause;
use crate::gguf::GgufHeader;
use crate::hardware::{AcceleratorKind, DeviceId};
use crate::model_card::{ModelCard, TokenTexts};
use crate::{Error, Result};

pub(super) const BACKEND: &str = "llama.cpp";

/// llama.cpp's process-wide state. `LlamaBackend::init` succeeds once per
/// process, so it lives here for the life of the process.
fn llama_backend() -> Result<&'static LlamaBackend> {
    static BACKEND_STATE: OnceLock<Result<LlamaBackend>> = OnceLock::new();
    BACKEND_STATE
        .get_or_init(|| {
            // llama.cpp's own log lines go to `tracing`, not to stderr.
            send_logs_to_tracing(LogOptions::default());
            LlamaBackend::init()
                .map_err(|e| Error::inference(BACKEND, "initialising llama.cpp failed", e))
        })
        .as_ref()
        .map_err(Clone::clone)
}

pub(super) fn inference_error(
    reason: &str,
    error: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::inference(BACKEND, reason, error)
}

/// What only a llama.cpp load has.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LlamaCppLoad {
    /// Layers to offload to the GPU (0 = CPU only; more than the model has =
    /// all, the default, as in llama.cpp: it changes nothing in a build or on
    /// a machine without a GPU). `ModelPool` sizes this to the memory found.
    pub gpu_layers: u32,
    /// The GPU the layers go to; `None` lets llama.cpp choose.
    pub device: Option<DeviceId>,
    /// Several GPUs the layers are split over, the main one first (llama.cpp
    /// shares them out in proportion to each one's free memory); empty: one
    /// device, `device`.
    pub split: Vec<DeviceId>,
    /// With `split`: each layer's rows across the GPUs, not whole layers.
    pub split_rows: bool,
    /// Map the file instead of reading it (llama.cpp's default).
    pub use_mmap: bool,
    /// Load the vocabulary only (no weights): enough to tokenize.
    pub vocab_only: bool,
}

impl Default for LlamaCppLoad {
    fn default() -> Self {
        LlamaCppLoad {
            gpu_layers: u32::MAX,
            device: None,
            split: Vec::new(),
            split_rows: false,
            use_mmap: true,
            vocab_only: false,
        }
    }
}

/// How to load a model into llama.cpp.
pub type LlamaCppLoadOptions = LoadOptions<LlamaCppLoad>;

impl LoadOptions<LlamaCppLoad> {
    /// Offloads this many layers to the GPU.
    #[must_use]
    pub fn with_gpu_layers(mut self, gpu_layers: u32) -> Self {
        self.engine.gpu_layers = gpu_layers;
        self
    }
    /// Puts the offloaded layers on this GPU.
    #[must_use]
    pub fn with_device(mut self, device: DeviceId) -> Self {
        self.engine.device = Some(device);
        self
    }
    /// Splits the offloaded layers over these GPUs, the main one first: whole
    /// layers, or with `rows` every layer's rows.
    #[must_use]
    pub fn with_split(mut self, devices: &[DeviceId], rows: bool) -> Self {
        self.engine.split = devices.to_vec();
        self.engine.split_rows = rows;
        self
    }
    /// Loads only the vocabulary (for tokenizing; generation needs the weights).
    #[must_use]
    pub fn with_vocab_only(mut self, vocab_only: bool) -> Self {
        self.engine.vocab_only = vocab_only;
        self
    }
    /// Turns memory-mapping on or off.
    #[must_use]
    pub fn with_mmap(mut self, use_mmap: bool) -> Self {
        self.engine.use_mmap = use_mmap;
        self
    }
}

/// A model loaded by llama.cpp: weights, vocabulary, chat template.
///
/// Share it with `Arc`; any number of adapters can run on one loaded model.
pub struct LlamaCppModel {
    /// Dropped by hand, under the device-memory lock (`Drop` below).
    model: ManuallyDrop<LlamaModel>,
    card: ModelCard,
    /// Creating contexts on one model concurrently is unsound in llama.cpp
    /// (it mutates the model), so creation is serialised.
    context_creation: Mutex<()>,
}

impl std::fmt::Debug for LlamaCppModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaCppModel")
            .field("path", &self.card.path())
            .field("architecture", &self.card.architecture())
            .field("vocab", &self.card.vocab_size())
            .finish_non_exhaustive()
    }
}

impl Drop for LlamaCppModel {
    fn drop(&mut self) {
        let _alone = device_memory::changing();
        // SAFETY: `model` is dropped once, here, and never used after.
        unsafe { ManuallyDrop::drop(&mut self.model) };
    }
}

impl LlamaCppModel {
    /// Loads a GGUF file. Missing, foreign, truncated and unsupported files are
    /// typed errors, checked before llama.cpp sees the file.
    pub fn load(path: impl AsRef<Path>, options: LlamaCppLoadOptions) -> Result<Self> {
        Self::load_header(&GgufHeader::read(path)?, &options)
    }

    fn load_header(header: &GgufHeader, options: &LlamaCppLoadOptions) -> Result<Self> {
        let path = header.path.as_path();
        let _span =
            tracing::info_span!("dsrs.load", backend = BACKEND, path = %path.display()).entered();
        let architecture = header.architecture().unwrap_or("unknown");
        let backend = llama_backend()?;
        let bar = crate::progress::load_bar(path, options.show_progress);
        let reporter = bar.clone();
        let mut params = LlamaModelParams::default()
            .with_n_gpu_layers(options.engine.gpu_layers)
            .with_use_mmap(options.engine.use_mmap)
            .with_vocab_only(options.engine.vocab_only)
            .with_progress_callback(move |fraction| {
                crate::progress::set_fraction(&reporter, fraction);
                true
            });
        let split: Option<Vec<usize>> = (options.engine.split.len() > 1)
            .then(|| {
                options
                    .engine
                    .split
                    .iter()
                    .map(|&d| ggml_device_index(d))
                    .collect()
            })
            .flatten();
        if options.engine.split.len() > 1 && split.is_none() {
            tracing::warn!(devices = ?options.engine.split, "llama.cpp lists not all of these devices; it splits over what it has");
        }
        if let Some(indices) = split {
            params = params
                .with_devices(&indices)
                .map_err(|e| load_error(path, "choosing the devices failed", cause(e)))?
                .with_split_mode(if options.engine.split_rows {
                    LlamaSplitMode::Row
                } else {
                    LlamaSplitMode::Layer
                })
                .with_main_gpu(0);
        } else if let Some(device) = options.engine.device {
            match ggml_device_index(device) {
                Some(index) => {
                    params = params
                        .with_devices(&[index])
                        .map_err(|e| load_error(path, "choosing the device failed", cause(e)))?;
                }
                None => tracing::warn!(%device, "llama.cpp lists no such device; it picks one"),
            }
        }
        let loaded = {
            let _alone = device_memory::changing();
            LlamaModel::load_from_file(backend, path, &params)
        };
        bar.finish_and_clear();
        let model = match loaded {
            Ok(model) => model,
            Err(error) => return Err(diagnose_load_failure(backend, path, architecture, error)),
        };
        let tokens = token_texts(&model);
        let card = ModelCard::new(BACKEND, header, tokens, options.context_length)?;
        Ok(LlamaCppModel {
            model: ManuallyDrop::new(model),
            card,
            context_creation: Mutex::new(()),
        })
    }

    /// The logits for the token after `text` (tokenized as a prompt, with no
    /// chat template): a direct look at what the model computes.
    pub fn next_token_logits(&self, text: &str) -> Result<Vec<f32>> {
        let tokens = self.tokenize_prompt(text)?;
        let length = u32::try_from(tokens.len() + 1).unwrap_or(u32::MAX).max(8);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(length))
            .with_n_batch(length)
            .with_n_ubatch(length);
        let mut context = self.new_context(params)?;
        let mut batch = LlamaBatch::new(tokens.len(), 1);
        let last = tokens.len() - 1;
        for (position, token) in tokens.iter().enumerate() {
            batch
                .add(as_llama(*token), position as i32, &[0], position == last)
                .map_err(|e| inference_error("building the batch failed", e))?;
        }
        {
            let _shared = device_memory::decoding();
            context
                .decode(&mut batch)
                .map_err(|e| inference_error("decoding failed", e))?;
        }
        let logits = context.get_logits_ith(last as i32).to_vec();
        let _alone = device_memory::changing();
        drop(context);
        Ok(logits)
    }

    /// Whether a sequence's cache can drop its last positions (not for
    /// recurrent or hybrid models, whose state is not per position): what
    /// reading a draft and dropping its rejected tail needs.
    pub(super) fn can_drop_positions(&self) -> bool {
        !self.model.is_recurrent() && !self.model.is_hybrid()
    }

    /// Creates a context on this model. Creation is serialised per model, as
    /// llama.cpp mutates the model there.
    pub(super) fn new_context(&self, params: LlamaContextParams) -> Result<LlamaContext<'_>> {
        let backend = llama_backend()?;
        let _guard = self
            .context_creation
            .lock()
            .map_err(|_| Error::LockPoisoned {
                what: "llama.cpp context creation",
            })?;
        let _alone = device_memory::changing();
        self.model
            .new_context(backend, params)
            .map_err(|e| inference_error("creating a context failed", e))
    }
}

impl LocalModel for LlamaCppModel {
    fn card(&self) -> &ModelCard {
        &self.card
    }

    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), add_bos, true)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect()
    }
}

/// A token id as llama-cpp-2 takes it.
pub(super) fn as_llama(token: u32) -> LlamaToken {
    LlamaToken(token as i32)
}

/// The vocabulary as the shared model card describes it.
fn token_texts(model: &LlamaModel) -> TokenTexts {
    let vocab = model.vocab();
    let n_vocab = usize::try_from(model.n_vocab()).unwrap_or(0);
    let special_text = |token: LlamaToken| -> Vec<u8> {
        if token.0 < 0 {
            return Vec::new();
        }
        vocab.token_to_piece(token, true, None)
    };
    let mut texts = TokenTexts {
        pieces: Vec::with_capacity(n_vocab),
        ..TokenTexts::default()
    };
    for id in 0..n_vocab {
        let token = LlamaToken(id as i32);
        let piece = vocab.token_to_piece(token, false, None);
        if piece.is_empty() {
            texts.special_names.push((id as u32, special_text(token)));
        }
        texts.pieces.push(piece);
        if vocab.is_eog(token) {
            texts.end_of_generation.push(id as u32);
        }
    }
    texts.bos = u32::try_from(vocab.bos().0).ok();
    texts.adds_bos = vocab.should_add_bos();
    texts.bos_text = String::from_utf8_lossy(&special_text(vocab.bos())).into_owned();
    texts.eos_text = String::from_utf8_lossy(&special_text(vocab.eos())).into_owned();
    texts
}

/// llama.cpp's index of `device` among all its devices (ggml's backend
/// registry), counting devices of the same kind in its order.
fn ggml_device_index(device: DeviceId) -> Option<usize> {
    list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| AcceleratorKind::from_ggml_backend(&d.backend) == Some(device.kind))
        .nth(device.index as usize)
        .map(|d| d.index)
}

fn load_error(path: &Path, reason: &str, source: crate::error::Cause) -> Error {
    Error::ModelLoad {
        backend: BACKEND,
        path: path.to_path_buf(),
        reason: reason.to_string(),
        source: Some(source),
    }
}

/// Tells an unknown architecture apart from a damaged file: llama.cpp refuses
/// an architecture it does not know even when asked for the vocabulary only.
fn diagnose_load_failure(
    backend: &LlamaBackend,
    path: &Path,
    architecture: &str,
    error: LlamaModelLoadError,
) -> Error {
    let vocab_only = LlamaModelParams::default().with_vocab_only(true);
    match LlamaModel::load_from_file(backend, path, &vocab_only) {
        // A path llama.cpp cannot take (not UTF-8, a NUL byte) says nothing about the model.
        Err(LlamaModelLoadError::PathToStrError(_) | LlamaModelLoadError::NullError(_)) => {
            load_error(path, "llama.cpp cannot open this path", cause(error))
        }
        Err(LlamaModelLoadError::NullResult) => Error::UnsupportedArchitecture {
            architecture: architecture.to_string(),
            backend: BACKEND,
            supported: Vec::new(),
        },
        Ok(_) => load_error(
            path,
            &format!(
                "architecture `{architecture}`: its tensors do not match what llama.cpp expects"
            ),
            cause(error),
        ),
    }
}

impl LoadModel for LlamaCppModel {
    const BACKEND: &'static str = BACKEND;
    const SPLITS_LAYERS: bool = true;

    fn drives(kind: AcceleratorKind) -> bool {
        crate::hardware::backend_drives(BACKEND, kind)
    }

    fn load_placed(header: &GgufHeader, placement: &Placement) -> Result<Self> {
        // llama.cpp counts the output head as one more layer.
        let gpu_layers = placement.gpu_layers + u32::from(placement.output_on_device);
        let mut options = LlamaCppLoadOptions::default()
            .with_gpu_layers(gpu_layers)
            .with_context_length(placement.context_length);
        options.engine.device = placement.device;
        options.engine.split = placement.split.iter().map(|share| share.device).collect();
        options.engine.split_rows = placement.split_rows;
        Self::load_header(header, &options)
    }
}
