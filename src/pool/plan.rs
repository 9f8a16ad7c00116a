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
//!   trained length) before layers leave the GPU, as `--fit` does.

use std::fmt;

use crate::backend::Placement;
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
    pub fn kv_bytes_per_token(&self) -> u64 {
        2 * u64::from(self.layers) * self.kv_heads * self.head_dim * 2
    }

    /// KV cache bytes of `context` tokens.
    pub fn kv_bytes(&self, context: u32) -> u64 {
        self.kv_bytes_per_token() * u64::from(context)
    }

    /// The compute buffer for a batch of `batch` tokens over `context` tokens.
    pub fn compute_bytes(&self, context: u32, batch: u32) -> u64 {
        let b = u64::from(batch);
        let attention = 4 * b * (1 + 4 * self.embedding + u64::from(context) * (1 + self.heads));
        let logits = 4 * b * (self.embedding + self.vocab);
        attention.max(logits)
    }

    /// All weight bytes.
    pub fn weight_bytes(&self) -> u64 {
        self.layer_bytes.iter().sum::<u64>() + self.output_bytes + self.embedding_bytes
    }
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
}

/// A sizing decision.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadPlan {
    /// What the backend reads: device, layers on it, context.
    pub placement: Placement,
    /// The device's display name, if a device is used.
    pub device_name: Option<String>,
    /// Context length.
    pub context: u32,
    /// Prompt batch size.
    pub batch: u32,
    /// KV cache element type.
    pub kv_type: &'static str,
    /// Weights on the GPU.
    pub gpu_weight_bytes: u64,
    /// KV cache bytes on the GPU.
    pub gpu_kv_bytes: u64,
    /// Compute buffer on the GPU.
    pub gpu_compute_bytes: u64,
    /// What the device had available.
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
        self.gpu_weight_bytes + self.gpu_kv_bytes + self.gpu_compute_bytes
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
        match &self.device_name {
            Some(device) => write!(
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
            None => write!(
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

/// Plans a load of `model` on the best of `gpus` (most available memory)
/// with `host_available` bytes of RAM.
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

    let gpu = if request.cpu_only {
        reasons.push("CPU only, as asked".into());
        None
    } else {
        let best = gpus.iter().max_by_key(|g| g.available);
        if best.is_none() {
            reasons.push(
                "no GPU this build can use (none detected, or its backend is not compiled in)"
                    .into(),
            );
        }
        best
    };

    if let Some(gpu) = gpu {
        // Lowering the context for the GPU does not carry over to the CPU fallback.
        let mut context = context;
        let mut usable = gpu.available.saturating_sub(SAFETY_MARGIN);
        if let Some(limit) = request.memory_limit
            && limit < usable
        {
            reasons.push(format!("memory limit {} applies", gib(limit)));
            usable = limit;
        }
        let layer_total: u64 = model.layer_bytes.iter().sum();
        let full = |ctx: u32| {
            layer_total
                + model.output_bytes
                + model.kv_bytes(ctx)
                + model.compute_bytes(ctx, batch.min(ctx))
        };
        // Lower the context before dropping layers.
        while full(context) > usable && !request.pin_context && context > floor {
            let lowered = (context / 2).max(floor);
            reasons.push(format!(
                "context {context} does not fit with every layer on the GPU; lowered to {lowered}"
            ));
            context = lowered;
        }
        let compute = model.compute_bytes(context, batch.min(context));
        let (gpu_layers, output_on_gpu) = if full(context) <= usable {
            reasons.push(format!(
                "all {} layers and the output fit in {} usable ({} free − 1 GiB margin)",
                model.layers,
                gib(usable),
                gib(gpu.available)
            ));
            (model.layers, true)
        } else if request.whole_model_only {
            reasons.push(format!(
                "the whole model does not fit in {} usable on {}, and this backend runs a model on one device",
                gib(usable),
                gpu.name
            ));
            (0, false)
        } else {
            let per_token_per_layer = model.kv_bytes_per_token() / u64::from(model.layers.max(1));
            let mut left = usable.saturating_sub(compute);
            let mut layers = 0;
            for bytes in &model.layer_bytes {
                let cost = bytes + per_token_per_layer * u64::from(context);
                if cost > left {
                    break;
                }
                left -= cost;
                layers += 1;
            }
            reasons.push(format!(
                "only {layers}/{} layers fit in {} usable ({} free − 1 GiB margin); the rest run on the CPU",
                model.layers,
                gib(usable),
                gib(gpu.available)
            ));
            (layers, false)
        };
        if gpu_layers > 0 {
            let layer_bytes: u64 = model.layer_bytes.iter().take(gpu_layers as usize).sum();
            let gpu_weight_bytes = layer_bytes + if output_on_gpu { model.output_bytes } else { 0 };
            let per_layer_kv = model.kv_bytes(context) / u64::from(model.layers.max(1));
            let gpu_kv_bytes = per_layer_kv * u64::from(gpu_layers);
            let host_bytes =
                host_weights - gpu_weight_bytes + (model.kv_bytes(context) - gpu_kv_bytes);
            check_host(host_bytes, host_available, model, context)?;
            return Ok(LoadPlan {
                placement: Placement {
                    device: Some(gpu.id),
                    gpu_layers,
                    total_layers: model.layers,
                    output_on_device: output_on_gpu,
                    context_length: context as usize,
                },
                device_name: Some(gpu.name.clone()),
                context,
                batch: batch.min(context),
                kv_type: "f16",
                gpu_weight_bytes,
                gpu_kv_bytes,
                gpu_compute_bytes: compute,
                gpu_available: gpu.available,
                host_bytes,
                host_available,
                reasons,
            });
        }
        if !request.whole_model_only {
            reasons.push("no layer fits on the GPU".into());
        }
    }

    // CPU only.
    let usable = host_available.saturating_sub(SAFETY_MARGIN);
    let host =
        |ctx: u32| host_weights + model.kv_bytes(ctx) + model.compute_bytes(ctx, batch.min(ctx));
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

    fn plan_with(model: &ModelFacts, gpus: &[DeviceBudget], request: &PlanRequest) -> LoadPlan {
        plan(model, gpus, 32 * GIB, request).unwrap()
    }
}
