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

/// Every accelerator the probes find, one entry per physical device: NVML
/// and sysfs first (they see GPUs this build cannot use), then llama.cpp's own
/// list (Vulkan, Metal, and what the others missed).
pub(super) fn accelerators() -> Vec<Accelerator> {
    let mut found = nvidia::devices();
    found.extend(sysfs::amd_devices());
    merge_listed(
        found,
        llama_cpp_devices::devices(),
        AcceleratorKind::compiled_in,
    )
}

/// Adds llama.cpp's devices to those found. A device already found by
/// another probe (one name contains the other — sysfs's "Radeon RX 7800 XT"
/// is Vulkan's "AMD Radeon RX 7800 XT (RADV NAVI32)" — or the same CUDA
/// index) stays once: as found, unless this build cannot drive its kind but
/// drives llama.cpp's (an NVIDIA card seen by NVML as CUDA in a Vulkan build
/// is the Vulkan device, so the pool plans for it). Each found device is
/// matched once, so two cards of one model stay two.
fn merge_listed(
    mut found: Vec<Accelerator>,
    listed: Vec<Accelerator>,
    usable: impl Fn(AcceleratorKind) -> bool,
) -> Vec<Accelerator> {
    let mut matched = vec![false; found.len()];
    for device in listed {
        let same = found.iter().zip(&matched).position(|(known, &taken)| {
            !taken
                && (same_name(&known.name, &device.name)
                    || (device.kind == AcceleratorKind::Cuda
                        && known.kind == AcceleratorKind::Cuda
                        && known.index == device.index))
        });
        match same {
            None => found.push(device),
            Some(at) => {
                matched[at] = true;
                if !usable(found[at].kind) && usable(device.kind) {
                    found[at] = device;
                }
            }
        }
    }
    found
}

fn same_name(a: &str, b: &str) -> bool {
    !a.is_empty() && !b.is_empty() && (a.contains(b) || b.contains(a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::DeviceMemory;

    fn gpu(kind: AcceleratorKind, name: &str, source: &'static str) -> Accelerator {
        Accelerator {
            kind,
            index: 0,
            name: name.into(),
            memory: DeviceMemory::Discrete {
                total: 141 << 30,
                free: 140 << 30,
            },
            source,
        }
    }

    #[test]
    fn a_card_seen_by_nvml_and_by_vulkan_is_one_device_of_the_kind_the_build_drives() {
        let nvml = || vec![gpu(AcceleratorKind::Cuda, "NVIDIA H200", "nvml")];
        let vulkan = || vec![gpu(AcceleratorKind::Vulkan, "NVIDIA H200", "llama.cpp")];
        // A Vulkan build: the card is Vulkan0.
        let merged = merge_listed(nvml(), vulkan(), |k| k != AcceleratorKind::Cuda);
        assert_eq!(merged.len(), 1);
        assert_eq!(
            (merged[0].kind, merged[0].source),
            (AcceleratorKind::Vulkan, "llama.cpp")
        );
        // A build with CUDA (and Vulkan): NVML's CUDA0 stays.
        let merged = merge_listed(nvml(), vulkan(), |_| true);
        assert_eq!(merged.len(), 1);
        assert_eq!(
            (merged[0].kind, merged[0].source),
            (AcceleratorKind::Cuda, "nvml")
        );
        // An AMD card: sysfs's product name inside Vulkan's description.
        let merged = merge_listed(
            vec![gpu(AcceleratorKind::Rocm, "Radeon RX 7800 XT", "sysfs")],
            vec![gpu(
                AcceleratorKind::Vulkan,
                "AMD Radeon RX 7800 XT (RADV NAVI32)",
                "llama.cpp",
            )],
            |k| k == AcceleratorKind::Vulkan,
        );
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].kind, AcceleratorKind::Vulkan);
        // Two cards of one model stay two, each the Vulkan device.
        let two = |kind, source| {
            let mut second = gpu(kind, "NVIDIA H200", source);
            second.index = 1;
            vec![gpu(kind, "NVIDIA H200", source), second]
        };
        let merged = merge_listed(
            two(AcceleratorKind::Cuda, "nvml"),
            two(AcceleratorKind::Vulkan, "llama.cpp"),
            |k| k == AcceleratorKind::Vulkan,
        );
        let ids: Vec<String> = merged.iter().map(|a| a.id().to_string()).collect();
        assert_eq!(ids, ["Vulkan0", "Vulkan1"]);
        // A device only llama.cpp lists is added.
        let merged = merge_listed(
            nvml(),
            vec![gpu(
                AcceleratorKind::Vulkan,
                "AMD Radeon RX 7900 XTX",
                "llama.cpp",
            )],
            |_| true,
        );
        assert_eq!(merged.len(), 2);
    }
}
