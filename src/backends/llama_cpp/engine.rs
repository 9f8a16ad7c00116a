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
    /// Keep the previous request's KV cache and evaluate only what a new
    /// prompt does not share with it (on by default).
    pub reuse_prefix: bool,
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
            reuse_prefix: config.reuse_prefix,
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
    reuse_prefix: bool,
}

fn worker(model: &LlamaCppModel, settings: ContextSettings, jobs: Receiver<Job>) {
    let mut context: Option<LlamaContext<'_>> = None;
    // The tokens the context's KV cache holds, at positions 0.., from the
    // previous request; empty when unknown.
    let mut cached: Vec<LlamaToken> = Vec::new();
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
        let result = run(model, ctx, settings, &mut cached, &job.request);
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

/// Tokens the two sequences start with in common.
fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// One request: prefill what the KV cache does not already hold, then decode
/// token by token.
///
/// A DSPy program sends the same system message and demos again and again;
/// the KV cache still holds the previous request's tokens, so only the part
/// after the common prefix is evaluated (at least the last prompt token, for
/// its logits). A changed instruction or demo changes the tokens, so the
/// reuse ends there by itself.
fn run(
    model: &LlamaCppModel,
    ctx: &mut LlamaContext<'_>,
    settings: ContextSettings,
    cached: &mut Vec<LlamaToken>,
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

    let mut reused = if settings.reuse_prefix {
        common_prefix(cached, &prompt).min(prompt.len().saturating_sub(1))
    } else {
        0
    };
    // Drop the cached positions past the shared prefix (all of them when
    // nothing is shared, or when the cache cannot be cut, as for recurrent models).
    let cut = reused > 0
        && ctx
            .clear_kv_cache_seq(Some(0), Some(reused as u32), None)
            .unwrap_or(false);
    if !cut {
        ctx.clear_kv_cache();
        reused = 0;
    }
    cached.clear();

    let started = Instant::now();
    let batch_size = settings.batch_size as usize;
    let mut batch = LlamaBatch::new(batch_size.max(1), 1);
    let mut position = reused;
    for chunk in prompt[reused..].chunks(batch_size) {
        batch.clear();
        for &token in chunk {
            let is_last = position + 1 == prompt.len();
            batch
                .add(token, position as i32, &[0], is_last)
                .map_err(inference_error)?;
            position += 1;
        }
        ctx.decode(&mut batch).map_err(inference_error)?;
    }
    let prefill = started.elapsed();
    tracing::debug!(
        tokens = prompt.len() - reused,
        reused,
        ms = prefill.as_secs_f64() * 1e3,
        "prefill"
    );

    let decode_started = Instant::now();
    let mut evaluated = prompt.clone();
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
        evaluated.push(LlamaToken(token as i32));
        position += 1;
    };
    *cached = evaluated;
    let timings = Timings {
        prefill,
        decode: decode_started.elapsed(),
    };
    let mut generation = decoder.finish(prompt.len(), finish_reason, timings);
    generation.cached_prompt_tokens = reused;
    Ok(generation)
}
