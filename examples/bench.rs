//! Speed of the adapters, side by side in one run, on a test-built model of
//! Qwen2.5-0.5B's shape (24 layers, width 896, 14/2 heads, FFN 4864).
//!
//! ```text
//! cargo run --example bench                     # Q8_0, both backends
//! cargo run --example bench -- --weights q4k    # Q4_K (Q8_0 where rows are not a multiple of 256)
//! cargo run --example bench -- --runs 5
//! ```
//!
//! For each backend it measures one `Predict::forward` (QA, greedy,
//! constrained, a new question each run so only the shared system message can
//! come from llama.cpp's cached prefix) and a raw generation with a fixed prompt and output length
//! (no grammar, `max_tokens` generated tokens): prompt-processing and
//! generation tokens/s. It prints a table and writes JSON next to the model
//! (`target/dsrs-bench/`). The model is written once and reused.
//!
//! For llama.cpp it also measures an evaluation: `--eval-examples` QA calls
//! with 4 demos (default 16, each at most 32 reply tokens), made one by one
//! and then all at once (decoded together in batches of up to 8 sequences,
//! sharing the system message and demos): examples per second and the ratio.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use dspy_rs::{Signature, example};
use dsrs_local::testing::{TestModelSpec, WeightType, chat_tokenizer};
use dsrs_local::{
    Backend, CandleAdapter, CandleConfig, CandleLoadOptions, CandleModel, GenerationConfig,
    GenerationRequest, LlamaCppAdapter, LlamaCppConfig, LlamaCppLoadOptions, LlamaCppModel,
    LocalAdapter, Sampling, local_lm,
};
use serde_json::json;

#[Signature]
struct QA {
    /// Answer the question in a few words.
    #[input]
    question: String,
    #[output]
    answer: String,
}

struct Options {
    weights: WeightType,
    runs: usize,
    prompt_tokens: usize,
    generated_tokens: usize,
    eval_examples: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        weights: WeightType::Q8_0,
        runs: 3,
        prompt_tokens: 128,
        generated_tokens: 64,
        eval_examples: 16,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("a flag needs a value");
        match arg.as_str() {
            "--weights" => {
                options.weights = match value()?.as_str() {
                    "q8_0" => WeightType::Q8_0,
                    "q4k" => WeightType::Q4K,
                    "f16" => WeightType::F16,
                    other => anyhow::bail!("unknown weight type {other} (q8_0, q4k, f16)"),
                }
            }
            "--runs" => options.runs = value()?.parse()?,
            "--prompt-tokens" => options.prompt_tokens = value()?.parse()?,
            "--generated-tokens" => options.generated_tokens = value()?.parse()?,
            "--eval-examples" => options.eval_examples = value()?.parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(options)
}

#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    backend: &'static str,
    predict_ms: f64,
    predict_prompt_tokens: usize,
    predict_cached_tokens: usize,
    predict_completion_tokens: usize,
    pp_tokens_per_s: f64,
    tg_tokens_per_s: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn measure<B: Backend>(
    name: &'static str,
    adapter: LocalAdapter<B>,
    options: &Options,
) -> anyhow::Result<Row> {
    let lm = local_lm().await?;
    let signature = QA::new();
    let question = |i: usize| example! { "question": "input" => format!("What is the capital of country number {i}?") };
    // Warm-up: first-use costs (grammar index, context creation) stay out of the figures.
    adapter.predict(&lm, &signature, &question(0)).await?;
    let mut predict_ms = Vec::new();
    let mut last = None;
    // A new question each time, as in an evaluation: the system message is shared.
    for run in 1..=options.runs {
        let started = Instant::now();
        let (_, generation) = adapter.predict(&lm, &signature, &question(run)).await?;
        predict_ms.push(started.elapsed().as_secs_f64() * 1e3);
        last = Some(generation);
    }
    let last = last.context("no run")?;

    // A fixed prompt of the requested length, generating exactly the requested tokens.
    let prompt = fixed_prompt(adapter.backend().as_ref(), options.prompt_tokens)?;
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for run in 0..options.runs {
        let generation = adapter
            .generate(GenerationRequest {
                // A different first word each run, so no run reuses another's cache.
                prompt: format!("{run} {prompt}"),
                sampling: Sampling::greedy(),
                max_tokens: options.generated_tokens,
                stop: vec![],
                constraint: None,
            })
            .await?;
        let evaluated = generation.prompt_tokens - generation.cached_prompt_tokens;
        pp.push(evaluated as f64 / generation.timings.prefill.as_secs_f64());
        tg.push(generation.completion_tokens as f64 / generation.timings.decode.as_secs_f64());
    }
    Ok(Row {
        backend: name,
        predict_ms: median(predict_ms),
        predict_prompt_tokens: last.prompt_tokens,
        predict_cached_tokens: last.cached_prompt_tokens,
        predict_completion_tokens: last.completion_tokens,
        pp_tokens_per_s: median(pp),
        tg_tokens_per_s: median(tg),
    })
}

/// Examples per second through `concurrency` sequences: QA with 4 demos, a
/// new question each, all sent at once.
async fn evaluation_rate(
    model: &Arc<LlamaCppModel>,
    examples: usize,
    concurrency: usize,
) -> anyhow::Result<(f64, usize)> {
    let lm = local_lm().await?;
    let mut signature = QA::new();
    dspy_rs::MetaSignature::set_demos(
        &mut signature,
        vec![
            example! { "question": "input" => "What is the capital of France?", "answer": "output" => "Paris" },
            example! { "question": "input" => "What is 2 + 2?", "answer": "output" => "4" },
            example! { "question": "input" => "Which planet is largest?", "answer": "output" => "Jupiter" },
            example! { "question": "input" => "Who wrote Hamlet?", "answer": "output" => "Shakespeare" },
        ],
    )?;
    let config = GenerationConfig::default()
        .with_max_tokens(32)
        .with_max_concurrency(concurrency);
    let adapter = LlamaCppAdapter::from_loaded_model(
        Arc::clone(model),
        LlamaCppConfig::default()
            .with_context_length(4096)
            .with_parallel_sequences(concurrency)
            .with_generation(config),
    );
    // Warm-up: context creation and the grammar index stay out of the figure.
    adapter
        .predict(
            &lm,
            &signature,
            &example! { "question": "input" => "Warm up?" },
        )
        .await?;
    let questions: Vec<_> = (0..examples)
        .map(|i| example! { "question": "input" => format!("What is the capital of country number {i}?") })
        .collect();
    let started = Instant::now();
    let calls = questions
        .iter()
        .map(|inputs| adapter.predict(&lm, &signature, inputs));
    for result in futures::future::join_all(calls).await {
        result?;
    }
    let rate = examples as f64 / started.elapsed().as_secs_f64();
    Ok((rate, adapter.backend().peak_concurrency()))
}

/// Words until the backend's tokenizer counts `tokens` tokens.
fn fixed_prompt(backend: &dyn Backend, tokens: usize) -> anyhow::Result<String> {
    let words = [
        "the", "model", "reads", "a", "long", "story", "about", "rivers", "and", "stones",
    ];
    let mut prompt = String::new();
    let mut i = 0;
    while backend.count_tokens(&prompt)? < tokens {
        prompt.push_str(words[i % words.len()]);
        prompt.push(' ');
        i += 1;
    }
    Ok(prompt)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dsrs-bench");
    std::fs::create_dir_all(&dir)?;
    let label = format!("{:?}", options.weights).to_lowercase();
    let path = dir.join(format!("qwen2.5-0.5b-shape-{label}.gguf"));
    if !path.exists() {
        println!("writing {} (once)…", path.display());
        TestModelSpec::qwen2_5_0_5b_shape(chat_tokenizer(), options.weights).write(&path)?;
    }
    let file_mb = std::fs::metadata(&path)?.len() as f64 / 1e6;
    println!(
        "model: {} ({file_mb:.0} MB), {} runs, median",
        path.display(),
        options.runs
    );
    let config = GenerationConfig::default()
        .with_max_tokens(options.generated_tokens)
        .with_seed(1);

    let llama_model = Arc::new(LlamaCppModel::load(&path, LlamaCppLoadOptions::default())?);
    let llama = LlamaCppAdapter::from_loaded_model(
        Arc::clone(&llama_model),
        LlamaCppConfig::default().with_generation(config.clone()),
    );
    let candle = Arc::new(CandleModel::load(&path, CandleLoadOptions::default())?);
    let candle =
        CandleAdapter::from_loaded_model(candle, CandleConfig::default().with_generation(config));
    let rows = vec![
        measure("llama.cpp", llama, &options).await?,
        measure("candle", candle, &options).await?,
    ];

    println!(
        "\n| backend | Predict (ms) | prompt tok (cached) | reply tok | pp{} t/s | tg{} t/s |",
        options.prompt_tokens, options.generated_tokens
    );
    println!("|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {:.0} | {} ({}) | {} | {:.1} | {:.1} |",
            row.backend,
            row.predict_ms,
            row.predict_prompt_tokens,
            row.predict_cached_tokens,
            row.predict_completion_tokens,
            row.pp_tokens_per_s,
            row.tg_tokens_per_s
        );
    }
    if let [llama, candle] = rows.as_slice() {
        println!(
            "\ncandle / llama.cpp: prompt processing {:.2}x, generation {:.2}x",
            candle.pp_tokens_per_s / llama.pp_tokens_per_s,
            candle.tg_tokens_per_s / llama.tg_tokens_per_s
        );
    }
    let (one_by_one, _) = evaluation_rate(&llama_model, options.eval_examples, 1).await?;
    let (together, peak) = evaluation_rate(&llama_model, options.eval_examples, 8).await?;
    println!(
        "\nllama.cpp evaluation, {} QA examples with 4 demos: one by one {:.2}/s, \
         decoded together {:.2}/s (up to {peak} at once): {:.2}x",
        options.eval_examples,
        one_by_one,
        together,
        together / one_by_one
    );
    let report = json!({
        "model": path.display().to_string(),
        "weights": label,
        "file_mb": file_mb,
        "runs": options.runs,
        "prompt_tokens": options.prompt_tokens,
        "generated_tokens": options.generated_tokens,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "rows": rows,
        "evaluation": {
            "examples": options.eval_examples,
            "one_by_one_per_s": one_by_one,
            "batched_per_s": together,
            "peak_sequences": peak,
        },
    });
    let out = dir.join(format!("results-{label}.json"));
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("\nwrote {}", out.display());
    Ok(())
}
