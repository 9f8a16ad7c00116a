//! NVIDIA GPUs through NVML (loaded at run time; absent driver = no GPUs).

use nvml_wrapper::Nvml;

use crate::hardware::{Accelerator, AcceleratorKind, DeviceMemory};

pub(super) fn devices() -> Vec<Accelerator> {
    let nvml = match Nvml::init() {
        Ok(nvml) => nvml,
        Err(e) => {
            tracing::debug!(error = %e, "NVML is not available: no NVIDIA GPU reported");
            return Vec::new();
        }
    };
    let count = nvml.device_count().unwrap_or(0);
    (0..count)
        .filter_map(|index| {
            let device = nvml
                .device_by_index(index)
                .map_err(|e| tracing::warn!(index, error = %e, "NVML could not open a device"))
                .ok()?;
            let memory = device
                .memory_info()
                .map_err(|e| tracing::warn!(index, error = %e, "NVML could not read device memory"))
                .ok()?;
            Some(Accelerator {
                kind: AcceleratorKind::Cuda,
                index,
                name: device.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
                memory: DeviceMemory::Discrete {
                    total: memory.total,
                    free: memory.free,
                },
                source: "nvml",
            })
        })
        .collect()
}
