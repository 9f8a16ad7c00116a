//! One suite for every backend: `Predict` signatures through
//! `configure(lm, adapter)` on test-built models with random weights (the
//! protocol: fields, types, errors), and on the crate's own trained model
//! `models/dsrs-tiny.gguf` (the answers).
//! `conformance_suite!(module, Harness)` instantiates it for a backend.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use dspy_rs::adapter::Adapter;
use dspy_rs::{Predict, Prediction, Predictor, configure, example};
use dsrs_local::prompt::{OutputConstraint, SignatureFields};
use dsrs_local::testing::tasks::{TaskExample, TaskFamily, TaskStream, score};
use dsrs_local::testing::{TestModelSpec, chat_tokenizer, task_model_path};
use dsrs_local::{
    Backend, Error, FinishReason, GenerationConfig, GenerationRequest, LocalAdapter, Sampling,
};
use serde_json::Value;

use crate::support::{GLOBAL_CONFIG, LmSettings};
use crate::{Arithmetic, CapitalFacts, MultiField, QA};

/// How the suite reaches a backend.
pub trait Harness: 'static {
    /// The backend under test.
    type Backend: Backend;
    /// An adapter on the model at `path`, with `context_length` tokens of context.
    fn adapter_on(
        path: &Path,
        config: GenerationConfig,
        context_length: usize,
    ) -> Result<LocalAdapter<Self::Backend>, Error>;
    /// An adapter on the shared tiny chat model (loaded once per test process).
    fn adapter(config: GenerationConfig) -> LocalAdapter<Self::Backend>;
    /// An adapter on its own load of the model at `path` (2048 tokens of
    /// context), keeping KV caches between requests or not, reading forced
    /// tokens ahead or not.
    fn adapter_with_prefix_reuse(
        path: &Path,
        config: GenerationConfig,
        reuse: bool,
        fast_forward: bool,
    ) -> Result<LocalAdapter<Self::Backend>, Error>;
}

/// A tiny chat model with random weights, written once per test process.
pub static TINY_CHAT_MODEL: LazyLock<(tempfile::TempDir, PathBuf)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tiny-chat.gguf");
    TestModelSpec::tiny(chat_tokenizer())
        .write(&path)
        .expect("writes the tiny model");
    (dir, path)
});

/// Settings that keep random-weight replies short.
pub fn test_config() -> GenerationConfig {
    GenerationConfig::default()
        .with_max_tokens(400)
        .with_seed(1)
        .with_max_text_chars(60)
}

fn text(prediction: &Prediction, field: &str) -> String {
    match prediction.get(field, None) {
        Value::String(s) => s,
        other => panic!("`{field}` should be a string, got {other}"),
    }
}

pub async fn qa_returns_its_field<H: Harness>() {
    let _guard = GLOBAL_CONFIG.lock().await;
    let configured = H::adapter(test_config());
    configure(configured.lm().await.unwrap(), configured);
    let prediction = Predict::new(QA::new())
        .forward(example! { "question": "input" => "What is the capital of France?" })
        .await
        .unwrap();
    assert!(!text(&prediction, "answer").trim().is_empty());
}

pub async fn typed_outputs_have_their_declared_types<H: Harness>() {
    let _guard = GLOBAL_CONFIG.lock().await;
    let configured = H::adapter(test_config());
    configure(configured.lm().await.unwrap(), configured);
    let prediction = Predict::new(MultiField::new())
        .forward(example! { "number": "input" => 21, "language": "input" => "English" })
        .await
        .unwrap();
    assert!(
        prediction.get("doubled", None).is_i64(),
        "{:?}",
        prediction.data
    );
    assert!(prediction.get("half", None).is_number());
    assert!(prediction.get("is_even", None).is_boolean());
    let digits = prediction.get("digits", None);
    assert!(
        digits
            .as_array()
            .is_some_and(|d| d.iter().all(Value::is_string)),
        "{digits}"
    );
    text(&prediction, "comment");

    let prediction = Predict::new(CapitalFacts::new())
        .forward(example! { "country": "input" => "France" })
        .await
        .unwrap();
    let capital = prediction.get("capital", None);
    assert!(
        capital["name"].is_string() && capital["population"].is_u64(),
        "{capital}"
    );
}

pub async fn chain_of_thought_gives_reasoning_then_answer<H: Harness>() {
    let _guard = GLOBAL_CONFIG.lock().await;
    let configured = H::adapter(test_config());
    configure(configured.lm().await.unwrap(), configured);
    let prediction = Predict::new(Arithmetic::new())
        .forward(example! { "a": "input" => 2, "b": "input" => 3 })
        .await
        .unwrap();
    text(&prediction, "reasoning");
    assert!(prediction.get("sum", None).is_i64());
}

pub async fn demos_are_used<H: Harness>() {
    let adapter = H::adapter(test_config());
    let mut signature = QA::new();
    dspy_rs::MetaSignature::set_demos(
        &mut signature,
        vec![example! { "question": "input" => "2+2?", "answer": "output" => "4" }],
    )
    .unwrap();
    let inputs = example! { "question": "input" => "3+3?" };
    let prompt = adapter.render_prompt(&signature, &inputs).unwrap();
    assert!(
        prompt.contains("2+2?") && prompt.contains("[[ ## answer ## ]]\n4"),
        "{prompt}"
    );
    let lm = Arc::new(adapter.lm().await.unwrap());
    let prediction = adapter.call(lm, &signature, inputs, vec![]).await.unwrap();
    text(&prediction, "answer");
}

pub async fn thirty_two_concurrent_calls_complete<H: Harness>() {
    let _guard = GLOBAL_CONFIG.lock().await;
    let configured = H::adapter(test_config());
    configure(configured.lm().await.unwrap(), configured);
    let inputs = (0..32)
        .map(|i| example! { "question": "input" => format!("Question number {i}?") })
        .collect();
    // dspy-rs runs a batch 32 at a time.
    let predictions = Predict::new(QA::new()).batch(inputs).await.unwrap();
    assert_eq!(predictions.len(), 32);
    for prediction in &predictions {
        text(prediction, "answer");
    }
}

pub async fn seeded_sampling_and_greedy_are_deterministic<H: Harness>() {
    let lm = H::adapter(test_config())
        .lm()
        .await
        .unwrap()
        .with_settings(0.9, 400);
    let inputs = example! { "question": "input" => "Name a colour." };
    let run = |config: GenerationConfig| {
        let adapter = H::adapter(config);
        let lm = lm.clone();
        let inputs = inputs.clone();
        async move {
            adapter
                .predict(&lm, &QA::new(), &inputs)
                .await
                .unwrap()
                .1
                .text
        }
    };
    let seeded = test_config().with_seed(7);
    assert_eq!(run(seeded.clone()).await, run(seeded).await);
    let greedy = test_config().with_temperature(0.0).with_seed(1);
    let greedy_other_seed = test_config().with_temperature(0.0).with_seed(2);
    assert_eq!(run(greedy).await, run(greedy_other_seed).await);
}

pub async fn usage_is_the_real_token_count<H: Harness>() {
    let adapter = H::adapter(test_config());
    let lm = adapter.lm().await.unwrap();
    let inputs = example! { "question": "input" => "How many tokens is this?" };
    let prompt = adapter.render_prompt(&QA::new(), &inputs).unwrap();
    let (_, generation) = adapter.predict(&lm, &QA::new(), &inputs).await.unwrap();
    assert_eq!(
        generation.prompt_tokens,
        adapter.backend().count_tokens(&prompt).unwrap()
    );
    assert!(generation.completion_tokens > 0 && generation.completion_tokens <= 400);

    let prediction = adapter
        .call(Arc::new(lm), &QA::new(), inputs, vec![])
        .await
        .unwrap();
    assert_eq!(
        prediction.lm_usage.prompt_tokens as usize,
        generation.prompt_tokens
    );
    assert_eq!(
        prediction.lm_usage.total_tokens,
        prediction.lm_usage.prompt_tokens + prediction.lm_usage.completion_tokens
    );
}

pub async fn bad_model_files_are_typed_errors<H: Harness>() {
    let config = test_config();
    let missing =
        H::adapter_on(Path::new("/nonexistent/model.gguf"), config.clone(), 512).unwrap_err();
    assert!(matches!(missing, Error::ModelNotFound { .. }), "{missing}");

    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("foreign.gguf");
    std::fs::write(&foreign, b"GGML? no, just text").unwrap();
    let err = H::adapter_on(&foreign, config.clone(), 512).unwrap_err();
    assert!(matches!(err, Error::InvalidModelFile { .. }), "{err}");

    let bytes = std::fs::read(&TINY_CHAT_MODEL.1).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = H::adapter_on(&truncated, config.clone(), 512).unwrap_err();
    assert!(matches!(err, Error::InvalidModelFile { .. }), "{err}");

    let alien = dir.path().join("alien.gguf");
    TestModelSpec::tiny(chat_tokenizer())
        .with_architecture("frobnicator")
        .write(&alien)
        .unwrap();
    let err = H::adapter_on(&alien, config, 512).unwrap_err();
    match err {
        Error::UnsupportedArchitecture { architecture, .. } => {
            assert_eq!(architecture, "frobnicator")
        }
        other => panic!("expected UnsupportedArchitecture, got {other}"),
    }
}

/// Mutated headers of a model the backend runs (corrupt downloads, hostile
/// files): each is loaded or refused with a typed error, never a crash, and
/// one that loads answers a short call or refuses it.
pub async fn mutated_model_files_load_or_are_refused<H: Harness>() {
    use proptest::test_runner::{Config, TestRunner};

    let (bytes, header_len) = crate::gguf_header::file_and_header_len(&TINY_CHAT_MODEL.1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutated.gguf");
    let mut runner = TestRunner::new(Config {
        cases: crate::support::fuzz_cases(64),
        failure_persistence: None,
        ..Config::default()
    });
    let (loaded, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    let strategy = proptest::collection::vec(crate::gguf_header::mutation(), 1..4);
    let result = runner.run(&strategy, |mutations| {
        crate::gguf_header::write_mutated(&bytes, header_len, &mutations, &path);
        match H::adapter_on(&path, test_config(), 256) {
            Ok(adapter) => {
                loaded.set(loaded.get() + 1);
                let call = adapter.generate(raw_request("Once upon a time"));
                let handle = tokio::runtime::Handle::current();
                // A call on a model whose numbers changed may fail, typed.
                let _ = tokio::task::block_in_place(|| handle.block_on(call));
            }
            Err(error) => {
                refused.set(refused.get() + 1);
                proptest::prop_assert!(!error.to_string().is_empty());
            }
        }
        Ok(())
    });
    result.unwrap();
    println!(
        "mutated files: {} loaded, {} refused",
        loaded.get(),
        refused.get()
    );
    assert!(refused.get() > 0);
}

pub async fn a_prompt_longer_than_the_context_is_an_error_with_both_numbers<H: Harness>() {
    let adapter = H::adapter_on(&TINY_CHAT_MODEL.1, test_config(), 128).unwrap();
    let lm = Arc::new(adapter.lm().await.unwrap());
    let long_question = "Why is the sky blue? ".repeat(200);
    let err = adapter
        .call(
            lm,
            &QA::new(),
            example! { "question": "input" => long_question },
            vec![],
        )
        .await
        .unwrap_err();
    let typed = err.downcast_ref::<Error>().expect("typed error");
    match typed {
        Error::PromptTooLong {
            prompt_tokens,
            context_length,
        } => {
            // llama.cpp pads a context up to a multiple of 256; the error reports the real one.
            assert!((128..=256).contains(context_length), "{context_length}");
            assert!(prompt_tokens > context_length);
            let message = err.to_string();
            assert!(
                message.contains(&prompt_tokens.to_string())
                    && message.contains(&context_length.to_string())
            );
        }
        other => panic!("expected PromptTooLong, got {other}"),
    }
}

pub async fn a_context_that_fills_while_generating_ends_with_length<H: Harness>() {
    // 256 is a multiple of llama.cpp's context padding, so both engines get exactly it.
    let adapter = H::adapter_on(&TINY_CHAT_MODEL.1, test_config(), 256).unwrap();
    // A grammar that cannot end within the context, so no end token (which a
    // random model may well pick) can stop the reply first.
    let fields = SignatureFields::of(&QA::new()).unwrap();
    let request = GenerationRequest {
        prompt: "Once upon a time".into(),
        sampling: Sampling::greedy(),
        max_tokens: 1_000,
        stop: vec![],
        constraint: Some(OutputConstraint::for_fields(&fields, 5_000)),
        control: Default::default(),
    };
    let generation = adapter.generate(request).await.unwrap();
    assert_eq!(
        generation.finish_reason,
        FinishReason::Length,
        "{generation:?}"
    );
    // Every position holds a token; the last sampled one needs no slot of its own.
    assert_eq!(generation.prompt_tokens + generation.completion_tokens, 257);
}

/// A call whose future is dropped (a timeout, a caller gone) stops within
/// one decode step: the engine holds no sequence and no cell afterwards, and
/// a call running beside it gets the reply it gets alone.
pub async fn a_dropped_call_stops_within_a_step_and_frees_what_it_held<H: Harness>() {
    let adapter = H::adapter_on(&TINY_CHAT_MODEL.1, test_config(), 2048).unwrap();
    let stats = || adapter.backend().stats();
    let fields = SignatureFields::of(&QA::new()).unwrap();
    // Held to a field grammar whose free text a random model does not close
    // (as in the test above), so only the drop can end it.
    let budget = 1_500;
    let endless = GenerationRequest {
        prompt: "Once upon a time".into(),
        max_tokens: budget,
        constraint: Some(OutputConstraint::for_fields(&fields, 5_000)),
        ..raw_request("")
    };
    let beside = GenerationRequest {
        max_tokens: 24,
        ..raw_request("The weather today")
    };
    let alone = adapter.generate(beside.clone()).await.unwrap();
    // llama.cpp's worker publishes what it holds after the step that sent
    // the reply, so the counters may trail the reply by one step.
    let idle = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while stats().active_sequences > 0 || stats().reserved_cells > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(
        idle.is_ok(),
        "the finished call is still held: {:?}",
        stats()
    );
    let before = stats();

    // The endless call runs until it has sampled a few tokens (the other
    // call sent once it has started), then its future is dropped: what
    // `tokio::time::timeout` does when it expires.
    let mut survivor = None;
    let started = async {
        let mut sent = false;
        while stats().sampled_tokens < before.sampled_tokens + 40 {
            if !sent && stats().sampled_tokens > before.sampled_tokens {
                let adapter = adapter.clone();
                let beside = beside.clone();
                survivor = Some(tokio::spawn(async move { adapter.generate(beside).await }));
                sent = true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        tokio::select! {
            generation = adapter.generate(endless) => panic!("it ended by itself: {generation:?}"),
            () = started => {}
        }
    })
    .await;
    assert!(stopped.is_ok(), "it never started");
    let at_drop = stats().sampled_tokens;
    let survivor = survivor.expect("sent").await.unwrap().unwrap();
    let freed = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while stats().active_sequences > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "the dropped call still holds its sequence");
    let after = stats();
    assert_eq!(after.reserved_cells, 0, "{after:?}");
    assert_eq!(survivor.text, alone.text, "the call beside it changed");
    // Beyond the survivor's own tokens, the dropped call sampled at most the
    // step it was in when dropped (and the one whose flag check raced it).
    let dropped_after_drop =
        (after.sampled_tokens - at_drop).saturating_sub(survivor.completion_tokens + 1);
    assert!(
        dropped_after_drop <= 2,
        "the dropped call sampled {dropped_after_drop} tokens after its drop ({before:?} → {after:?})"
    );
    assert!(after.sampled_tokens - before.sampled_tokens < budget);
    // The adapter answers the next call as before.
    let next = adapter
        .generate(raw_request("Once upon a time"))
        .await
        .unwrap();
    assert!(next.completion_tokens > 0);
}

/// A budget below the shortest reply a signature accepts is refused before
/// any token is generated, with both numbers; one token more than that
/// shortest reply gives a reply that parses.
pub async fn a_budget_below_the_shortest_reply_is_a_typed_error<H: Harness>() {
    // No budget in the adapter's settings: the LM's applies.
    let adapter = H::adapter(GenerationConfig::default().with_max_text_chars(60));
    let lm = adapter.lm().await.unwrap().with_settings(0.0, 4);
    let inputs = example! { "number": "input" => 21, "language": "input" => "English" };
    let needed = match adapter.predict(&lm, &MultiField::new(), &inputs).await {
        Err(Error::BudgetTooSmall { max_tokens, needed }) => {
            assert_eq!(max_tokens, 4);
            needed
        }
        other => panic!("expected BudgetTooSmall, got {other:?}"),
    };
    let lm = lm.with_settings(0.0, needed as u32 + 1);
    let (data, generation) = adapter
        .predict(&lm, &MultiField::new(), &inputs)
        .await
        .unwrap();
    assert!(
        data["doubled"].is_i64() && data["is_even"].is_boolean(),
        "{data:?}"
    );
    assert!(generation.completion_tokens <= needed + 1);
}

fn raw_request(prompt: &str) -> GenerationRequest {
    GenerationRequest {
        prompt: prompt.into(),
        sampling: Sampling::greedy(),
        max_tokens: 8,
        stop: vec![],
        constraint: None,
        control: Default::default(),
    }
}

pub async fn an_empty_prompt_is_a_typed_error_and_the_adapter_still_answers<H: Harness>() {
    let adapter = H::adapter_on(&TINY_CHAT_MODEL.1, test_config(), 512).unwrap();
    for prompt in ["", " \n\t "] {
        let err = adapter.generate(raw_request(prompt)).await.unwrap_err();
        assert!(matches!(err, Error::EmptyPrompt), "{prompt:?}: {err}");
        // The same adapter (and its worker) answers the next call.
        let next = adapter.generate(raw_request("Once upon a time")).await;
        assert!(next.unwrap().completion_tokens > 0);
    }

    // Through `Predict`: a model whose chat template renders only white space.
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank-template.gguf");
    TestModelSpec::tiny(chat_tokenizer())
        .with_chat_template("{{ '  ' }}")
        .write(&blank)
        .unwrap();
    let adapter = H::adapter_on(&blank, test_config(), 512).unwrap();
    let _guard = GLOBAL_CONFIG.lock().await;
    let configured = adapter.clone();
    configure(configured.lm().await.unwrap(), configured);
    let err = Predict::new(QA::new())
        .forward(example! { "question": "input" => "Anyone there?" })
        .await
        .unwrap_err();
    assert!(
        matches!(err.downcast_ref::<Error>(), Some(Error::EmptyPrompt)),
        "{err}"
    );
    assert!(
        adapter
            .generate(raw_request("Hello"))
            .await
            .unwrap()
            .completion_tokens
            > 0
    );
}

/// Seed of the accuracy tests' questions, which the trainer never uses; the
/// arithmetic pairs and sentences asked are ones training never sees.
pub const ACCURACY_SEED: u64 = 2027;
const EXAMPLES_PER_FAMILY: usize = 60;
/// What the trained model must reach on every family.
const REQUIRED_ACCURACY: f64 = 0.95;

/// The held-out questions of every family: every country once, and
/// [`EXAMPLES_PER_FAMILY`] of each other family, with zero to two demos.
/// A request sharing the system message and demos with the previous one
/// reads only the rest, and answers exactly as with reuse off, on F32 weights
/// and on Q8_0 (whose matmuls quantize the activations per batch).
pub async fn prefix_reuse_gives_the_same_replies_as_a_cold_cache<H: Harness>() {
    use dspy_rs::MetaSignature;
    let dir = tempfile::tempdir().unwrap();
    let q8 = dir.path().join("q8.gguf");
    TestModelSpec::tiny(chat_tokenizer())
        .with_weights(dsrs_local::testing::WeightType::Q8_0)
        .write(&q8)
        .unwrap();
    let mut signature = QA::new();
    signature
        .set_demos(vec![
            example! { "question": "input" => "2+2?", "answer": "output" => "4" },
            example! { "question": "input" => "Capital of Peru?", "answer": "output" => "Lima" },
        ])
        .unwrap();
    let config = GenerationConfig::default()
        .with_max_text_chars(60)
        .with_temperature(0.0);
    // Forced tokens are read ahead on the F32 model only. On this random
    // Q8_0 model, llama.cpp's warm and cold replies to one question of
    // three differ with it (batch 512; not with 64-token chunks): a
    // quantized product rounds by the size of its pass, so a prefix read in
    // another request's pass holds other last bits, and random weights are
    // all near ties (`specs/prompt-protocol.md`).
    for (path, fast_forward) in [(TINY_CHAT_MODEL.1.as_path(), true), (q8.as_path(), false)] {
        let warm = H::adapter_with_prefix_reuse(path, config.clone(), true, fast_forward).unwrap();
        let cold = H::adapter_with_prefix_reuse(path, config.clone(), false, fast_forward).unwrap();
        let lm = warm.lm().await.unwrap();
        let questions = [
            "What is the capital of France?",
            "Name a prime number.",
            "Name a prime number.",
        ];
        let mut reused = Vec::new();
        for question in questions {
            let inputs = example! { "question": "input" => question };
            let (_, a) = warm.predict(&lm, &signature, &inputs).await.unwrap();
            let (_, b) = cold.predict(&lm, &signature, &inputs).await.unwrap();
            assert_eq!(a.text, b.text, "{question}");
            assert_eq!(a.prompt_tokens, b.prompt_tokens);
            assert_eq!(b.cached_prompt_tokens, 0);
            reused.push(a.cached_prompt_tokens);
        }
        assert_eq!(reused[0], 0, "the first request has nothing to reuse");
        assert!(
            reused[1] > 0,
            "the shared system message and demos are reused: {reused:?}"
        );
        assert!(
            reused[2] > reused[1],
            "the same prompt again reuses all but its last token: {reused:?}"
        );
    }
}

pub fn held_out_questions() -> Vec<(TaskFamily, Vec<TaskExample>)> {
    let mut stream = TaskStream::held_out(ACCURACY_SEED);
    TaskFamily::ALL
        .iter()
        .map(|&family| {
            let examples = if family == TaskFamily::Capital {
                stream.every_capital(1)
            } else {
                (0..EXAMPLES_PER_FAMILY)
                    .map(|i| stream.sample(family, i % 3))
                    .collect()
            };
            (family, examples)
        })
        .collect()
}

fn task_model_adapter<H: Harness>() -> LocalAdapter<H::Backend> {
    H::adapter_on(&task_model_path(), GenerationConfig::default(), 2048)
        .expect("the committed task model loads")
}

pub async fn the_task_model_answers_through_predict<H: Harness>() {
    let _guard = GLOBAL_CONFIG.lock().await;
    let configured = task_model_adapter::<H>();
    configure(configured.lm().await.unwrap(), configured);
    for (country, capital) in [
        ("France", "Paris"),
        ("Japan", "Tokyo"),
        ("Kenya", "Nairobi"),
    ] {
        let question = format!("What is the capital of {country}?");
        let prediction = Predict::new(QA::new())
            .forward(example! { "question": "input" => question })
            .await
            .unwrap();
        assert_eq!(text(&prediction, "answer"), capital);
    }
}

pub async fn the_task_model_answers_held_out_questions<H: Harness>() {
    let adapter = task_model_adapter::<H>();
    let lm = adapter.lm().await.unwrap();
    let mut failures = Vec::new();
    for (family, examples) in held_out_questions() {
        let score = score(&adapter, &lm, &examples).await;
        println!(
            "{} {:<18} {:>3}/{:<3} {:5.1} %",
            adapter.backend().name(),
            family.name(),
            score.correct,
            score.total,
            100.0 * score.accuracy()
        );
        if score.accuracy() < REQUIRED_ACCURACY {
            failures.push(format!(
                "{}: {}/{}, missed for example {:?}",
                family.name(),
                score.correct,
                score.total,
                &score.misses[..score.misses.len().min(3)]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Instantiates the suite for one backend.
#[macro_export]
macro_rules! conformance_suite {
    ($name:ident, $harness:ty) => {
        mod $name {
            use $crate::conformance as c;
            #[tokio::test(flavor = "multi_thread")]
            async fn qa_returns_its_field() {
                c::qa_returns_its_field::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn typed_outputs_have_their_declared_types() {
                c::typed_outputs_have_their_declared_types::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn chain_of_thought_gives_reasoning_then_answer() {
                c::chain_of_thought_gives_reasoning_then_answer::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn demos_are_used() {
                c::demos_are_used::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn thirty_two_concurrent_calls_complete() {
                c::thirty_two_concurrent_calls_complete::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn seeded_sampling_and_greedy_are_deterministic() {
                c::seeded_sampling_and_greedy_are_deterministic::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn usage_is_the_real_token_count() {
                c::usage_is_the_real_token_count::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn bad_model_files_are_typed_errors() {
                c::bad_model_files_are_typed_errors::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn a_prompt_longer_than_the_context_is_an_error_with_both_numbers() {
                c::a_prompt_longer_than_the_context_is_an_error_with_both_numbers::<$harness>()
                    .await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn an_empty_prompt_is_a_typed_error_and_the_adapter_still_answers() {
                c::an_empty_prompt_is_a_typed_error_and_the_adapter_still_answers::<$harness>()
                    .await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn a_context_that_fills_while_generating_ends_with_length() {
                c::a_context_that_fills_while_generating_ends_with_length::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn a_dropped_call_stops_within_a_step_and_frees_what_it_held() {
                c::a_dropped_call_stops_within_a_step_and_frees_what_it_held::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn mutated_model_files_load_or_are_refused() {
                c::mutated_model_files_load_or_are_refused::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn a_budget_below_the_shortest_reply_is_a_typed_error() {
                c::a_budget_below_the_shortest_reply_is_a_typed_error::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn prefix_reuse_gives_the_same_replies_as_a_cold_cache() {
                c::prefix_reuse_gives_the_same_replies_as_a_cold_cache::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn the_task_model_answers_through_predict() {
                c::the_task_model_answers_through_predict::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn forward_with_config_lm_call_and_history_are_local() {
                $crate::dspy_routes::forward_with_config_lm_call_and_history_are_local::<$harness>()
                    .await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn copro_compiles_on_the_local_model() {
                $crate::dspy_routes::copro_compiles_on_the_local_model::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn mipro_compiles_on_the_local_model() {
                $crate::dspy_routes::mipro_compiles_on_the_local_model::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn gepa_compiles_on_the_local_model() {
                $crate::dspy_routes::gepa_compiles_on_the_local_model::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn tool_calls_on_random_schemas_always_parse() {
                $crate::tool_calls::tool_calls_on_random_schemas_always_parse::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn predict_with_tools_on_the_task_model_looks_the_answer_up() {
                $crate::tool_calls::predict_with_tools_on_the_task_model_looks_the_answer_up::<
                    $harness,
                >()
                .await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn a_round_reuses_the_cache_of_the_round_before() {
                $crate::tool_calls::a_round_reuses_the_cache_of_the_round_before::<$harness>().await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn dspy_rs_tool_loop_runs_over_the_loopback_server() {
                $crate::tool_calls::dspy_rs_tool_loop_runs_over_the_loopback_server::<$harness>()
                    .await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn the_task_model_answers_held_out_questions() {
                c::the_task_model_answers_held_out_questions::<$harness>().await
            }
        }
    };
}
