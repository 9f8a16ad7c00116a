//! A GGUF model loaded into candle: weights, tokenizer, template, device.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use candle_core::Device;
use candle_core::quantized::{GgmlDType, gguf_file};

use super::family::{Family, SUPPORTED_ARCHITECTURES};
use super::transformer::Transformer;
use crate::backend::{LoadModel, LocalModel, Placement};
use crate::backends::common::LoadOptions;
use crate::error::cause;
use crate::gguf::GgufHeader;
use crate::hardware::{AcceleratorKind, DeviceId};
use crate::model_card::ModelCard;
use crate::tokenizer::GgufTokenizer;
use crate::{Error, Result};

pub(super) const BACKEND: &str = "candle";

/// Positions assumed for a file that names no trained context.
const POSITIONS_WITHOUT_TRAINED_CONTEXT: usize = 4096;

/// Tokens read per forward pass by [`CandleModel::next_token_logits`]
/// (attention scores grow with the square of a pass's length).
const LOGITS_CHUNK: usize = 512;

/// Which device to run on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CandleDevice {
    /// The first CUDA or Metal device when compiled in and present, else the
    /// CPU (with a logged reason).
    #[default]
    Auto,
    /// Always the CPU.
    Cpu,
    /// This CUDA or Metal device; the CPU (with a logged reason) when it
    /// cannot be used.
    Gpu(DeviceId),
}

/// What only a candle load has.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct CandleLoad {
    /// Device choice.
    pub device: CandleDevice,
}

/// How to load a model with candle.
pub type CandleLoadOptions = LoadOptions<CandleLoad>;

impl LoadOptions<CandleLoad> {
    /// Sets the device choice.
    #[must_use]
    pub fn with_device(mut self, device: CandleDevice) -> Self {
        self.engine.device = device;
        self
    }
}

/// A model loaded by candle. Share it with `Arc`; it holds one KV cache, so
/// generations on it run one at a time (a lock per model).
pub struct CandleModel {
    weights: Mutex<Transformer>,
    tokenizer: GgufTokenizer,
    card: ModelCard,
    device: Device,
    device_id: DeviceId,
    max_positions: usize,
}

impl std::fmt::Debug for CandleModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleModel")
            .field("path", &self.card.path())
            .field("architecture", &self.card.architecture())
            .field("device", &self.device_id)
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

fn load_error(
    path: &Path,
    reason: &str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::ModelLoad {
        backend: BACKEND,
        path: path.to_path_buf(),
        reason: reason.to_string(),
        source: Some(cause(source)),
    }
}

impl CandleModel {
    /// Loads a GGUF file. Missing, foreign, truncated files and architectures
    /// candle cannot run are typed errors.
    pub fn load(path: impl AsRef<Path>, options: CandleLoadOptions) -> Result<Self> {
        Self::load_header(&GgufHeader::read(path)?, &options)
    }

    fn load_header(header: &GgufHeader, options: &CandleLoadOptions) -> Result<Self> {
        let path = header.path.as_path();
        let _span =
            tracing::info_span!("dsrs.load", backend = BACKEND, path = %path.display()).entered();
        let architecture = header.architecture().unwrap_or("unknown");
        let Some(family) = Family::of(architecture) else {
            return Err(Error::UnsupportedArchitecture {
                architecture: architecture.to_string(),
                backend: BACKEND,
                supported: SUPPORTED_ARCHITECTURES.to_vec(),
            });
        };
        let tokenizer = GgufTokenizer::from_header(header)?;
        let card = ModelCard::new(
            BACKEND,
            header,
            tokenizer.token_texts(),
            options.context_length,
        )?;
        let max_positions = card
            .trained_context()
            .unwrap_or(POSITIONS_WITHOUT_TRAINED_CONTEXT);
        let (device, device_id) = select_device(options.engine.device);
        super::thread_binding::bind_to_current_thread(&device)
            .map_err(|e| load_error(path, "binding the device failed", e))?;

        let file = File::open(path).map_err(|e| Error::ModelUnreadable {
            path: path.to_path_buf(),
            source: Arc::new(e),
        })?;
        let mut reader = BufReader::new(file);
        let bar = crate::progress::load_bar(path, options.show_progress);
        let content = tensor_table(header)?;
        let progress = |fraction| crate::progress::set_fraction(&bar, fraction);
        let weights = Transformer::load(family, header, &content, &mut reader, &device, &progress);
        bar.finish_and_clear();
        let weights = weights.map_err(|reason| Error::ModelLoad {
            backend: BACKEND,
            path: path.to_path_buf(),
            reason,
            source: None,
        })?;
        Ok(CandleModel {
            weights: Mutex::new(weights),
            tokenizer,
            card,
            device,
            device_id,
            max_positions,
        })
    }

    /// The device it runs on (`CPU0` for the CPU).
    pub fn device(&self) -> DeviceId {
        self.device_id
    }

    /// Most positions the model can attend over: its trained context (4096
    /// when the file names none).
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The logits for the token after `text` (tokenized as a prompt, with no
    /// chat template): a direct look at what the model computes.
    pub fn next_token_logits(&self, text: &str) -> Result<Vec<f32>> {
        let tokens = self.tokenize_prompt(text)?;
        let mut weights = self.lock_weights()?;
        weights.clear_cache();
        let mut logits = Vec::new();
        for chunk in tokens.chunks(LOGITS_CHUNK) {
            logits = weights.next_logits(chunk)?;
        }
        Ok(logits)
    }

    /// Exclusive use of the weights and their KV cache, on a thread ready to
    /// compute on the model's device.
    pub(super) fn lock_weights(&self) -> Result<MutexGuard<'_, Transformer>> {
        let weights = self.weights.lock().map_err(|_| Error::GenerationPanicked {
            backend: BACKEND,
            message: "an earlier generation on this model panicked; the model is unusable".into(),
        })?;
        super::thread_binding::bind_to_current_thread(&self.device)
            .map_err(|e| Error::inference(BACKEND, "binding the device failed", e))?;
        Ok(weights)
    }
}

impl LocalModel for CandleModel {
    fn card(&self) -> &ModelCard {
        &self.card
    }

    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.tokenizer.encode(text, add_bos)
    }
}

/// candle's view of the tensor table, built from the header already read
/// (the file's header is parsed once per load).
fn tensor_table(header: &GgufHeader) -> Result<gguf_file::Content> {
    let mut tensor_infos = HashMap::with_capacity(header.tensors.len());
    for tensor in &header.tensors {
        let Some(ggml_dtype) = candle_dtype(tensor.ggml_type) else {
            return Err(Error::ModelLoad {
                backend: BACKEND,
                path: header.path.clone(),
                reason: format!(
                    "tensor `{}` has ggml type {}, which candle cannot read (i-quants and newer types)",
                    tensor.name, tensor.ggml_type
                ),
                source: None,
            });
        };
        // GGUF lists dimensions innermost first; candle's shapes are outermost first.
        let shape: Vec<usize> = tensor.dims.iter().rev().map(|&d| d as usize).collect();
        tensor_infos.insert(
            tensor.name.clone(),
            gguf_file::TensorInfo {
                ggml_dtype,
                shape: shape.into(),
                offset: tensor.offset,
            },
        );
    }
    Ok(gguf_file::Content {
        magic: gguf_file::VersionedMagic::GgufV3,
        metadata: HashMap::new(),
        tensor_infos,
        tensor_data_offset: header.data_offset,
    })
}

/// candle's type for a ggml type id, for the types it can read.
fn candle_dtype(ggml_type: u32) -> Option<GgmlDType> {
    Some(match ggml_type {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// One CUDA device per index for the process, made once and never dropped.
/// Each `Device::new_cuda` makes a stream and a cuBLAS handle, and dropping
/// them synchronises the whole device (`cublasDestroy`), which breaks a CUDA
/// graph llama.cpp may be capturing in another thread: llama.cpp then aborts
/// the process (seen on an H100 with both engines' tests in parallel;
/// specs/gpu.md). One device also means one stream for all candle models.
fn shared_cuda_device(index: u32) -> candle_core::Result<Device> {
    static DEVICES: Mutex<Vec<(u32, Device)>> = Mutex::new(Vec::new());
    let mut devices = DEVICES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, device)) = devices.iter().find(|(i, _)| *i == index) {
        return Ok(device.clone());
    }
    let device = Device::new_cuda(index as usize)?;
    devices.push((index, device.clone()));
    Ok(device)
}

const CPU: DeviceId = DeviceId {
    kind: AcceleratorKind::Cpu,
    index: 0,
};

fn select_device(choice: CandleDevice) -> (Device, DeviceId) {
    let wanted = match choice {
        CandleDevice::Cpu => return (Device::Cpu, CPU),
        CandleDevice::Gpu(id) => Some(id),
        CandleDevice::Auto => None,
    };
    let cuda = candle_core::utils::cuda_is_available();
    let metal = candle_core::utils::metal_is_available();
    let id = wanted.unwrap_or(DeviceId {
        kind: if metal && !cuda {
            AcceleratorKind::Metal
        } else {
            AcceleratorKind::Cuda
        },
        index: 0,
    });
    let device = match id.kind {
        AcceleratorKind::Cuda if cuda => shared_cuda_device(id.index),
        AcceleratorKind::Metal if metal => Device::new_metal(id.index as usize),
        _ => {
            tracing::info!(
                device = %id,
                "candle runs on the CPU: no CUDA or Metal support compiled in, or no such device"
            );
            return (Device::Cpu, CPU);
        }
    };
    match device {
        Ok(device) => (device, id),
        Err(e) => {
            tracing::warn!(error = %e, device = %id, "the device failed; candle runs on the CPU");
            (Device::Cpu, CPU)
        }
    }
}

impl LoadModel for CandleModel {
    const BACKEND: &'static str = BACKEND;
    const SPLITS_LAYERS: bool = false;

    fn drives(kind: AcceleratorKind) -> bool {
        crate::hardware::backend_drives(BACKEND, kind)
    }

    fn load_placed(header: &GgufHeader, placement: &Placement) -> Result<Self> {
        let device = match placement.device {
            Some(id) if placement.whole_model_on_device() => CandleDevice::Gpu(id),
            _ => CandleDevice::Cpu,
        };
        let options = CandleLoadOptions::default()
            .with_device(device)
            .with_context_length(placement.context_length);
        Self::load_header(header, &options)
    }
}
