//! One decoder-only transformer for the GGUF families this backend runs
//! (`llama`, `qwen2`, `qwen3`), computed with candle's quantized kernels.
//!
//! Why our own and not candle-transformers' `quantized_*` models: their KV
//! caches are private and can only be cleared, so every call re-read its
//! whole prompt. Here the cache knows which tokens it holds and is cut back
//! to the prefix a new prompt shares with them (a DSPy call repeats the
//! system message and demos). The token embedding also stays quantized
//! (candle's models dequantize it to F32, 4 bytes a weight), and RoPE is
//! computed per call, so no family is capped at a precomputed 4096 positions.

use std::io::{Read, Seek};
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor, gguf_file};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_transformers::quantized_nn::RmsNorm;
use candle_transformers::utils::repeat_kv;

use crate::gguf::GgufHeader;

/// What differs between the families this transformer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    /// Llama, Mistral, SmolLM: interleaved RoPE pairs.
    Llama,
    /// Qwen2: biases on the query, key and value projections; NeoX RoPE.
    Qwen2,
    /// Qwen3: an RMS norm on each query and key head; NeoX RoPE.
    Qwen3,
}

impl Family {
    /// The family of a `general.architecture` name.
    pub(super) fn of(architecture: &str) -> Option<Family> {
        match architecture {
            "llama" => Some(Family::Llama),
            "qwen2" => Some(Family::Qwen2),
            "qwen3" => Some(Family::Qwen3),
            _ => None,
        }
    }

    /// llama.cpp's rope type: NORM (pairs `2i, 2i+1`) for llama, NEOX
    /// (pairs `i, i + d/2`) for the Qwen families.
    fn rope_is_neox(self) -> bool {
        !matches!(self, Family::Llama)
    }
}

/// The sizes and constants read from the header.
#[derive(Debug, Clone)]
struct Hyperparameters {
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rms_eps: f64,
    rope_base: f64,
    /// Positions are multiplied by this (linear RoPE scaling), 1 without.
    rope_position_scale: f64,
}

impl Hyperparameters {
    fn from_header(header: &GgufHeader) -> Result<Self, String> {
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
        let rope_position_scale = match header.arch_str("rope.scaling.type") {
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
        Ok(Hyperparameters {
            layers: required("block_count")?,
            heads,
            kv_heads,
            head_dim,
            rms_eps: header
                .arch_f64("attention.layer_norm_rms_epsilon")
                .unwrap_or(1e-5),
            rope_base: header.arch_f64("rope.freq_base").unwrap_or(10_000.0),
            rope_position_scale,
        })
    }
}

/// Rotary position embedding, computed for the positions of each call.
#[derive(Debug, Clone)]
struct Rope {
    /// One frequency per pair of head dimensions.
    inverse_frequencies: Vec<f64>,
    position_scale: f64,
    neox: bool,
}

impl Rope {
    fn new(parameters: &Hyperparameters, factors: Option<Vec<f32>>, neox: bool) -> Self {
        let dims = parameters.head_dim;
        let inverse_frequencies = (0..dims / 2)
            .map(|i| {
                let base = parameters.rope_base.powf(-((2 * i) as f64) / dims as f64);
                // Llama 3's `rope_freqs` divides each frequency, as llama.cpp does.
                let factor = factors
                    .as_ref()
                    .and_then(|f| f.get(i))
                    .map_or(1.0, |&f| f as f64);
                base / factor
            })
            .collect();
        Rope {
            inverse_frequencies,
            position_scale: parameters.rope_position_scale,
            neox,
        }
    }

    /// Cosine and sine tables `(len, head_dim / 2)` for positions `start..start + len`.
    fn tables(
        &self,
        start: usize,
        len: usize,
        device: &Device,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inverse_frequencies.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for position in start..start + len {
            let position = position as f64 * self.position_scale;
            for frequency in &self.inverse_frequencies {
                let angle = position * frequency;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok((
            Tensor::from_vec(cos, (len, half), device)?,
            Tensor::from_vec(sin, (len, half), device)?,
        ))
    }

    /// Rotates `x` of shape `(batch, heads, len, head_dim)`.
    fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        if self.neox {
            candle_nn::rotary_emb::rope(&x, cos, sin)
        } else {
            candle_nn::rotary_emb::rope_i(&x, cos, sin)
        }
    }
}

/// A projection with the optional bias Qwen2 adds.
#[derive(Debug, Clone)]
struct Projection {
    weight: QMatMul,
    bias: Option<Tensor>,
}

impl Module for Projection {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.weight.forward(x)?;
        match &self.bias {
            Some(bias) => y.broadcast_add(bias),
            None => Ok(y),
        }
    }
}

#[derive(Debug, Clone)]
struct Attention {
    query: Projection,
    key: Projection,
    value: Projection,
    output: QMatMul,
    /// Qwen3's per-head norms on queries and keys.
    query_norm: Option<RmsNorm>,
    key_norm: Option<RmsNorm>,
}

#[derive(Debug, Clone)]
struct FeedForward {
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate.forward(x)?)?;
        self.down.forward(&(gate * self.up.forward(x)?)?)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    attention_norm: RmsNorm,
    attention: Attention,
    feed_forward_norm: RmsNorm,
    feed_forward: FeedForward,
}

/// Keys and values of one layer, `(1, kv_heads, positions, head_dim)` each.
type LayerCache = Option<(Tensor, Tensor)>;

/// The model and its KV cache, with the tokens the cache holds.
#[derive(Debug)]
pub(super) struct Transformer {
    embedding: Arc<QTensor>,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: QMatMul,
    rope: Rope,
    parameters: Hyperparameters,
    device: Device,
    cache: Vec<LayerCache>,
    /// The tokens whose keys and values are in `cache`, in order.
    cached_tokens: Vec<u32>,
}

impl Transformer {
    /// Reads the weights of a `family` model; `header` is the same file's.
    /// `progress` hears the fraction of layers read.
    pub(super) fn load<R: Read + Seek>(
        family: Family,
        header: &GgufHeader,
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
        progress: &dyn Fn(f32),
    ) -> Result<Self, String> {
        let parameters = Hyperparameters::from_header(header)?;
        let mut tensor = |name: &str| {
            content
                .tensor(reader, name, device)
                .map_err(|e| format!("tensor `{name}`: {e}"))
        };
        let eps = parameters.rms_eps;
        let norm = |t: QTensor| RmsNorm::from_qtensor(t, eps).map_err(|e| e.to_string());
        let matmul = |t: QTensor| QMatMul::from_qtensor(t).map_err(|e| e.to_string());
        let vector = |t: QTensor| t.dequantize(device).map_err(|e| e.to_string());

        let embedding = Arc::new(tensor("token_embd.weight")?);
        // Files with tied embeddings have no `output.weight`: the one table
        // serves both ends.
        let output = if content.tensor_infos.contains_key("output.weight") {
            matmul(tensor("output.weight")?)?
        } else {
            QMatMul::from_arc(Arc::clone(&embedding)).map_err(|e| e.to_string())?
        };
        let factors = if content.tensor_infos.contains_key("rope_freqs.weight") {
            let factors = tensor("rope_freqs.weight")?.dequantize(&Device::Cpu);
            Some(
                factors
                    .and_then(|f| f.flatten_all()?.to_vec1::<f32>())
                    .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        let mut layers = Vec::with_capacity(parameters.layers);
        for index in 0..parameters.layers {
            progress(index as f32 / parameters.layers.max(1) as f32);
            let mut named = |part: &str| tensor(&format!("blk.{index}.{part}"));
            let mut projection = |name: &str| -> Result<Projection, String> {
                let weight = matmul(named(&format!("{name}.weight"))?)?;
                let bias = if family == Family::Qwen2 {
                    Some(vector(named(&format!("{name}.bias"))?)?)
                } else {
                    None
                };
                Ok(Projection { weight, bias })
            };
            let attention = Attention {
                query: projection("attn_q")?,
                key: projection("attn_k")?,
                value: projection("attn_v")?,
                output: matmul(named("attn_output.weight")?)?,
                query_norm: match family {
                    Family::Qwen3 => Some(norm(named("attn_q_norm.weight")?)?),
                    _ => None,
                },
                key_norm: match family {
                    Family::Qwen3 => Some(norm(named("attn_k_norm.weight")?)?),
                    _ => None,
                },
            };
            layers.push(Layer {
                attention_norm: norm(named("attn_norm.weight")?)?,
                attention,
                feed_forward_norm: norm(named("ffn_norm.weight")?)?,
                feed_forward: FeedForward {
                    gate: matmul(named("ffn_gate.weight")?)?,
                    up: matmul(named("ffn_up.weight")?)?,
                    down: matmul(named("ffn_down.weight")?)?,
                },
            });
        }
        Ok(Transformer {
            embedding,
            norm: norm(tensor("output_norm.weight")?)?,
            output,
            rope: Rope::new(&parameters, factors, family.rope_is_neox()),
            cache: vec![None; parameters.layers],
            layers,
            parameters,
            device: device.clone(),
            cached_tokens: Vec::new(),
        })
    }

    /// Empties the KV cache.
    pub(super) fn clear_cache(&mut self) {
        self.truncate_cache(0);
    }

    /// Keeps the longest prefix of the cache that `prompt` starts with, but
    /// never all of `prompt` (its last token is read again for its logits).
    /// Returns how many positions were kept.
    pub(super) fn keep_shared_prefix(&mut self, prompt: &[u32]) -> usize {
        let shared = self
            .cached_tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len().saturating_sub(1));
        self.truncate_cache(shared);
        shared
    }

    fn truncate_cache(&mut self, positions: usize) {
        if positions >= self.cached_tokens.len() {
            return;
        }
        self.cached_tokens.truncate(positions);
        for layer in &mut self.cache {
            *layer = match layer.take() {
                Some((k, v)) if positions > 0 => {
                    match (k.narrow(2, 0, positions), v.narrow(2, 0, positions)) {
                        (Ok(k), Ok(v)) => Some((k, v)),
                        _ => None,
                    }
                }
                _ => None,
            };
        }
        if positions > 0 && self.cache.iter().any(Option::is_none) {
            // A cut that failed leaves nothing usable: start over.
            self.cached_tokens.clear();
            self.cache.iter_mut().for_each(|layer| *layer = None);
        }
    }

    /// Reads `tokens` after the cached ones and returns the logits for the
    /// token after the last, as a vector.
    pub(super) fn next_logits(&mut self, tokens: &[u32]) -> crate::Result<Vec<f32>> {
        self.forward(tokens)
            .and_then(|logits| logits.to_vec1::<f32>())
            .map_err(|e| crate::Error::inference("candle", "the forward pass failed", e))
    }

    /// Reads `tokens` after the cached ones and returns the logits `(vocab,)`
    /// for the token after the last. On an error the cache is emptied, so it
    /// never holds a half-written step.
    fn forward(&mut self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        let result = self.run_layers(tokens);
        match result {
            Ok(logits) => {
                self.cached_tokens.extend_from_slice(tokens);
                Ok(logits)
            }
            Err(e) => {
                self.cached_tokens.clear();
                self.cache.iter_mut().for_each(|layer| *layer = None);
                Err(e)
            }
        }
    }

    fn run_layers(&mut self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        let len = tokens.len();
        if len == 0 {
            candle_core::bail!("no tokens to read");
        }
        let start = self.cached_tokens.len();
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let mut x = self.embedding.embedding(&ids)?;
        let (cos, sin) = self.rope.tables(start, len, &self.device)?;
        let mask = if len > 1 {
            Some(causal_mask(len, start, &self.device)?)
        } else {
            None
        };
        let step = Step {
            cos: &cos,
            sin: &sin,
            mask: mask.as_ref(),
        };
        for (layer, cache) in self.layers.iter().zip(self.cache.iter_mut()) {
            let attended = layer.attention.forward(
                &self.parameters,
                &self.rope,
                &layer.attention_norm.forward(&x)?,
                &step,
                cache,
            )?;
            x = (attended + x)?;
            let fed = layer
                .feed_forward
                .forward(&layer.feed_forward_norm.forward(&x)?)?;
            x = (fed + x)?;
        }
        // Only the last position's logits are needed: norm and project it alone.
        let last = x.i((.., len - 1, ..))?;
        self.output
            .forward(&self.norm.forward(&last)?)?
            .squeeze(0)?
            .to_dtype(DType::F32)
    }
}

/// What every layer of one forward pass shares.
struct Step<'a> {
    cos: &'a Tensor,
    sin: &'a Tensor,
    mask: Option<&'a Tensor>,
}

impl Attention {
    /// Self-attention of `x` `(1, len, width)` over the cached positions and its own.
    fn forward(
        &self,
        parameters: &Hyperparameters,
        rope: &Rope,
        x: &Tensor,
        step: &Step<'_>,
        cache: &mut LayerCache,
    ) -> candle_core::Result<Tensor> {
        let (batch, len, _) = x.dims3()?;
        let heads = |projection: &Projection, count: usize, norm: Option<&RmsNorm>| {
            let y = projection
                .forward(x)?
                .reshape((batch, len, count, parameters.head_dim))?;
            let y = match norm {
                Some(norm) => norm.forward(&y.contiguous()?)?,
                None => y,
            };
            y.transpose(1, 2)
        };
        let query = heads(&self.query, parameters.heads, self.query_norm.as_ref())?;
        let key = heads(&self.key, parameters.kv_heads, self.key_norm.as_ref())?;
        let value = heads(&self.value, parameters.kv_heads, None)?.contiguous()?;
        let query = rope.apply(&query, step.cos, step.sin)?;
        let key = rope.apply(&key, step.cos, step.sin)?;

        let (key, value) = match cache.take() {
            Some((cached_key, cached_value)) => (
                Tensor::cat(&[&cached_key, &key], 2)?,
                Tensor::cat(&[&cached_value, &value], 2)?,
            ),
            None => (key, value),
        };
        *cache = Some((key.clone(), value.clone()));

        let groups = parameters.heads / parameters.kv_heads;
        let key = repeat_kv(key, groups)?;
        let value = repeat_kv(value, groups)?.contiguous()?;
        let scores = (query.matmul(&key.t()?)? / (parameters.head_dim as f64).sqrt())?;
        let scores = match step.mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = weights.matmul(&value)?.transpose(1, 2)?.reshape((
            batch,
            len,
            parameters.heads * parameters.head_dim,
        ))?;
        self.output.forward(&y)
    }
}

/// Additive mask `(len, start + len)`: query `i` (at position `start + i`)
/// sees every cached key and its own and earlier new ones.
fn causal_mask(len: usize, start: usize, device: &Device) -> candle_core::Result<Tensor> {
    let width = start + len;
    let mask: Vec<f32> = (0..len)
        .flat_map(|i| {
            (0..width).map(move |j| {
                if j > start + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (len, width), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_lets_each_new_position_see_the_cache_and_its_past() {
        let mask = causal_mask(2, 3, &Device::Cpu).unwrap();
        assert_eq!(mask.dims(), [2, 5]);
        let rows = mask.to_vec2::<f32>().unwrap();
        assert_eq!(rows[0][..4], [0.0; 4]);
        assert!(rows[0][4].is_infinite());
        assert_eq!(rows[1], [0.0; 5]);
    }
}
