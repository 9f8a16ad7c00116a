//! A GGUF model loaded into candle: weights, tokenizer, template, device.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use candle_core::Device;
use candle_core::quantized::gguf_file;

use super::tokenizer::GgufTokenizer;
use super::transformer::{Family, Transformer};
use crate::gguf::GgufHeader;
use crate::prompt::{ChatTemplate, ConstraintCompiler, TokenVocabulary};
use crate::{Error, Result};

pub(super) const BACKEND: &str = "candle";

/// The architectures this backend runs (Mistral and SmolLM files say `llama`).
pub const SUPPORTED_ARCHITECTURES: [&str; 3] = ["llama", "qwen2", "qwen3"];

/// Context length used when neither the load nor the adapter sets one, and
/// the positions assumed for a file that names no trained context.
const DEFAULT_CONTEXT_CAP: usize = 4096;

/// Tokens read per forward pass by [`CandleModel::next_token_logits`]
/// (attention scores grow with the square of a pass's length).
const LOGITS_CHUNK: usize = 512;

/// Which device to run on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CandleDevice {
    /// CUDA or Metal when compiled in and present, else the CPU (with a logged reason).
    #[default]
    Auto,
    /// Always the CPU.
    Cpu,
}

/// How to load a model with candle.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CandleLoadOptions {
    /// Device choice.
    pub device: CandleDevice,
    /// Show a spinner on the terminal while loading.
    pub show_progress: bool,
    /// Context length adapters on this model use unless their config sets one
    /// (the pool sets it from its plan).
    pub context_length: Option<usize>,
}

impl Default for CandleLoadOptions {
    fn default() -> Self {
        CandleLoadOptions {
            device: CandleDevice::Auto,
            show_progress: true,
            context_length: None,
        }
    }
}

impl CandleLoadOptions {
    /// Turns the terminal spinner on or off.
    #[must_use]
    pub fn with_progress(mut self, show: bool) -> Self {
        self.show_progress = show;
        self
    }
    /// Sets the default context length of adapters on this model.
    #[must_use]
    pub fn with_context_length(mut self, tokens: usize) -> Self {
        self.context_length = Some(tokens);
        self
    }
    /// Sets the device choice.
    #[must_use]
    pub fn with_device(mut self, device: CandleDevice) -> Self {
        self.device = device;
        self
    }
}

/// A model loaded by candle. Share it with `Arc`; it holds one KV cache, so
/// generations on it run one at a time (a lock per model).
pub struct CandleModel {
    weights: Mutex<Transformer>,
    tokenizer: GgufTokenizer,
    template: ChatTemplate,
    device: Device,
    path: PathBuf,
    architecture: String,
    max_positions: usize,
    default_context: Option<usize>,
    constraint: OnceLock<std::result::Result<ConstraintCompiler, String>>,
}

impl std::fmt::Debug for CandleModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleModel")
            .field("path", &self.path)
            .field("architecture", &self.architecture)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Drop for CandleModel {
    fn drop(&mut self) {
        // cudarc frees device memory without making its context current
        // first: on a thread that never bound it the free fails, and cudarc
        // keeps that error for the next call on the (process-wide) device.
        if let Err(e) = super::thread_binding::bind_to_current_thread(&self.device) {
            tracing::warn!(error = %e, "freeing a candle model off its device context");
        }
    }
}

impl CandleModel {
    /// Loads a GGUF file. Missing, foreign, truncated files and architectures
    /// candle cannot run are typed errors.
    pub fn load(path: impl AsRef<Path>, options: CandleLoadOptions) -> Result<Self> {
        let path = path.as_ref();
        let _span =
            tracing::info_span!("dsrs.load", backend = BACKEND, path = %path.display()).entered();
        let header = GgufHeader::read(path)?;
        let architecture = header.architecture().unwrap_or("unknown").to_string();
        let Some(family) = Family::of(&architecture) else {
            return Err(Error::UnsupportedArchitecture {
                architecture,
                backend: BACKEND,
            });
        };
        let tokenizer = GgufTokenizer::from_header(&header)?;
        let eos_text = header
            .get_u64("tokenizer.ggml.eos_token_id")
            .and_then(|id| tokenizer.token_text(u32::try_from(id).ok()?))
            .unwrap_or("")
            .to_string();
        let template = ChatTemplate::from_model(
            header.chat_template().map(str::to_string),
            tokenizer.bos_text().to_string(),
            eos_text,
        )?;
        let max_positions = header
            .arch_u64("context_length")
            .map_or(DEFAULT_CONTEXT_CAP, |n| n as usize);
        let device = select_device(options.device);
        super::thread_binding::bind_to_current_thread(&device).map_err(|e| Error::ModelLoad {
            backend: BACKEND,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;

        let load_error = |reason: String| Error::ModelLoad {
            backend: BACKEND,
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|e| Error::ModelNotFound {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut reader = BufReader::new(file);
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        // candle reports no progress while reading tensors: a spinner.
        let bar = crate::progress::load_bar(&name, options.show_progress, false);
        let content =
            gguf_file::Content::read(&mut reader).map_err(|e| load_error(e.to_string()))?;
        let weights =
            Transformer::load(family, &header, &content, &mut reader, &device).map_err(load_error);
        bar.finish_and_clear();
        let weights = weights?;
        Ok(CandleModel {
            weights: Mutex::new(weights),
            tokenizer,
            template,
            device,
            path: path.to_path_buf(),
            architecture,
            max_positions,
            default_context: options.context_length,
            constraint: OnceLock::new(),
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

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The chat template prompts are rendered with.
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The tokenizer built from the file.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// Most positions the model can attend over: its trained context (4096
    /// when the file names none).
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The context length adapters use unless configured otherwise.
    pub fn default_context_length(&self) -> usize {
        self.default_context
            .unwrap_or(DEFAULT_CONTEXT_CAP)
            .clamp(1, self.max_positions.max(1))
    }

    /// Tokenizes a rendered prompt, adding BOS only when the template did not print it.
    pub fn tokenize_prompt(&self, prompt: &str) -> Vec<u32> {
        let add_bos = self.template.needs_bos(prompt, self.tokenizer.adds_bos());
        self.tokenizer.encode(prompt, add_bos)
    }

    /// The grammar compiler for this vocabulary (indexed once, on first use).
    pub fn constraint_compiler(&self) -> Result<&ConstraintCompiler> {
        self.constraint
            .get_or_init(|| {
                let vocabulary = TokenVocabulary {
                    tokens: self.tokenizer.constraint_tokens(),
                    end_of_generation: self.tokenizer.end_of_generation().to_vec(),
                };
                ConstraintCompiler::new(&vocabulary).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|reason| Error::Constraint(reason.clone()))
    }

    /// The logits for the token after `text` (tokenized as a prompt, with no
    /// chat template): a direct look at what the model computes.
    pub fn next_token_logits(&self, text: &str) -> Result<Vec<f32>> {
        let tokens = self.tokenize_prompt(text);
        if tokens.is_empty() {
            return Err(Error::Tokenizer("the text produced no tokens".into()));
        }
        let mut weights = self.lock_weights()?;
        weights.clear_cache();
        let mut logits = Vec::new();
        for chunk in tokens.chunks(LOGITS_CHUNK) {
            logits = super::engine::forward(&mut weights, chunk)?;
        }
        Ok(logits)
    }

    /// Exclusive use of the weights and their KV cache, on a thread ready to
    /// compute on the model's device.
    pub(super) fn lock_weights(&self) -> Result<MutexGuard<'_, Transformer>> {
        let weights = self.weights.lock().map_err(|_| {
            Error::TaskFailed("a candle generation panicked; the model is unusable".into())
        })?;
        super::thread_binding::bind_to_current_thread(&self.device).map_err(|e| {
            Error::Inference {
                backend: BACKEND,
                reason: e.to_string(),
            }
        })?;
        Ok(weights)
    }
}

/// One CUDA device for the process, made once and never dropped. Each
/// `Device::new_cuda` makes a stream and a cuBLAS handle, and dropping them
/// synchronises the whole device (`cublasDestroy`), which breaks a CUDA
/// graph llama.cpp may be capturing in another thread: llama.cpp then aborts
/// the process (seen on an H100 with both engines' tests in parallel;
/// specs/gpu.md). One device also means one stream for all candle models.
fn shared_cuda_device() -> candle_core::Result<Device> {
    static DEVICE: Mutex<Option<Device>> = Mutex::new(None);
    let mut slot = DEVICE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(device) = slot.as_ref() {
        return Ok(device.clone());
    }
    let device = Device::new_cuda(0)?;
    *slot = Some(device.clone());
    Ok(device)
}

fn select_device(choice: CandleDevice) -> Device {
    if choice == CandleDevice::Cpu {
        return Device::Cpu;
    }
    if candle_core::utils::cuda_is_available() {
        match shared_cuda_device() {
            Ok(device) => return device,
            Err(e) => {
                tracing::warn!(error = %e, "CUDA is compiled in but device 0 failed; using the CPU")
            }
        }
    } else if candle_core::utils::metal_is_available() {
        match Device::new_metal(0) {
            Ok(device) => return device,
            Err(e) => tracing::warn!(error = %e, "Metal is compiled in but failed; using the CPU"),
        }
    } else {
        tracing::info!(
            "candle runs on the CPU: no CUDA or Metal support compiled in, or no such device present"
        );
    }
    Device::Cpu
}

impl crate::pool::PoolModel for CandleModel {
    const BACKEND: &'static str = BACKEND;

    fn load_planned(path: &Path, plan: &crate::pool::plan::LoadPlan) -> Result<Self> {
        // candle places a whole model on one device: the GPU only when the
        // plan fits every layer there.
        let device = if plan.gpu_layers == plan.total_layers && plan.device.is_some() {
            CandleDevice::Auto
        } else {
            CandleDevice::Cpu
        };
        let options = CandleLoadOptions::default()
            .with_device(device)
            .with_context_length(plan.context as usize);
        Self::load(path, options)
    }
}
