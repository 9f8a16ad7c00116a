//! The probes behind `HardwareManager::detect`. Each one fails soft: a probe
//! that cannot run logs why and reports nothing.

#[cfg(feature = "llamacpp")]
#[path = "llama_cpp.rs"]
mod llama_cpp_devices;
#[cfg(not(feature = "llamacpp"))]
#[path = "no_llama_cpp.rs"]
mod llama_cpp_devices;
mod nvidia;
mod sysfs;

use super::{Accelerator, AcceleratorKind, CpuInfo, SystemMemory};

/// CPU and RAM, through `sysinfo`.
pub(super) fn system() -> (CpuInfo, SystemMemory) {
    use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
    let system = System::new_with_specifics(
        RefreshKind::nothing()
            .with_memory(MemoryRefreshKind::nothing().with_ram())
            .with_cpu(CpuRefreshKind::nothing()),
    )
    .map_err(
        |e| tracing::warn!(error = %e, "sysinfo could not read the system; CPU and RAM unknown"),
    )
    .ok();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let logical = system
        .as_ref()
        .map_or(threads, |s| s.cpus().len().max(threads));
    let physical = System::physical_core_count().unwrap_or(logical);
    let name = system
        .as_ref()
        .and_then(|s| s.cpus().first().map(|c| c.brand().trim().to_string()))
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let (total, available) = system
        .as_ref()
        .map_or((0, 0), |s| (s.total_memory(), s.available_memory()));
    (
        CpuInfo {
            name,
            physical_cores: physical,
            logical_cores: logical,
        },
        SystemMemory { total, available },
    )
}

/// Every accelerator the probes find, without duplicates: NVML and sysfs
/// first (they see GPUs this build cannot use), then llama.cpp's own list for
/// devices of the compiled backends that the others missed (Vulkan, Metal).
pub(super) fn accelerators() -> Vec<Accelerator> {
    let mut found = nvidia::devices();
    found.extend(sysfs::amd_devices());
    for device in llama_cpp_devices::devices() {
        let duplicate = found.iter().any(|known| {
            known.name == device.name
                || (device.kind == AcceleratorKind::Cuda
                    && known.kind == AcceleratorKind::Cuda
                    && known.index == device.index)
        });
        if !duplicate {
            found.push(device);
        }
    }
    found
}
