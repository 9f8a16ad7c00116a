//! Without CUDA no device needs binding to the computing thread.

use candle_core::Device;

/// Nothing to do on the CPU or Metal.
pub(super) fn bind_to_current_thread(_device: &Device) -> candle_core::Result<()> {
    Ok(())
}
