//! A bare llama-cpp-2 decode loop: our engine's ceiling, with nothing of the
//! adapter (no prompt rendering, no Rust sampler, no grammar, no worker
//! thread). Same context settings as `LlamaCppAdapter`'s defaults.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use anyhow::Context;
use dsrs_local::LlamaCppModel;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

/// Time spent reading the prompt and generating `generated` tokens.
pub struct BareRun {
    pub prefill: Duration,
    pub decode: Duration,
}

/// Reads `prompt` and generates exactly `generated` tokens greedily (an end
/// token does not stop it), on a fresh context of `context_length` cells.
pub fn run(
    model: &LlamaCppModel,
    prompt: &[LlamaToken],
    generated: usize,
    context_length: u32,
    batch_size: u32,
) -> anyhow::Result<BareRun> {
    let threads = super::peers::threads() as i32;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(context_length))
        .with_n_batch(batch_size)
        .with_n_ubatch(batch_size)
        .with_kv_unified(true)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut context = model.new_context(params)?;
    let mut batch = LlamaBatch::new(batch_size as usize, 1);

    let started = Instant::now();
    let mut position = 0i32;
    for chunk in prompt.chunks(batch_size as usize) {
        batch.clear();
        for token in chunk {
            let last = position as usize + 1 == prompt.len();
            batch.add(*token, position, &[0], last)?;
            position += 1;
        }
        context.decode(&mut batch).context("prefill")?;
    }
    let prefill = started.elapsed();

    let mut sampler = LlamaSampler::greedy();
    let started = Instant::now();
    for _ in 0..generated {
        let token = sampler.sample(&context, batch.n_tokens() - 1);
        batch.clear();
        batch.add(token, position, &[0], true)?;
        position += 1;
        context.decode(&mut batch).context("decode")?;
    }
    Ok(BareRun {
        prefill,
        decode: started.elapsed(),
    })
}
