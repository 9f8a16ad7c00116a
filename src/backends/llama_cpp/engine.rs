//! The llama.cpp [`Backend`]: one worker thread per backend owns one
//! `LlamaContext` and serves requests from a queue, decoding concurrent ones
//! together as sequences of one batch (`batching.rs`).
//!
//! `LlamaContext` is neither `Send` nor `Sync`, so it never leaves the thread
//! that made it; callers block on a reply channel (from tokio's blocking pool).

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};

use super::batching::{ContextSettings, Job, worker};
use super::model::{BACKEND, LlamaCppModel};
use crate::backend::{Backend, EngineStats, Generation, GenerationRequest, LocalModel};
use crate::backends::common::{EngineConfig, EngineCounters, EngineSettings, prepare};
use crate::{Error, Result};

/// What only a llama.cpp adapter's settings have.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct LlamaCppSettings {
    /// CPU threads; `None` = all available cores.
    pub threads: Option<usize>,
    /// Requests decoded together as sequences of one batch (continuous
    /// batching); 1 runs them one after another. `None` (the default): as
    /// many as `generation.max_concurrency`, the calls that can reach the
    /// backend at once, which paid best where measured, on the CPU and on a
    /// GPU (`specs/llamacpp-adapter.md`).
    pub parallel_sequences: Option<usize>,
}

/// Sequences decoded together when the settings name none: every call that
/// can reach the backend at once (`max_concurrency`). Measured (`make
/// bench`, 64-example DSPy evaluation): on 2 CPU cores the most sequences
/// tried were the fastest or tied with the best (two machines), on an H200
/// the rate rose with sequences up to 64, and a lone call on such an
/// adapter took 0.90–1.08× a one-sequence adapter's time.
fn default_sequences(max_concurrency: usize) -> usize {
    max_concurrency.max(1)
}

impl EngineSettings for LlamaCppSettings {
    const DEFAULT_BATCH_SIZE: usize = 512;
}

/// Settings of a llama.cpp adapter: context, generation, threads, sequences.
pub type LlamaCppConfig = EngineConfig<LlamaCppSettings>;

impl EngineConfig<LlamaCppSettings> {
    /// Sets the CPU thread count (at least 1).
    #[must_use]
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.engine.threads = Some(threads.max(1));
        self
    }
    /// Sets how many requests are decoded together (at least 1).
    #[must_use]
    pub fn with_parallel_sequences(mut self, sequences: usize) -> Self {
        self.engine.parallel_sequences = Some(sequences.max(1));
        self
    }
}

/// llama.cpp behind the [`Backend`] trait.
pub struct LlamaCppBackend {
    model: Arc<LlamaCppModel>,
    settings: ContextSettings,
    /// The worker, started on the first request.
    worker: OnceLock<Result<Worker>>,
    /// What the worker reports.
    counters: Arc<EngineCounters>,
}

/// The worker thread and its queue.
struct Worker {
    jobs: Mutex<Sender<Job>>,
    thread: JoinHandle<()>,
}

impl std::fmt::Debug for LlamaCppBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaCppBackend")
            .field("model", &self.model)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl LlamaCppBackend {
    /// A backend on a loaded model. Its worker thread and context start with
    /// the first request.
    pub fn new(model: Arc<LlamaCppModel>, config: &LlamaCppConfig) -> Self {
        let context_length = config
            .context_length
            .unwrap_or_else(|| model.card().default_context())
            .max(1);
        let threads = config
            .engine
            .threads
            .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()));
        let sequences = config.engine.parallel_sequences.map_or_else(
            || default_sequences(config.generation.max_concurrency),
            |sequences| sequences.max(1),
        );
        let settings = ContextSettings {
            context_length,
            // llama.cpp keeps room for an output per sequence and aborts
            // when the batch holds fewer.
            batch_size: config.batch_size.clamp(1, context_length).max(sequences),
            threads,
            reuse_prefix: config.reuse_prefix,
            sequences,
            fast_forward: config.fast_forward,
        };
        LlamaCppBackend {
            model,
            settings,
            worker: OnceLock::new(),
            counters: Arc::default(),
        }
    }

    /// The loaded model.
    pub fn model(&self) -> &Arc<LlamaCppModel> {
        &self.model
    }

    fn queue(&self) -> Result<&Mutex<Sender<Job>>> {
        self.worker
            .get_or_init(|| {
                let (sender, receiver) = mpsc::channel::<Job>();
                let model = Arc::clone(&self.model);
                let settings = self.settings;
                let counters = Arc::clone(&self.counters);
                thread::Builder::new()
                    .name("dsrs-llama-cpp".into())
                    .spawn(move || worker(&model, settings, receiver, counters))
                    .map(|thread| Worker {
                        jobs: Mutex::new(sender),
                        thread,
                    })
                    .map_err(|e| Error::inference(BACKEND, "starting the worker thread failed", e))
            })
            .as_ref()
            .map(|worker| &worker.jobs)
            .map_err(Clone::clone)
    }
}

impl Drop for LlamaCppBackend {
    /// Closes the queue and waits for the worker to free its context, so the
    /// memory (RAM or VRAM) is back when the drop returns, for the next load
    /// or plan: the worker freed it up to a second later before (~85 MB on
    /// the bench model after a 512-token prompt). No request is in flight:
    /// each holds the backend. The dropping thread waits for that free
    /// (milliseconds), as dropping a model waits for its weights' free.
    fn drop(&mut self) {
        if let Some(Ok(worker)) = self.worker.take() {
            drop(worker.jobs);
            // A worker that panicked has nothing left to free.
            let _ = worker.thread.join();
        }
    }
}

impl Backend for LlamaCppBackend {
    fn loaded_model(&self) -> &dyn LocalModel {
        self.model.as_ref()
    }

    fn context_length(&self) -> usize {
        self.settings.context_length
    }

    fn generate(&self, request: &GenerationRequest) -> Result<Generation> {
        // Prepared here, on the caller's thread: concurrent callers tokenize
        // and compile their grammars in parallel, beside the worker's decoding
        // (one after another on the worker, 64 calls took ~40 % of an
        // evaluation's time on a GPU).
        let prepared = prepare(self.model.as_ref(), request, self.settings.context_length)?;
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Job { prepared, reply };
        let worker_gone = || Error::WorkerStopped { backend: BACKEND };
        self.queue()?
            .lock()
            .map_err(|_| worker_gone())?
            .send(job)
            .map_err(|_| worker_gone())?;
        answer.recv().map_err(|_| worker_gone())?
    }

    fn stats(&self) -> EngineStats {
        self.counters.stats()
    }
}
