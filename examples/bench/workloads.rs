//! The DSPy workloads, every system at its best setting, side by side:
//!
//! - ours: `LlamaCppAdapter` at 1, 2, 4, 8, … sequences, doubling up to
//!   `--sequences` (through `Predict`, in-process), and through
//!   `adapter.lm()` (dspy-rs's HTTP route to our loopback server) at the
//!   best of those;
//! - dspy-rs's `ChatAdapter` against `llama-server` at as many slots;
//! - Python DSPy against `dsrs-local`'s server (our best setting), against
//!   `llama-server` (its best slot count), and against `llama-cpp-python`'s
//!   server.
//!
//! Every system answers the same QA program (4 demos, a new question per
//! example, at most `REPLY_TOKENS` tokens) with the same number of calls in
//! flight (`Options::clients`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use dspy_rs::{LM, Predict, Predictor, configure};
use dsrs_local::Backend;
use dsrs_local::server::{Server, ServerOptions};
use dsrs_local::{GenerationConfig, LlamaCppAdapter, LlamaCppConfig, LlamaCppModel};
use futures::StreamExt;

use super::{
    CELLS_PER_SEQUENCE, DspyRow, Options, PassBreakdown, REPLY_TOKENS, median, qa_with_demos,
    question,
};
use crate::peers::{self, Peers};

/// What the workloads measured, and the best settings found.
pub struct Workloads {
    pub rows: Vec<DspyRow>,
    pub best_sequences: usize,
    pub best_slots: Option<usize>,
    pub python_versions: Option<serde_json::Value>,
    pub peak_sequences: usize,
}

/// Context of an adapter or server with `sequences` sequences: enough cells
/// for each one's prompt and reply.
pub fn cells(sequences: usize) -> usize {
    (sequences * CELLS_PER_SEQUENCE as usize).max(4096)
}

fn adapter(model: &Arc<LlamaCppModel>, sequences: usize, clients: usize) -> LlamaCppAdapter {
    LlamaCppAdapter::from_loaded_model(
        Arc::clone(model),
        LlamaCppConfig::default()
            .with_context_length(cells(sequences))
            .with_parallel_sequences(sequences)
            .with_generation(
                GenerationConfig::default()
                    .with_max_tokens(REPLY_TOKENS as usize)
                    .with_temperature(0.0)
                    .with_max_concurrency(clients),
            ),
    )
}

/// `Predict` through the configured adapter, or through `lm` over HTTP
/// (`forward_with_config`): the median of `runs` lone calls (a new question
/// each), then the evaluation, `clients` calls at a time.
/// With `engine`, the row says where the evaluation's time went in it.
pub async fn dspy_row(
    system: &str,
    options: &Options,
    over_http: Option<Arc<LM>>,
    engine: Option<&dyn Backend>,
) -> anyhow::Result<DspyRow> {
    let predict = Predict::new(qa_with_demos()?);
    let call = |i: usize| {
        let predict = &predict;
        let lm = over_http.clone();
        async move {
            match lm {
                Some(lm) => predict.forward_with_config(question(i), lm).await,
                None => predict.forward(question(i)).await,
            }
        }
    };
    let mut call_ms = Vec::new();
    for run in 0..=options.runs {
        let started = Instant::now();
        let _ = call(10_000 + run).await;
        if run > 0 {
            call_ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let before = engine.map(|engine| engine.stats());
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(0..options.eval_examples)
        .map(call)
        .buffer_unordered(options.clients)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let passes = engine.zip(before).map(|(engine, before)| {
        PassBreakdown::between(&before, &engine.stats(), elapsed.as_secs_f64())
    });
    let parsed = results.iter().filter(|r| r.is_ok()).count();
    if let Some(Err(error)) = results.iter().find(|r| r.is_err()) {
        let message = error.to_string();
        // A refused connection fails fast and would look like speed.
        anyhow::ensure!(
            !message.contains("onnect"),
            "{system}: calls failed to connect: {message}"
        );
    }
    println!(
        "  {system}: {:.2} examples/s, one call {:.0} ms",
        options.eval_examples as f64 / elapsed.as_secs_f64(),
        median(call_ms.clone())
    );
    Ok(DspyRow {
        system: system.to_string(),
        call_ms: median(call_ms),
        examples: options.eval_examples,
        examples_per_s: options.eval_examples as f64 / elapsed.as_secs_f64(),
        parsed,
        passes,
    })
}

fn best<T: Copy>(rows: &[(T, DspyRow)]) -> Option<T> {
    rows.iter()
        .max_by(|a, b| a.1.examples_per_s.total_cmp(&b.1.examples_per_s))
        .map(|(setting, _)| *setting)
}

/// Runs every workload on `model` (the file at `path`).
pub async fn run(
    model: &Arc<LlamaCppModel>,
    path: &Path,
    options: &Options,
    peers: &Peers,
) -> anyhow::Result<Workloads> {
    // 1, 2, 4, … up to the most sequences asked for.
    let sweep: Vec<usize> = std::iter::successors(Some(1), |&n| Some(n * 2))
        .take_while(|&n| n <= options.sequences.max(1))
        .collect();
    let mut rows = Vec::new();
    let mut ours = Vec::new();
    let mut peak_sequences = 0;
    println!("measuring DSPy workloads ({} clients)…", options.clients);
    for &sequences in &sweep {
        let adapter = adapter(model, sequences, options.clients);
        configure(adapter.lm().await?, adapter.clone());
        let name = format!("LlamaCppAdapter, {sequences} sequence{}", plural(sequences));
        let row = dspy_row(&name, options, None, Some(adapter.backend().as_ref())).await?;
        peak_sequences = peak_sequences.max(adapter.backend().stats().peak_sequences);
        ours.push((sequences, row.clone()));
        rows.push(row);
    }
    let best_sequences = best(&ours).unwrap_or(1);

    // dspy-rs's HTTP route to the same engine: the loopback server's hop.
    let adapter = adapter(model, best_sequences, options.clients);
    let lm = Arc::new(adapter.lm().await?);
    configure((*lm).clone(), adapter.clone());
    let name = format!("dspy-rs through adapter.lm() (HTTP), {best_sequences} sequences");
    let engine: Option<&dyn Backend> = Some(adapter.backend().as_ref());
    rows.push(dspy_row(&name, options, Some(lm), engine).await?);

    // dspy-rs's own ChatAdapter against llama-server at each slot count.
    let mut servers = Vec::new();
    if let Some(binary) = peers.llama_server() {
        for &slots in &sweep {
            match llama_server_row(&binary, path, slots, options).await {
                Ok(row) => {
                    servers.push((slots, row.clone()));
                    rows.push(row);
                }
                Err(error) => println!("skipping llama-server at {slots} slots: {error:#}"),
            }
        }
    }
    let best_slots = best(&servers);

    // Python DSPy against each server.
    let mut python_versions = None;
    if let Some(python) = peers.python() {
        let ours = Server::start(
            adapter,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            ServerOptions::default()
                .with_model_name("bench")
                .with_default_max_tokens(REPLY_TOKENS as usize),
        )?;
        let name = format!("Python DSPy + dsrs-local serve, {best_sequences} sequences");
        match python_row(&python, &name, path, Some(&ours.base_url()), options) {
            Ok((row, versions)) => {
                rows.push(row);
                python_versions = Some(versions);
            }
            Err(error) => println!("skipping {name}: {error:#}"),
        }
        drop(ours);
        if let (Some(binary), Some(slots)) = (peers.llama_server(), best_slots) {
            let server =
                peers::Server::start(&binary, path, slots, cells(slots) as u32, REPLY_TOKENS)?;
            let name = format!("Python DSPy + llama-server, {slots} slots");
            match python_row(&python, &name, path, Some(&server.base_url), options) {
                Ok((row, _)) => rows.push(row),
                Err(error) => println!("skipping {name}: {error:#}"),
            }
        }
        let name = "Python DSPy + llama-cpp-python server";
        match python_row(&python, name, path, None, options) {
            Ok((row, _)) => rows.push(row),
            Err(error) => println!("skipping {name}: {error:#}"),
        }
    }
    Ok(Workloads {
        rows,
        best_sequences,
        best_slots,
        python_versions,
        peak_sequences,
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

async fn llama_server_row(
    binary: &Path,
    model: &Path,
    slots: usize,
    options: &Options,
) -> anyhow::Result<DspyRow> {
    let server = peers::Server::start(binary, model, slots, cells(slots) as u32, REPLY_TOKENS)?;
    let lm = LM::builder()
        .base_url(server.base_url.clone())
        .model("bench".to_string())
        .temperature(0.0)
        .max_tokens(REPLY_TOKENS)
        .build()
        .await?;
    configure(lm, dspy_rs::ChatAdapter);
    let name = format!(
        "dspy-rs ChatAdapter + llama-server, {slots} slot{}",
        plural(slots)
    );
    dspy_row(&name, options, None, None).await
}

/// Python DSPy against `base_url`, or against llama-cpp-python's server
/// (which the script starts) when `None`.
fn python_row(
    python: &Path,
    name: &str,
    model: &Path,
    base_url: Option<&str>,
    options: &Options,
) -> anyhow::Result<(DspyRow, serde_json::Value)> {
    let report = peers::python_dspy(
        python,
        model,
        base_url,
        options.eval_examples,
        options.runs,
        REPLY_TOKENS as usize,
        options.clients,
    )?;
    println!(
        "  {name}: {:.2} examples/s",
        report["examples_per_s"].as_f64().unwrap_or(f64::NAN)
    );
    let row = DspyRow {
        system: name.to_string(),
        call_ms: report["call_ms"].as_f64().unwrap_or(f64::NAN),
        examples: options.eval_examples,
        examples_per_s: report["examples_per_s"].as_f64().unwrap_or(f64::NAN),
        parsed: report["parsed"].as_u64().unwrap_or(0) as usize,
        passes: None,
    };
    Ok((row, report["versions"].clone()))
}
