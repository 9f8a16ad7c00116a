//! Filling an output on candle's CPU threads, for the crate's own CPU
//! kernels (`quantized_cpu.rs`, `dense_cpu.rs`, `attention_cpu.rs`), on the
//! pool candle's own kernels use, whose threads are already awake. Not
//! `decode::parallel`'s helpers: those are the llama.cpp worker's own (a
//! build without candle has them too), sized and started for its steps.

use std::ops::Range;
use std::sync::Mutex;

/// Fills `output`, rows of `items × width` values, on candle's CPU thread
/// pool: `compute(range, part)` writes items `range` of every row into
/// `part` (rows of `range.len() × width` values), which is then copied into
/// place. A thread takes one range of items at a time; no two overlap. A
/// range starts at a multiple of `granule` and holds a multiple of it but at
/// the end (a kernel that computes several items at once gets whole sets:
/// the pool alone would cut 37 items into ranges of 3 on two threads).
pub(super) fn fill_in_parallel<F>(
    output: &mut [f32],
    items: usize,
    width: usize,
    granule: usize,
    compute: F,
) where
    F: Fn(Range<usize>, &mut [f32]) + Sync,
{
    let row_len = items * width;
    if row_len == 0 {
        return;
    }
    let granule = granule.max(1);
    let rows = output.len() / row_len;
    let shared = Mutex::new(output);
    candle_core::utils::barrier_pool().execute_chunked(items.div_ceil(granule), |granules| {
        let range = granules.start * granule..(granules.end * granule).min(items);
        let (first, end) = (range.start * width, range.end * width);
        let part_len = end - first;
        let mut part = vec![0f32; rows * part_len];
        compute(range, &mut part);
        let mut output = shared.lock().unwrap_or_else(|e| e.into_inner());
        for (row, part) in output
            .chunks_exact_mut(row_len)
            .zip(part.chunks_exact(part_len))
        {
            row[first..end].copy_from_slice(part);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item of every row is computed once, by whichever thread, and
    /// lands in its place; ranges hold whole granules.
    #[test]
    fn each_item_lands_in_its_place() {
        let (rows, items, width, granule) = (3, 50, 2, 4);
        let mut output = vec![f32::NAN; rows * items * width];
        fill_in_parallel(&mut output, items, width, granule, |range, part| {
            assert_eq!(range.start % granule, 0);
            assert!(range.len() % granule == 0 || range.end == items);
            let part_len = range.len() * width;
            for (row, values) in part.chunks_exact_mut(part_len).enumerate() {
                for (item, pair) in range.clone().zip(values.chunks_exact_mut(width)) {
                    pair.fill((row * 1000 + item) as f32);
                }
            }
        });
        for (row, values) in output.chunks_exact(items * width).enumerate() {
            for (item, pair) in values.chunks_exact(width).enumerate() {
                assert_eq!(pair, [(row * 1000 + item) as f32; 2]);
            }
        }
    }
}
