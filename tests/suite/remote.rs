//! The remote backend against real engines on loopback: llama-server
//! processes built with llguidance (`benches/setup-peers.sh llama-server`;
//! skipped with the reason when absent) and a `dsrs-local serve`, all on the
//! crate's own model, whose held-out answers are known.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dspy_rs::{Predict, Predictor, configure, example};
use dsrs_local::prompt::OutputConstraint;
use dsrs_local::testing::tasks::{TaskExample, TaskStream};
use dsrs_local::testing::{LlamaServerProcess, llama_server_binary, task_model_path};
use dsrs_local::{
    Error, FinishReason, GenerationConfig, GenerationRequest, RemoteAdapter, RemoteConfig,
    RemoteEngine,
};
use futures::StreamExt;

use crate::QA;
use crate::support::{GLOBAL_CONFIG, Served, follows_code_grammar};

/// Per-slot context of the test servers (4 slots), and the window the
/// adapter checks prompts against.
const CONTEXT: usize = 4096;

/// `count` llama-servers on the own model, or `None` after printing why not.
fn llama_servers(count: usize) -> Option<Vec<LlamaServerProcess>> {
    if let Err(reason) = llama_server_binary() {
        println!("skipped: {reason}");
        return None;
    }
    let total = (4 * CONTEXT).to_string();
    let servers = (0..count)
        .map(|_| {
            LlamaServerProcess::start(
                &task_model_path(),
                &["-np", "4", "-c", &total, "-t", "1", "--metrics"],
            )
            .expect("llama-server starts on the own model")
        })
        .collect();
    Some(servers)
}

fn config(endpoints: &[(&str, RemoteEngine)]) -> RemoteConfig {
    let (first, rest) = endpoints.split_first().expect("an endpoint");
    rest.iter()
        .fold(
            RemoteConfig::new(first.0, first.1),
            |config, (url, engine)| config.with_endpoint(*url, *engine),
        )
        .with_context_length(CONTEXT)
        .with_health_interval(Duration::from_millis(200))
}

fn remote_adapter(endpoints: &[(&str, RemoteEngine)]) -> RemoteAdapter {
    RemoteAdapter::connect(
        task_model_path(),
        config(endpoints),
        GenerationConfig::default(),
    )
    .expect("the adapter connects")
}

/// `count` held-out questions of the short-answer families, 0–2 demos each.
fn questions(count: usize) -> Vec<TaskExample> {
    TaskStream::held_out(4096).short_answers(count)
}

/// What asking every question, `concurrency` at a time, gave.
#[derive(Debug, Default)]
struct Asked {
    correct: usize,
    errors: Vec<String>,
    cached_tokens: usize,
    prompt_tokens: usize,
}

async fn ask(
    adapter: &RemoteAdapter,
    examples: &[TaskExample],
    concurrency: usize,
    answered: &AtomicUsize,
) -> Asked {
    let lm = adapter.lm().await.expect("the loopback LM starts");
    let results: Vec<_> = futures::stream::iter(examples)
        .map(|example| {
            let lm = &lm;
            async move {
                let result = adapter
                    .predict(lm, &example.signature, &example.inputs)
                    .await;
                answered.fetch_add(1, Ordering::Relaxed);
                (example, result)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut asked = Asked::default();
    for (example, result) in results {
        match result {
            Ok((fields, generation)) => {
                asked.cached_tokens += generation.cached_prompt_tokens;
                asked.prompt_tokens += generation.prompt_tokens;
                if fields.get(&example.answer_field) == Some(example.expected()) {
                    asked.correct += 1;
                }
            }
            Err(error) => asked.errors.push(error.to_string()),
        }
    }
    asked
}

/// Two llama-servers and a `dsrs-local serve`: held-out questions asked
/// eight at a time all answer, right as the model answers them in-process;
/// calls that share a prefix find it cached; every endpoint takes calls;
/// and a DSPy `Predict` through `configure` works the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_of_llama_servers_and_dsrs_local_answers_the_model_questions() {
    let Some(servers) = llama_servers(2) else {
        return;
    };
    let served = Served::start(&[]);
    let served_root = served.base_url.trim_end_matches("/v1").to_string();
    let adapter = remote_adapter(&[
        (&servers[0].base_url, RemoteEngine::LlamaServer),
        (&servers[1].base_url, RemoteEngine::LlamaServer),
        (&served_root, RemoteEngine::DsrsLocal),
    ]);
    let examples = questions(48);
    let asked = ask(&adapter, &examples, 8, &AtomicUsize::new(0)).await;
    assert!(asked.errors.is_empty(), "{:?}", asked.errors);
    assert!(
        asked.correct * 100 >= examples.len() * 95,
        "{} of {} right",
        asked.correct,
        examples.len()
    );
    assert!(asked.cached_tokens > 0, "no prompt prefix was ever cached");
    let status = adapter.backend().endpoints();
    assert!(
        status
            .iter()
            .all(|s| s.healthy && s.served > 0 && s.in_flight == 0),
        "{status:?}"
    );

    let _guard = GLOBAL_CONFIG.lock().await;
    configure(adapter.lm().await.expect("the LM"), adapter);
    let prediction = Predict::new(QA::new())
        .forward(example! { "question": "input" => "What is the capital of Japan?" })
        .await
        .expect("Predict answers through the fleet");
    assert_eq!(prediction.get("answer", None), "Tokyo");
}

/// With affinity, calls that share a prompt prefix meet the engine that
/// cached it: over four servers the hit rate stays near one server's (the
/// shared part of these prompts is their system message, about a quarter of
/// each); spread by load alone, each prefix is read cold on every server.
/// Measured (`cargo run --example scale_out`): 23–25 % against 9–11 %.
#[tokio::test(flavor = "multi_thread")]
async fn prefix_affinity_finds_shared_prefixes_cached_on_a_fleet() {
    let examples = questions(48);
    let mut hit_rates = Vec::new();
    for affinity in [false, true] {
        // Fresh servers: both runs start with cold caches.
        let Some(servers) = llama_servers(4) else {
            return;
        };
        let endpoints: Vec<(&str, RemoteEngine)> = servers
            .iter()
            .map(|s| (s.base_url.as_str(), RemoteEngine::LlamaServer))
            .collect();
        let adapter = RemoteAdapter::connect(
            task_model_path(),
            config(&endpoints).with_prefix_affinity(affinity),
            GenerationConfig::default(),
        )
        .expect("the adapter connects");
        let asked = ask(&adapter, &examples, 8, &AtomicUsize::new(0)).await;
        assert!(asked.errors.is_empty(), "{:?}", asked.errors);
        hit_rates.push(asked.cached_tokens as f64 / asked.prompt_tokens as f64);
    }
    let (off, on) = (hit_rates[0], hit_rates[1]);
    println!("prefix-cache hit rate over 4 servers: affinity off {off:.3}, on {on:.3}");
    assert!(on >= off + 0.05, "affinity off {off:.3}, on {on:.3}");
}

/// An endpoint killed while it holds calls loses none: each is sent to the
/// other and answers once; the dead one gets no more calls.
#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_killed_mid_run_loses_no_call() {
    let Some(mut servers) = llama_servers(2) else {
        return;
    };
    let urls: Vec<String> = servers.iter().map(|s| s.base_url.clone()).collect();
    let adapter = remote_adapter(&[
        (&urls[0], RemoteEngine::LlamaServer),
        (&urls[1], RemoteEngine::LlamaServer),
    ]);
    let examples = questions(32);
    let answered = AtomicUsize::new(0);
    // Once a few have answered and the first server holds calls, kill it.
    let killer = async {
        let started = Instant::now();
        loop {
            let held = adapter.backend().endpoints()[0].in_flight;
            if answered.load(Ordering::Relaxed) >= 4 && held > 0 {
                servers[0].kill();
                return held;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the first server never held a call"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (asked, held_at_kill) = tokio::join!(ask(&adapter, &examples, 8, &answered), killer);
    assert!(
        asked.errors.is_empty(),
        "{held_at_kill} calls were on the killed server: {:?}",
        asked.errors
    );
    assert!(
        asked.correct * 100 >= 32 * 95,
        "{} of 32 right",
        asked.correct
    );
    let status = adapter.backend().endpoints();
    assert!(!status[0].healthy && status[1].healthy, "{status:?}");
    let served_before = status[0].served;
    let again = ask(&adapter, &questions(4), 4, &AtomicUsize::new(0)).await;
    assert!(again.errors.is_empty(), "{:?}", again.errors);
    assert_eq!(adapter.backend().endpoints()[0].served, served_before);
}

/// A grammar the model would not follow on its own binds its reply on
/// every engine that takes one: llama-server (llguidance) and dsrs-local.
#[tokio::test(flavor = "multi_thread")]
async fn the_grammar_binds_replies_on_each_engine_that_takes_it() {
    let Some(servers) = llama_servers(1) else {
        return;
    };
    let served = Served::start(&[]);
    for (url, engine) in [
        (servers[0].base_url.clone(), RemoteEngine::LlamaServer),
        (served.base_url.clone(), RemoteEngine::DsrsLocal),
    ] {
        let adapter = remote_adapter(&[(&url, engine)]);
        let yes_or_no = |reply: &str| reply == "yes" || reply == "no";
        type Follows = fn(&str) -> bool;
        let cases: [(&str, Follows); 2] = [
            ("start: \"yes\" | \"no\"\n", yes_or_no),
            ("start: /[0-9]{3}-[a-c]{2}/\n", follows_code_grammar),
        ];
        for (grammar, follows) in cases {
            let mut request = GenerationRequest::new("Tell me a story.", 16);
            request.constraint = Some(OutputConstraint::from_lark(grammar));
            let reply = adapter.generate(request).await.expect("an answer").text;
            assert!(follows(&reply), "{engine:?} {grammar:?}: {reply:?}");
        }
    }
}

/// A caller that gives up closes its connection; llama-server stops that
/// generation: it decodes far fewer steps after the cancel than the forced
/// 30,000 characters still needed (counted by its `n_decode_total`, so a
/// loaded machine's slowness does not matter; llama-server looks at the
/// connection once a second, a few thousand steps of this small model).
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_call_stops_the_remote_generation() {
    const FORCED: f64 = 30_000.0;
    if let Err(reason) = llama_server_binary() {
        println!("skipped: {reason}");
        return;
    }
    let servers = [LlamaServerProcess::start(
        &task_model_path(),
        &["-np", "1", "-c", "32768", "-t", "1", "--metrics"],
    )
    .expect("llama-server starts")];
    let http = reqwest::Client::new();
    let gauge = |name: &'static str| {
        let request = http.get(format!("{}/metrics", servers[0].base_url));
        async move {
            let metrics = request.send().await.expect("metrics").text().await;
            let metrics = metrics.expect("metrics text");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&format!("llamacpp:{name} ")))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {name} in {metrics}"))
        }
    };
    let adapter = RemoteAdapter::connect(
        task_model_path(),
        RemoteConfig::new(&servers[0].base_url, RemoteEngine::LlamaServer)
            .with_context_length(32768),
        GenerationConfig::default(),
    )
    .expect("the adapter connects");
    let mut request = GenerationRequest::new("Once", 31_000);
    request.constraint = Some(OutputConstraint::from_lark("start: /[a-z]{30000}/\n"));
    let control = request.control.clone();
    let decoded_before = gauge("n_decode_total").await;
    let call = tokio::spawn({
        let adapter = adapter.clone();
        async move { adapter.generate(request).await }
    });
    let started = Instant::now();
    while gauge("requests_processing").await < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(60), "never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    control.cancel();
    let decoded_at_cancel = gauge("n_decode_total").await;
    let generation = call.await.expect("joined").expect("a cancelled generation");
    assert_eq!(generation.finish_reason, FinishReason::Cancelled);
    while gauge("requests_processing").await > 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "llama-server never stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after_cancel = gauge("n_decode_total").await - decoded_at_cancel;
    println!(
        "decodes: {} before the cancel, {after_cancel} after; {:?} in all",
        decoded_at_cancel - decoded_before,
        started.elapsed()
    );
    let still_needed = FORCED - (decoded_at_cancel - decoded_before);
    assert!(
        after_cancel < still_needed / 2.0,
        "llama-server went on generating for a closed connection: {after_cancel} decodes \
         after the cancel, {still_needed} would have finished the reply"
    );
}

/// What cannot be served is a typed error: a prompt past the context (no
/// call made), a request the engine refuses (not retried, the endpoint
/// stays up), a fleet with nothing listening, bad settings, a missing file.
#[tokio::test(flavor = "multi_thread")]
async fn what_cannot_be_served_is_a_typed_error() {
    // Ports nothing listens on: bound, then released.
    let dead: Vec<String> = (0..2)
        .map(|_| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
            format!("http://{}", listener.local_addr().expect("its address"))
        })
        .collect();
    let adapter = remote_adapter(&[
        (&dead[0], RemoteEngine::LlamaServer),
        (&dead[1], RemoteEngine::Vllm),
    ]);
    assert!(adapter.backend().endpoints().iter().all(|s| !s.healthy));
    let error = adapter
        .generate(GenerationRequest::new("Hello", 4))
        .await
        .expect_err("nothing answers");
    assert!(matches!(error, Error::Remote { .. }), "{error}");

    let long = "word ".repeat(3 * CONTEXT);
    let error = adapter
        .generate(GenerationRequest::new(long.clone(), 4))
        .await
        .expect_err("too long");
    assert!(matches!(error, Error::PromptTooLong { .. }), "{error}");

    for (config, what) in [
        (
            RemoteConfig::new("localhost:8080", RemoteEngine::Vllm),
            "not a URL",
        ),
        (
            config(&[(&dead[0], RemoteEngine::Vllm)]).with_attempts(0),
            "no attempt",
        ),
    ] {
        let error = RemoteAdapter::connect(task_model_path(), config, GenerationConfig::default())
            .expect_err(what);
        assert!(
            matches!(error, Error::InvalidConfig { .. }),
            "{what}: {error}"
        );
    }
    let error = RemoteAdapter::connect(
        "no/such/model.gguf",
        config(&[(&dead[0], RemoteEngine::Vllm)]),
        GenerationConfig::default(),
    )
    .expect_err("no file");
    assert!(matches!(error, Error::ModelNotFound { .. }), "{error}");

    // An engine with a smaller context than the adapter believes refuses
    // the prompt itself: the caller's error, and the endpoint stays up.
    if llama_server_binary().is_err() {
        return;
    }
    let small =
        LlamaServerProcess::start(&task_model_path(), &["-np", "1", "-c", "256", "-t", "1"])
            .expect("llama-server starts");
    let adapter = remote_adapter(&[(&small.base_url, RemoteEngine::LlamaServer)]);
    let prompt: String = (0..120).map(|i| format!("{i} ")).collect();
    let error = adapter
        .generate(GenerationRequest::new(prompt, 4))
        .await
        .expect_err("past the engine's context");
    match &error {
        Error::Remote { reason, .. } => assert!(reason.contains("refused"), "{error}"),
        other => panic!("{other}"),
    }
    let status = adapter.backend().endpoints();
    assert!(status[0].healthy, "{status:?}");
    adapter
        .generate(GenerationRequest::new("Hello", 4))
        .await
        .expect("a short prompt is served");
}
