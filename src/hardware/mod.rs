//! `HardwareManager`: what this machine has (GPUs with their memory, CPU
//! cores, RAM), kept apart from what this build can use.
//!
//! Every probe is optional and fails soft (a log line, no error):
//! - NVIDIA GPUs through NVML (`nvml-wrapper` loads the driver's library at
//!   run time, so a CPU-only build still sees the GPU);
//! - AMD GPUs through `/sys/class/drm/*/device/mem_info_vram_*` (Linux);
//! - llama.cpp's own device list, when the `llamacpp` feature is on;
//! - RAM and cores through `sysinfo`.
//!
//! `DSRS_DEVICE=cpu` hides every GPU; `DSRS_DEVICE=fake-gpu:<size>[,<size>…]`
//! replaces them with made-up GPUs of that much free memory, CUDA unless a
//! size names another kind (`vulkan:8GiB`, `rocm:…`, `metal:…`), for tests and
//! planning on another machine. [`DetectOptions`] does the same in code.

mod probes;

use std::fmt;

/// The kind of an accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AcceleratorKind {
    /// NVIDIA, through CUDA.
    Cuda,
    /// AMD, through ROCm/HIP.
    Rocm,
    /// Any GPU through Vulkan.
    Vulkan,
    /// Apple silicon, through Metal.
    Metal,
    /// The CPU (as llama.cpp lists it).
    Cpu,
}

impl AcceleratorKind {
    /// The cargo feature of this crate that would use it, if any.
    pub fn feature(self) -> Option<&'static str> {
        match self {
            AcceleratorKind::Cuda => Some("cuda"),
            AcceleratorKind::Rocm => Some("rocm"),
            AcceleratorKind::Vulkan => Some("vulkan"),
            AcceleratorKind::Metal => Some("metal"),
            AcceleratorKind::Cpu => None,
        }
    }

    /// The prefix of device names: `CUDA` in `CUDA0`.
    pub fn prefix(self) -> &'static str {
        match self {
            AcceleratorKind::Cuda => "CUDA",
            AcceleratorKind::Rocm => "ROCm",
            AcceleratorKind::Vulkan => "Vulkan",
            AcceleratorKind::Metal => "Metal",
            AcceleratorKind::Cpu => "CPU",
        }
    }

    /// The kind of a device in llama.cpp's list, from its backend's name
    /// (`CUDA`, `Vulkan`, `Metal`, `ROCm`/`HIP`); `None` for the CPU and others.
    pub fn from_ggml_backend(backend: &str) -> Option<AcceleratorKind> {
        match backend.to_ascii_lowercase().as_str() {
            "cuda" => Some(AcceleratorKind::Cuda),
            "vulkan" => Some(AcceleratorKind::Vulkan),
            "metal" | "mtl" => Some(AcceleratorKind::Metal),
            "rocm" | "hip" => Some(AcceleratorKind::Rocm),
            _ => None,
        }
    }

    /// Whether this build can run models on it (with any backend).
    pub fn compiled_in(self) -> bool {
        compiled_backends().iter().any(|b| b.drives(self))
    }
}

/// One accelerator by kind and its index among devices of that kind
/// (`CUDA1` is `DeviceId { kind: Cuda, index: 1 }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceId {
    /// Its kind.
    pub kind: AcceleratorKind,
    /// Index among devices of its kind.
    pub index: u32,
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.kind.prefix(), self.index)
    }
}

/// How much memory a device has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceMemory {
    /// Its own memory.
    Discrete {
        /// Total bytes.
        total: u64,
        /// Free bytes now.
        free: u64,
    },
    /// Shared with the CPU (Apple silicon, integrated GPUs): what it may use.
    Unified {
        /// Bytes the GPU may use.
        budget: u64,
    },
}

impl DeviceMemory {
    /// Bytes usable now: free memory, or the unified budget.
    pub fn available(&self) -> u64 {
        match *self {
            DeviceMemory::Discrete { free, .. } => free,
            DeviceMemory::Unified { budget } => budget,
        }
    }
}

/// One accelerator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accelerator {
    /// Its kind.
    pub kind: AcceleratorKind,
    /// Index among devices of its kind.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// Its memory.
    pub memory: DeviceMemory,
    /// Which probe found it (`nvml`, `sysfs`, `llama.cpp`, `override`).
    pub source: &'static str,
}

impl Accelerator {
    /// Its kind and index.
    pub fn id(&self) -> DeviceId {
        DeviceId {
            kind: self.kind,
            index: self.index,
        }
    }

    /// `CUDA0 (NVIDIA H100 80GB HBM3)`.
    pub fn label(&self) -> String {
        format!("{} ({})", self.id(), self.name)
    }

    /// Whether this build can run models on it.
    pub fn usable(&self) -> bool {
        self.kind.compiled_in()
    }
}

/// The CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuInfo {
    /// Brand string.
    pub name: String,
    /// Physical cores (falls back to logical when unknown).
    pub physical_cores: usize,
    /// Logical cores (hardware threads).
    pub logical_cores: usize,
}

/// System memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemMemory {
    /// Total bytes.
    pub total: u64,
    /// Bytes available to a new process.
    pub available: u64,
}

/// A backend this build contains, with the devices it can drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledBackend {
    /// `llama.cpp` or `candle`.
    pub name: &'static str,
    /// Device kinds compiled in.
    pub devices: Vec<AcceleratorKind>,
}

impl CompiledBackend {
    /// Whether this backend can run models on devices of `kind`.
    pub fn drives(&self, kind: AcceleratorKind) -> bool {
        self.devices.contains(&kind)
    }
}

/// Whether the backend named `backend` is compiled in and drives `kind`: the
/// one answer every backend gives the pool (from [`compiled_backends`]).
pub(crate) fn backend_drives(backend: &str, kind: AcceleratorKind) -> bool {
    compiled_backends()
        .iter()
        .any(|b| b.name == backend && b.drives(kind))
}

/// The backends and accelerators compiled into this build (from `cfg!`, not the machine).
pub fn compiled_backends() -> Vec<CompiledBackend> {
    let mut backends = Vec::new();
    if cfg!(feature = "llamacpp") {
        let mut devices = vec![AcceleratorKind::Cpu];
        if cfg!(any(feature = "cuda", feature = "cuda-shared")) {
            devices.push(AcceleratorKind::Cuda);
        }
        if cfg!(feature = "vulkan") {
            // AMD and Intel cards too: llama.cpp lists them as Vulkan devices
            // (the probes merge an AMD card sysfs found into that entry).
            devices.push(AcceleratorKind::Vulkan);
        }
        if cfg!(feature = "rocm") {
            devices.push(AcceleratorKind::Rocm);
        }
        if cfg!(feature = "metal") {
            devices.push(AcceleratorKind::Metal);
        }
        backends.push(CompiledBackend {
            name: "llama.cpp",
            devices,
        });
    }
    if cfg!(feature = "candle") {
        let mut devices = vec![AcceleratorKind::Cpu];
        if cfg!(any(feature = "cuda", feature = "cuda-shared")) {
            devices.push(AcceleratorKind::Cuda);
        }
        if cfg!(feature = "metal") {
            devices.push(AcceleratorKind::Metal);
        }
        backends.push(CompiledBackend {
            name: "candle",
            devices,
        });
    }
    backends
}

/// What the machine has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardwareProfile {
    /// GPUs and other accelerators (the CPU is described by `cpu`).
    pub accelerators: Vec<Accelerator>,
    /// The CPU.
    pub cpu: CpuInfo,
    /// System memory.
    pub memory: SystemMemory,
    /// What this build can use.
    pub compiled: Vec<CompiledBackend>,
}

impl HardwareProfile {
    /// Accelerators this build can run models on.
    pub fn usable_accelerators(&self) -> impl Iterator<Item = &Accelerator> {
        self.accelerators.iter().filter(|a| a.usable())
    }

    /// A profile with only a CPU (for planning and tests).
    pub fn cpu_only(cpu: CpuInfo, memory: SystemMemory) -> Self {
        HardwareProfile {
            accelerators: Vec::new(),
            cpu,
            memory,
            compiled: compiled_backends(),
        }
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

impl fmt::Display for HardwareProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "CPU: {} ({} physical / {} logical cores)",
            self.cpu.name, self.cpu.physical_cores, self.cpu.logical_cores
        )?;
        writeln!(
            f,
            "RAM: {:.1} GiB total, {:.1} GiB available",
            gib(self.memory.total),
            gib(self.memory.available)
        )?;
        if self.accelerators.is_empty() {
            writeln!(f, "GPUs: none detected")?;
        }
        for a in &self.accelerators {
            let memory = match a.memory {
                DeviceMemory::Discrete { total, free } => {
                    format!("{:.1} GiB total, {:.1} GiB free", gib(total), gib(free))
                }
                DeviceMemory::Unified { budget } => {
                    format!("unified, {:.1} GiB budget", gib(budget))
                }
            };
            let status = if a.usable() {
                "compiled in".to_string()
            } else {
                match a.kind.feature() {
                    Some(feature) => format!("not compiled in: build with --features {feature}"),
                    None => "not usable by this build".to_string(),
                }
            };
            writeln!(f, "GPU: {}: {memory} [{}; {status}]", a.label(), a.source)?;
        }
        let compiled: Vec<String> = self
            .compiled
            .iter()
            .map(|b| {
                format!(
                    "{} ({})",
                    b.name,
                    b.devices
                        .iter()
                        .map(|d| format!("{d:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect();
        write!(
            f,
            "compiled backends: {}",
            if compiled.is_empty() {
                "none".into()
            } else {
                compiled.join("; ")
            }
        )
    }
}

/// Overrides of detection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DetectOptions {
    /// Report no accelerator at all.
    pub force_cpu: bool,
    /// Replace detected accelerators with these made-up ones (none: detect).
    pub fake_gpus: Vec<FakeGpu>,
}

/// A made-up accelerator with this much free (and total) memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeGpu {
    /// Its kind.
    pub kind: AcceleratorKind,
    /// Its memory in bytes.
    pub bytes: u64,
}

impl FakeGpu {
    /// A made-up CUDA GPU of `bytes`.
    pub fn cuda(bytes: u64) -> Self {
        FakeGpu {
            kind: AcceleratorKind::Cuda,
            bytes,
        }
    }

    /// Reads `[kind:]size`: kind `cuda` (the default), `vulkan`, `rocm` or
    /// `metal`; size in bytes or with a `KiB`/`MiB`/`GiB` suffix.
    fn parse(text: &str) -> Option<Self> {
        let (kind, size) = match text.split_once(':') {
            Some((kind, size)) => (
                match kind {
                    "cuda" => AcceleratorKind::Cuda,
                    "vulkan" => AcceleratorKind::Vulkan,
                    "rocm" => AcceleratorKind::Rocm,
                    "metal" => AcceleratorKind::Metal,
                    _ => return None,
                },
                size,
            ),
            None => (AcceleratorKind::Cuda, text),
        };
        let (digits, unit) = [("gib", 30), ("mib", 20), ("kib", 10)]
            .into_iter()
            .find_map(|(suffix, shift)| size.strip_suffix(suffix).map(|d| (d, shift)))
            .unwrap_or((size, 0));
        let bytes = digits
            .trim()
            .parse::<u64>()
            .ok()?
            .checked_mul(1u64 << unit)?;
        Some(FakeGpu { kind, bytes })
    }
}

impl DetectOptions {
    /// Reads `DSRS_DEVICE` (`cpu`, or `fake-gpu:` and sizes, see the module
    /// documentation); anything else is logged and ignored.
    pub fn from_env() -> Self {
        let Ok(value) = std::env::var("DSRS_DEVICE") else {
            return Self::default();
        };
        Self::parse(&value).unwrap_or_else(|| {
            tracing::warn!(
                %value,
                "DSRS_DEVICE is not `cpu` or `fake-gpu:[kind:]size[,…]`; ignored"
            );
            Self::default()
        })
    }

    /// Reads a `DSRS_DEVICE` value; `None` when it is not one.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim().to_ascii_lowercase();
        if value == "cpu" {
            return Some(DetectOptions {
                force_cpu: true,
                fake_gpus: Vec::new(),
            });
        }
        let fake_gpus = value
            .strip_prefix("fake-gpu:")?
            .split(',')
            .map(FakeGpu::parse)
            .collect::<Option<Vec<_>>>()?;
        Some(DetectOptions {
            force_cpu: false,
            fake_gpus,
        })
    }
}

/// Detects the machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct HardwareManager;

impl HardwareManager {
    /// Probes the machine, honouring `DSRS_DEVICE`.
    pub fn detect() -> HardwareProfile {
        Self::detect_with(&DetectOptions::from_env())
    }

    /// Probes the machine with explicit overrides.
    pub fn detect_with(options: &DetectOptions) -> HardwareProfile {
        let (cpu, memory) = probes::system();
        let accelerators = if options.force_cpu {
            Vec::new()
        } else if !options.fake_gpus.is_empty() {
            fake_accelerators(&options.fake_gpus)
        } else {
            probes::accelerators()
        };
        HardwareProfile {
            accelerators,
            cpu,
            memory,
            compiled: compiled_backends(),
        }
    }
}

/// The made-up accelerators, numbered per kind as real ones are.
fn fake_accelerators(fakes: &[FakeGpu]) -> Vec<Accelerator> {
    fakes
        .iter()
        .enumerate()
        .map(|(at, fake)| Accelerator {
            kind: fake.kind,
            index: fakes[..at].iter().filter(|f| f.kind == fake.kind).count() as u32,
            name: "fake GPU (DSRS_DEVICE)".into(),
            memory: DeviceMemory::Discrete {
                total: fake.bytes,
                free: fake.bytes,
            },
            source: "override",
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_overrides_are_read_with_kinds_units_and_several_gpus() {
        assert_eq!(
            DetectOptions::parse(" CPU "),
            Some(DetectOptions {
                force_cpu: true,
                fake_gpus: Vec::new()
            })
        );
        let options = DetectOptions::parse("fake-gpu:8589934592,vulkan:24GiB,cuda:512MiB").unwrap();
        assert_eq!(
            options.fake_gpus,
            vec![
                FakeGpu::cuda(8 << 30),
                FakeGpu {
                    kind: AcceleratorKind::Vulkan,
                    bytes: 24 << 30
                },
                FakeGpu::cuda(512 << 20),
            ]
        );
        let ids: Vec<String> = fake_accelerators(&options.fake_gpus)
            .iter()
            .map(|a| a.id().to_string())
            .collect();
        assert_eq!(ids, ["CUDA0", "Vulkan0", "CUDA1"]);
        for bad in [
            "gpu",
            "fake-gpu:",
            "fake-gpu:lots",
            "fake-gpu:opencl:8GiB",
            "fake-gpu:8GiB,",
            "fake-gpu:99999999999GiB",
            "fake-gpu:-1",
        ] {
            assert_eq!(DetectOptions::parse(bad), None, "{bad}");
        }
    }
}
