//! The devices llama.cpp's compiled backends see (CUDA, Vulkan, Metal…).

use llama_cpp_2::{LlamaBackendDeviceType, list_llama_ggml_backend_devices};

use crate::hardware::{Accelerator, AcceleratorKind, DeviceMemory};

pub(super) fn devices() -> Vec<Accelerator> {
    let mut per_kind = std::collections::HashMap::<AcceleratorKind, u32>::new();
    list_llama_ggml_backend_devices()
        .into_iter()
        .filter_map(|device| {
            let kind = AcceleratorKind::from_ggml_backend(&device.backend)?;
            let index = per_kind.entry(kind).or_default();
            let this = *index;
            *index += 1;
            let memory = match device.device_type {
                LlamaBackendDeviceType::IntegratedGpu => DeviceMemory::Unified {
                    budget: device.memory_free as u64,
                },
                _ if kind == AcceleratorKind::Metal => DeviceMemory::Unified {
                    budget: device.memory_free as u64,
                },
                _ => DeviceMemory::Discrete {
                    total: device.memory_total as u64,
                    free: device.memory_free as u64,
                },
            };
            Some(Accelerator {
                kind,
                index: this,
                name: if device.description.is_empty() {
                    device.name
                } else {
                    device.description
                },
                memory,
                source: "llama.cpp",
            })
        })
        .collect()
}
