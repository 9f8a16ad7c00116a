//! Attention of one new position on the CPU, the step of every generated
//! token. candle's CPU matmul asks for the thread count on each call, and
//! where candle finds no preferred cores (as on the 2-core EPYC this was
//! measured on) that count is read from `/proc/cpuinfo` each time: ~30 µs,
//! twice per layer per token, 18 % of a SmolLM2-135M token. One query row per head is little work, so
//! it is done here on the calling thread, reading the cache in place.

use candle_core::{Device, Storage, Tensor};

/// The heads' layout and the scores' scaling: what [`attend`] needs
/// besides the tensors.
pub(super) struct Heads {
    pub(super) kv_heads: usize,
    /// Query heads per key/value head.
    pub(super) groups: usize,
    pub(super) head_dim: usize,
    pub(super) scale: f64,
    pub(super) softcap: Option<f64>,
}

/// `softmax(q·kᵀ · scale [softcapped] + mask) · v` for `query`
/// `(1, kv_heads, groups, head_dim)` over `keys` and `values`
/// `(1, kv_heads, positions, head_dim)`, with an additive `mask`
/// `(1, positions)`: `(1, kv_heads, groups, head_dim)`. `None` when the
/// tensors are not contiguous f32 on the CPU (candle's path then).
pub(super) fn attend(
    query: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    mask: Option<&Tensor>,
    heads: &Heads,
) -> candle_core::Result<Option<Tensor>> {
    let Heads {
        kv_heads,
        groups,
        head_dim,
        ..
    } = *heads;
    let positions = keys.dim(2)?;
    let output = {
        let (Some(q), Some(k), Some(v)) = (slice(query)?, slice(keys)?, slice(values)?) else {
            return Ok(None);
        };
        // Read only once the tensors are known to be on the CPU (on a GPU
        // this would be a copy to the host).
        let mask = mask
            .map(|m| m.flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        let (q, k, v) = (q.get(), k.get(), v.get());
        if q.len() != kv_heads * groups * head_dim
            || k.len() != kv_heads * positions * head_dim
            || v.len() != k.len()
            || mask.as_ref().is_some_and(|m| m.len() != positions)
        {
            return Ok(None);
        }
        let mut output = vec![0f32; q.len()];
        let mut weights = vec![0f32; positions];
        for head in 0..kv_heads {
            let k = &k[head * positions * head_dim..(head + 1) * positions * head_dim];
            let v = &v[head * positions * head_dim..(head + 1) * positions * head_dim];
            for group in 0..groups {
                let at = (head * groups + group) * head_dim;
                let q = &q[at..at + head_dim];
                for (position, weight) in weights.iter_mut().enumerate() {
                    let key = &k[position * head_dim..(position + 1) * head_dim];
                    let dot: f32 = q.iter().zip(key).map(|(a, b)| a * b).sum();
                    let mut score = f64::from(dot) * heads.scale;
                    if let Some(cap) = heads.softcap {
                        score = cap * (score / cap).tanh();
                    }
                    *weight = score as f32 + mask.as_ref().map_or(0.0, |m| m[position]);
                }
                let largest = weights.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut total = 0f32;
                for weight in &mut weights {
                    *weight = (*weight - largest).exp();
                    total += *weight;
                }
                let out = &mut output[at..at + head_dim];
                for (position, weight) in weights.iter().enumerate() {
                    let value = &v[position * head_dim..(position + 1) * head_dim];
                    for (o, x) in out.iter_mut().zip(value) {
                        *o += weight * x;
                    }
                }
                out.iter_mut().for_each(|o| *o /= total);
            }
        }
        output
    };
    Tensor::from_vec(output, (1, kv_heads, groups, head_dim), &Device::Cpu).map(Some)
}

/// A contiguous f32 tensor's values, read in place.
struct Values<'a> {
    storage: candle_core::StorageRef<'a>,
    start: usize,
    len: usize,
}

impl Values<'_> {
    fn get(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(cpu) => cpu
                .as_slice::<f32>()
                .ok()
                .and_then(|s| s.get(self.start..self.start + self.len))
                .unwrap_or_default(),
            _ => &[],
        }
    }
}

fn slice(tensor: &Tensor) -> candle_core::Result<Option<Values<'_>>> {
    let (storage, layout) = tensor.storage_and_layout();
    let is_f32_on_cpu = match &*storage {
        Storage::Cpu(cpu) => cpu.as_slice::<f32>().is_ok(),
        _ => false,
    };
    if !is_f32_on_cpu || !layout.is_contiguous() {
        return Ok(None);
    }
    Ok(Some(Values {
        start: layout.start_offset(),
        len: tensor.elem_count(),
        storage,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same numbers as candle's matmul, scale, soft cap, mask and
    /// softmax, which the layer computes otherwise.
    #[test]
    fn attends_as_candles_ops_do() {
        let device = Device::Cpu;
        let (kv_heads, groups, head_dim, positions) = (2, 3, 16, 9);
        let query = Tensor::randn(0f32, 1.0, (1, kv_heads, groups, head_dim), &device).unwrap();
        let keys = Tensor::randn(0f32, 1.0, (1, kv_heads, positions, head_dim), &device).unwrap();
        let values = Tensor::randn(0f32, 1.0, (1, kv_heads, positions, head_dim), &device).unwrap();
        let mask: Vec<f32> = (0..positions)
            .map(|p| if p < 2 { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, (1, positions), &device).unwrap();
        for (softcap, mask) in [(None, None), (Some(5.0), Some(&mask))] {
            let heads = Heads {
                kv_heads,
                groups,
                head_dim,
                scale: 0.25,
                softcap,
            };
            let got = attend(&query, &keys, &values, mask, &heads)
                .unwrap()
                .unwrap();
            let mut scores = (query.matmul(&keys.t().unwrap()).unwrap() * 0.25).unwrap();
            if let Some(cap) = softcap {
                scores = super::super::layers::soft_cap(&scores, cap).unwrap();
            }
            if let Some(mask) = mask {
                scores = scores.broadcast_add(mask).unwrap();
            }
            let expected = candle_nn::ops::softmax_last_dim(&scores)
                .unwrap()
                .matmul(&values)
                .unwrap();
            let difference = (got - expected)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(difference < 1e-5, "{difference}");
        }
    }

    #[test]
    fn other_devices_or_layouts_are_left_to_candle() {
        let device = Device::Cpu;
        let query = Tensor::zeros((1, 1, 1, 4), candle_core::DType::F32, &device).unwrap();
        let keys = Tensor::zeros((1, 1, 4, 3), candle_core::DType::F32, &device)
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        let heads = Heads {
            kv_heads: 1,
            groups: 1,
            head_dim: 4,
            scale: 1.0,
            softcap: None,
        };
        assert!(
            attend(&query, &keys, &keys, None, &heads)
                .unwrap()
                .is_none()
        );
    }
}
