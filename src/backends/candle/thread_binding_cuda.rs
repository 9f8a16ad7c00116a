//! CUDA: the device's context must be current on the thread that computes.
//! cudarc binds it in some calls but not all (kernel launches through candle,
//! cuBLAS), and generations run on whichever blocking-pool thread is free:
//! without this, a thread that never touched the context fails with
//! `CUDA_ERROR_INVALID_CONTEXT` (seen on an H100), and one left with another
//! context current (llama.cpp's, in the same process) computes in the wrong one.
//! Loading and dropping a model bind it as well (cudarc's frees do not).

use candle_core::Device;

/// Makes `device`'s context current on the calling thread.
pub(super) fn bind_to_current_thread(device: &Device) -> candle_core::Result<()> {
    if let Device::Cuda(cuda) = device {
        cuda.cuda_stream()
            .context()
            .bind_to_thread()
            .map_err(|e| candle_core::Error::Msg(format!("binding the CUDA context: {e}")))?;
    }
    Ok(())
}
