//! What differs between the model families this backend runs, read from a
//! GGUF header: one [`Architecture`] value says, for a file, how every layer
//! is computed (as llama.cpp computes it; `specs/candle-adapter.md` says how
//! each family was checked against llama.cpp's logits).

use crate::gguf::GgufHeader;

/// The architectures this backend runs (Mistral and SmolLM files say `llama`).
pub const SUPPORTED_ARCHITECTURES: [&str; 6] =
    ["llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"];

/// A family of GGUF files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    /// Llama, Mistral, SmolLM: interleaved RoPE pairs.
    Llama,
    /// Qwen2: biases on the query, key and value projections; NeoX RoPE.
    Qwen2,
    /// Qwen3: an RMS norm on each query and key head; NeoX RoPE.
    Qwen3,
    /// Gemma 2: scaled embeddings, norms after attention and the FFN, GELU,
    /// sliding-window attention on every other layer, soft-capped logits.
    Gemma2,
    /// Gemma 3: as Gemma 2 with query/key norms, five sliding-window layers
    /// for one global, two RoPE bases, no soft caps.
    Gemma3,
    /// Phi-3: fused QKV and gate|up projections; NeoX RoPE.
    Phi3,
}

impl Family {
    /// The family of a `general.architecture` name.
    pub(super) fn of(architecture: &str) -> Option<Family> {
        Some(match architecture {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "gemma2" => Family::Gemma2,
            "gemma3" => Family::Gemma3,
            "phi3" => Family::Phi3,
            _ => return None,
        })
    }

    pub(super) fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma2 | Family::Gemma3)
    }

    /// llama.cpp's rope type: NORM (pairs `2i, 2i+1`) for llama, NEOX
    /// (pairs `i, i + d/2`) for the others.
    pub(super) fn rope_is_neox(self) -> bool {
        !matches!(self, Family::Llama)
    }

    /// Per-head RMS norms on queries and keys.
    pub(super) fn has_qk_norm(self) -> bool {
        matches!(self, Family::Qwen3 | Family::Gemma3)
    }

    /// Biases on the query, key and value projections.
    pub(super) fn has_qkv_bias(self) -> bool {
        self == Family::Qwen2
    }
}

/// The FFN's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Activation {
    /// SwiGLU: `silu(gate) · up`.
    Silu,
    /// GEGLU with the tanh approximation of GELU (Gemma).
    GeluTanh,
}

/// One RoPE setting: base frequency and linear position scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct RopeSetting {
    pub(super) base: f64,
    /// Positions are multiplied by this (1 without linear scaling).
    pub(super) position_scale: f64,
}

/// The sizes, constants and per-layer choices of one file.
#[derive(Debug, Clone)]
pub(super) struct Architecture {
    pub(super) family: Family,
    pub(super) layers: usize,
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
    pub(super) head_dim: usize,
    pub(super) rms_eps: f64,
    pub(super) activation: Activation,
    /// Scales the token embedding (Gemma: √width).
    pub(super) embedding_scale: Option<f64>,
    /// The factor queries are scaled by before attention.
    pub(super) attention_scale: f64,
    /// Attention logits go through `cap · tanh(x / cap)` (Gemma 2).
    pub(super) attention_softcap: Option<f64>,
    /// Output logits go through `cap · tanh(x / cap)` (Gemma 2).
    pub(super) final_softcap: Option<f64>,
    /// Global layers' RoPE.
    pub(super) rope: RopeSetting,
    /// Sliding-window layers' RoPE.
    pub(super) local_rope: RopeSetting,
    /// Keys each sliding-window layer attends to (its own position included).
    pub(super) window: Option<usize>,
    /// Which layers use the sliding window.
    sliding: Vec<bool>,
}

impl Architecture {
    /// Reads a file's architecture from its header.
    pub(super) fn from_header(family: Family, header: &GgufHeader) -> Result<Self, String> {
        let required = |suffix: &str| {
            header
                .arch_u64(suffix)
                .map(|v| v as usize)
                .ok_or_else(|| format!("the header has no `{suffix}`"))
        };
        let width = required("embedding_length")?;
        let heads = required("attention.head_count")?;
        if heads == 0 {
            return Err("`attention.head_count` is 0".into());
        }
        let kv_heads = header
            .arch_u64("attention.head_count_kv")
            .map_or(heads, |v| v as usize);
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(format!(
                "{heads} query heads cannot share {kv_heads} key/value heads"
            ));
        }
        let head_dim = header
            .arch_u64("attention.key_length")
            .map_or(width / heads, |v| v as usize);
        let rope_dims = header
            .arch_u64("rope.dimension_count")
            .map_or(head_dim, |v| v as usize);
        if rope_dims != head_dim || !head_dim.is_multiple_of(2) {
            return Err(format!(
                "RoPE over {rope_dims} of {head_dim} head dimensions is not supported"
            ));
        }
        let layers = required("block_count")?;
        let linear_scale = match header.arch_str("rope.scaling.type") {
            None | Some("none") => 1.0,
            Some("linear") => 1.0 / header.arch_f64("rope.scaling.factor").unwrap_or(1.0),
            Some(other) => {
                // As candle-transformers' models did: run unscaled, which is
                // exact within the trained context.
                tracing::warn!(
                    scaling = other,
                    "RoPE scaling type not implemented by candle; positions are not scaled"
                );
                1.0
            }
        };
        let base = header.arch_f64("rope.freq_base").unwrap_or(match family {
            Family::Gemma3 => 1_000_000.0,
            _ => 10_000.0,
        });
        let rope = RopeSetting {
            base,
            position_scale: linear_scale,
        };
        let is_gemma = family.is_gemma();
        // Gemma 3's sliding-window layers keep their own base, unscaled
        // (llama.cpp's `rope_freq_base_train_swa`); Gemma 2 uses one RoPE.
        let local_rope = match family {
            Family::Gemma3 => RopeSetting {
                base: header.arch_f64("rope.freq_base_swa").unwrap_or(10_000.0),
                position_scale: 1.0,
            },
            _ => rope,
        };
        let window = match family {
            Family::Gemma2 => Some(
                header
                    .arch_u64("attention.sliding_window")
                    .map_or(4096, |v| v as usize),
            ),
            Family::Gemma3 => header
                .arch_u64("attention.sliding_window")
                .map(|v| v as usize),
            _ => None,
        }
        .filter(|&w| w > 0);
        let sliding = match window {
            None => vec![false; layers],
            Some(_) => sliding_layers(family, header, layers),
        };
        Ok(Architecture {
            family,
            layers,
            heads,
            kv_heads,
            head_dim,
            rms_eps: header
                .arch_f64("attention.layer_norm_rms_epsilon")
                .unwrap_or(if is_gemma { 1e-6 } else { 1e-5 }),
            activation: if is_gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            embedding_scale: is_gemma.then(|| (width as f64).sqrt()),
            // Gemma's 27B models scale by width / heads (gemma_pytorch's
            // `query_pre_attn_scalar`; llama.cpp tells them by layer count).
            attention_scale: match (family, layers) {
                (Family::Gemma2, 46) | (Family::Gemma3, 62) => {
                    1.0 / ((width / heads) as f64).sqrt()
                }
                _ => 1.0 / (head_dim as f64).sqrt(),
            },
            attention_softcap: (family == Family::Gemma2)
                .then(|| header.arch_f64("attn_logit_softcapping").unwrap_or(50.0)),
            final_softcap: match family {
                Family::Gemma2 => Some(header.arch_f64("final_logit_softcapping").unwrap_or(30.0)),
                Family::Gemma3 => header.arch_f64("final_logit_softcapping"),
                _ => None,
            }
            .filter(|&cap| cap > 0.0),
            rope,
            local_rope,
            window,
            sliding,
        })
    }

    /// Whether `layer` attends through the sliding window.
    pub(super) fn is_sliding(&self, layer: usize) -> bool {
        self.sliding.get(layer).copied().unwrap_or(false)
    }
}

/// Which layers are local, as llama.cpp's `load_swa_pattern` reads them:
/// `attention.sliding_window_pattern` as one flag per layer, or as a period
/// `n` (the last layer of each `n` is global; `0`: all local); by default Gemma 2 alternates
/// (`n = 2`) and Gemma 3 has five local layers to one global (`n = 6`).
fn sliding_layers(family: Family, header: &GgufHeader, layers: usize) -> Vec<bool> {
    let key = "attention.sliding_window_pattern";
    let architecture = header.architecture().unwrap_or_default();
    if let Some(flags) = header
        .get(&format!("{architecture}.{key}"))
        .and_then(|v| v.as_array())
    {
        let mut flags: Vec<bool> = flags.iter().map(|f| f.as_bool().unwrap_or(false)).collect();
        flags.resize(layers, false);
        return flags;
    }
    let period = header.arch_u64(key).map_or(
        match family {
            Family::Gemma3 => 6,
            _ => 2,
        },
        |n| n as usize,
    );
    (0..layers)
        .map(|layer| period == 0 || layer % period < period - 1)
        .collect()
}
