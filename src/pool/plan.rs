//! Sizing a model load: a pure function of the model's header facts and the
//! machine's memory, that explains its decision.
//!
//! Formulas and sources are in `specs/model-pool.md`:
//! - KV cache bytes per token = 2 (K and V) × layers × KV heads × head dim × 2 (f16);
//! - compute buffer ≈ Ollama's full-offload graph estimate,
//!   max(4·b·(1 + 4·embd + ctx·(1 + heads)), 4·b·(embd + vocab)) for batch b;
//! - a discrete GPU keeps 1 GiB free (llama.cpp's `--fit` margin); unified
//!   memory and the CPU keep 1 GiB of their budget free too;
//! - when everything does not fit, the context is lowered (down to 2048 or the
//!   trained length) before layers leave the GPU, as `--fit` does;
//! - several GPUs: a model that fits on the freest alone stays there (no
//!   traffic between cards); one that does not is split over all of them in
//!   proportion to their usable memory, as llama.cpp splits by default (whole
//!   layers, the output head with the last; or every layer's rows, with the
//!   KV cache and compute buffer on the main GPU), each device's weights, KV
//!   cache and compute buffer checked against its own memory.

use std::fmt;

use crate::backend::{DeviceShare, Placement};
use crate::gguf::GgufHeader;
use crate::hardware::DeviceId;
use crate::{Error, Result};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// Memory kept free on every device.
const SAFETY_MARGIN: u64 = GIB;
/// The context is not lowered below this (or below the trained length, if smaller).
const MIN_CONTEXT: u32 = 2048;
/// Context used when the caller asks for none and the model allows more.
const DEFAULT_CONTEXT: u32 = 8192;
/// Prompt batch size planned for.
const DEFAULT_BATCH: u32 = 512;

/// What sizing needs from a model file, read from its header.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFacts {
    /// `general.architecture`.
    pub architecture: String,
    /// Repeating blocks.
    pub layers: u32,
    /// Model width.
    pub embedding: u64,
    /// Attention heads.
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Dimension of one head.
    pub head_dim: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// Trained context length.
    pub trained_context: u32,
    /// Bytes of each repeating block's tensors.
    pub layer_bytes: Vec<u64>,
    /// Bytes of the output head (and final norm).
    pub output_bytes: u64,
    /// Bytes of the token embeddings (llama.cpp keeps them in host memory).
    pub embedding_bytes: u64,
}

impl ModelFacts {
    /// Reads the facts from a GGUF header; fails on a header without the
    /// numbers sizing needs.
    pub fn from_header(header: &GgufHeader) -> Result<Self> {
        let architecture = header.architecture().unwrap_or("unknown").to_string();
        let missing = |key: &str| Error::InvalidModelFile {
            path: header.path.clone(),
            reason: format!("the header has no `{architecture}.{key}`, which sizing needs"),
        };
        // No layer count under the file's own architecture name: nothing here
        // (nor, in practice, any engine) knows how to run it.
        let layers =
            header
                .arch_u64("block_count")
                .ok_or_else(|| Error::UnsupportedArchitecture {
                    architecture: architecture.clone(),
                    backend: "model pool",
                    supported: Vec::new(),
                })?;
        let embedding = header
            .arch_u64("embedding_length")
            .ok_or_else(|| missing("embedding_length"))?;
        let heads = header
            .arch_u64("attention.head_count")
            .ok_or_else(|| missing("attention.head_count"))?
            .max(1);
        let kv_heads = header.arch_u64("attention.head_count_kv").unwrap_or(heads);
        let head_dim = header
            .arch_u64("attention.key_length")
            .unwrap_or(embedding / heads);
        let vocab = header.tokens().map_or_else(
            || header.arch_u64("vocab_size").unwrap_or(0),
            |t| t.len() as u64,
        );
        let trained_context = header
            .arch_u64("context_length")
            .unwrap_or(u64::from(DEFAULT_CONTEXT));
        let layers = u32::try_from(layers).map_err(|_| missing("block_count"))?;
        let mut layer_bytes = vec![0u64; layers as usize];
        let mut output_bytes = 0;
        let mut embedding_bytes = 0;
        for tensor in &header.tensors {
            if let Some(rest) = tensor.name.strip_prefix("blk.") {
                let index = rest.split('.').next().and_then(|i| i.parse::<usize>().ok());
                if let Some(slot) = index.and_then(|i| layer_bytes.get_mut(i)) {
                    *slot += tensor.bytes;
                }
            } else if tensor.name.starts_with("token_embd") {
                embedding_bytes += tensor.bytes;
            } else {
                output_bytes += tensor.bytes;
            }
        }
        if output_bytes <= embedding.saturating_mul(4) {
            // Tied embeddings: the output head reuses the embedding matrix.
            output_bytes += embedding_bytes;
        }
        Ok(ModelFacts {
            architecture,
            layers,
            embedding,
            heads,
            kv_heads,
            head_dim,
            vocab,
            trained_context: u32::try_from(trained_context).unwrap_or(u32::MAX),
            layer_bytes,
            output_bytes,
            embedding_bytes,
        })
    }

    /// KV cache bytes for one token, all layers, f16 keys and values.
    /// (Saturating, like the other sizes: a header's numbers are bounded
    /// one by one, not their product, and too large simply does not fit.)
    pub fn kv_bytes_per_token(&self) -> u64 {
        product(&[2, u64::from(self.layers), self.kv_heads, self.head_dim, 2])
    }

    /// KV cache bytes of `context` tokens.
    pub fn kv_bytes(&self, context: u32) -> u64 {
        self.kv_bytes_per_token().saturating_mul(u64::from(context))
    }

    /// The compute buffer for a batch of `batch` tokens over `context` tokens.
    pub fn compute_bytes(&self, context: u32, batch: u32) -> u64 {
        let b = u64::from(batch);
        let scores = product(&[u64::from(context), self.heads.saturating_add(1)]);
        let width = product(&[4, self.embedding]).saturating_add(1);
        let attention = product(&[4, b, width.saturating_add(scores)]);
        let logits = product(&[4, b, self.embedding.saturating_add(self.vocab)]);
        attention.max(logits)
    }

    /// All weight bytes.
    pub fn weight_bytes(&self) -> u64 {
        self.layer_bytes.iter().sum::<u64>() + self.output_bytes + self.embedding_bytes
    }
}

/// Bytes of layers `start..end` (none past the table's end).
fn layer_sum(model: &ModelFacts, start: usize, end: usize) -> u64 {
    let count = end.saturating_sub(start);
    model.layer_bytes.iter().skip(start).take(count).sum()
}

fn product(factors: &[u64]) -> u64 {
    factors.iter().fold(1, |a, &b| a.saturating_mul(b))
}

/// Memory of a device as sizing sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceBudget {
    /// Which device.
    pub id: DeviceId,
    /// Display name (`CUDA0 (NVIDIA H100 80GB HBM3)`).
    pub name: String,
    /// Bytes that may be used now (free memory, or the unified budget).
    pub available: u64,
}

/// One GPU's part of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct DevicePlan {
    /// Which device.
    pub id: DeviceId,
    /// Display name.
    pub name: String,
    /// Repeating layers it holds (a row split: every offloaded layer's share).
    pub layers: u32,
    /// Whether it holds the output head.
    pub output: bool,
    /// Its weight bytes.
    pub weight_bytes: u64,
    /// Its KV cache bytes.
    pub kv_bytes: u64,
    /// Its compute buffer.
    pub compute_bytes: u64,
    /// What it had available.
    pub available: u64,
}

impl DevicePlan {
    /// Bytes in all on this device.
    pub fn bytes(&self) -> u64 {
        self.weight_bytes
            .saturating_add(self.kv_bytes)
            .saturating_add(self.compute_bytes)
    }
}

/// The caller's wishes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanRequest {
    /// Context length wanted; `None` = the trained length, at most 8192.
    pub context: Option<u32>,
    /// When true, the context is not lowered to make the model fit.
    pub pin_context: bool,
    /// Keep everything on the CPU.
    pub cpu_only: bool,
    /// Cap on the bytes this load may use on the GPU.
    pub memory_limit: Option<u64>,
    /// The backend runs a model whole on one device (candle): a GPU gets
    /// every layer or none.
    pub whole_model_only: bool,
    /// A model split over several GPUs is split by rows (every layer's
    /// matrices across all of them) instead of by whole layers.
    pub split_rows: bool,
}

/// A sizing decision.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadPlan {
    /// What the backend reads: device, layers on it, context.
    pub placement: Placement,
    /// The (main) device's display name, if a device is used.
    pub device_name: Option<String>,
    /// What each GPU takes: one entry, or one per GPU of a split; empty on
    /// the CPU.
    pub devices: Vec<DevicePlan>,
    /// Context length.
    pub context: u32,
    /// Prompt batch size.
    pub batch: u32,
    /// KV cache element type.
    pub kv_type: &'static str,
    /// Weights on the GPUs, all of them together.
    pub gpu_weight_bytes: u64,
    /// KV cache bytes on the GPUs.
    pub gpu_kv_bytes: u64,
    /// Compute buffers on the GPUs.
    pub gpu_compute_bytes: u64,
    /// What the devices had available.
    pub gpu_available: u64,
    /// Host memory for weights, the KV cache of CPU layers and the compute buffer.
    pub host_bytes: u64,
    /// Host memory available.
    pub host_available: u64,
    /// Why: one line per decision taken.
    pub reasons: Vec<String>,
}

impl LoadPlan {
    /// GPU bytes in all.
    pub fn gpu_bytes(&self) -> u64 {
        self.gpu_weight_bytes
            .saturating_add(self.gpu_kv_bytes)
            .saturating_add(self.gpu_compute_bytes)
    }

    /// Repeating layers on the GPU.
    pub fn gpu_layers(&self) -> u32 {
        self.placement.gpu_layers
    }

    /// Layers in the model.
    pub fn total_layers(&self) -> u32 {
        self.placement.total_layers
    }
}

fn gib(bytes: u64) -> String {
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{:.0} MiB", bytes as f64 / MIB as f64)
    }
}

impl fmt::Display for LoadPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.device_name, self.devices.len()) {
            (Some(device), 0 | 1) => write!(
                f,
                "{}/{} layers on {device}: weights {}, KV {} at {} ctx, compute {}, {} free",
                self.gpu_layers(),
                self.total_layers(),
                gib(self.gpu_weight_bytes),
                gib(self.gpu_kv_bytes),
                self.context,
                gib(self.gpu_compute_bytes),
                gib(self.gpu_available)
            )?,
            (Some(_), gpus) => {
                write!(
                    f,
                    "{}/{} layers on {gpus} GPUs, split by {}: weights {}, KV {} at {} ctx, compute {}, {} free",
                    self.gpu_layers(),
                    self.total_layers(),
                    if self.placement.split_rows {
                        "rows"
                    } else {
                        "layers"
                    },
                    gib(self.gpu_weight_bytes),
                    gib(self.gpu_kv_bytes),
                    self.context,
                    gib(self.gpu_compute_bytes),
                    gib(self.gpu_available)
                )?;
                for device in &self.devices {
                    write!(
                        f,
                        "\n    {}: {} layers{}, weights {}, KV {}, compute {} of {} free",
                        device.name,
                        device.layers,
                        if device.output { " and the output" } else { "" },
                        gib(device.weight_bytes),
                        gib(device.kv_bytes),
                        gib(device.compute_bytes),
                        gib(device.available)
                    )?;
                }
            }
            (None, _) => write!(
                f,
                "0/{} layers on a GPU (CPU only): {} of host memory at {} ctx, {} available",
                self.total_layers(),
                gib(self.host_bytes),
                self.context,
                gib(self.host_available)
            )?,
        }
        for reason in &self.reasons {
            write!(f, "\n  - {reason}")?;
        }
        Ok(())
    }
}

/// A GPU as the planner uses it: its budget and the bytes it may take.
struct Usable<'a> {
    gpu: &'a DeviceBudget,
    usable: u64,
}

/// How the offloaded part of a model spreads over devices.
struct Layout<'a, 'g> {
    model: &'a ModelFacts,
    /// Main device first.
    gpus: &'a [Usable<'g>],
    context: u32,
    batch: u32,
    rows: bool,
}

impl Layout<'_, '_> {
    /// Each device's part when the last `layers` repeating layers (llama.cpp
    /// offloads from the end) and, with `output`, the head are on the GPUs.
    fn place(&self, layers: u32, output: bool) -> Vec<DevicePlan> {
        let model = self.model;
        let total: u64 = self.gpus.iter().map(|g| g.usable).sum::<u64>().max(1);
        let first = (model.layers - layers.min(model.layers)) as usize;
        let per_layer_kv = model.kv_bytes(self.context) / u64::from(model.layers.max(1));
        let compute = model.compute_bytes(self.context, self.batch.min(self.context));
        let offloaded = layer_sum(model, first, model.layers as usize)
            + if output { model.output_bytes } else { 0 };
        let mut plans = Vec::with_capacity(self.gpus.len());
        let (mut share, mut start) = (0u64, first);
        for (index, device) in self.gpus.iter().enumerate() {
            let is_main = index == 0;
            let is_last = index + 1 == self.gpus.len();
            share += device.usable;
            // Cumulative rounding, so the counts add up to `layers`.
            let end = if is_last {
                model.layers as usize
            } else {
                first + (u64::from(layers) * share / total) as usize
            };
            let (count, weight_bytes, kv_bytes, compute_bytes) = if self.rows {
                let weights =
                    (u128::from(offloaded) * u128::from(device.usable) / u128::from(total)) as u64;
                let kv = if is_main {
                    per_layer_kv * u64::from(layers)
                } else {
                    0
                };
                (layers, weights, kv, if is_main { compute } else { 0 })
            } else {
                let count = end.saturating_sub(start) as u32;
                let head = if output && is_last {
                    model.output_bytes
                } else {
                    0
                };
                let weights = layer_sum(model, start, end) + head;
                let buffer = if count > 0 || is_main { compute } else { 0 };
                (
                    count,
                    weights,
                    per_layer_kv.saturating_mul(u64::from(count)),
                    buffer,
                )
            };
            plans.push(DevicePlan {
                id: device.gpu.id,
                name: device.gpu.name.clone(),
                layers: count,
                output: output && (self.rows || is_last),
                weight_bytes,
                kv_bytes,
                compute_bytes,
                available: device.gpu.available,
            });
            start = end.max(start);
        }
        plans
    }

    /// Whether every device's part fits in its usable memory.
    fn fits(&self, plans: &[DevicePlan]) -> bool {
        plans
            .iter()
            .zip(self.gpus)
            .all(|(plan, gpu)| plan.bytes() <= gpu.usable)
    }

    /// Every layer and the head, when they fit.
    fn whole(&self) -> Option<Vec<DevicePlan>> {
        let plans = self.place(self.model.layers, true);
        self.fits(&plans).then_some(plans)
    }

    /// The most trailing layers that fit, with the head when all do.
    fn most_that_fit(&self) -> Option<(u32, Vec<DevicePlan>)> {
        if let Some(whole) = self.whole() {
            return Some((self.model.layers, whole));
        }
        (1..=self.model.layers).rev().find_map(|layers| {
            let plans = self.place(layers, false);
            self.fits(&plans).then_some((layers, plans))
        })
    }
}

/// Plans a load of `model` with `host_available` bytes of RAM: on the GPU
/// with the most available memory when the model fits there, else split
/// over all of `gpus` (a backend that splits layers), else partly on the
/// GPU(s) and partly on the CPU.
pub fn plan(
    model: &ModelFacts,
    gpus: &[DeviceBudget],
    host_available: u64,
    request: &PlanRequest,
) -> Result<LoadPlan> {
    let mut reasons = Vec::new();
    let floor = MIN_CONTEXT.min(model.trained_context).max(1);
    let mut context = match request.context {
        Some(c) => c.max(1),
        None => model.trained_context.clamp(1, DEFAULT_CONTEXT),
    };
    if request.context.is_some_and(|c| c > model.trained_context) {
        reasons.push(format!(
            "the requested context {context} exceeds the trained {}",
            model.trained_context
        ));
    }
    let batch = DEFAULT_BATCH.min(context);
    let host_weights = model.weight_bytes();

    // The GPUs, freest first, each with what it may take.
    let mut sorted: Vec<&DeviceBudget> = gpus.iter().collect();
    sorted.sort_by_key(|gpu| std::cmp::Reverse(gpu.available));
    if request.cpu_only {
        reasons.push("CPU only, as asked".into());
        sorted.clear();
    } else if sorted.is_empty() {
        reasons.push(
            "no GPU this build can use (none detected, or its backend is not compiled in)".into(),
        );
    }
    let mut usable: Vec<Usable> = sorted
        .iter()
        .map(|gpu| Usable {
            gpu,
            usable: gpu.available.saturating_sub(SAFETY_MARGIN),
        })
        .collect();
    let all_usable: u64 = usable.iter().map(|u| u.usable).sum();
    if let Some(limit) = request.memory_limit
        && limit < all_usable
    {
        reasons.push(format!("memory limit {} applies", gib(limit)));
        // Shared out in proportion, so the split keeps its shape.
        for device in &mut usable {
            device.usable =
                (u128::from(device.usable) * u128::from(limit) / u128::from(all_usable)) as u64;
        }
    }
    let may_split = usable.len() > 1 && !request.whole_model_only;

    if let Some(best) = usable.first() {
        // Lowering the context for the GPUs does not carry over to the CPU fallback.
        let mut context = context;
        let margin = |u: &Usable| {
            format!(
                "{} usable ({} free − 1 GiB margin)",
                gib(u.usable),
                gib(u.gpu.available)
            )
        };
        let layout = |gpus, context, rows| Layout {
            model,
            gpus,
            context,
            batch,
            rows,
        };
        let alone = std::slice::from_ref(best);
        let rows = request.split_rows;
        // The whole model: on the freest GPU alone, else split; the context
        // is lowered before layers leave the GPUs.
        let whole = loop {
            if let Some(single) = layout(alone, context, false).whole() {
                reasons.push(format!(
                    "all {} layers and the output fit in {}{}",
                    model.layers,
                    margin(best),
                    if may_split {
                        format!(" on {} alone", best.gpu.name)
                    } else {
                        String::new()
                    }
                ));
                break Some((alone, single));
            }
            if may_split && let Some(split) = layout(&usable, context, rows).whole() {
                reasons.push(format!(
                    "the model does not fit on {} alone ({}); split by {} over {} GPUs in proportion to their usable memory",
                    best.gpu.name,
                    margin(best),
                    if rows { "rows" } else { "layers" },
                    usable.len()
                ));
                break Some((usable.as_slice(), split));
            }
            if request.pin_context || context <= floor {
                break None;
            }
            let lowered = (context / 2).max(floor);
            reasons.push(format!(
                "context {context} does not fit with every layer on the GPU{}; lowered to {lowered}",
                if may_split { "s" } else { "" }
            ));
            context = lowered;
        };
        let placed = match whole {
            Some((devices, plans)) => Some((devices, model.layers, true, plans)),
            None if request.whole_model_only => {
                reasons.push(format!(
                    "the whole model does not fit in {} on {}, the freest GPU, and this backend runs a model on one device",
                    margin(best),
                    best.gpu.name
                ));
                None
            }
            None => {
                let devices = if may_split { usable.as_slice() } else { alone };
                let partial = layout(devices, context, rows && may_split).most_that_fit();
                match partial {
                    Some((layers, plans)) => {
                        reasons.push(if may_split {
                            format!(
                                "only {layers}/{} layers fit on {} GPUs ({} usable in all); the rest run on the CPU",
                                model.layers,
                                devices.len(),
                                gib(devices.iter().map(|d| d.usable).sum())
                            )
                        } else {
                            format!(
                                "only {layers}/{} layers fit in {}; the rest run on the CPU",
                                model.layers,
                                margin(best)
                            )
                        });
                        Some((devices, layers, false, plans))
                    }
                    None => {
                        reasons.push("no layer fits on the GPU".into());
                        None
                    }
                }
            }
        };
        if let Some((devices, gpu_layers, output_on_gpu, plans)) = placed {
            let sum = |f: fn(&DevicePlan) -> u64| plans.iter().map(f).fold(0, u64::saturating_add);
            let gpu_weight_bytes = sum(|p| p.weight_bytes);
            let gpu_kv_bytes = sum(|p| p.kv_bytes);
            let host_bytes = (host_weights - gpu_weight_bytes)
                .saturating_add(model.kv_bytes(context).saturating_sub(gpu_kv_bytes));
            check_host(host_bytes, host_available, model, context)?;
            let split = if plans.len() > 1 {
                plans
                    .iter()
                    .map(|p| DeviceShare {
                        device: p.id,
                        layers: p.layers,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            return Ok(LoadPlan {
                placement: Placement {
                    device: Some(devices[0].gpu.id),
                    gpu_layers,
                    split,
                    split_rows: rows && plans.len() > 1,
                    total_layers: model.layers,
                    output_on_device: output_on_gpu,
                    context_length: context as usize,
                },
                device_name: Some(devices[0].gpu.name.clone()),
                context,
                batch: batch.min(context),
                kv_type: "f16",
                gpu_weight_bytes,
                gpu_kv_bytes,
                gpu_compute_bytes: sum(|p| p.compute_bytes),
                gpu_available: devices.iter().map(|d| d.gpu.available).sum(),
                devices: plans,
                host_bytes,
                host_available,
                reasons,
            });
        }
    }

    // CPU only.
    let usable = host_available.saturating_sub(SAFETY_MARGIN);
    let host = |ctx: u32| {
        host_weights
            .saturating_add(model.kv_bytes(ctx))
            .saturating_add(model.compute_bytes(ctx, batch.min(ctx)))
    };
    while host(context) > usable && !request.pin_context && context > floor {
        let lowered = (context / 2).max(floor);
        reasons.push(format!(
            "context {context} does not fit in host memory; lowered to {lowered}"
        ));
        context = lowered;
    }
    let host_bytes = host(context);
    check_host(host_bytes, host_available, model, context)?;
    Ok(LoadPlan {
        placement: Placement::cpu(model.layers, context as usize),
        device_name: None,
        devices: Vec::new(),
        context,
        batch: batch.min(context),
        kv_type: "f16",
        gpu_weight_bytes: 0,
        gpu_kv_bytes: 0,
        gpu_compute_bytes: 0,
        gpu_available: 0,
        host_bytes,
        host_available,
        reasons,
    })
}

fn check_host(needed: u64, available: u64, model: &ModelFacts, context: u32) -> Result<()> {
    if needed > available.saturating_sub(SAFETY_MARGIN) {
        return Err(Error::InsufficientMemory {
            needed,
            available,
            detail: format!(
                "{} model, {} layers, {} ctx (weights {}, KV {}); 1 GiB is kept free",
                model.architecture,
                model.layers,
                context,
                gib(model.weight_bytes()),
                gib(model.kv_bytes(context))
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Qwen2.5-0.5B in Q8_0: 24 layers of 14.9M parameters at 34/32 bytes each,
    /// embeddings tied to the output head.
    fn qwen_0_5b() -> ModelFacts {
        let per_layer = 14_909_440 * 34 / 32;
        let embedding = 151_936 * 896 * 34 / 32;
        ModelFacts {
            architecture: "qwen2".into(),
            layers: 24,
            embedding: 896,
            heads: 14,
            kv_heads: 2,
            head_dim: 64,
            vocab: 151_936,
            trained_context: 32_768,
            layer_bytes: vec![per_layer; 24],
            output_bytes: embedding,
            embedding_bytes: embedding,
        }
    }

    /// Llama-3.1-8B in Q4_K: 32 layers of 120 MiB, a 411 MiB output head.
    fn llama_8b_q4() -> ModelFacts {
        ModelFacts {
            architecture: "llama".into(),
            layers: 32,
            embedding: 4096,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            vocab: 128_256,
            trained_context: 131_072,
            layer_bytes: vec![120 * MIB; 32],
            output_bytes: 411 * MIB,
            embedding_bytes: 282 * MIB,
        }
    }

    fn gpu(gib: u64) -> Vec<DeviceBudget> {
        vec![DeviceBudget {
            id: DeviceId {
                kind: crate::hardware::AcceleratorKind::Cuda,
                index: 0,
            },
            name: "CUDA0 (test GPU)".into(),
            available: gib * GIB,
        }]
    }

    #[test]
    fn kv_cache_formula() {
        // 2 × 32 layers × 8 KV heads × 128 × 2 bytes = 128 KiB per token.
        assert_eq!(llama_8b_q4().kv_bytes_per_token(), 131_072);
        assert_eq!(llama_8b_q4().kv_bytes(8192), GIB);
        // 2 × 24 × 2 × 64 × 2 = 12 KiB per token.
        assert_eq!(qwen_0_5b().kv_bytes_per_token(), 12_288);
    }

    #[test]
    fn an_80_gib_gpu_takes_every_layer_of_small_and_8b_models() {
        for model in [qwen_0_5b(), llama_8b_q4()] {
            let plan = plan(&model, &gpu(80), 64 * GIB, &PlanRequest::default()).unwrap();
            assert_eq!(plan.gpu_layers(), model.layers);
            assert!(plan.placement.whole_model_on_device());
            assert_eq!(plan.context, 8192, "the trained length, capped at 8192");
            assert!(
                plan.to_string()
                    .starts_with(&format!("{0}/{0} layers on CUDA0 (test GPU)", model.layers)),
                "{plan}"
            );
        }
    }

    #[test]
    fn a_4_gib_gpu_takes_part_of_an_8b_q4_model() {
        // By hand: usable 4 GiB − 1 GiB = 3072 MiB. At 8192 and 4096 ctx the whole
        // model needs 5.8 and 4.9 GiB, so the context drops to 2048: KV 256 MiB,
        // compute max(4·512·(1+4·4096+2048·33), 4·512·(4096+128256)) = 258.5 MiB.
        // Each layer costs 120 MiB + 2048 × 4 KiB of KV = 128 MiB;
        // (3072 − 258.5) / 128 = 21.98 → 21 layers.
        let plan = plan(&llama_8b_q4(), &gpu(4), 32 * GIB, &PlanRequest::default()).unwrap();
        assert_eq!(plan.context, 2048);
        assert_eq!(plan.gpu_layers(), 21);
        assert!(!plan.placement.output_on_device);
        assert_eq!(plan.gpu_weight_bytes, 21 * 120 * MIB);
        assert_eq!(plan.gpu_kv_bytes, 21 * 8 * MIB);
        assert_eq!(plan.gpu_compute_bytes, 271_056_896);
        assert!(plan.gpu_bytes() <= 3 * GIB);
        assert!(
            plan.reasons.iter().any(|r| r.contains("only 21/32 layers")),
            "{plan}"
        );
    }

    #[test]
    fn cpu_only_plans_no_gpu_layers() {
        let plan = plan(&qwen_0_5b(), &[], 16 * GIB, &PlanRequest::default()).unwrap();
        assert_eq!(plan.gpu_layers(), 0);
        assert_eq!(plan.placement.device, None);
        assert!(plan.host_bytes > qwen_0_5b().weight_bytes());
        assert!(plan.to_string().contains("CPU only"), "{plan}");
        let asked = PlanRequest {
            cpu_only: true,
            ..PlanRequest::default()
        };
        assert_eq!(plan_gpu_layers(&asked), 0);
    }

    fn plan_gpu_layers(request: &PlanRequest) -> u32 {
        plan(&qwen_0_5b(), &gpu(80), 16 * GIB, request)
            .unwrap()
            .gpu_layers()
    }

    #[test]
    fn unified_memory_is_planned_like_a_budget() {
        let unified = vec![DeviceBudget {
            id: DeviceId {
                kind: crate::hardware::AcceleratorKind::Metal,
                index: 0,
            },
            name: "Metal0 (Apple M2)".into(),
            available: 10 * GIB,
        }];
        let plan = plan(&llama_8b_q4(), &unified, 16 * GIB, &PlanRequest::default()).unwrap();
        assert_eq!(plan.gpu_layers(), 32);
        assert_eq!(plan.context, 8192);
    }

    #[test]
    fn a_context_that_does_not_fit_is_lowered_unless_pinned() {
        let wanted = PlanRequest {
            context: Some(131_072),
            ..PlanRequest::default()
        };
        // 24 GiB: at 131072 the KV alone is 16 GiB; at 65536 everything fits.
        let lowered = plan(&llama_8b_q4(), &gpu(24), 64 * GIB, &wanted).unwrap();
        assert_eq!(lowered.context, 65_536);
        assert_eq!(lowered.gpu_layers(), 32);

        let pinned = PlanRequest {
            pin_context: true,
            ..wanted.clone()
        };
        let partial = plan(&llama_8b_q4(), &gpu(24), 64 * GIB, &pinned).unwrap();
        assert_eq!(partial.context, 131_072, "a pinned context is kept");
        assert!(partial.gpu_layers() < 32);

        // Pinned and too large even for host memory: an error with both numbers.
        let err = plan(&llama_8b_q4(), &[], 8 * GIB, &pinned).unwrap_err();
        match err {
            Error::InsufficientMemory {
                needed, available, ..
            } => {
                assert!(needed > available);
                assert_eq!(available, 8 * GIB);
            }
            other => panic!("expected InsufficientMemory, got {other}"),
        }
    }

    #[test]
    fn a_model_too_large_for_the_machine_is_an_error() {
        let err = plan(&llama_8b_q4(), &[], 4 * GIB, &PlanRequest::default()).unwrap_err();
        assert!(matches!(err, Error::InsufficientMemory { .. }), "{err}");
        assert!(err.to_string().contains("GiB"), "{err}");
    }

    #[test]
    fn a_whole_model_backend_gets_every_layer_or_none() {
        let whole = PlanRequest {
            whole_model_only: true,
            ..PlanRequest::default()
        };
        // The 8B Q4 model does not fit a 4 GiB GPU whole: the CPU takes it,
        // at the context it would have had there, and the plan says why.
        let plan = plan(&llama_8b_q4(), &gpu(4), 32 * GIB, &whole).unwrap();
        assert_eq!(plan.gpu_layers(), 0);
        assert_eq!(plan.placement.device, None);
        assert_eq!(plan.context, 8192);
        assert!(
            plan.reasons
                .iter()
                .any(|r| r.contains("runs a model on one device")),
            "{plan}"
        );
        let plan = plan_with(&qwen_0_5b(), &gpu(80), &whole);
        assert!(plan.placement.whole_model_on_device(), "{plan}");
    }

    /// Llama-3.1-8B in F16: 32 layers of 416 MiB, a 1002 MiB output head.
    fn llama_8b_f16() -> ModelFacts {
        ModelFacts {
            layer_bytes: vec![416 * MIB; 32],
            output_bytes: 1002 * MIB,
            embedding_bytes: 1002 * MIB,
            ..llama_8b_q4()
        }
    }

    fn cards(sizes_gib: &[u64]) -> Vec<DeviceBudget> {
        sizes_gib
            .iter()
            .enumerate()
            .map(|(index, gib)| DeviceBudget {
                id: DeviceId {
                    kind: crate::hardware::AcceleratorKind::Cuda,
                    index: index as u32,
                },
                name: format!("CUDA{index} (test GPU)"),
                available: gib * GIB,
            })
            .collect()
    }

    /// Every device's part fits its usable memory, the shares add up, and
    /// the plan's sums are the devices'.
    fn check_split(plan: &LoadPlan) {
        assert!(plan.devices.len() > 1, "{plan}");
        for device in &plan.devices {
            assert!(device.bytes() <= device.available - GIB, "{plan}");
        }
        let shares: u32 = plan.placement.split.iter().map(|s| s.layers).sum();
        if !plan.placement.split_rows {
            assert_eq!(shares, plan.gpu_layers(), "{plan}");
        }
        let sum = |f: fn(&DevicePlan) -> u64| plan.devices.iter().map(f).sum::<u64>();
        assert_eq!(plan.gpu_weight_bytes, sum(|d| d.weight_bytes));
        assert_eq!(plan.gpu_kv_bytes, sum(|d| d.kv_bytes));
        assert_eq!(plan.gpu_bytes(), sum(DevicePlan::bytes));
    }

    #[test]
    fn an_8b_f16_model_that_fits_no_card_alone_is_split_over_two() {
        // At a pinned 65 536 tokens: 13 GiB of layers, 1 GiB of head, 8 GiB of
        // KV and the compute buffer: more than one 24 GiB card's 23 usable.
        let pinned = PlanRequest {
            context: Some(65_536),
            pin_context: true,
            ..PlanRequest::default()
        };
        let plan = plan(&llama_8b_f16(), &cards(&[24, 24]), 64 * GIB, &pinned).unwrap();
        check_split(&plan);
        assert_eq!(plan.context, 65_536);
        assert!(plan.placement.whole_model_on_device(), "{plan}");
        let layers: Vec<u32> = plan.devices.iter().map(|d| d.layers).collect();
        assert_eq!(layers, [16, 16], "equal cards, equal halves");
        assert!(
            plan.devices[1].output && !plan.devices[0].output,
            "the head goes with the last layer"
        );
        assert_eq!(plan.placement.device, Some(plan.devices[0].id));
        let text = plan.to_string();
        assert!(
            text.starts_with("32/32 layers on 2 GPUs, split by layers"),
            "{text}"
        );
        assert!(
            text.contains("CUDA1 (test GPU): 16 layers and the output"),
            "{text}"
        );
        assert!(
            text.contains("does not fit on CUDA0 (test GPU) alone"),
            "{text}"
        );

        // At the default 8192 tokens it fits one card: no split.
        let plan = plan_with(&llama_8b_f16(), &cards(&[24, 24]), &PlanRequest::default());
        assert!(plan.placement.split.is_empty(), "{plan}");
        assert_eq!(plan.devices.len(), 1);
    }

    #[test]
    fn mixed_cards_take_layers_in_proportion_to_their_memory() {
        let pinned = PlanRequest {
            context: Some(65_536),
            pin_context: true,
            ..PlanRequest::default()
        };
        let plan = plan(&llama_8b_f16(), &cards(&[16, 24]), 64 * GIB, &pinned).unwrap();
        check_split(&plan);
        // The freest card is the main one and comes first: 23 of 38 usable
        // GiB, so 32 × 23 / 38 = 19.4 → 19 layers, and 13 on the other.
        assert_eq!(plan.devices[0].name, "CUDA1 (test GPU)");
        assert_eq!(
            plan.devices.iter().map(|d| d.layers).collect::<Vec<_>>(),
            [19, 13]
        );
        assert!(plan.placement.whole_model_on_device());
    }

    #[test]
    fn a_pinned_context_too_large_for_every_card_keeps_some_layers_on_the_cpu() {
        let pinned = PlanRequest {
            context: Some(131_072),
            pin_context: true,
            ..PlanRequest::default()
        };
        let plan = plan(&llama_8b_f16(), &cards(&[12, 12]), 128 * GIB, &pinned).unwrap();
        check_split(&plan);
        assert_eq!(plan.context, 131_072);
        assert!(plan.gpu_layers() > 0 && plan.gpu_layers() < 32, "{plan}");
        assert!(!plan.placement.output_on_device);
        assert!(
            plan.reasons
                .iter()
                .any(|r| r.contains("layers fit on 2 GPUs")),
            "{plan}"
        );
        // Adding a layer would overflow a card.
        let (model, gpus) = (llama_8b_f16(), cards(&[12, 12]));
        let usable: Vec<Usable> = gpus
            .iter()
            .map(|gpu| Usable {
                gpu,
                usable: gpu.available - GIB,
            })
            .collect();
        let more = Layout {
            model: &model,
            gpus: &usable,
            context: 131_072,
            batch: DEFAULT_BATCH,
            rows: false,
        };
        let plans = more.place(plan.gpu_layers() + 1, false);
        assert!(!more.fits(&plans));
    }

    #[test]
    fn a_row_split_shares_every_layer_and_keeps_the_cache_on_the_main_card() {
        let rows = PlanRequest {
            context: Some(65_536),
            pin_context: true,
            split_rows: true,
            ..PlanRequest::default()
        };
        let plan = plan(&llama_8b_f16(), &cards(&[24, 24]), 64 * GIB, &rows).unwrap();
        check_split(&plan);
        assert!(plan.placement.split_rows);
        assert_eq!(plan.devices[0].kv_bytes, llama_8b_f16().kv_bytes(65_536));
        assert_eq!(plan.devices[1].kv_bytes, 0);
        assert!(plan.devices.iter().all(|d| d.layers == 32));
        assert!(plan.to_string().contains("split by rows"), "{plan}");
    }

    #[test]
    fn a_whole_model_backend_takes_the_freest_card_that_fits_never_a_split() {
        let whole = PlanRequest {
            whole_model_only: true,
            ..PlanRequest::default()
        };
        let freest = plan_with(&llama_8b_q4(), &cards(&[4, 12]), &whole);
        assert_eq!(freest.placement.device, Some(cards(&[4, 12])[1].id));
        assert!(freest.placement.whole_model_on_device() && freest.placement.split.is_empty());
        // No card holds the F16 model at a pinned 131 072 tokens: the CPU.
        let pinned = PlanRequest {
            context: Some(131_072),
            pin_context: true,
            ..whole
        };
        let plan = plan(&llama_8b_f16(), &cards(&[24, 24]), 128 * GIB, &pinned).unwrap();
        assert_eq!(plan.placement.device, None);
        assert!(
            plan.reasons
                .iter()
                .any(|r| r.contains("runs a model on one device")),
            "{plan}"
        );
    }

    #[test]
    fn numbers_too_large_for_any_machine_are_an_error_not_an_overflow() {
        let absurd = ModelFacts {
            layers: 4096,
            embedding: 1 << 20,
            heads: 1 << 20,
            kv_heads: 1 << 20,
            head_dim: 1 << 20,
            vocab: u64::MAX,
            trained_context: u32::MAX,
            ..llama_8b_q4()
        };
        let err = plan(
            &absurd,
            &cards(&[80, 80]),
            64 * GIB,
            &PlanRequest::default(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::InsufficientMemory { .. }), "{err}");
    }

    fn plan_with(model: &ModelFacts, gpus: &[DeviceBudget], request: &PlanRequest) -> LoadPlan {
        plan(model, gpus, 32 * GIB, request).unwrap()
    }
}
