//! A token's product with an unquantized weight on the CPU (F32, F16 or
//! BF16 in the file; candle keeps it as f32), on candle's threads. candle
//! 0.11 sends it to its matmul, which on every call counts the cores by
//! reading `/proc/cpuinfo` (`candle_core::utils::get_num_threads`): on
//! stories260K, whose weights are all F32, that was more than half of a
//! token's time on 2 cores, and the file grows with the cores. A prompt's
//! products stay candle's: one count per product of many rows.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Storage, Tensor};

use super::cpu_threads::fill_in_parallel;

/// An unquantized weight matrix on the CPU, `rows × columns`.
#[derive(Debug, Clone)]
pub(super) struct DenseMatrix {
    /// candle's `QMatMul::Tensor`: a contiguous f32 tensor.
    matmul: QMatMul,
    rows: usize,
    columns: usize,
}

impl DenseMatrix {
    /// `matmul`'s matrix when candle holds it unquantized on the CPU;
    /// `None` leaves it to candle.
    pub(super) fn from_qmatmul(matmul: &QMatMul) -> Option<Self> {
        let QMatMul::Tensor(weight) = matmul else {
            return None;
        };
        let (rows, columns) = weight.dims2().ok()?;
        let usable = matches!(weight.device(), Device::Cpu)
            && weight.dtype() == DType::F32
            && weight.is_contiguous();
        usable.then(|| DenseMatrix {
            matmul: matmul.clone(),
            rows,
            columns,
        })
    }

    /// `x · selfᵀ`: here for one f32 input row, candle's for any other.
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let one_row = x.dims().last() == Some(&self.columns)
            && x.elem_count() == self.columns
            && x.dtype() == DType::F32;
        let QMatMul::Tensor(weight) = &self.matmul else {
            return self.matmul.forward(x);
        };
        if !one_row {
            return self.matmul.forward(x);
        }
        let input = x.flatten_all()?.to_vec1::<f32>()?;
        let (storage, layout) = weight.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            return self.matmul.forward(x);
        };
        let start = layout.start_offset();
        let Some(weights) = cpu
            .as_slice::<f32>()?
            .get(start..start + self.rows * self.columns)
        else {
            candle_core::bail!("a {}×{} weight's storage is short", self.rows, self.columns);
        };
        let mut output = vec![0f32; self.rows];
        fill_in_parallel(&mut output, self.rows, 1, 1, |range, part| {
            let rows = weights[range.start * self.columns..range.end * self.columns]
                .chunks_exact(self.columns);
            for (product, row) in part.iter_mut().zip(rows) {
                *product = dot(row, &input);
            }
        });
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.rows;
        }
        Tensor::from_vec(output, dims, x.device())
    }
}

/// `a · b`, summed in sixteen lanes so that the compiler vectorizes it (a
/// single running sum must add in order).
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [0f32; LANES];
    let (a_blocks, b_blocks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_blocks
        .remainder()
        .iter()
        .zip(b_blocks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_blocks.zip(b_blocks) {
        for ((lane, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QTensor};

    use super::*;

    /// A token's products equal candle's matmul up to the order of the sums,
    /// for each unquantized format; a prompt's are candle's own.
    #[test]
    fn products_are_candles() {
        let device = Device::Cpu;
        // 37 rows: ranges of rows end unevenly on every thread count; 83
        // columns: the dot product's lanes leave a remainder.
        let weight = Tensor::randn(0f32, 1.0, (37, 83), &device).unwrap();
        for dtype in [GgmlDType::F32, GgmlDType::F16, GgmlDType::BF16] {
            let stored = QTensor::quantize(&weight, dtype).unwrap();
            let matmul = QMatMul::from_qtensor(stored).unwrap();
            let dense = DenseMatrix::from_qmatmul(&matmul).expect("an unquantized weight");
            for shape in [vec![1, 83], vec![1, 1, 83], vec![1, 3, 83]] {
                let x = Tensor::randn(0f32, 1.0, shape.clone(), &device).unwrap();
                let expected = matmul.forward(&x).unwrap();
                let got = dense.forward(&x).unwrap();
                assert_eq!(got.dims(), expected.dims(), "{dtype:?} {shape:?}");
                let expected = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for (index, (got, expected)) in got.iter().zip(&expected).enumerate() {
                    assert!(
                        (got - expected).abs() <= 1e-4 * expected.abs().max(1.0),
                        "{dtype:?} {shape:?} product {index}: {got} against {expected}"
                    );
                }
            }
        }
    }

    #[test]
    fn quantized_weights_are_left_to_candle() {
        let weight = Tensor::randn(0f32, 1.0, (4, 64), &Device::Cpu).unwrap();
        let stored = QTensor::quantize(&weight, GgmlDType::Q8_0).unwrap();
        let matmul = QMatMul::from_qtensor(stored).unwrap();
        assert!(DenseMatrix::from_qmatmul(&matmul).is_none());
    }
}
