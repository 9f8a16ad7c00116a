//! Products with Q4_1, Q5_0, Q5_1 and Q8_0 weights on the CPU, where candle
//! 0.11's are slow: it has no SIMD code for Q4_1, Q5_0 and Q5_1 (their
//! `vec_dot` is the generic one; Q5_0 is what llama.cpp's Q4_K_M files hold
//! where rows are not a multiple of 256, as in Gemma 3 270M), and for Q8_0
//! one dot product per row, or, on AVX-512 VNNI CPUs for shapes in 16 rows
//! × 256 columns, a repacked copy of the weights that it keeps beside the
//! file's (+110 MB on the bench model). These kernels are ggml's AVX2 block
//! arithmetic (`ggml_vec_dot_q4_1_q8_1`, `_q5_0_q8_0`, `_q5_1_q8_1`,
//! `_q8_0_q8_0`) on candle's CPU thread pool, with a scalar path for CPUs
//! without AVX2, reading the weights in place.
//!
//! - A token's product goes one weight row at a time: the weights are read
//!   as one stream, from memory (four rows per pass was faster on a matrix
//!   in cache but 2.5× slower on one read from memory).
//! - A prompt's goes in tiles: 4 weight rows × 2 input rows for Q8_0
//!   (llamafile's `tinyBLAS_Q0_AVX` shape), 2 × 4 for the nibble formats,
//!   whose blocks cost more to unpack: each weight block is unpacked once
//!   for the tile's inputs and each activation block loaded once for its
//!   rows. Per 128-token prompt on a 2-core EPYC, against row by row:
//!   bench model Q8_0 137 → 160–175 t/s, SmolLM2-135M Q4_1 310 → 460–500,
//!   Gemma 3 270M 320 → 400–500 (runs here move ±15 %).
//! - The loop reads blocks as fixed-size arrays of rows cut to one length,
//!   and vectors by transmute rather than by `_mm256_loadu_si256`: in the
//!   test profile (debug assertions on) a load's overlap check and the
//!   slices' bounds checks took 8 % of a bench-model token's time and 23 %
//!   of a prompt's.
//!
//! Measured on a 2-core EPYC (best of five/seven, one input row): candle
//! took 1.8–2.5× their time on Q8_0 (896×896: 36 vs 20 µs; the bench
//! model's 151936×896 output layer: 6.2 vs 3.4 ms), 2.5× on Q4_1 (1536×576:
//! 64 vs 26 µs) and 9× on Q5_0 (4864×896: 1469 vs 155 µs). Q4_0 stays
//! candle's: its repacked path was faster here (4864×896: 102 vs 141 µs).

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

/// The dot products of `RM` weight rows with `RN` activation rows,
/// `[input][row]` (a prompt's products).
type TileKernel<const RM: usize, const RN: usize> =
    fn(Format, [&[u8]; RM], [&[ActivationBlock]; RN]) -> [[f32; RM]; RN];

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
        let activations: Vec<Vec<ActivationBlock>> =
            input.chunks_exact(self.columns).map(quantize_row).collect();
        // Q8_0 values are loaded as they are, so tiles of more rows pay;
        // nibbles are unpacked first, so tiles of more inputs do (measured:
        // 4 × 2 was best for Q8_0, 2 × 4 for the nibble formats by 10 %).
        let output = match self.format {
            Format::Q8_0 => self.products::<4, 2>(&activations)?,
            _ => self.products::<2, 4>(&activations)?,
        };
        if let Some(last) = dims.last_mut() {
            *last = self.rows;
        }
        Tensor::from_vec(output, dims, x.device())
    }

    /// Every input row's products, input by input, in tiles of `RM` weight
    /// rows × `RN` input rows where the CPU has a tile kernel.
    fn products<const RM: usize, const RN: usize>(
        &self,
        activations: &[Vec<ActivationBlock>],
    ) -> candle_core::Result<Vec<f32>> {
        const { assert!(RM >= 1 && RN >= 1) };
        let count = activations.len();
        // On the CPU this borrows candle's storage.
        let blocks = self.tensor.data()?;
        let row_bytes = self.columns / BLOCK * self.format.block_bytes();
        let row = |index: usize| &blocks[index * row_bytes..(index + 1) * row_bytes];
        let (kernel, tile) = (kernel(), tile_kernel::<RM, RN>());
        let mut output = vec![0f32; count * self.rows];
        // A thread takes a range of rows and computes it a group at a time,
        // each group for every input row while the group is in cache: in
        // tiles where there are enough input rows, row by row for the rest.
        // Ranges of whole tiles for a prompt; a token's rows spread finely.
        let granule = if count >= RN { RM } else { 1 };
        fill_in_parallel(&mut output, self.rows, 1, granule, |range, results| {
            let (first, width) = (range.start, range.len());
            for group in range.clone().step_by(ROWS_PER_GROUP) {
                let group_end = (group + ROWS_PER_GROUP).min(range.end);
                let mut tiled = 0;
                if let Some(tile) = tile {
                    for inputs in activations.chunks_exact(RN) {
                        let inputs = std::array::from_fn(|j| inputs[j].as_slice());
                        let mut index = group;
                        while index + RM <= group_end {
                            let products =
                                tile(self.format, std::array::from_fn(|i| row(index + i)), inputs);
                            for (j, products) in products.iter().enumerate() {
                                let at = (tiled + j) * width + index - first;
                                results[at..at + RM].copy_from_slice(products);
                            }
                            index += RM;
                        }
                        for index in index..group_end {
                            for (j, input) in inputs.iter().enumerate() {
                                results[(tiled + j) * width + index - first] =
                                    kernel(self.format, row(index), input);
                            }
                        }
                        tiled += RN;
                    }
                }
                for (input, activations) in activations.iter().enumerate().skip(tiled) {
                    for index in group..group_end {
                        results[input * width + index - first] =
                            kernel(self.format, row(index), activations);
                    }
                }
            }
        });
        Ok(output)
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

/// The tile kernel this CPU runs, if any (none without AVX2: products then
/// go row by row).
fn tile_kernel<const RM: usize, const RN: usize>() -> Option<TileKernel<RM, RN>> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        // SAFETY: the CPU has AVX2, FMA and F16C, checked just above.
        return Some(|format, rows, inputs| unsafe { avx2::tile(format, rows, inputs) });
    }
    None
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

    use super::{ActivationBlock, BLOCK, Format};

    /// One row's dot product (a token's products).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot(format: Format, row: &[u8], activations: &[ActivationBlock]) -> f32 {
        tile::<1, 1>(format, [row], [activations])[0][0]
    }

    /// `RM` weight rows times `RN` activation rows, `[input][row]`: each
    /// weight block is unpacked once for all `RN` activation rows and each
    /// activation block loaded once for all `RM` weight rows (llamafile's
    /// `tinyBLAS_Q0_AVX` tiles, extended to the formats with nibbles). The
    /// arithmetic of each product is the same at every tile size.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn tile<const RM: usize, const RN: usize>(
        format: Format,
        rows: [&[u8]; RM],
        inputs: [&[ActivationBlock]; RN],
    ) -> [[f32; RM]; RN] {
        match format {
            Format::Q4_1 => blocks::<RM, RN, 20, true, false, true>(rows, inputs),
            Format::Q5_0 => blocks::<RM, RN, 22, true, true, false>(rows, inputs),
            Format::Q5_1 => blocks::<RM, RN, 24, true, true, true>(rows, inputs),
            Format::Q8_0 => blocks::<RM, RN, 34, false, false, false>(rows, inputs),
        }
    }

    /// ggml's block arithmetic (`ggml_vec_dot_q4_1_q8_1`, `_q5_0_q8_0`,
    /// `_q5_1_q8_1`, `_q8_0_q8_0`) over blocks of `BYTES` bytes: per block,
    /// a weight row's 32 values times the block's 32 activations in one
    /// `maddubs` (unsigned × signed: values with a minimum as they are, the
    /// signed ones made absolute with their signs moved onto the
    /// activations), summed to eight i32 lanes and accumulated in f32 with
    /// the two scales; the minimum's term apart. Every row and input is cut
    /// to the same number of blocks first, which lets the compiler drop the
    /// bounds checks from the loop.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn blocks<
        const RM: usize,
        const RN: usize,
        const BYTES: usize,
        const NIBBLES: bool,
        const FIFTH_BIT: bool,
        const MINIMUM: bool,
    >(
        rows: [&[u8]; RM],
        inputs: [&[ActivationBlock]; RN],
    ) -> [[f32; RM]; RN] {
        // Four weight rows' scales fill one f16 → f32 conversion.
        const { assert!(RM <= 4) };
        let rows = rows.map(|row| row.as_chunks::<BYTES>().0);
        let count = inputs
            .iter()
            .map(|input| input.len())
            .chain(rows.iter().map(|row| row.len()))
            .min()
            .unwrap_or(0);
        let rows = rows.map(|row| &row[..count]);
        let inputs = inputs.map(|input| &input[..count]);
        let ones = _mm256_set1_epi16(1);
        let mut sums = [[_mm256_setzero_ps(); RM]; RN];
        let mut minimums = [_mm_setzero_ps(); RN];
        for l in 0..count {
            let mut weights = [_mm256_setzero_si256(); RM];
            let mut absolute = [_mm256_setzero_si256(); RM];
            let (mut scale_bits, mut minimum_bits) = (0u64, 0u64);
            for i in 0..RM {
                let block = &rows[i][l];
                weights[i] = values::<BYTES, NIBBLES, FIFTH_BIT, MINIMUM>(block);
                absolute[i] = _mm256_sign_epi8(weights[i], weights[i]);
                // The scale is a block's first two bytes, the minimum the next two.
                scale_bits |= u64::from(u16::from_le_bytes([block[0], block[1]])) << (16 * i);
                if MINIMUM {
                    minimum_bits |= u64::from(u16::from_le_bytes([block[2], block[3]])) << (16 * i);
                }
            }
            // Lane `i`: weight row `i`'s scale (and minimum).
            let scales = _mm_cvtph_ps(_mm_set_epi64x(0, scale_bits as i64));
            let weight_minimums = _mm_cvtph_ps(_mm_set_epi64x(0, minimum_bits as i64));
            for j in 0..RN {
                let y = &inputs[j][l];
                // SAFETY: 32 bytes as 32 bytes; every pattern is a vector.
                let activations = unsafe { std::mem::transmute::<[i8; 32], __m256i>(y.values) };
                let factors = _mm256_castps128_ps256(_mm_mul_ps(scales, _mm_set1_ps(y.scale)));
                for i in 0..RM {
                    let pairs = if MINIMUM {
                        _mm256_maddubs_epi16(weights[i], activations)
                    } else {
                        _mm256_maddubs_epi16(absolute[i], _mm256_sign_epi8(activations, weights[i]))
                    };
                    let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                    let factor = _mm256_permutevar8x32_ps(factors, _mm256_set1_epi32(i as i32));
                    sums[j][i] = _mm256_fmadd_ps(factor, products, sums[j][i]);
                }
                if MINIMUM {
                    minimums[j] = _mm_add_ps(
                        minimums[j],
                        _mm_mul_ps(weight_minimums, _mm_set1_ps(y.scaled_sum)),
                    );
                }
            }
        }
        let mut results = [[0f32; RM]; RN];
        for j in 0..RN {
            let mut minimum = [0f32; 4];
            // SAFETY: writes the four lanes into four floats.
            unsafe { _mm_storeu_ps(minimum.as_mut_ptr(), minimums[j]) };
            for i in 0..RM {
                results[j][i] = horizontal_sum(sums[j][i]) + minimum[i];
            }
        }
        results
    }

    /// A block's 32 values as `maddubs` takes them: bytes as stored (Q8_0),
    /// nibbles with their fifth bits, unsigned for the formats with a
    /// minimum and centred (`− 16`) for Q5_0.
    #[target_feature(enable = "avx2")]
    fn values<
        const BYTES: usize,
        const NIBBLES: bool,
        const FIFTH_BIT: bool,
        const MINIMUM: bool,
    >(
        block: &[u8; BYTES],
    ) -> __m256i {
        // A block holds its scale and its values (the arms below cannot
        // miss: the format's size is checked when the kernel is compiled).
        const { assert!(BYTES >= 2 + BLOCK / 2 && (NIBBLES || BYTES == 2 + BLOCK)) };
        if !NIBBLES {
            let Some(stored) = block[2..].first_chunk::<32>() else {
                return _mm256_setzero_si256();
            };
            // SAFETY: 32 bytes as 32 bytes (a transmute, not a load, has no
            // overlap check in debug builds).
            return unsafe { std::mem::transmute::<[u8; 32], __m256i>(*stored) };
        }
        let Some(nibbles) = block.last_chunk::<16>() else {
            return _mm256_setzero_si256();
        };
        // SAFETY: 16 bytes as 16 bytes.
        let packed = unsafe { std::mem::transmute::<[u8; 16], __m128i>(*nibbles) };
        // Values 0..16 from the low nibbles, 16..32 from the high ones.
        let weights = _mm256_and_si256(
            _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed),
            _mm256_set1_epi8(0x0F),
        );
        if !FIFTH_BIT {
            return weights;
        }
        // The four bytes of fifth bits precede the nibbles.
        let at = BYTES - BLOCK / 2 - 4;
        let bits = i32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
        let set = bytes_from_bits(bits);
        if MINIMUM {
            _mm256_or_si256(weights, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
        } else {
            // `nibble − 16` where the bit is clear, as a signed byte.
            _mm256_or_si256(
                weights,
                _mm256_andnot_si256(set, _mm256_set1_epi8(0xF0_u8 as i8)),
            )
        }
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

    /// Random weights quantized by candle to each format these kernels take.
    fn random_matrices(rows: usize, columns: usize) -> Vec<(GgmlDType, Arc<QTensor>, CpuMatrix)> {
        let weights = Tensor::randn(0f32, 1.0, (rows, columns), &Device::Cpu).unwrap();
        [
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
        ]
        .into_iter()
        .map(|dtype| {
            let quantized = Arc::new(QTensor::quantize(&weights, dtype).unwrap());
            let ours = CpuMatrix::from_qtensor(&quantized).unwrap().unwrap();
            (dtype, quantized, ours)
        })
        .collect()
    }

    /// Random weights quantized by candle, inputs of one row and of five
    /// (tiles of either shape, and one row over), a row count that leaves a
    /// short last work item: the product is candle's own but for the
    /// activations' rounding (ggml's here), on the fastest path; the scalar
    /// path gives the fastest path's numbers.
    #[test]
    fn products_are_candles_up_to_the_activations_rounding() {
        let device = Device::Cpu;
        let (rows, columns) = (37, 128);
        // A wrong block layout is off by about a dot product's size (√128).
        let tolerance = 0.02 * (columns as f32).sqrt();
        for (dtype, quantized, ours) in random_matrices(rows, columns) {
            let theirs = QMatMul::from_arc(Arc::clone(&quantized)).unwrap();
            for input_rows in [1, 5] {
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

    /// A prompt's rows go through tiles (and the rows and inputs left over
    /// row by row): every product equals the one the same input row gets
    /// alone, bit for bit, in its place. 37 weight rows and 5 input rows
    /// leave both kinds of remainder.
    #[test]
    fn tiles_give_each_row_its_own_product() {
        let device = Device::Cpu;
        let (rows, columns, inputs) = (37, 96, 5);
        for (dtype, _, ours) in random_matrices(rows, columns) {
            let x = Tensor::randn(0f32, 1.0, (inputs, columns), &device).unwrap();
            let together = ours.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            for (input, together) in together.iter().enumerate() {
                let alone = ours.forward(&x.narrow(0, input, 1).unwrap()).unwrap();
                assert_eq!(together, &alone.to_vec2::<f32>().unwrap()[0], "{dtype:?}");
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
