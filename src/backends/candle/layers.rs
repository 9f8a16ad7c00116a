//! The parts of one transformer block, as each family lays them out in its
//! GGUF file: projections (separate or fused), attention with an optional
//! sliding window and soft cap, the gated feed-forward, RoPE.

use std::io::{Read, Seek};

use candle_core::quantized::{QTensor, gguf_file};
use candle_core::{Device, Module, Tensor};
use candle_transformers::quantized_nn::RmsNorm;

use super::attention_cpu;
use super::family::{Activation, Architecture, Family, RopeSetting};
use super::kv_cache::LayerCache;
use super::weight::Weight;

/// Rotary position embedding for one base, computed for the positions of each call.
#[derive(Debug, Clone)]
pub(super) struct Rope {
    /// One frequency per pair of head dimensions.
    inverse_frequencies: Vec<f64>,
    position_scale: f64,
    neox: bool,
}

impl Rope {
    pub(super) fn new(
        setting: RopeSetting,
        head_dim: usize,
        factors: Option<&[f32]>,
        neox: bool,
    ) -> Self {
        let inverse_frequencies = (0..head_dim / 2)
            .map(|i| {
                let base = setting.base.powf(-((2 * i) as f64) / head_dim as f64);
                // Llama 3's `rope_freqs` divides each frequency, as llama.cpp does.
                let factor = factors.and_then(|f| f.get(i)).map_or(1.0, |&f| f as f64);
                base / factor
            })
            .collect();
        Rope {
            inverse_frequencies,
            position_scale: setting.position_scale,
            neox,
        }
    }

    /// Cosine and sine tables `(len, head_dim / 2)` for positions `start..start + len`.
    pub(super) fn tables(
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
    fn apply(&self, x: &Tensor, (cos, sin): &(Tensor, Tensor)) -> candle_core::Result<Tensor> {
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
    weight: Weight,
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

/// Queries, keys and values: three projections, or one fused (Phi-3).
#[derive(Debug, Clone)]
enum QueryKeyValue {
    Separate {
        query: Projection,
        key: Projection,
        value: Projection,
    },
    Fused(Weight),
}

/// The gate and up projections: two, or one of twice the width (Phi-3).
#[derive(Debug, Clone)]
enum GateUp {
    Separate { gate: Weight, up: Weight },
    Fused(Weight),
}

/// What every layer of one forward pass shares: RoPE tables and masks.
pub(super) struct Step {
    pub(super) global_rope: (Tensor, Tensor),
    pub(super) local_rope: (Tensor, Tensor),
    pub(super) global_mask: Option<Tensor>,
    pub(super) local_mask: Option<Tensor>,
}

#[derive(Debug, Clone)]
struct Attention {
    qkv: QueryKeyValue,
    output: Weight,
    /// Per-head norms on queries and keys (Qwen3, Gemma 3).
    query_norm: Option<RmsNorm>,
    key_norm: Option<RmsNorm>,
    sliding: bool,
}

#[derive(Debug, Clone)]
struct FeedForward {
    gate_up: GateUp,
    down: Weight,
    activation: Activation,
}

/// One transformer block.
#[derive(Debug, Clone)]
pub(super) struct Layer {
    attention_norm: RmsNorm,
    attention: Attention,
    /// Gemma's norm of the attention output, before the residual.
    post_attention_norm: Option<RmsNorm>,
    feed_forward_norm: RmsNorm,
    feed_forward: FeedForward,
    /// Gemma's norm of the FFN output, before the residual.
    post_feed_forward_norm: Option<RmsNorm>,
}

/// Reads named tensors of one file.
pub(super) struct TensorSource<'a, R> {
    pub(super) content: &'a gguf_file::Content,
    pub(super) reader: &'a mut R,
    pub(super) device: &'a Device,
    pub(super) rms_eps: f64,
}

impl<R: Read + Seek> TensorSource<'_, R> {
    pub(super) fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub(super) fn tensor(&mut self, name: &str) -> Result<QTensor, String> {
        self.content
            .tensor(self.reader, name, self.device)
            .map_err(|e| format!("tensor `{name}`: {e}"))
    }

    pub(super) fn matmul(&mut self, name: &str) -> Result<Weight, String> {
        Weight::new(self.tensor(name)?).map_err(|e| e.to_string())
    }

    pub(super) fn norm(&mut self, name: &str) -> Result<RmsNorm, String> {
        RmsNorm::from_qtensor(self.tensor(name)?, self.rms_eps).map_err(|e| e.to_string())
    }

    fn vector(&mut self, name: &str) -> Result<Tensor, String> {
        let device = self.device.clone();
        self.tensor(name)?
            .dequantize(&device)
            .map_err(|e| e.to_string())
    }

    fn optional_norm(&mut self, name: &str) -> Result<Option<RmsNorm>, String> {
        if self.has(name) {
            self.norm(name).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl Layer {
    /// Reads block `index` of a model of `arch`.
    pub(super) fn load<R: Read + Seek>(
        arch: &Architecture,
        index: usize,
        source: &mut TensorSource<'_, R>,
    ) -> Result<Self, String> {
        let name = |part: &str| format!("blk.{index}.{part}");
        let family = arch.family;
        let qkv = if source.has(&name("attn_qkv.weight")) {
            QueryKeyValue::Fused(source.matmul(&name("attn_qkv.weight"))?)
        } else {
            let mut projection = |part: &str| -> Result<Projection, String> {
                let weight = source.matmul(&name(&format!("{part}.weight")))?;
                let bias = if family.has_qkv_bias() {
                    Some(source.vector(&name(&format!("{part}.bias")))?)
                } else {
                    None
                };
                Ok(Projection { weight, bias })
            };
            QueryKeyValue::Separate {
                query: projection("attn_q")?,
                key: projection("attn_k")?,
                value: projection("attn_v")?,
            }
        };
        let (query_norm, key_norm) = if family.has_qk_norm() {
            (
                Some(source.norm(&name("attn_q_norm.weight"))?),
                Some(source.norm(&name("attn_k_norm.weight"))?),
            )
        } else {
            (None, None)
        };
        let attention = Attention {
            qkv,
            output: source.matmul(&name("attn_output.weight"))?,
            query_norm,
            key_norm,
            sliding: arch.is_sliding(index),
        };
        let gate_up = if source.has(&name("ffn_gate.weight")) {
            GateUp::Separate {
                gate: source.matmul(&name("ffn_gate.weight"))?,
                up: source.matmul(&name("ffn_up.weight"))?,
            }
        } else if family == Family::Phi3 {
            GateUp::Fused(source.matmul(&name("ffn_up.weight"))?)
        } else {
            return Err(format!("block {index} has no `ffn_gate.weight`"));
        };
        Ok(Layer {
            attention_norm: source.norm(&name("attn_norm.weight"))?,
            attention,
            post_attention_norm: source.optional_norm(&name("post_attention_norm.weight"))?,
            feed_forward_norm: source.norm(&name("ffn_norm.weight"))?,
            feed_forward: FeedForward {
                gate_up,
                down: source.matmul(&name("ffn_down.weight"))?,
                activation: arch.activation,
            },
            post_feed_forward_norm: source.optional_norm(&name("post_ffw_norm.weight"))?,
        })
    }

    /// `x` `(1, len, width)` through the block, reading and extending `cache`.
    pub(super) fn forward(
        &self,
        arch: &Architecture,
        ropes: (&Rope, &Rope),
        x: &Tensor,
        step: &Step,
        cache: &mut LayerCache,
    ) -> candle_core::Result<Tensor> {
        let attended =
            self.attention
                .forward(arch, ropes, &self.attention_norm.forward(x)?, step, cache)?;
        let attended = match &self.post_attention_norm {
            Some(norm) => norm.forward(&attended)?,
            None => attended,
        };
        let x = (attended + x)?;
        let fed = self
            .feed_forward
            .forward(&self.feed_forward_norm.forward(&x)?)?;
        let fed = match &self.post_feed_forward_norm {
            Some(norm) => norm.forward(&fed)?,
            None => fed,
        };
        fed + x
    }
}

impl FeedForward {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (gate, up) = match &self.gate_up {
            GateUp::Separate { gate, up } => (gate.forward(x)?, up.forward(x)?),
            GateUp::Fused(weight) => {
                let both = weight.forward(x)?;
                let width = both.dim(candle_core::D::Minus1)? / 2;
                (
                    both.narrow(candle_core::D::Minus1, 0, width)?,
                    both.narrow(candle_core::D::Minus1, width, width)?,
                )
            }
        };
        let gate = match self.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            // candle's `gelu` is the tanh approximation, as llama.cpp's GEGLU.
            Activation::GeluTanh => gate.gelu()?,
        };
        self.down.forward(&(gate * up)?)
    }
}

/// `cap · tanh(x / cap)`.
pub(super) fn soft_cap(x: &Tensor, cap: f64) -> candle_core::Result<Tensor> {
    (x / cap)?.tanh()? * cap
}

impl Attention {
    /// Self-attention of `x` `(1, len, width)` over the cached positions and its own.
    fn forward(
        &self,
        arch: &Architecture,
        (global_rope, local_rope): (&Rope, &Rope),
        x: &Tensor,
        step: &Step,
        cache: &mut LayerCache,
    ) -> candle_core::Result<Tensor> {
        let (batch, len, _) = x.dims3()?;
        let head_dim = arch.head_dim;
        let (query, key, value) = match &self.qkv {
            QueryKeyValue::Separate { query, key, value } => {
                (query.forward(x)?, key.forward(x)?, value.forward(x)?)
            }
            QueryKeyValue::Fused(weight) => {
                let all = weight.forward(x)?;
                let (q, kv) = (arch.heads * head_dim, arch.kv_heads * head_dim);
                let last = candle_core::D::Minus1;
                (
                    all.narrow(last, 0, q)?,
                    all.narrow(last, q, kv)?,
                    all.narrow(last, q + kv, kv)?,
                )
            }
        };
        let heads = |y: Tensor, count: usize, norm: Option<&RmsNorm>| {
            let y = y.reshape((batch, len, count, head_dim))?;
            let y = match norm {
                Some(norm) => norm.forward(&y.contiguous()?)?,
                None => y,
            };
            y.transpose(1, 2)
        };
        let query = heads(query, arch.heads, self.query_norm.as_ref())?;
        let key = heads(key, arch.kv_heads, self.key_norm.as_ref())?;
        let value = heads(value, arch.kv_heads, None)?.contiguous()?;
        let (rope, tables, mask) = if self.sliding {
            (local_rope, &step.local_rope, step.local_mask.as_ref())
        } else {
            (global_rope, &step.global_rope, step.global_mask.as_ref())
        };
        let query = rope.apply(&query, tables)?;
        let key = rope.apply(&key, tables)?;

        let (key, value) = cache.append(&key, &value)?;

        // Grouped-query attention without copying the keys and values per
        // query head: the queries of the heads that share a key/value head
        // become rows of one product, `(batch, kv_heads, groups × len, dim)`
        // (repeating them took ~30 % of a token's time at a 450-token context).
        let groups = arch.heads / arch.kv_heads;
        let width = key.dim(2)?;
        let query = query
            .contiguous()?
            .reshape((batch, arch.kv_heads, groups * len, head_dim))?;
        let layout = attention_cpu::Heads {
            kv_heads: arch.kv_heads,
            groups,
            head_dim,
            scale: arch.attention_scale,
            softcap: arch.attention_softcap,
        };
        let attended = match (batch, len) {
            (1, 1) => attention_cpu::attend(&query, &key, &value, mask, &layout)?,
            _ => None,
        };
        let attended = match attended {
            Some(attended) => attended,
            None => {
                let scores = (query.matmul(&key.t()?)? * arch.attention_scale)?;
                let scores = match arch.attention_softcap {
                    Some(cap) => soft_cap(&scores, cap)?,
                    None => scores,
                };
                let scores = match mask {
                    // The mask `(len, width)` applies to each group's rows alike.
                    Some(mask) => scores
                        .reshape((batch, arch.kv_heads, groups, len, width))?
                        .broadcast_add(mask)?
                        .reshape((batch, arch.kv_heads, groups * len, width))?,
                    None => scores,
                };
                candle_nn::ops::softmax_last_dim(&scores)?.matmul(&value)?
            }
        };
        let y = attended
            .reshape((batch, arch.heads, len, head_dim))?
            .transpose(1, 2)?
            .reshape((batch, len, arch.heads * head_dim))?;
        self.output.forward(&y)
    }
}

/// Additive mask `(len, start + len)`: query `i` (at position `start + i`)
/// sees the keys at or before its position, and with a `window`, only the
/// `window` latest of them (its own included), as llama.cpp masks
/// sliding-window layers. `None` when nothing is masked.
pub(super) fn attention_mask(
    len: usize,
    start: usize,
    window: Option<usize>,
    device: &Device,
) -> candle_core::Result<Option<Tensor>> {
    let width = start + len;
    let outside_window = window.is_some_and(|w| width > w);
    if len == 1 && !outside_window {
        return Ok(None);
    }
    let mask: Vec<f32> = (0..len)
        .flat_map(|i| {
            let position = start + i;
            (0..width).map(move |j| {
                let future = j > position;
                let too_old = window.is_some_and(|w| position - j.min(position) >= w);
                if future || too_old {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (len, width), device).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_lets_each_new_position_see_the_cache_and_its_past() {
        let mask = attention_mask(2, 3, None, &Device::Cpu).unwrap().unwrap();
        assert_eq!(mask.dims(), [2, 5]);
        let rows = mask.to_vec2::<f32>().unwrap();
        assert_eq!(rows[0][..4], [0.0; 4]);
        assert!(rows[0][4].is_infinite());
        assert_eq!(rows[1], [0.0; 5]);
        assert!(attention_mask(1, 7, None, &Device::Cpu).unwrap().is_none());
    }

    #[test]
    fn a_sliding_window_keeps_the_latest_keys_only() {
        // Window 3: position 4 sees positions 2, 3, 4.
        let mask = attention_mask(1, 4, Some(3), &Device::Cpu)
            .unwrap()
            .unwrap();
        let row = &mask.to_vec2::<f32>().unwrap()[0];
        assert!(row[0].is_infinite() && row[1].is_infinite());
        assert_eq!(row[2..], [0.0; 3]);
        assert!(
            attention_mask(1, 2, Some(3), &Device::Cpu)
                .unwrap()
                .is_none()
        );
    }
}
