//! A soak through `dsrs-local serve` on the crate's own model: 1,000
//! requests from 32 concurrent clients, with clients that give up mid-call
//! and bad requests mixed in. Every good request is answered once, with the
//! reply it gets when sent alone; every bad one gets its error; afterwards
//! the engine holds no sequence and no cell, and the process's memory is
//! where it was after warm-up (within a margin). The questions are the own
//! model's held-out ones, whose answers do not hang on a near tie. Bounded:
//! loopback only, about a minute on 2 cores.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Served, metrics_text, task_messages};

const REQUESTS: usize = 1000;
const CLIENTS: usize = 32;
const PROMPTS: usize = 40;
/// How far the server's resident memory may grow from after warm-up to the
/// end: room for allocator pages kept for reuse; a leak of 70 KiB or more
/// per request (the prompt and reply of each are a few KiB) would fail it.
const RSS_MARGIN_BYTES: u64 = 64 << 20;

/// The own model's held-out questions (DSPy prompts, held to their
/// fields' grammar by the server).
static QUESTIONS: std::sync::LazyLock<Vec<Value>> =
    std::sync::LazyLock::new(|| task_messages(PROMPTS));

fn good(i: usize, stream: bool) -> Value {
    json!({
        "messages": QUESTIONS[i % PROMPTS],
        "max_tokens": 48,
        "temperature": 0,
        "stream": stream,
    })
}

/// A bad request of one of four kinds, and the status it must get.
fn bad(i: usize) -> (Vec<u8>, u16) {
    match i % 4 {
        0 => (b"{\"messages\": [".to_vec(), 400),
        1 => (
            json!({"messages": [{"role": "wizard", "content": "x"}]})
                .to_string()
                .into_bytes(),
            400,
        ),
        2 => (
            good(i, false).as_object().map_or_else(Vec::new, |o| {
                let mut o = o.clone();
                o.insert("n".into(), json!(0));
                Value::Object(o).to_string().into_bytes()
            }),
            400,
        ),
        _ => (
            json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
                .to_string()
                .into_bytes(),
            404,
        ),
    }
}

/// What one request did.
#[derive(Debug)]
enum Outcome {
    Answered(Duration),
    Refused,
    GaveUp,
    Wrong(String),
}

fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The gauges of `/metrics` that say what the engine holds.
async fn held(http: &reqwest::Client, base_url: &str) -> Vec<(String, f64)> {
    let text = metrics_text(http, base_url).await;
    [
        "dsrs_active_sequences",
        "dsrs_reserved_kv_cells",
        "dsrs_running_requests",
        "dsrs_queue_depth",
    ]
    .iter()
    .map(|name| {
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN);
        (name.to_string(), value)
    })
    .collect()
}

async fn reply_text(response: reqwest::Response, stream: bool) -> Option<String> {
    if !stream {
        let body: Value = response.json().await.ok()?;
        return body["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_string);
    }
    let text = response.text().await.ok()?;
    let mut reply = String::new();
    for event in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if event == "[DONE]" {
            return Some(reply);
        }
        let chunk: Value = serde_json::from_str(event).ok()?;
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            reply.push_str(piece);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_requests_with_clients_giving_up_and_bad_ones_lose_nothing() {
    let served = Served::start(&["--parallel", "8", "--max-tokens", "48"]);
    let base_url = served.base_url.clone();
    let url = format!("{base_url}/chat/completions");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();

    // Warm-up, and each prompt's reply when sent alone.
    let mut alone = Vec::new();
    for i in 0..PROMPTS {
        let response = http.post(&url).json(&good(i, false)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        alone.push(reply_text(response, false).await.expect("a reply"));
    }
    let alone = Arc::new(alone);
    let warm_rss = resident_bytes(served.child.id());

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clients = (0..CLIENTS).map(|_| {
        let (http, url, next, alone) = (
            http.clone(),
            url.clone(),
            Arc::clone(&next),
            Arc::clone(&alone),
        );
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= REQUESTS {
                    return outcomes;
                }
                let sent = Instant::now();
                let outcome = match i % 20 {
                    0 => {
                        let (body, status) = bad(i / 20);
                        let response = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await
                            .unwrap();
                        let got = response.status().as_u16();
                        let error: Value = response.json().await.unwrap_or_default();
                        if got == status && error["error"]["message"].is_string() {
                            Outcome::Refused
                        } else {
                            Outcome::Wrong(format!("bad request {i}: {got} {error}"))
                        }
                    }
                    // A client that gives up after a few milliseconds, mid-call.
                    1 | 2 => {
                        let stream = i % 20 == 2;
                        let call = async {
                            let response =
                                http.post(&url).json(&good(i, stream)).send().await.ok()?;
                            reply_text(response, stream).await
                        };
                        match tokio::time::timeout(Duration::from_millis((i % 7 * 10) as u64), call)
                            .await
                        {
                            Err(_) => Outcome::GaveUp,
                            Ok(Some(reply)) if reply == alone[i % PROMPTS] => {
                                Outcome::Answered(sent.elapsed())
                            }
                            Ok(other) => Outcome::Wrong(format!("request {i}: {other:?}")),
                        }
                    }
                    kind => {
                        let stream = kind % 4 == 3;
                        let response = http.post(&url).json(&good(i, stream)).send().await.unwrap();
                        let status = response.status().as_u16();
                        match reply_text(response, stream).await {
                            Some(reply) if status == 200 && reply == alone[i % PROMPTS] => {
                                Outcome::Answered(sent.elapsed())
                            }
                            other => Outcome::Wrong(format!(
                                "request {i} ({status}): {other:?}, alone {:?}",
                                alone[i % PROMPTS]
                            )),
                        }
                    }
                };
                outcomes.push(outcome);
            }
        })
    });
    let outcomes: Vec<Outcome> = futures::future::join_all(clients)
        .await
        .into_iter()
        .flat_map(|o| o.unwrap())
        .collect();
    let elapsed = started.elapsed();

    // Nothing held once every call has ended (a given-up call's generation
    // ends within a step of its client going away).
    let mut gauges = held(&http, &base_url).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while gauges.iter().any(|(_, v)| *v != 0.0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        gauges = held(&http, &base_url).await;
    }
    let end_rss = resident_bytes(served.child.id());

    let wrong: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Wrong(what) => Some(what),
            _ => None,
        })
        .collect();
    let mut latencies: Vec<Duration> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Answered(latency) => Some(*latency),
            _ => None,
        })
        .collect();
    latencies.sort();
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    println!(
        "soak: {} requests in {:.1} s: {} answered, {} refused (bad), {} given up, {} wrong; \
         latency p50 {:.0} ms, p99 {:.0} ms; RSS {:.1} MiB after warm-up, {:.1} MiB at the end; \
         held at the end: {gauges:?}",
        outcomes.len(),
        elapsed.as_secs_f64(),
        latencies.len(),
        count(|o| matches!(o, Outcome::Refused)),
        count(|o| matches!(o, Outcome::GaveUp)),
        wrong.len(),
        percentile(0.5).as_secs_f64() * 1e3,
        percentile(0.99).as_secs_f64() * 1e3,
        warm_rss as f64 / (1 << 20) as f64,
        end_rss as f64 / (1 << 20) as f64,
    );
    assert_eq!(outcomes.len(), REQUESTS);
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(count(|o| matches!(o, Outcome::Refused)), REQUESTS / 20);
    assert!(
        count(|o| matches!(o, Outcome::GaveUp)) > 0,
        "no client gave up"
    );
    assert!(gauges.iter().all(|(_, v)| *v == 0.0), "{gauges:?}");
    assert!(
        end_rss <= warm_rss + RSS_MARGIN_BYTES,
        "RSS grew from {warm_rss} to {end_rss} bytes"
    );
}
