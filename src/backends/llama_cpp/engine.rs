//! The llama.cpp [`Backend`]: one worker thread per backend owns one
//! `LlamaContext` and runs requests from a queue.
//!
//! `LlamaContext` is neither `Send` nor `Sync`, so it never leaves the thread
//! that made it; callers block on a reply channel (from tokio's blocking pool).

use std::num::NonZeroU32;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::model::{BACKEND, LlamaCppModel};
use crate::backend::{Backend, FinishReason, Generation, GenerationRequest, Timings};
use crate::decode::Decoder;
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
    /// Sampling, budget, constraint and concurrency settings.
    pub generation: GenerationConfig,
}

impl Default for LlamaCppConfig {
    fn default() -> Self {
        LlamaCppConfig {
            context_length: None,
            batch_size: 512,
            threads: None,
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
    /// Sets the generation settings.
    #[must_use]
    pub fn with_generation(mut self, generation: GenerationConfig) -> Self {
        self.generation = generation;
        self
    }
}

struct Job {
    request: GenerationRequest,
    reply: SyncSender<Result<Generation>>,
}

/// llama.cpp behind the [`Backend`] trait.
pub struct LlamaCppBackend {
    model: Arc<LlamaCppModel>,
    settings: ContextSettings,
    /// The worker's queue, started on the first request.
    jobs: OnceLock<std::result::Result<Mutex<Sender<Job>>, String>>,
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
        };
        LlamaCppBackend {
            model,
            settings,
            jobs: OnceLock::new(),
        }
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
                thread::Builder::new()
                    .name("dsrs-llama-cpp".into())
                    .spawn(move || worker(&model, settings, receiver))
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
struct ContextSettings {
    context_length: u32,
    batch_size: u32,
    threads: i32,
}

fn worker(model: &LlamaCppModel, settings: ContextSettings, jobs: Receiver<Job>) {
    let mut context: Option<LlamaContext<'_>> = None;
    for job in jobs {
        if context.is_none() {
            match create_context(model, settings) {
                Ok(created) => context = Some(created),
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                    continue;
                }
            }
        }
        let Some(ctx) = context.as_mut() else {
            continue;
        };
        let result = run(model, ctx, settings, &job.request);
        // The caller may have gone away (cancelled); nothing to do then.
        let _ = job.reply.send(result);
    }
}

fn create_context(model: &LlamaCppModel, settings: ContextSettings) -> Result<LlamaContext<'_>> {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(settings.context_length))
        .with_n_batch(settings.batch_size)
        .with_n_ubatch(settings.batch_size)
        .with_n_threads(settings.threads)
        .with_n_threads_batch(settings.threads);
    model.new_context(params)
}

fn inference_error(reason: impl std::fmt::Display) -> Error {
    Error::Inference {
        backend: BACKEND,
        reason: reason.to_string(),
    }
}

/// One request: prefill the prompt, then decode token by token.
fn run(
    model: &LlamaCppModel,
    ctx: &mut LlamaContext<'_>,
    settings: ContextSettings,
    request: &GenerationRequest,
) -> Result<Generation> {
    let prompt = model.tokenize_prompt(&request.prompt)?;
    let context_length = ctx.n_ctx() as usize;
    if prompt.len() >= context_length {
        return Err(Error::PromptTooLong {
            prompt_tokens: prompt.len(),
            context_length,
        });
    }
    let matcher = match &request.constraint {
        Some(constraint) => Some(model.constraint_compiler()?.matcher(constraint)?),
        None => None,
    };
    let mut decoder = Decoder::new(request, matcher, model.end_of_generation().to_vec());

    ctx.clear_kv_cache();
    let started = Instant::now();
    let batch_size = settings.batch_size as usize;
    let mut batch = LlamaBatch::new(batch_size.max(1), 1);
    for (chunk_index, chunk) in prompt.chunks(batch_size).enumerate() {
        batch.clear();
        let base = chunk_index * batch_size;
        for (offset, &token) in chunk.iter().enumerate() {
            let position = base + offset;
            let is_last = position + 1 == prompt.len();
            batch
                .add(token, position as i32, &[0], is_last)
                .map_err(inference_error)?;
        }
        ctx.decode(&mut batch).map_err(inference_error)?;
    }
    let prefill = started.elapsed();
    tracing::debug!(
        tokens = prompt.len(),
        ms = prefill.as_secs_f64() * 1e3,
        "prefill"
    );

    let decode_started = Instant::now();
    let mut position = prompt.len();
    let finish_reason = loop {
        let mut logits = ctx.get_logits_ith(batch.n_tokens() - 1).to_vec();
        let token = decoder.next_token(&mut logits)?;
        if let Some(reason) = decoder.push(token, model.token_bytes(token))? {
            break reason;
        }
        if position >= context_length {
            break FinishReason::Length;
        }
        batch.clear();
        batch
            .add(LlamaToken(token as i32), position as i32, &[0], true)
            .map_err(inference_error)?;
        ctx.decode(&mut batch).map_err(inference_error)?;
        position += 1;
    };
    let timings = Timings {
        prefill,
        decode: decode_started.elapsed(),
    };
    Ok(decoder.finish(prompt.len(), finish_reason, timings))
}
