//! CPU kernels for the model's element-wise steps: RMS norm, rotary
//! embedding, causal softmax and SwiGLU, each one pass forward and (but the
//! softmax's, a few tensor operations) one pass backward. Composed from
//! candle's operations, each allocates and walks its tensor five to ten times
//! forward and more backward, one thread each time. The GPU keeps the
//! composed versions (`model.rs` picks).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, Layout, Shape, Tensor, bail};

/// The F32 values of a contiguous CPU tensor.
fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        bail!("fused kernels: F32 only");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("fused kernels: not contiguous");
    };
    Ok(&values[start..end])
}

/// Softmax over the keys of attention scores `[batch, heads, time, time]`,
/// each query seeing itself and the positions before it (the mask is
/// implied, never built).
pub struct CausalSoftmax;

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let values = contiguous_f32(storage, layout)?;
        let (_, _, queries, keys) = layout.shape().dims4()?;
        if queries != keys {
            bail!("causal softmax: {queries} queries, {keys} keys");
        }
        let mut out = vec![0f32; values.len()];
        for (row, (input, output)) in values.chunks(keys).zip(out.chunks_mut(keys)).enumerate() {
            let seen = row % queries + 1;
            let max = input[..seen]
                .iter()
                .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let mut sum = 0.0;
            for (o, &v) in output[..seen].iter_mut().zip(&input[..seen]) {
                *o = (v - max).exp();
                sum += *o;
            }
            for o in &mut output[..seen] {
                *o /= sum;
            }
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // d score = p ⊙ (d p − Σ d p ⊙ p); masked positions have p = 0.
        let dot = (grad_res * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some((res * grad_res.broadcast_sub(&dot)?)?))
    }
}

/// `x / rms(x) ⊙ weight` over the last dimension (llama's RMS norm).
pub struct RmsNorm {
    pub eps: f32,
}

impl RmsNorm {
    /// `1 / sqrt(mean(x²) + eps)` of one row.
    fn inverse_rms(&self, row: &[f32]) -> f32 {
        let mean_square = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
        1.0 / (mean_square + self.eps).sqrt()
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x_values = contiguous_f32(x, x_layout)?;
        let weight = contiguous_f32(weight, weight_layout)?;
        if x_layout.shape().dims().last() != Some(&weight.len()) {
            bail!(
                "rms norm: rows of {:?}, weight of {}",
                x_layout.shape(),
                weight.len()
            );
        }
        let mut out = vec![0f32; x_values.len()];
        for (input, output) in x_values
            .chunks(weight.len())
            .zip(out.chunks_mut(weight.len()))
        {
            let scale = self.inverse_rms(input);
            for ((o, &v), &w) in output.iter_mut().zip(input).zip(weight) {
                *o = v * scale * w;
            }
        }
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let hidden = weight.elem_count();
        let rows = x.elem_count() / hidden;
        // One pass writes both gradients: `rows` rows of d x, then d weight.
        let both = x.contiguous()?.apply_op3_no_bwd(
            weight,
            &grad_res.contiguous()?,
            &RmsNormBackward {
                norm: RmsNorm { eps: self.eps },
            },
        )?;
        let grad_x = both.narrow(0, 0, rows)?.reshape(x.shape())?;
        let grad_weight = both.narrow(0, rows, 1)?.reshape(weight.shape())?;
        Ok((Some(grad_x), Some(grad_weight)))
    }
}

/// The RMS norm's gradients: with `r = 1 / rms(x)` and `g = d y ⊙ weight`,
/// `d x = r (g − x r² mean(g ⊙ x))` and `d weight = Σ_rows d y ⊙ x r`.
struct RmsNormBackward {
    norm: RmsNorm,
}

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x_values = contiguous_f32(x, x_layout)?;
        let weight = contiguous_f32(weight, weight_layout)?;
        let grad = contiguous_f32(grad, grad_layout)?;
        let hidden = weight.len();
        let rows = x_values.len() / hidden;
        let mut out = vec![0f32; (rows + 1) * hidden];
        let (grad_x, grad_weight) = out.split_at_mut(rows * hidden);
        for ((input, d_out), d_in) in x_values
            .chunks(hidden)
            .zip(grad.chunks(hidden))
            .zip(grad_x.chunks_mut(hidden))
        {
            let r = self.norm.inverse_rms(input);
            let mut g_dot_x = 0.0;
            for ((&v, &d), &w) in input.iter().zip(d_out).zip(weight) {
                g_dot_x += d * w * v;
            }
            let correction = r * r * g_dot_x / hidden as f32;
            for (((di, &v), &d), (&w, dw)) in d_in
                .iter_mut()
                .zip(input)
                .zip(d_out)
                .zip(weight.iter().zip(grad_weight.iter_mut()))
            {
                *di = r * (d * w - v * correction);
                *dw += d * v * r;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 1, hidden))))
    }
}

/// `cos`/`sin` of `p θ_i`, `[positions, half]` row-major.
pub struct RopeTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    /// `head_dim / 2`: the angles per position.
    pub half: usize,
}

/// llama.cpp's "normal" rotary embedding of `[batch, heads, time, head_dim]`:
/// each adjacent pair `(x[2i], x[2i+1])` at position `p` turns by `p θ_i`.
/// Its gradient is the same turn backwards.
#[derive(Clone)]
pub struct InterleavedRope {
    pub tables: Arc<RopeTables>,
    /// Turn by `−p θ_i` (the backward pass).
    pub backwards: bool,
}

impl CustomOp1 for InterleavedRope {
    fn name(&self) -> &'static str {
        "interleaved-rope"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let values = contiguous_f32(storage, layout)?;
        let (_, _, time, head_dim) = layout.shape().dims4()?;
        let RopeTables { cos, sin, half } = &*self.tables;
        let half = *half;
        if head_dim != 2 * half || cos.len() < time * half {
            bail!(
                "rope: {time} positions of {head_dim}, tables for {} of {}",
                cos.len() / half.max(1),
                2 * half
            );
        }
        let turn = if self.backwards { -1.0 } else { 1.0 };
        let mut out = vec![0f32; values.len()];
        for (row, (input, output)) in values
            .chunks(head_dim)
            .zip(out.chunks_mut(head_dim))
            .enumerate()
        {
            let at = (row % time) * half;
            for (i, (pair, turned)) in input.chunks(2).zip(output.chunks_mut(2)).enumerate() {
                let (c, s) = (cos[at + i], turn * sin[at + i]);
                turned[0] = pair[0] * c - pair[1] * s;
                turned[1] = pair[0] * s + pair[1] * c;
            }
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let back = InterleavedRope {
            tables: Arc::clone(&self.tables),
            backwards: !self.backwards,
        };
        Ok(Some(grad_res.contiguous()?.apply_op1(back)?))
    }
}

/// `silu(gate) ⊙ up`, the feed-forward's gated activation (SwiGLU).
pub struct SwiGlu;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gate_layout: &Layout,
        up: &CpuStorage,
        up_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let gate_values = contiguous_f32(gate, gate_layout)?;
        let up = contiguous_f32(up, up_layout)?;
        if gate_values.len() != up.len() {
            bail!("swiglu: gate and up differ in size");
        }
        let out = gate_values
            .iter()
            .zip(up)
            .map(|(&g, &u)| g * sigmoid(g) * u)
            .collect();
        Ok((CpuStorage::F32(out), gate_layout.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // One pass writes both gradients, d gate then d up.
        let both = gate.contiguous()?.apply_op3_no_bwd(
            &up.contiguous()?,
            &grad_res.contiguous()?,
            &SwiGluBackward,
        )?;
        let grad_gate = both.narrow(0, 0, 1)?.reshape(gate.shape())?;
        let grad_up = both.narrow(0, 1, 1)?.reshape(up.shape())?;
        Ok((Some(grad_gate), Some(grad_up)))
    }
}

/// SwiGLU's gradients: with `s = sigmoid(gate)`,
/// `d gate = d y ⊙ up ⊙ s (1 + gate (1 − s))` and `d up = d y ⊙ gate s`.
struct SwiGluBackward;

impl CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "swiglu-backward"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gate_layout: &Layout,
        up: &CpuStorage,
        up_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let gate = contiguous_f32(gate, gate_layout)?;
        let up = contiguous_f32(up, up_layout)?;
        let grad = contiguous_f32(grad, grad_layout)?;
        let count = gate.len();
        let mut out = vec![0f32; 2 * count];
        let (grad_gate, grad_up) = out.split_at_mut(count);
        for ((((&g, &u), &d), dg), du) in gate
            .iter()
            .zip(up)
            .zip(grad)
            .zip(grad_gate.iter_mut())
            .zip(grad_up.iter_mut())
        {
            let s = sigmoid(g);
            *dg = d * u * s * (1.0 + g * (1.0 - s));
            *du = d * g * s;
        }
        Ok((CpuStorage::F32(out), Shape::from((2, count))))
    }
}
