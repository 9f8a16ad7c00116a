//! A weight matrix and who computes its products: candle's `QMatMul`, or
//! this crate's kernels where candle's are slow
//! ([`quantized_cpu`](super::quantized_cpu)).

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Module, Tensor};

use super::quantized_cpu::CpuMatrix;

#[derive(Debug, Clone)]
pub(super) enum Weight {
    Candle(QMatMul),
    Cpu(CpuMatrix),
}

impl Weight {
    pub(super) fn new(tensor: QTensor) -> candle_core::Result<Self> {
        Self::shared(Arc::new(tensor))
    }

    /// A weight that shares its tensor (tied embeddings: the output layer
    /// is the embedding table).
    pub(super) fn shared(tensor: Arc<QTensor>) -> candle_core::Result<Self> {
        match CpuMatrix::from_qtensor(&tensor)? {
            Some(matrix) => Ok(Weight::Cpu(matrix)),
            None => QMatMul::from_arc(tensor).map(Weight::Candle),
        }
    }
}

impl Module for Weight {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Weight::Candle(weight) => weight.forward(x),
            Weight::Cpu(matrix) => matrix.forward(x),
        }
    }
}
