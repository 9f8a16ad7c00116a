//! Products with Q4_1, Q5_0, Q5_1 and Q8_0 weights on the CPU, where candle
//! 0.11's are slow: it has no SIMD code for Q4_1, Q5_0 and Q5_1 (their
//! `vec_dot` is the generic one; Q5_0 is what llama.cpp's Q4_K_M files hold
//! where rows are not a multiple of 256, as in Gemma 3 270M), and for Q8_0
//! one dot product per row, or, on AVX-512 VNNI CPUs for shapes in 16 rows
//! × 256 columns, a repacked copy of the weights that it keeps beside the
//! file's (+110 MB on the bench model). These kernels are ggml's AVX2 block
//! arithmetic (`ggml_vec_dot_q4_1_q8_1`, `_q5_0_q8_0`, `_q5_1_q8_1`,
//! `_q8_0_q8_0`) one row at a time on candle's CPU thread pool, with a
//! scalar path for CPUs without AVX2, reading the weights in place.
//! Measured on a 2-core EPYC (best of five/seven, one input row): candle
//! took 1.8–2.5× their time on Q8_0 (896×896: 36 vs 20 µs; the bench
//! model's 151936×896 output layer: 6.2 vs 3.4 ms), 2.5× on Q4_1 (1536×576:
//! 64 vs 26 µs) and 9× on Q5_0 (4864×896: 1469 vs 155 µs); against its
//! repacked Q8_0 path, the bench model generated 6 % faster and read a
//! 373-token prompt 7 % slower (its tiles compute several rows per
//! instruction; generation reads each weight once per token, from memory).
//! Q4_0 stays candle's: its repacked path was faster here (4864×896: 102
//! vs 141 µs). One row at a time reads the weights as one stream: four rows
//! per pass over the activations was faster on a matrix in cache but 2.5×
//! slower on one read from memory, as a model's are each token.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;

use super::cpu_threads::fill_in_parallel;

/// Values per block, weights and activations alike.
const BLOCK: usize = 32;
/// Rows computed for every input row before the next rows (a pass over
/// several input rows, as a prompt's, reads them from cache).
const ROWS_PER_GROUP: usize = 16;

/// How the weights' blocks are laid out, as the file stores them: a scale
/// (f16), for the formats with a minimum that minimum (f16), for the 5-bit
/// ones the 32 fifth bits (value `i`'s in bit `i`), then the values: 16
/// bytes of nibbles (value `j` in the low nibble of byte `j`, value
/// `j + 16` in its high one) or 32 signed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `nibble · scale + minimum`.
    Q4_1,
    /// `(nibble + 16 · bit − 16) · scale`.
    Q5_0,
    /// `(nibble + 16 · bit) · scale + minimum`.
    Q5_1,
    /// `byte · scale`.
    Q8_0,
}

impl Format {
    fn block_bytes(self) -> usize {
        match self {
            Format::Q4_1 => 20,
            Format::Q5_0 => 22,
            Format::Q5_1 => 24,
            Format::Q8_0 => 34,
        }
    }

    /// Where the minimum is, for the formats that have one.
    fn minimum_at(self) -> Option<usize> {
        matches!(self, Format::Q4_1 | Format::Q5_1).then_some(2)
    }

    /// Where the fifth bits are, for the 5-bit formats.
    fn high_bits_at(self) -> Option<usize> {
        match self {
            Format::Q5_0 => Some(2),
            Format::Q5_1 => Some(4),
            _ => None,
        }
    }

    /// What is subtracted from each stored value (Q5_0 centers its values;
    /// the formats with a minimum do not).
    fn offset(self) -> i32 {
        match self {
            Format::Q5_0 => 16,
            _ => 0,
        }
    }
}

/// A weight matrix `(rows, columns)`: candle's tensor, whose blocks are
/// read in place.
#[derive(Debug, Clone)]
pub(super) struct CpuMatrix {
    tensor: Arc<QTensor>,
    format: Format,
    rows: usize,
    columns: usize,
}

/// One block of an activation row quantized to 8 bits.
#[derive(Debug, Clone, Copy)]
struct ActivationBlock {
    scale: f32,
    /// `scale × Σ values`, which a Q4_1 block's minimum multiplies.
    scaled_sum: f32,
    values: [i8; BLOCK],
}

/// One weight row's dot product with a quantized activation row.
type Kernel = fn(Format, &[u8], &[ActivationBlock]) -> f32;

impl CpuMatrix {
    /// The matrix of `tensor` when these kernels are the faster way to
    /// multiply it on this machine; `None` leaves it to candle.
    pub(super) fn from_qtensor(tensor: &Arc<QTensor>) -> candle_core::Result<Option<Self>> {
        let Ok((rows, columns)) = tensor.shape().dims2() else {
            return Ok(None);
        };
        if !matches!(tensor.device(), Device::Cpu)
            || rows == 0
            || columns == 0
            || !columns.is_multiple_of(BLOCK)
        {
            return Ok(None);
        }
        let format = match tensor.dtype() {
            GgmlDType::Q4_1 => Format::Q4_1,
            GgmlDType::Q5_0 => Format::Q5_0,
            GgmlDType::Q5_1 => Format::Q5_1,
            GgmlDType::Q8_0 => Format::Q8_0,
            _ => return Ok(None),
        };
        let bytes = tensor.data()?.len();
        let expected = (columns / BLOCK)
            .checked_mul(format.block_bytes())
            .and_then(|row| row.checked_mul(rows));
        if expected != Some(bytes) {
            candle_core::bail!(
                "a {:?} tensor of {rows}×{columns} holds {bytes} bytes",
                tensor.dtype()
            );
        }
        Ok(Some(CpuMatrix {
            tensor: Arc::clone(tensor),
            format,
            rows,
            columns,
        }))
    }

    /// `x · selfᵀ` for `x` of shape `(…, columns)`: `(…, rows)`.
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut dims = x.dims().to_vec();
        if dims.last() != Some(&self.columns) {
            candle_core::bail!(
                "a product with a {}×{} matrix got {:?}",
                self.rows,
                self.columns,
                x.dims()
            );
        }
        let input = x.flatten_all()?.to_vec1::<f32>()?;
        let count = input.len() / self.columns;
        let activations: Vec<Vec<ActivationBlock>> =
            input.chunks_exact(self.columns).map(quantize_row).collect();
        // On the CPU this borrows candle's storage.
        let blocks = self.tensor.data()?;
        let row_bytes = self.columns / BLOCK * self.format.block_bytes();
        let row = |index: usize| &blocks[index * row_bytes..(index + 1) * row_bytes];
        let kernel = kernel();
        let mut output = vec![0f32; count * self.rows];
        // A thread takes a range of rows and computes it a group at a time,
        // each group for every input row while the group is in cache.
        fill_in_parallel(&mut output, self.rows, 1, |range, results| {
            let (first, width) = (range.start, range.len());
            for group in range.clone().step_by(ROWS_PER_GROUP) {
                let group_end = (group + ROWS_PER_GROUP).min(range.end);
                for (input, activations) in activations.iter().enumerate() {
                    for index in group..group_end {
                        results[input * width + index - first] =
                            kernel(self.format, row(index), activations);
                    }
                }
            }
        });
        if let Some(last) = dims.last_mut() {
            *last = self.rows;
        }
        Tensor::from_vec(output, dims, x.device())
    }
}

/// Quantizes one activation row (a whole number of blocks) to 8 bits per
/// value as ggml's `quantize_row_q8_1` (and `_q8_0`) do on x86: the scale's
/// inverse as `127 / largest`, ties rounded to even, the sum's product
/// rounded once. llama.cpp then computes the same products from the same
/// file (candle's own rounding differs: ties away from zero, the sum
/// rounded to f16 before its product).
fn quantize_row(row: &[f32]) -> Vec<ActivationBlock> {
    row.chunks_exact(BLOCK)
        .map(|values| {
            let largest = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let exact_scale = largest / 127.0;
            let inverse = if largest != 0.0 { 127.0 / largest } else { 0.0 };
            let mut block = ActivationBlock {
                scale: f16::from_f32(exact_scale).to_f32(),
                scaled_sum: 0.0,
                values: [0; BLOCK],
            };
            let mut sum = 0i32;
            for (q, v) in block.values.iter_mut().zip(values) {
                *q = (v * inverse).round_ties_even() as i8;
                sum += i32::from(*q);
            }
            block.scaled_sum = f16::from_f32(exact_scale * sum as f32).to_f32();
            block
        })
        .collect()
}

/// The fastest kernel this CPU runs.
fn kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        // SAFETY: the CPU has AVX2, FMA and F16C, checked just above.
        return |format, row, activations| unsafe { avx2::dot(format, row, activations) };
    }
    dot_scalar
}

fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// One row's dot product, value by value.
fn dot_scalar(format: Format, weights: &[u8], activations: &[ActivationBlock]) -> f32 {
    weights
        .chunks_exact(format.block_bytes())
        .zip(activations)
        .map(|(block, y)| {
            let sum: i32 = stored_values(format, block)
                .iter()
                .zip(y.values)
                .map(|(&w, v)| (w - format.offset()) * i32::from(v))
                .sum();
            let minimum = format
                .minimum_at()
                .map_or(0.0, |at| half_at(block, at) * y.scaled_sum);
            sum as f32 * half_at(block, 0) * y.scale + minimum
        })
        .sum()
}

/// A block's 32 values as stored, before the offset, scale and minimum.
fn stored_values(format: Format, block: &[u8]) -> [i32; BLOCK] {
    let mut values = [0i32; BLOCK];
    if format == Format::Q8_0 {
        for (value, &byte) in values.iter_mut().zip(&block[2..]) {
            *value = i32::from(byte as i8);
        }
        return values;
    }
    let nibbles = &block[format.block_bytes() - BLOCK / 2..];
    for (j, &byte) in nibbles.iter().enumerate() {
        values[j] = i32::from(byte & 0x0F);
        values[j + BLOCK / 2] = i32::from(byte >> 4);
    }
    if let Some(at) = format.high_bits_at() {
        let bits = u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
        for (i, value) in values.iter_mut().enumerate() {
            *value |= (((bits >> i) & 1) as i32) << 4;
        }
    }
    values
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{ActivationBlock, Format};

    /// One row's dot product: per block, the row's 32 values times the
    /// block's 32 activations in one `maddubs` (unsigned × signed: values
    /// with a minimum as they are, the signed ones made absolute with their
    /// signs moved onto the activations, as ggml does), summed to eight i32
    /// lanes and accumulated in f32 with the two scales; the minimum's term
    /// apart.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot(format: Format, row: &[u8], activations: &[ActivationBlock]) -> f32 {
        match format {
            Format::Q4_1 => dot_nibbles::<false, true>(format, row, activations),
            Format::Q5_0 => dot_nibbles::<true, false>(format, row, activations),
            Format::Q5_1 => dot_nibbles::<true, true>(format, row, activations),
            Format::Q8_0 => dot_q8_0(row, activations),
        }
    }

    /// Q4_1, Q5_0 and Q5_1 (`ggml_vec_dot_q4_1_q8_1`, `_q5_0_q8_0`,
    /// `_q5_1_q8_1`).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_nibbles<const FIFTH_BIT: bool, const MINIMUM: bool>(
        format: Format,
        row: &[u8],
        activations: &[ActivationBlock],
    ) -> f32 {
        let block_bytes = format.block_bytes();
        let nibbles_at = block_bytes - 16;
        let high_bits_at = format.high_bits_at().unwrap_or(0);
        let low_nibbles = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut accumulator = _mm256_setzero_ps();
        let mut minimums = _mm_setzero_ps();
        for (block, y) in row.chunks_exact(block_bytes).zip(activations) {
            // SAFETY: every block is at least 20 bytes; the loads read bytes
            // 0..4 (the scale, and the minimum where there is one),
            // `high_bits_at..+4` (a 5-bit format's bits, before the
            // nibbles), the last 16 and the 32 bytes of `y.values`.
            let (scales, packed, values, bits) = unsafe {
                let at = block.as_ptr();
                (
                    _mm_cvtph_ps(_mm_cvtsi32_si128(at.cast::<i32>().read_unaligned())),
                    _mm_loadu_si128(at.add(nibbles_at).cast()),
                    _mm256_loadu_si256(y.values.as_ptr().cast()),
                    at.add(high_bits_at).cast::<i32>().read_unaligned(),
                )
            };
            // Values 0..16 from the low nibbles, 16..32 from the high ones.
            let mut weights = _mm256_and_si256(
                _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed),
                low_nibbles,
            );
            if FIFTH_BIT {
                let set = bytes_from_bits(bits);
                weights = if MINIMUM {
                    _mm256_or_si256(weights, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
                } else {
                    // `nibble − 16` where the bit is clear, as a signed byte.
                    _mm256_or_si256(
                        weights,
                        _mm256_andnot_si256(set, _mm256_set1_epi8(0xF0_u8 as i8)),
                    )
                };
            }
            let pairs = if MINIMUM {
                _mm256_maddubs_epi16(weights, values)
            } else {
                _mm256_maddubs_epi16(
                    _mm256_sign_epi8(weights, weights),
                    _mm256_sign_epi8(values, weights),
                )
            };
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
            // Lane 0 of `scales` is the block's scale, lane 1 its minimum
            // (Q5_0's fifth bits there are not used).
            let factors = _mm_mul_ps(scales, _mm_setr_ps(y.scale, y.scaled_sum, 0.0, 0.0));
            accumulator = _mm256_fmadd_ps(_mm256_broadcastss_ps(factors), sums, accumulator);
            if MINIMUM {
                minimums = _mm_add_ps(minimums, factors);
            }
        }
        horizontal_sum(accumulator) + _mm_cvtss_f32(_mm_movehdup_ps(minimums))
    }

    /// Byte `i` all ones where bit `i` of `bits` is set (ggml's
    /// `bytes_from_bits_32`).
    #[target_feature(enable = "avx2")]
    fn bytes_from_bits(bits: i32) -> __m256i {
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits),
            _mm256_set_epi64x(
                0x0303_0303_0303_0303,
                0x0202_0202_0202_0202,
                0x0101_0101_0101_0101,
                0,
            ),
        );
        let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
        _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi64x(-1))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q8_0(row: &[u8], activations: &[ActivationBlock]) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut accumulator = _mm256_setzero_ps();
        for (block, y) in row.chunks_exact(34).zip(activations) {
            // SAFETY: the loads read bytes 0..2 and 2..34 of the 34-byte
            // block and the 32 bytes of `y.values`.
            let (scale, weights, values) = unsafe {
                (
                    _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                        block.as_ptr().cast::<u16>().read_unaligned(),
                    ))),
                    _mm256_loadu_si256(block.as_ptr().add(2).cast()),
                    _mm256_loadu_si256(y.values.as_ptr().cast()),
                )
            };
            let absolute = _mm256_sign_epi8(weights, weights);
            let signed = _mm256_sign_epi8(values, weights);
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(
                _mm256_maddubs_epi16(absolute, signed),
                ones,
            ));
            let factor = _mm_mul_ss(scale, _mm_set_ss(y.scale));
            accumulator = _mm256_fmadd_ps(_mm256_broadcastss_ps(factor), sums, accumulator);
        }
        horizontal_sum(accumulator)
    }

    #[target_feature(enable = "avx2")]
    fn horizontal_sum(x: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
        let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(quarter, _mm_movehdup_ps(quarter)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Module;
    use candle_core::quantized::QMatMul;

    use super::*;

    /// Random weights quantized by candle, inputs of one and several rows,
    /// a row count that leaves a short last work item: the product is
    /// candle's own but for the activations' rounding (ggml's here), on the
    /// fastest path; the scalar path gives the fastest path's numbers.
    #[test]
    fn products_are_candles_up_to_the_activations_rounding() {
        let device = Device::Cpu;
        let (rows, columns) = (37, 128);
        let weights = Tensor::randn(0f32, 1.0, (rows, columns), &device).unwrap();
        // A wrong block layout is off by about a dot product's size (√128).
        let tolerance = 0.02 * (columns as f32).sqrt();
        for dtype in [
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
        ] {
            let quantized = Arc::new(QTensor::quantize(&weights, dtype).unwrap());
            let ours = CpuMatrix::from_qtensor(&quantized).unwrap().unwrap();
            let theirs = QMatMul::from_arc(Arc::clone(&quantized)).unwrap();
            for input_rows in [1, 3] {
                let x = Tensor::randn(0f32, 1.0, (1, input_rows, columns), &device).unwrap();
                let expected = theirs.forward(&x).unwrap();
                let got = ours.forward(&x).unwrap();
                assert_eq!(got.dims(), expected.dims());
                let expected = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for (a, b) in got.iter().zip(&expected) {
                    assert!((a - b).abs() <= tolerance, "{dtype:?}: {a} vs {b}");
                }
            }
            // Varied activations: equal ones would hide values out of order.
            let x = Tensor::randn(0f32, 1.0, columns, &device).unwrap();
            let activations = quantize_row(&x.to_vec1::<f32>().unwrap());
            let blocks = quantized.data().unwrap();
            let row_bytes = columns / BLOCK * ours.format.block_bytes();
            for row in blocks.chunks_exact(row_bytes) {
                let scalar = dot_scalar(ours.format, row, &activations);
                let fastest = kernel()(ours.format, row, &activations);
                assert!((scalar - fastest).abs() <= 1e-4 * scalar.abs().max(1.0));
            }
        }
    }

    /// As ggml rounds on x86: `127 / largest` as the inverse, ties to
    /// even, the sum scaled before its one rounding to f16. The expected
    /// numbers are numpy's emulation of ggml's `quantize_row_q8_1`; candle's
    /// rounding gives 103.1875 for the second block's sum.
    #[test]
    fn activations_round_as_ggml_does() {
        let mut ties = vec![0f32; BLOCK];
        ties[..4].copy_from_slice(&[127.0, 2.5, -2.5, 3.5]);
        let block = quantize_row(&ties)[0];
        assert_eq!(block.values[..4], [127, 2, -2, 4]);
        assert_eq!((block.scale, block.scaled_sum), (1.0, 131.0));
        let mut scaled = vec![0f32; BLOCK];
        scaled[..2].copy_from_slice(&[100.0, 3.0]);
        let block = quantize_row(&scaled)[0];
        assert_eq!(block.values[..2], [127, 4]);
        assert_eq!(block.scale, 0.787_597_66);
        assert_eq!(block.scaled_sum, 103.125);
        let zeros = quantize_row(&[0.0; BLOCK])[0];
        assert_eq!((zeros.scale, zeros.scaled_sum), (0.0, 0.0));
    }

    #[test]
    fn other_tensors_are_left_to_candle() {
        let device = Device::Cpu;
        let weights = Tensor::randn(0f32, 1.0, (4, 64), &device).unwrap();
        let q4k = Tensor::randn(0f32, 1.0, (4, 256), &device).unwrap();
        let q4k = Arc::new(QTensor::quantize(&q4k, GgmlDType::Q4K).unwrap());
        assert!(CpuMatrix::from_qtensor(&q4k).unwrap().is_none());
        let q4_0 = Arc::new(QTensor::quantize(&weights, GgmlDType::Q4_0).unwrap());
        assert!(CpuMatrix::from_qtensor(&q4_0).unwrap().is_none());
        let f32_weights = Arc::new(QTensor::quantize(&weights, GgmlDType::F32).unwrap());
        assert!(CpuMatrix::from_qtensor(&f32_weights).unwrap().is_none());
    }
}
