//! The remote backend over a fleet of llama-server processes on this
//! machine (issue 26): a 64-example DSPy evaluation over 1, 2 and 4
//! instances with prefix affinity off and on (throughput, prefix-cache hit
//! rate, calls per endpoint), the client's own time per call, and the parse
//! rate of replies with the crate's grammar sent against none.
//!
//! Needs llama-server built with llguidance: `bash benches/setup-peers.sh
//! llama-server` (`make bench` runs both). Writes
//! `benches/results/scale-out-cpu.json`.
//!
//! Run: `cargo run --example scale_out`

use std::time::{Duration, Instant};

use anyhow::Context;
use dsrs_local::testing::tasks::{TaskExample, TaskStream};
use dsrs_local::testing::{LlamaServerProcess, task_model_path};
use dsrs_local::{GenerationConfig, ModelSource, RemoteAdapter, RemoteConfig, RemoteEngine};
use futures::StreamExt;
use serde_json::{Value, json};

const EXAMPLES: usize = 64;
const CONCURRENCY: usize = 8;
/// Slots per server and context per slot.
const SLOTS: usize = 4;
const SLOT_CONTEXT: usize = 4096;

/// What one evaluation gave.
#[derive(Debug, Default)]
struct Run {
    seconds: f64,
    parsed: usize,
    correct: usize,
    failed: usize,
    prompt_tokens: usize,
    cached_tokens: usize,
    per_endpoint: Vec<u64>,
}

impl Run {
    fn json(&self) -> Value {
        json!({
            "examples_per_second": EXAMPLES as f64 / self.seconds,
            "parse_rate": self.parsed as f64 / EXAMPLES as f64,
            "accuracy": self.correct as f64 / EXAMPLES as f64,
            "failed_calls": self.failed,
            "prefix_cache_hit_rate": self.hit_rate(),
            "calls_per_endpoint": self.per_endpoint,
        })
    }

    fn hit_rate(&self) -> f64 {
        self.cached_tokens as f64 / self.prompt_tokens.max(1) as f64
    }
}

fn examples() -> Vec<TaskExample> {
    TaskStream::held_out(2031).short_answers(EXAMPLES)
}

fn start_servers(model: &std::path::Path, count: usize) -> anyhow::Result<Vec<LlamaServerProcess>> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = (cores / count).max(1).to_string();
    let context = (SLOTS * SLOT_CONTEXT).to_string();
    let slots = SLOTS.to_string();
    (0..count)
        .map(|_| {
            LlamaServerProcess::start(model, &["-np", &slots, "-c", &context, "-t", &threads])
                .map_err(anyhow::Error::msg)
        })
        .collect()
}

async fn evaluate(
    model: &std::path::Path,
    servers: &[LlamaServerProcess],
    engine: RemoteEngine,
    affinity: bool,
    examples: &[TaskExample],
) -> anyhow::Result<Run> {
    let mut config = RemoteConfig::new(&servers[0].base_url, engine)
        .with_prefix_affinity(affinity)
        .with_context_length(SLOT_CONTEXT);
    for server in &servers[1..] {
        config = config.with_endpoint(&server.base_url, engine);
    }
    let adapter = RemoteAdapter::connect(model, config, GenerationConfig::default())?;
    let lm = adapter.lm().await?;
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(examples)
        .map(|example| {
            let (adapter, lm) = (&adapter, &lm);
            async move {
                let result = adapter
                    .predict(lm, &example.signature, &example.inputs)
                    .await;
                (example, result)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut run = Run {
        seconds: started.elapsed().as_secs_f64(),
        per_endpoint: adapter
            .backend()
            .endpoints()
            .iter()
            .map(|e| e.served)
            .collect(),
        ..Run::default()
    };
    for (example, result) in results {
        match result {
            Ok((fields, generation)) => {
                run.parsed += 1;
                run.prompt_tokens += generation.prompt_tokens;
                run.cached_tokens += generation.cached_prompt_tokens;
                if fields.get(&example.answer_field) == Some(example.expected()) {
                    run.correct += 1;
                }
            }
            Err(dsrs_local::Error::Parse(_)) => {}
            Err(_) => run.failed += 1,
        }
    }
    Ok(run)
}

/// Milliseconds per call, one at a time, against `base_url`: the whole
/// call, and the whole call less the engine's reported time.
async fn time_per_call(
    model: &std::path::Path,
    base_url: &str,
    examples: &[TaskExample],
) -> anyhow::Result<(f64, f64)> {
    let config =
        RemoteConfig::new(base_url, RemoteEngine::LlamaServer).with_context_length(SLOT_CONTEXT);
    let adapter = RemoteAdapter::connect(model, config, GenerationConfig::default())?;
    let lm = adapter.lm().await?;
    let (mut wall, mut outside) = (Duration::ZERO, Duration::ZERO);
    for example in examples {
        let started = Instant::now();
        // A reply that does not parse costs the same client work.
        let result = adapter
            .predict(&lm, &example.signature, &example.inputs)
            .await;
        let elapsed = started.elapsed();
        wall += elapsed;
        outside += match result {
            Ok((_, g)) => elapsed.saturating_sub(g.timings.prefill + g.timings.decode),
            Err(_) => elapsed,
        };
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / examples.len() as f64;
    Ok((ms(wall), ms(outside)))
}

/// An endpoint that answers every completion at once with the same DSPy
/// reply (whether it fits the signature does not matter here): calls to it
/// cost only the client's own work.
fn instant_endpoint() -> anyhow::Result<String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let body = json!({
        "choices": [{"index": 0, "text": "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    })
    .to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    // Headers up to the blank line, then the body.
                    let (mut length, mut line) = (0, String::new());
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        line.clear();
                    }
                    let mut request = vec![0; length];
                    if line != "\r\n" || reader.read_exact(&mut request).is_err() {
                        return; // the client closed the connection
                    }
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if reader.get_mut().write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(url)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dsrs_local::testing::llama_server_binary().map_err(anyhow::Error::msg)?;
    let own = task_model_path();
    let examples = examples();
    let mut fleet_rows = Vec::new();
    println!(
        "64-example evaluation over llama-server instances ({CONCURRENCY} in flight, {SLOTS} slots each), own model:"
    );
    println!(
        "{:>9} {:>9} {:>11} {:>9} {:>9} {:>12}  calls per endpoint",
        "servers", "affinity", "examples/s", "accuracy", "parsed", "cache hits"
    );
    for count in [1, 2, 4] {
        for affinity in [false, true] {
            // Fresh servers: each run starts with cold caches.
            let servers = start_servers(&own, count)?;
            let run = evaluate(
                &own,
                &servers,
                RemoteEngine::LlamaServer,
                affinity,
                &examples,
            )
            .await?;
            println!(
                "{count:>9} {:>9} {:>11.2} {:>8.0}% {:>8.0}% {:>11.1}%  {:?}",
                if affinity { "on" } else { "off" },
                EXAMPLES as f64 / run.seconds,
                100.0 * run.correct as f64 / EXAMPLES as f64,
                100.0 * run.parsed as f64 / EXAMPLES as f64,
                100.0 * run.hit_rate(),
                run.per_endpoint,
            );
            let mut row = run.json();
            row["servers"] = json!(count);
            row["affinity"] = json!(affinity);
            fleet_rows.push(row);
        }
    }

    // Where a call's time goes, one call at a time (no queue).
    let server = start_servers(&own, 1)?.remove(0);
    let (served_ms, outside_ms) = time_per_call(&own, &server.base_url, &examples[..16]).await?;
    drop(server);
    let (client_ms, _) = time_per_call(&own, &instant_endpoint()?, &examples).await?;
    println!(
        "\none call at a time: {served_ms:.2} ms on llama-server, {outside_ms:.2} ms of it outside"
    );
    println!(
        "its timings (its request handling and grammar compilation, HTTP, the client); the client"
    );
    println!(
        "alone (format, render, count, route, HTTP, parse), against an endpoint that answers at once: {client_ms:.2} ms"
    );

    println!(
        "\nthe crate's grammar sent (llama-server with llguidance) vs not (stops and budget only), 1 server:"
    );
    println!(
        "{:<14} {:>8} {:>9} {:>9}",
        "model", "grammar", "parsed", "accuracy"
    );
    let mut grammar_rows = Vec::new();
    let smollm2 = ModelSource::parse("smollm2-135m").resolve().ok();
    if smollm2.is_none() {
        println!("(smollm2-135m is not cached: `make models` fetches it; its rows are skipped)");
    }
    let models = [("dsrs-tiny", Some(own.clone())), ("smollm2-135m", smollm2)];
    for (name, path) in models {
        let Some(path) = path else { continue };
        for engine in [RemoteEngine::LlamaServer, RemoteEngine::LlamaServerGbnfOnly] {
            let servers = start_servers(&path, 1).context("llama-server on the model")?;
            let run = evaluate(&path, &servers, engine, true, &examples).await?;
            let sent = engine.takes_grammar();
            println!(
                "{name:<14} {:>8} {:>8.0}% {:>8.0}%",
                if sent { "sent" } else { "none" },
                100.0 * run.parsed as f64 / EXAMPLES as f64,
                100.0 * run.correct as f64 / EXAMPLES as f64,
            );
            let mut row = run.json();
            row["model"] = json!(name);
            row["grammar_sent"] = json!(sent);
            grammar_rows.push(row);
        }
    }

    let results = json!({
        "machine": format!("{} cores", std::thread::available_parallelism().map_or(1, usize::from)),
        "examples": EXAMPLES,
        "concurrency": CONCURRENCY,
        "fleet": fleet_rows,
        "ms_per_call_on_llama_server": served_ms,
        "ms_per_call_outside_engine_timings": outside_ms,
        "client_ms_per_call": client_ms,
        "grammar": grammar_rows,
    });
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/scale-out-cpu.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    println!("\nwritten: {}", path.display());
    Ok(())
}
