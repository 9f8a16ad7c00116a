//! A weight matrix and who computes its products: candle's `QMatMul`, or
//! this crate's kernels where candle's are slow
//! ([`quantized_cpu`](super::quantized_cpu), [`dense_cpu`](super::dense_cpu)).

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Module, Tensor};

use super::dense_cpu::DenseMatrix;
use super::quantized_cpu::CpuMatrix;

#[derive(Debug, Clone)]
pub(super) enum Weight {
    Candle(QMatMul),
    Cpu(CpuMatrix),
    Dense(DenseMatrix),
}

impl Weight {
    pub(super) fn new(tensor: QTensor) -> candle_core::Result<Self> {
        Self::shared(Arc::new(tensor))
    }

    /// A weight that shares its tensor (tied embeddings: the output layer
    /// is the embedding table).
    pub(super) fn shared(tensor: Arc<QTensor>) -> candle_core::Result<Self> {
        if let Some(matrix) = CpuMatrix::from_qtensor(&tensor)? {
            return Ok(Weight::Cpu(matrix));
        }
        let matmul = QMatMul::from_arc(tensor)?;
        Ok(match DenseMatrix::from_qmatmul(&matmul) {
            Some(matrix) => Weight::Dense(matrix),
            None => Weight::Candle(matmul),
        })
    }
}

impl Module for Weight {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Weight::Candle(weight) => weight.forward(x),
            Weight::Cpu(matrix) => matrix.forward(x),
            Weight::Dense(matrix) => matrix.forward(x),
        }
    }
}
