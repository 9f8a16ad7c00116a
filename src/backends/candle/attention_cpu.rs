//! Attention of one new position on the CPU, the step of every generated
//! token. candle's CPU matmul asks for the thread count on each call, and
//! where candle finds no preferred cores (as on the 2-core EPYC this was
//! measured on) that count is read from `/proc/cpuinfo` each time: ~30 µs,
//! twice per layer per token, 18 % of a SmolLM2-135M token. Here the cache
//! is read in place (each head's positions contiguous, the heads apart in
//! the cache's room), and the query heads are spread over candle's CPU
//! threads once the context is long enough to pay for waking them.

use candle_core::{Device, Storage, Tensor};

use super::cpu_threads::fill_in_parallel;
use super::dense_cpu::dot;

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

/// Multiply-adds below which one thread does all heads: waking candle's
/// threads costs a few microseconds, the work of ~37 positions of a
/// 14-head, 64-wide model.
const WORK_PER_THREAD_WAKE: usize = 1 << 15;

/// `softmax(q·kᵀ · scale [softcapped] + mask) · v` for `query`
/// `(1, kv_heads, groups, head_dim)` over `keys` and `values`
/// `(1, kv_heads, positions, head_dim)`, with an additive `mask`
/// `(1, positions)`: `(1, kv_heads, groups, head_dim)`. `None` when the
/// tensors are not f32 on the CPU with contiguous rows (candle's path then).
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
    if head_dim == 0 || positions == 0 {
        return Ok(None);
    }
    let output = {
        let (Some(q), Some(k), Some(v)) = (
            HeadRows::of(query, kv_heads, groups, head_dim),
            HeadRows::of(keys, kv_heads, positions, head_dim),
            HeadRows::of(values, kv_heads, positions, head_dim),
        ) else {
            return Ok(None);
        };
        // Read only once the tensors are known to be on the CPU (on a GPU
        // this would be a copy to the host).
        let mask = mask
            .map(|m| m.flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        if mask.as_ref().is_some_and(|m| m.len() != positions) {
            return Ok(None);
        }
        let (Some(q_values), Some(k_values), Some(v_values)) = (q.get(), k.get(), v.get()) else {
            return Ok(None);
        };
        let query_heads = kv_heads * groups;
        let mut output = vec![0f32; query_heads * head_dim];
        // One item per query head.
        let attend_heads = |range: std::ops::Range<usize>, out: &mut [f32]| {
            let mut weights = vec![0f32; positions];
            for (query_head, out) in range.zip(out.chunks_exact_mut(head_dim)) {
                let head = query_head / groups;
                let at = q.start(head) + query_head % groups * head_dim;
                let query = &q_values[at..at + head_dim];
                let keys = k.head(k_values, head);
                let values = v.head(v_values, head);
                for ((weight, key), position) in
                    weights.iter_mut().zip(keys.chunks_exact(head_dim)).zip(0..)
                {
                    let mut score = f64::from(dot(query, key)) * heads.scale;
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
                for (weight, value) in weights.iter().zip(values.chunks_exact(head_dim)) {
                    for (o, x) in out.iter_mut().zip(value) {
                        *o += weight * x;
                    }
                }
                out.iter_mut().for_each(|o| *o /= total);
            }
        };
        if query_heads * positions * head_dim < WORK_PER_THREAD_WAKE {
            attend_heads(0..query_heads, &mut output);
        } else {
            fill_in_parallel(&mut output, query_heads, head_dim, 1, attend_heads);
        }
        output
    };
    Tensor::from_vec(output, (1, kv_heads, groups, head_dim), &Device::Cpu).map(Some)
}

/// An f32 tensor `(1, heads, rows, width)` on the CPU whose rows are
/// contiguous within each head (the heads may lie apart, as in the KV
/// cache's room), read in place.
struct HeadRows<'a> {
    storage: candle_core::StorageRef<'a>,
    offset: usize,
    head_stride: usize,
    heads: usize,
    head_len: usize,
}

impl<'a> HeadRows<'a> {
    fn of(tensor: &'a Tensor, heads: usize, rows: usize, width: usize) -> Option<Self> {
        let (storage, layout) = tensor.storage_and_layout();
        let is_f32_on_cpu = match &*storage {
            Storage::Cpu(cpu) => cpu.as_slice::<f32>().is_ok(),
            _ => false,
        };
        let rows_contiguous = layout.dims() == [1, heads, rows, width]
            && layout.stride()[2..] == [width, 1]
            && (heads == 1 || layout.stride()[1] >= rows * width);
        (is_f32_on_cpu && rows_contiguous).then(|| HeadRows {
            offset: layout.start_offset(),
            head_stride: layout.stride()[1],
            heads,
            head_len: rows * width,
            storage,
        })
    }

    /// The storage, when it holds every head's rows.
    fn get(&self) -> Option<&[f32]> {
        let Storage::Cpu(cpu) = &*self.storage else {
            return None;
        };
        let values = cpu.as_slice::<f32>().ok()?;
        let end = self.start(self.heads.checked_sub(1)?) + self.head_len;
        (end <= values.len()).then_some(values)
    }

    /// Where `head`'s rows start in the storage.
    fn start(&self, head: usize) -> usize {
        self.offset + head * self.head_stride
    }

    /// `head`'s rows, from the storage [`get`](Self::get) returned.
    fn head<'v>(&self, values: &'v [f32], head: usize) -> &'v [f32] {
        &values[self.start(head)..self.start(head) + self.head_len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same numbers as candle's matmul, scale, soft cap, mask and
    /// softmax, which the layer computes otherwise: on one thread and
    /// spread over candle's, with a head width that is not a multiple of
    /// the dot product's lanes, over tensors and over the KV cache's room.
    #[test]
    fn attends_as_candles_ops_do() {
        let device = Device::Cpu;
        let (kv_heads, groups, head_dim) = (2, 3, 20);
        let query = Tensor::randn(0f32, 1.0, (1, kv_heads, groups, head_dim), &device).unwrap();
        // 9 positions stay on the calling thread; 700 are spread.
        for positions in [9, 700] {
            assert_eq!(
                kv_heads * groups * positions * head_dim < WORK_PER_THREAD_WAKE,
                positions == 9
            );
            let room = |positions| {
                Tensor::randn(0f32, 1.0, (1, kv_heads, positions, head_dim), &device).unwrap()
            };
            let (keys, values) = (room(positions + 5), room(positions + 5));
            let in_room = |t: &Tensor| t.narrow(2, 0, positions).unwrap();
            let alone = |t: &Tensor| in_room(t).contiguous().unwrap();
            let mask: Vec<f32> = (0..positions)
                .map(|p| if p < 2 { f32::NEG_INFINITY } else { 0.0 })
                .collect();
            let mask = Tensor::from_vec(mask, (1, positions), &device).unwrap();
            for (softcap, mask, read) in [
                (None, None, &alone as &dyn Fn(&Tensor) -> Tensor),
                (Some(5.0), Some(&mask), &alone),
                (Some(5.0), Some(&mask), &in_room),
            ] {
                let (keys, values) = (read(&keys), read(&values));
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
                assert!(difference < 1e-5, "{positions} positions: {difference}");
            }
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
