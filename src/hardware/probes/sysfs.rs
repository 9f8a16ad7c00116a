//! AMD GPUs on Linux, from the amdgpu driver's files under `/sys/class/drm`.

use std::fs;
use std::path::Path;

use crate::hardware::{Accelerator, AcceleratorKind, DeviceMemory};

const AMD_VENDOR: &str = "0x1002";

pub(super) fn amd_devices() -> Vec<Accelerator> {
    amd_devices_in(Path::new("/sys/class/drm"))
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Reads every `card*` under `root` whose vendor is AMD and which reports VRAM.
pub(crate) fn amd_devices_in(root: &Path) -> Vec<Accelerator> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut cards: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("card") && n[4..].chars().all(|c| c.is_ascii_digit())
            })
        })
        .collect();
    cards.sort();
    let mut found = Vec::new();
    for card in cards {
        let device = card.join("device");
        let vendor = fs::read_to_string(device.join("vendor")).unwrap_or_default();
        if vendor.trim() != AMD_VENDOR {
            continue;
        }
        let (Some(total), Some(used)) = (
            read_u64(&device.join("mem_info_vram_total")),
            read_u64(&device.join("mem_info_vram_used")),
        ) else {
            continue;
        };
        let name = fs::read_to_string(device.join("product_name"))
            .map(|n| n.trim().to_string())
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "AMD GPU".into());
        found.push(Accelerator {
            kind: AcceleratorKind::Rocm,
            index: found.len() as u32,
            name,
            memory: DeviceMemory::Discrete {
                total,
                free: total.saturating_sub(used),
            },
            source: "sysfs",
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_fake_amd_card_and_skips_others() {
        let root = tempfile::tempdir().unwrap();
        let amd = root.path().join("card0/device");
        fs::create_dir_all(&amd).unwrap();
        fs::write(amd.join("vendor"), "0x1002\n").unwrap();
        fs::write(amd.join("mem_info_vram_total"), "17163091968\n").unwrap();
        fs::write(amd.join("mem_info_vram_used"), "1073741824\n").unwrap();
        fs::write(amd.join("product_name"), "Radeon RX 7800 XT\n").unwrap();
        let intel = root.path().join("card1/device");
        fs::create_dir_all(&intel).unwrap();
        fs::write(intel.join("vendor"), "0x8086\n").unwrap();
        fs::create_dir_all(root.path().join("card0-DP-1")).unwrap();

        let found = amd_devices_in(root.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "Radeon RX 7800 XT");
        assert_eq!(
            found[0].memory,
            DeviceMemory::Discrete {
                total: 17_163_091_968,
                free: 17_163_091_968 - 1_073_741_824
            }
        );
    }
}
