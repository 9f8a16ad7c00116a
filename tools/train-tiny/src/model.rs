//! A llama-architecture transformer written with candle's autograd, laid out
//! exactly as llama.cpp reads a GGUF llama: tensor names, `[out, in]` weight
//! rows, RMS norms and interleaved ("normal") rotary embeddings. What is
//! trained here is what both backends run, with no conversion step.

use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{D, DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::fused::{CausalSoftmax, InterleavedRope, RmsNorm, RopeTables, SwiGlu};
pub(crate) use rand_distr_free::normal;

/// The model's dimensions.
#[derive(Debug, Clone, Copy)]
pub struct Dimensions {
    /// Vocabulary size.
    pub vocab: usize,
    /// Model width.
    pub hidden: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads (no grouped-query attention: the model is small).
    pub heads: usize,
    /// Feed-forward width.
    pub ffn: usize,
    /// Longest sequence the rotary tables cover.
    pub max_positions: usize,
}

const NORM_EPS: f64 = 1e-5;
const ROPE_BASE: f32 = 10_000.0;

/// The trainable model: every weight is a named [`Var`].
#[derive(Clone)]
pub struct TinyLlama {
    pub dims: Dimensions,
    weights: Vec<(String, Var)>,
    cos: Tensor,
    sin: Tensor,
    /// The same tables as plain values, for the CPU's fused rotary kernel.
    rope_tables: Arc<RopeTables>,
}

/// Gaussian noise without another dependency: Box–Muller over ChaCha.
mod rand_distr_free {
    use rand::Rng;

    pub fn normal(rng: &mut impl Rng, std: f32) -> f32 {
        let u1: f32 = rng.random_range(f32::EPSILON..1.0);
        let u2: f32 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos() * std
    }
}

impl TinyLlama {
    /// A model with seeded random weights (GPT-2 style scaling: residual
    /// outputs shrink with depth, so the untrained stack starts near identity).
    pub fn new(dims: Dimensions, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut weights = Vec::new();
        let mut matrix = |name: String, rows: usize, cols: usize, std: f32| -> Result<()> {
            let values: Vec<f32> = (0..rows * cols).map(|_| normal(&mut rng, std)).collect();
            let tensor = Tensor::from_vec(values, (rows, cols), device)?;
            weights.push((name, Var::from_tensor(&tensor)?));
            Ok(())
        };
        let std = 0.02;
        let residual_std = std / (2.0 * dims.layers as f32).sqrt();
        matrix("token_embd.weight".into(), dims.vocab, dims.hidden, std)?;
        for layer in 0..dims.layers {
            let name = |part: &str| format!("blk.{layer}.{part}.weight");
            for part in ["attn_q", "attn_k", "attn_v"] {
                matrix(name(part), dims.hidden, dims.hidden, std)?;
            }
            matrix(name("attn_output"), dims.hidden, dims.hidden, residual_std)?;
            matrix(name("ffn_gate"), dims.ffn, dims.hidden, std)?;
            matrix(name("ffn_up"), dims.ffn, dims.hidden, std)?;
            matrix(name("ffn_down"), dims.hidden, dims.ffn, residual_std)?;
        }
        matrix("output.weight".into(), dims.vocab, dims.hidden, std)?;
        let ones = Tensor::ones(dims.hidden, DType::F32, device)?;
        for layer in 0..dims.layers {
            for part in ["attn_norm", "ffn_norm"] {
                weights.push((
                    format!("blk.{layer}.{part}.weight"),
                    Var::from_tensor(&ones)?,
                ));
            }
        }
        weights.push(("output_norm.weight".into(), Var::from_tensor(&ones)?));

        Self::with_weights(dims, weights, device)
    }

    /// The model stored in a GGUF file this program wrote.
    pub fn from_gguf(
        path: &std::path::Path,
        max_positions: usize,
        device: &Device,
    ) -> Result<Self> {
        let mut file = std::fs::File::open(path)?;
        let content = candle_core::quantized::gguf_file::Content::read(&mut file)?;
        let get = |key: &str| -> Result<usize> {
            Ok(content
                .metadata
                .get(key)
                .with_context(|| format!("no {key}"))?
                .to_u32()? as usize)
        };
        let vocab = match content.metadata.get("tokenizer.ggml.tokens") {
            Some(candle_core::quantized::gguf_file::Value::Array(tokens)) => tokens.len(),
            _ => anyhow::bail!("no token list"),
        };
        let dims = Dimensions {
            vocab,
            hidden: get("llama.embedding_length")?,
            layers: get("llama.block_count")?,
            heads: get("llama.attention.head_count")?,
            ffn: get("llama.feed_forward_length")?,
            max_positions,
        };
        let mut weights = Vec::new();
        for name in content.tensor_infos.keys() {
            let tensor = content
                .tensor(&mut file, name, device)?
                .dequantize(device)?;
            weights.push((name.clone(), Var::from_tensor(&tensor)?));
        }
        Self::with_weights(dims, weights, device)
    }

    fn with_weights(
        dims: Dimensions,
        weights: Vec<(String, Var)>,
        device: &Device,
    ) -> Result<Self> {
        let (cos, sin) = rotary_tables(dims.hidden / dims.heads, dims.max_positions, device)?;
        let rope_tables = Arc::new(RopeTables {
            cos: cos.flatten_all()?.to_vec1()?,
            sin: sin.flatten_all()?.to_vec1()?,
            half: dims.hidden / dims.heads / 2,
        });
        Ok(TinyLlama {
            dims,
            weights,
            cos,
            sin,
            rope_tables,
        })
    }

    /// The weights, for the optimiser.
    pub fn vars(&self) -> Vec<Var> {
        self.weights.iter().map(|(_, var)| var.clone()).collect()
    }

    /// The number of trained values.
    pub fn parameter_count(&self) -> usize {
        self.weights.iter().map(|(_, v)| v.elem_count()).sum()
    }

    fn weight(&self, name: &str) -> Result<&Tensor> {
        self.weights
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, var)| var.as_tensor())
            .with_context(|| format!("no weight {name}"))
    }

    /// Final hidden states `[batch, time, hidden]` of `tokens` `[batch, time]`.
    pub fn hidden_states(&self, tokens: &Tensor) -> Result<Tensor> {
        let (batch, time) = tokens.dims2()?;
        let Dimensions { hidden, heads, .. } = self.dims;
        let head_dim = hidden / heads;
        let mut h = self
            .weight("token_embd.weight")?
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((batch, time, hidden))?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        for layer in 0..self.dims.layers {
            let w = |part: &str| self.weight(&format!("blk.{layer}.{part}.weight"));
            let x = rms_norm(&h, w("attn_norm")?)?.reshape((batch * time, hidden))?;
            let split_heads = |t: Tensor| -> Result<Tensor> {
                Ok(t.reshape((batch, time, heads, head_dim))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let q = self.rope(&split_heads(x.matmul(&w("attn_q")?.t()?)?)?)?;
            let k = self.rope(&split_heads(x.matmul(&w("attn_k")?.t()?)?)?)?;
            let v = split_heads(x.matmul(&w("attn_v")?.t()?)?)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
            let attention = causal_softmax(&scores)?;
            let mixed = attention
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((batch * time, hidden))?;
            let attended = mixed.matmul(&w("attn_output")?.t()?)?;
            h = (h + attended.reshape((batch, time, hidden))?)?;

            let x = rms_norm(&h, w("ffn_norm")?)?.reshape((batch * time, hidden))?;
            let gate = x.matmul(&w("ffn_gate")?.t()?)?;
            let up = x.matmul(&w("ffn_up")?.t()?)?;
            let down = swiglu(&gate, &up)?.matmul(&w("ffn_down")?.t()?)?;
            h = (h + down.reshape((batch, time, hidden))?)?;
        }
        rms_norm(&h, self.weight("output_norm.weight")?)
    }

    /// The rotary embedding: the fused kernel on the CPU.
    fn rope(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() {
            Ok(x.contiguous()?.apply_op1(InterleavedRope {
                tables: Arc::clone(&self.rope_tables),
                backwards: false,
            })?)
        } else {
            let time = x.dim(2)?;
            rope_composed(
                x,
                &self.cos.narrow(0, 0, time)?,
                &self.sin.narrow(0, 0, time)?,
            )
        }
    }

    /// Logits `[n, vocab]` for hidden states `[n, hidden]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(hidden.matmul(&self.weight("output.weight")?.t()?)?)
    }

    /// The GGUF tensors: matrices in `matrix_type`, norms in F32.
    pub fn gguf_tensors(&self, matrix_type: GgmlDType) -> Result<Vec<(String, QTensor)>> {
        self.weights
            .iter()
            .map(|(name, var)| {
                let dtype = if name.contains("norm") {
                    GgmlDType::F32
                } else {
                    matrix_type
                };
                Ok((name.clone(), QTensor::quantize(var.as_tensor(), dtype)?))
            })
            .collect()
    }
}

/// llama's RMS norm over the last dimension: the fused kernel on the CPU.
fn rms_norm(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        let norm = RmsNorm {
            eps: NORM_EPS as f32,
        };
        Ok(x.contiguous()?.apply_op2(weight, norm)?)
    } else {
        rms_norm_composed(x, weight)
    }
}

fn rms_norm_composed(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + NORM_EPS)?.sqrt()?;
    Ok(x.broadcast_div(&rms)?.broadcast_mul(weight)?)
}

/// `silu(gate) ⊙ up`: the fused kernel on the CPU.
fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.device().is_cpu() {
        Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)?)
    } else {
        swiglu_composed(gate, up)
    }
}

fn swiglu_composed(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((gate.silu()? * up)?)
}

/// `cos`/`sin` of `position × base^(-2i/head_dim)`, `[positions, head_dim/2]`.
fn rotary_tables(head_dim: usize, positions: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut angles = Vec::with_capacity(positions * half);
    for position in 0..positions {
        for i in 0..half {
            let frequency = ROPE_BASE.powf(-2.0 * i as f32 / head_dim as f32);
            angles.push(position as f32 * frequency);
        }
    }
    let angles = Tensor::from_vec(angles, (positions, half), device)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// llama.cpp's "normal" rotary embedding: rotates adjacent pairs
/// `(x[2i], x[2i+1])` of each head, `x` being `[batch, heads, time, head_dim]`.
fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (batch, heads, time, head_dim) = x.dims4()?;
    let pairs = x.reshape((batch, heads, time, head_dim / 2, 2))?;
    let even = pairs.narrow(4, 0, 1)?;
    let odd = pairs.narrow(4, 1, 1)?;
    let cos = cos.reshape((1, 1, time, head_dim / 2, 1))?;
    let sin = sin.reshape((1, 1, time, head_dim / 2, 1))?;
    let rotated_even = (even.broadcast_mul(&cos)? - odd.broadcast_mul(&sin)?)?;
    let rotated_odd = (even.broadcast_mul(&sin)? + odd.broadcast_mul(&cos)?)?;
    Ok(Tensor::cat(&[rotated_even, rotated_odd], 4)?.reshape((batch, heads, time, head_dim))?)
}

/// Softmax over the keys of attention scores `[batch, heads, time, time]`,
/// each query seeing itself and the positions before it: the fused kernel on
/// the CPU.
fn causal_softmax(scores: &Tensor) -> Result<Tensor> {
    if scores.device().is_cpu() {
        Ok(scores.contiguous()?.apply_op1(CausalSoftmax)?)
    } else {
        causal_softmax_composed(scores)
    }
}

fn causal_softmax_composed(scores: &Tensor) -> Result<Tensor> {
    let mask = causal_mask(scores.dim(D::Minus1)?, scores.device())?;
    Ok(candle_nn::ops::softmax(
        &scores.broadcast_add(&mask)?,
        D::Minus1,
    )?)
}

fn causal_mask(time: usize, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..time)
        .flat_map(|row| (0..time).map(move |col| if col > row { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(values, (time, time), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in about [-3, 3].
    fn values(shape: &[usize]) -> Result<Var> {
        let count: usize = shape.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 4.0)
            .collect();
        Ok(Var::from_tensor(&Tensor::from_vec(
            values,
            shape,
            &Device::Cpu,
        )?)?)
    }

    /// `fused` and `composed` give the same values and the same gradients
    /// for every input, under a fixed weighting of the outputs (so the
    /// gradient is not trivial).
    fn assert_same(
        inputs: &[&Var],
        fused: impl Fn() -> Result<Tensor>,
        composed: impl Fn() -> Result<Tensor>,
    ) -> Result<()> {
        let fused = fused()?;
        let composed = composed()?;
        let weights = Tensor::arange(0f32, fused.elem_count() as f32, &Device::Cpu)?
            .reshape(fused.shape())?
            .sin()?;
        let largest = |a: &Tensor, b: &Tensor| -> Result<f32> {
            Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        assert!(largest(&fused, &composed)? < 1e-5, "values differ");
        let fused_grads = (&fused * &weights)?.sum_all()?.backward()?;
        let composed_grads = (&composed * &weights)?.sum_all()?.backward()?;
        for (index, input) in inputs.iter().enumerate() {
            let a = fused_grads.get(input).context("no fused gradient")?;
            let b = composed_grads.get(input).context("no composed gradient")?;
            let difference = largest(a, b)?;
            assert!(
                difference < 1e-4,
                "input {index}: gradients differ by {difference}"
            );
        }
        Ok(())
    }

    #[test]
    fn fused_causal_softmax_matches_the_composed_one() -> Result<()> {
        let time = 5;
        let scores = values(&[2, 3, time, time])?;
        assert_same(
            &[&scores],
            || causal_softmax(&scores),
            || causal_softmax_composed(&scores),
        )
    }

    #[test]
    fn fused_rms_norm_matches_the_composed_one() -> Result<()> {
        let x = values(&[2, 3, 8])?;
        let weight = Var::from_tensor(&(values(&[8])?.as_tensor() * 0.5)?)?;
        assert_same(
            &[&x, &weight],
            || rms_norm(&x, &weight),
            || rms_norm_composed(&x, &weight),
        )
    }

    #[test]
    fn fused_swiglu_matches_the_composed_one() -> Result<()> {
        let gate = values(&[3, 10])?;
        let up = Var::from_tensor(&(values(&[3, 10])?.as_tensor() * -0.7)?)?;
        assert_same(
            &[&gate, &up],
            || swiglu(&gate, &up),
            || swiglu_composed(&gate, &up),
        )
    }

    #[test]
    fn fused_rope_matches_the_composed_one() -> Result<()> {
        let dims = Dimensions {
            vocab: 4,
            hidden: 16,
            layers: 1,
            heads: 2,
            ffn: 8,
            max_positions: 12,
        };
        let model = TinyLlama::new(dims, 1, &Device::Cpu)?;
        let time = 7;
        let x = values(&[2, 2, time, 8])?;
        let cos = model.cos.narrow(0, 0, time)?;
        let sin = model.sin.narrow(0, 0, time)?;
        assert_same(&[&x], || model.rope(&x), || rope_composed(&x, &cos, &sin))
    }
}
