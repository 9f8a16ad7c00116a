//! The llama.cpp [`Backend`]: one worker thread per backend owns one
//! `LlamaContext` and serves requests from a queue, decoding concurrent ones
//! together as sequences of one batch (`batching.rs`).
//!
//! `LlamaContext` is neither `Send` nor `Sync`, so it never leaves the thread
//! that made it; callers block on a reply channel (from tokio's blocking pool).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;

use super::batching::Batcher;
use super::model::{BACKEND, LlamaCppModel};
use crate::backend::{Backend, Generation, GenerationRequest};
use crate::prompt::ChatTemplate;
use crate::{Error, GenerationConfig, Result};

/// Context settings of a llama.cpp adapter, plus its generation settings.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LlamaCppConfig {
    /// Context window in tokens; `None` = the model's default (the pool's plan,
    /// else the trained length, at most 4096).
    pub context_length: Option<u32>,
    /// Most prompt tokens evaluated in one step.
    pub batch_size: u32,
    /// CPU threads; `None` = all available cores.
    pub threads: Option<i32>,
    /// Keep finished requests' KV caches and read only what a new prompt
    /// does not share with a cached or running one (on by default).
    pub reuse_prefix: bool,
    /// Requests decoded together as sequences of one batch (continuous
    /// batching); 1 (the default) runs them one after another. More pays
    /// off for concurrent calls (`batch`, `Evaluator`) and, measured on this
    /// llama.cpp, slows a lone call's decoding (`specs/llamacpp-adapter.md`).
    /// Up to `generation.max_concurrency` calls reach the backend at once.
    pub parallel_sequences: usize,
    /// Sampling, budget, constraint and concurrency settings.
    pub generation: GenerationConfig,
}

impl Default for LlamaCppConfig {
    fn default() -> Self {
        LlamaCppConfig {
            context_length: None,
            batch_size: 512,
            threads: None,
            reuse_prefix: true,
            parallel_sequences: 1,
            generation: GenerationConfig::default(),
        }
    }
}

impl LlamaCppConfig {
    /// Sets the context window.
    #[must_use]
    pub fn with_context_length(mut self, tokens: u32) -> Self {
        self.context_length = Some(tokens);
        self
    }
    /// Sets the prompt batch size.
    #[must_use]
    pub fn with_batch_size(mut self, tokens: u32) -> Self {
        self.batch_size = tokens.max(1);
        self
    }
    /// Sets the CPU thread count.
    #[must_use]
    pub fn with_threads(mut self, threads: i32) -> Self {
        self.threads = Some(threads.max(1));
        self
    }
    /// Turns reuse of the previous request's KV cache on or off.
    #[must_use]
    pub fn with_prefix_reuse(mut self, reuse: bool) -> Self {
        self.reuse_prefix = reuse;
        self
    }
    /// Sets how many requests are decoded together (at least 1).
    #[must_use]
    pub fn with_parallel_sequences(mut self, sequences: usize) -> Self {
        self.parallel_sequences = sequences.max(1);
        self
    }
    /// Sets the generation settings.
    #[must_use]
    pub fn with_generation(mut self, generation: GenerationConfig) -> Self {
        self.generation = generation;
        self
    }
}

pub(super) struct Job {
    pub(super) request: GenerationRequest,
    pub(super) reply: SyncSender<Result<Generation>>,
}

/// llama.cpp behind the [`Backend`] trait.
pub struct LlamaCppBackend {
    model: Arc<LlamaCppModel>,
    settings: ContextSettings,
    /// The worker's queue, started on the first request.
    jobs: OnceLock<std::result::Result<Mutex<Sender<Job>>, String>>,
    /// The most requests the worker has decoded together.
    peak_concurrency: Arc<AtomicUsize>,
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
            .unwrap_or_else(|| model.default_context_length())
            .max(1);
        let threads = config.threads.unwrap_or_else(|| {
            thread::available_parallelism().map_or(1, |n| i32::try_from(n.get()).unwrap_or(1))
        });
        let settings = ContextSettings {
            context_length,
            batch_size: config.batch_size.clamp(1, context_length),
            threads,
            reuse_prefix: config.reuse_prefix,
            sequences: config.parallel_sequences.max(1),
        };
        LlamaCppBackend {
            model,
            settings,
            jobs: OnceLock::new(),
            peak_concurrency: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The most requests decoded together so far (at most the adapter's
    /// `max_concurrency`): how much batching a workload actually got.
    pub fn peak_concurrency(&self) -> usize {
        self.peak_concurrency.load(Ordering::Relaxed)
    }

    /// The loaded model.
    pub fn model(&self) -> &Arc<LlamaCppModel> {
        &self.model
    }

    /// The context window requests run with.
    pub fn context_length(&self) -> usize {
        self.settings.context_length as usize
    }

    fn queue(&self) -> Result<&Mutex<Sender<Job>>> {
        self.jobs
            .get_or_init(|| {
                let (sender, receiver) = mpsc::channel::<Job>();
                let model = Arc::clone(&self.model);
                let settings = self.settings;
                let peak = Arc::clone(&self.peak_concurrency);
                thread::Builder::new()
                    .name("dsrs-llama-cpp".into())
                    .spawn(move || worker(&model, settings, receiver, peak))
                    .map(|_| Mutex::new(sender))
                    .map_err(|e| format!("starting the worker thread failed: {e}"))
            })
            .as_ref()
            .map_err(|reason| Error::Inference {
                backend: BACKEND,
                reason: reason.clone(),
            })
    }
}

impl Backend for LlamaCppBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn chat_template(&self) -> &ChatTemplate {
        self.model.chat_template()
    }

    fn count_tokens(&self, prompt: &str) -> Result<usize> {
        Ok(self.model.tokenize_prompt(prompt)?.len())
    }

    fn generate(&self, request: &GenerationRequest) -> Result<Generation> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Job {
            request: request.clone(),
            reply,
        };
        let worker_gone = || Error::TaskFailed("the llama.cpp worker thread has stopped".into());
        self.queue()?
            .lock()
            .map_err(|_| worker_gone())?
            .send(job)
            .map_err(|_| worker_gone())?;
        answer.recv().map_err(|_| worker_gone())?
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct ContextSettings {
    pub(super) context_length: u32,
    pub(super) batch_size: u32,
    pub(super) threads: i32,
    pub(super) reuse_prefix: bool,
    /// Requests decoded together (`LlamaCppConfig::parallel_sequences`).
    pub(super) sequences: usize,
}

fn worker(
    model: &LlamaCppModel,
    settings: ContextSettings,
    jobs: Receiver<Job>,
    peak: Arc<AtomicUsize>,
) {
    // The context is made for the first request, so a failure reaches it
    // (and the next request tries again).
    while let Ok(job) = jobs.recv() {
        match create_context(model, settings) {
            Ok(mut context) => {
                let mut batcher = Batcher::new(model, settings, peak);
                batcher.enqueue(job);
                batcher.serve(&mut context, &jobs);
                let _alone = super::device_memory::changing();
                drop(context);
                return;
            }
            // The caller may have gone away (cancelled); nothing to do then.
            Err(error) => {
                let _ = job.reply.send(Err(error));
            }
        }
    }
}

fn create_context(model: &LlamaCppModel, settings: ContextSettings) -> Result<LlamaContext<'_>> {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(settings.context_length))
        .with_n_batch(settings.batch_size)
        .with_n_ubatch(settings.batch_size)
        .with_n_seq_max(settings.sequences as u32)
        // One pool of cells for all sequences, so a shared prefix is stored once.
        .with_kv_unified(true)
        .with_n_threads(settings.threads)
        .with_n_threads_batch(settings.threads);
    model.new_context(params)
}
