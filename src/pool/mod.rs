//! `ModelPool`: loads each model once, sized to the machine, shares it
//! between adapters, and unloads idle models when memory runs short.
//!
//! ```text
//! let pool = ModelPool::new(HardwareManager::detect());
//! let model = pool.load(ModelSpec::gguf("model.gguf"))?;          // Arc<LlamaCppModel> or Arc<CandleModel>
//! configure(lm, LlamaCppAdapter::from_loaded_model(model, LlamaCppConfig::default()));
//! ```
//!
//! - **Plan**: [`plan::plan`] sizes the load from the GGUF header (read once
//!   per load) and the detected devices the backend can drive (GPU layers,
//!   context, KV type, batch) and says why; the backend reads the plan's
//!   [`Placement`](crate::backend::Placement).
//! - **Share**: the same spec and plan give the same `Arc`; concurrent first
//!   requests load once (single flight).
//! - **Evict**: loads are kept within a memory budget; when a new load would
//!   exceed it, models nobody holds are unloaded least recently used first.
//!   A model still held by an adapter is never unloaded.

pub mod plan;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::backend::LoadModel;
use crate::gguf::GgufHeader;
use crate::hardware::{DeviceId, HardwareProfile};
use crate::lookup::ModelSource;
use crate::{Error, Result};
use plan::{DeviceBudget, LoadPlan, ModelFacts, PlanRequest};

/// What to load.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ModelSpec {
    /// Where the GGUF file comes from.
    pub source: ModelSource,
    /// Context length wanted (`None` = the trained length, at most 8192).
    pub context: Option<u32>,
    /// Fail instead of lowering the context when it does not fit.
    pub pin_context: bool,
    /// Keep the model on the CPU.
    pub cpu_only: bool,
    /// Cap on the GPU memory this load may use, in bytes.
    pub memory_limit: Option<u64>,
    /// Split a model that needs several GPUs by rows instead of by layers.
    pub split_rows: bool,
}

impl ModelSpec {
    /// A local GGUF file.
    pub fn gguf(path: impl Into<PathBuf>) -> Self {
        Self::from_source(ModelSource::Path(path.into()))
    }

    /// A model by name: a path, `owner/repo:file.gguf` from the Hugging Face
    /// cache, or `name[:tag]` from Ollama's store (see [`ModelSource::parse`]).
    pub fn named(name: &str) -> Self {
        Self::from_source(ModelSource::parse(name))
    }

    /// A file of a Hugging Face repo, from the local Hugging Face cache.
    pub fn huggingface(repo: impl Into<String>, file: impl Into<String>) -> Self {
        Self::from_source(ModelSource::HuggingFace {
            repo: repo.into(),
            file: file.into(),
            revision: "main".into(),
        })
    }

    /// A model pulled by Ollama (`qwen2.5:0.5b`).
    pub fn ollama(name: impl Into<String>) -> Self {
        Self::from_source(ModelSource::Ollama { name: name.into() })
    }

    /// A spec for a model source with default settings.
    pub fn from_source(source: ModelSource) -> Self {
        ModelSpec {
            source,
            context: None,
            pin_context: false,
            cpu_only: false,
            memory_limit: None,
            split_rows: false,
        }
    }
    /// Asks for a context length (lowered if it does not fit).
    #[must_use]
    pub fn with_context(mut self, tokens: u32) -> Self {
        self.context = Some(tokens);
        self
    }
    /// Requires exactly this context length (an error if it does not fit).
    #[must_use]
    pub fn with_pinned_context(mut self, tokens: u32) -> Self {
        self.context = Some(tokens);
        self.pin_context = true;
        self
    }
    /// Keeps the model on the CPU.
    #[must_use]
    pub fn cpu_only(mut self) -> Self {
        self.cpu_only = true;
        self
    }
    /// Caps the GPU memory of this load.
    #[must_use]
    pub fn with_memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }
    /// When the model needs several GPUs, splits every layer's rows across
    /// them (llama.cpp's `split_mode` row) instead of giving each whole layers.
    #[must_use]
    pub fn with_row_split(mut self) -> Self {
        self.split_rows = true;
        self
    }

    fn plan_request<M: LoadModel>(&self) -> PlanRequest {
        PlanRequest {
            context: self.context,
            pin_context: self.pin_context,
            cpu_only: self.cpu_only,
            memory_limit: self.memory_limit,
            whole_model_only: !M::SPLITS_LAYERS,
            split_rows: self.split_rows,
        }
    }
}

/// One loaded model as the pool lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedEntry {
    /// The file.
    pub path: PathBuf,
    /// The backend that holds it.
    pub backend: &'static str,
    /// How it was sized.
    pub plan: LoadPlan,
    /// Memory it takes (GPU + host), by the plan's estimate.
    pub bytes: u64,
    /// Whether an adapter still holds it.
    pub in_use: bool,
}

/// What makes two loads the same load: the file, the backend's model type
/// and the wishes that change the plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LoadKey {
    path: PathBuf,
    model_type: TypeId,
    context: Option<u32>,
    pin_context: bool,
    cpu_only: bool,
    memory_limit: Option<u64>,
    split_rows: bool,
}

impl LoadKey {
    fn new<M: LoadModel>(path: PathBuf, spec: &ModelSpec) -> Self {
        LoadKey {
            path,
            model_type: TypeId::of::<M>(),
            context: spec.context,
            pin_context: spec.pin_context,
            cpu_only: spec.cpu_only,
            memory_limit: spec.memory_limit,
            split_rows: spec.split_rows,
        }
    }
}

type Loaded = Arc<dyn Any + Send + Sync>;

struct Slot {
    /// The load's outcome, shared by every caller that waited for it.
    cell: OnceLock<Result<Loaded>>,
    meta: Mutex<Option<SlotMeta>>,
}

#[derive(Clone)]
struct SlotMeta {
    path: PathBuf,
    backend: &'static str,
    plan: LoadPlan,
    bytes: u64,
    last_used: Instant,
}

/// Loads models once and shares them; see the module docs.
pub struct ModelPool {
    profile: HardwareProfile,
    budget: Option<u64>,
    slots: Mutex<HashMap<LoadKey, Arc<Slot>>>,
}

impl std::fmt::Debug for ModelPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelPool")
            .field("budget", &self.budget)
            .field("loaded", &self.loaded().len())
            .finish_non_exhaustive()
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::LockPoisoned { what: "model pool" }
}

impl ModelPool {
    /// A pool for this machine. Its memory budget is what the machine has
    /// (usable GPU memory plus available RAM) unless set with [`with_budget`](Self::with_budget).
    pub fn new(profile: HardwareProfile) -> Self {
        ModelPool {
            profile,
            budget: None,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Sets the memory budget for all loaded models together, in bytes.
    #[must_use]
    pub fn with_budget(mut self, bytes: u64) -> Self {
        self.budget = Some(bytes);
        self
    }

    /// The machine the pool sizes for.
    pub fn profile(&self) -> &HardwareProfile {
        &self.profile
    }

    fn budget(&self) -> u64 {
        self.budget.unwrap_or_else(|| {
            let gpu: u64 = self
                .profile
                .usable_accelerators()
                .map(|a| a.memory.available())
                .sum();
            gpu + self.profile.memory.available
        })
    }

    /// Plans a load of `spec` by backend `M` without loading: finds the
    /// file and reads its header only.
    pub fn plan<M: LoadModel>(&self, spec: &ModelSpec) -> Result<LoadPlan> {
        let header = GgufHeader::read(spec.source.resolve()?)?;
        self.plan_header::<M>(&header, spec)
    }

    /// GPU bytes the models this pool has loaded take on each device, from
    /// their plans (the profile's free memory was read before they loaded).
    fn taken_on_gpus(&self) -> Result<HashMap<DeviceId, u64>> {
        let slots: Vec<Arc<Slot>> = self
            .slots
            .lock()
            .map_err(poisoned)?
            .values()
            .cloned()
            .collect();
        let mut taken = HashMap::new();
        for slot in slots {
            if let Some(meta) = slot.meta.lock().map_err(poisoned)?.as_ref() {
                for device in &meta.plan.devices {
                    *taken.entry(device.id).or_insert(0) += device.bytes();
                }
            }
        }
        Ok(taken)
    }

    /// Plans for the devices backend `M` can drive, with what the pool's
    /// loaded models leave free on each (so a second model goes where
    /// memory is freest); the devices it cannot drive are named in the
    /// plan's reasons.
    fn plan_header<M: LoadModel>(&self, header: &GgufHeader, spec: &ModelSpec) -> Result<LoadPlan> {
        let facts = ModelFacts::from_header(header)?;
        let taken = self.taken_on_gpus()?;
        let mut skipped = Vec::new();
        let mut gpus = Vec::new();
        for accelerator in self.profile.usable_accelerators() {
            if M::drives(accelerator.kind) {
                let id = accelerator.id();
                gpus.push(DeviceBudget {
                    id,
                    name: accelerator.label(),
                    available: accelerator
                        .memory
                        .available()
                        .saturating_sub(taken.get(&id).copied().unwrap_or(0)),
                });
            } else {
                skipped.push(format!(
                    "{} is not used: the {} backend cannot drive {:?} devices",
                    accelerator.label(),
                    M::BACKEND,
                    accelerator.kind
                ));
            }
        }
        let mut plan = plan::plan(
            &facts,
            &gpus,
            self.profile.memory.available,
            &spec.plan_request::<M>(),
        )?;
        plan.reasons.splice(0..0, skipped);
        Ok(plan)
    }

    /// Loads (or returns the already loaded) model for `spec` with backend `M`
    /// (usually inferred from the adapter it is handed to).
    pub fn load<M: LoadModel>(&self, spec: ModelSpec) -> Result<Arc<M>> {
        let path = spec.source.resolve()?;
        let key = LoadKey::new::<M>(path, &spec);
        let slot = {
            let mut slots = self.slots.lock().map_err(poisoned)?;
            Arc::clone(slots.entry(key.clone()).or_insert_with(|| {
                Arc::new(Slot {
                    cell: OnceLock::new(),
                    meta: Mutex::new(None),
                })
            }))
        };
        // Single flight: concurrent callers of one key wait on the same load.
        let loaded = slot
            .cell
            .get_or_init(|| self.plan_and_load::<M>(&spec, &key, &slot));
        match loaded {
            Ok(any) => {
                if let Some(meta) = slot.meta.lock().map_err(poisoned)?.as_mut() {
                    meta.last_used = Instant::now();
                }
                // The key holds the model type, so the slot holds an `M`.
                Arc::clone(any)
                    .downcast::<M>()
                    .map_err(|_| Error::Internal {
                        what: "the model pool holds another type under this key",
                    })
            }
            Err(error) => {
                // Forget the failure so a later call can try again.
                self.slots.lock().map_err(poisoned)?.remove(&key);
                Err(error.clone())
            }
        }
    }

    fn plan_and_load<M: LoadModel>(
        &self,
        spec: &ModelSpec,
        key: &LoadKey,
        slot: &Slot,
    ) -> Result<Loaded> {
        let header = GgufHeader::read(&key.path)?;
        let plan = self.plan_header::<M>(&header, spec)?;
        let bytes = plan.gpu_bytes().saturating_add(plan.host_bytes);
        self.make_room(bytes, key)?;
        tracing::info!(path = %key.path.display(), backend = M::BACKEND, %plan, "loading");
        let model = M::load_placed(&header, &plan.placement)?;
        *slot.meta.lock().map_err(poisoned)? = Some(SlotMeta {
            path: key.path.clone(),
            backend: M::BACKEND,
            plan,
            bytes,
            last_used: Instant::now(),
        });
        Ok(Arc::new(model))
    }

    /// Unloads idle models, least recently used first, until `needed` more
    /// bytes fit the budget. Fails when the models in use leave too little.
    fn make_room(&self, needed: u64, loading: &LoadKey) -> Result<()> {
        let budget = self.budget();
        let mut slots = self.slots.lock().map_err(poisoned)?;
        let mut idle: Vec<(LoadKey, Instant, u64)> = Vec::new();
        let mut used = 0u64;
        for (key, slot) in slots.iter() {
            if key == loading {
                continue;
            }
            let Some(meta) = slot.meta.lock().map_err(poisoned)?.clone() else {
                continue;
            };
            used += meta.bytes;
            if !in_use(slot) {
                idle.push((key.clone(), meta.last_used, meta.bytes));
            }
        }
        idle.sort_by_key(|(_, last_used, _)| *last_used);
        for (key, _, bytes) in idle {
            if used + needed <= budget {
                break;
            }
            tracing::info!(path = %key.path.display(), "unloading an idle model to make room");
            slots.remove(&key);
            used -= bytes;
        }
        if used + needed > budget {
            return Err(Error::InsufficientMemory {
                needed,
                available: budget.saturating_sub(used),
                detail: "the pool's budget is taken by models still in use".into(),
            });
        }
        Ok(())
    }

    /// Unloads a model now if nobody holds it; returns whether it was unloaded.
    pub fn unload(&self, path: impl AsRef<Path>) -> Result<bool> {
        let path = path.as_ref();
        let mut slots = self.slots.lock().map_err(poisoned)?;
        let idle: Vec<LoadKey> = slots
            .iter()
            .filter(|(key, slot)| key.path == path && !in_use(slot))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &idle {
            slots.remove(key);
        }
        Ok(!idle.is_empty())
    }

    /// What is loaded, with its plan and memory.
    pub fn loaded(&self) -> Vec<LoadedEntry> {
        let Ok(slots) = self.slots.lock() else {
            return Vec::new();
        };
        slots
            .values()
            .filter_map(|slot| {
                let meta = slot.meta.lock().ok()?.clone()?;
                Some(LoadedEntry {
                    path: meta.path,
                    backend: meta.backend,
                    plan: meta.plan,
                    bytes: meta.bytes,
                    in_use: in_use(slot),
                })
            })
            .collect()
    }
}

/// A loaded model is in use while anyone but the pool holds its `Arc`.
fn in_use(slot: &Slot) -> bool {
    matches!(slot.cell.get(), Some(Ok(model)) if Arc::strong_count(model) > 1)
}
