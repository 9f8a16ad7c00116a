//! The llama.cpp backend: the conformance suite, and a real trained model.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use dsrs_local::Backend as _;
use dsrs_local::LocalModel as _;
use dsrs_local::backends::llama_cpp::LlamaCppBackend;
use dsrs_local::{
    Error, GenerationConfig, GenerationRequest, LlamaCppAdapter, LlamaCppConfig,
    LlamaCppLoadOptions, LlamaCppModel, LocalAdapter, Sampling,
};

use crate::conformance::{Harness, TINY_CHAT_MODEL};
use crate::support::shared_model;

static TINY: LazyLock<Arc<LlamaCppModel>> = LazyLock::new(|| {
    Arc::new(
        LlamaCppModel::load(&TINY_CHAT_MODEL.1, LlamaCppLoadOptions::default()).expect("loads"),
    )
});

pub struct LlamaCpp;

impl Harness for LlamaCpp {
    type Backend = LlamaCppBackend;

    fn adapter_on(
        path: &Path,
        config: GenerationConfig,
        context_length: usize,
    ) -> Result<LlamaCppAdapter, Error> {
        let model = LlamaCppModel::load(path, LlamaCppLoadOptions::default())?;
        Ok(LlamaCppAdapter::from_loaded_model(
            Arc::new(model),
            LlamaCppConfig::default()
                .with_context_length(context_length)
                .with_generation(config),
        ))
    }

    fn adapter(config: GenerationConfig) -> LocalAdapter<LlamaCppBackend> {
        LlamaCppAdapter::from_loaded_model(
            Arc::clone(&TINY),
            LlamaCppConfig::default()
                .with_context_length(2048)
                .with_generation(config),
        )
    }

    fn adapter_with_prefix_reuse(
        path: &Path,
        config: GenerationConfig,
        reuse: bool,
        fast_forward: bool,
    ) -> Result<LlamaCppAdapter, Error> {
        let model = LlamaCppModel::load(path, LlamaCppLoadOptions::default())?;
        Ok(LlamaCppAdapter::from_loaded_model(
            Arc::new(model),
            LlamaCppConfig::default()
                .with_context_length(2048)
                .with_prefix_reuse(reuse)
                .with_fast_forward(fast_forward)
                .with_generation(config),
        ))
    }
}

crate::conformance_suite!(conformance, crate::llama_cpp::LlamaCpp);

/// The known greedy continuation of stories260K (a trained TinyStories model).
pub const STORIES_CONTINUATION: &str =
    ", there was a little girl named Lily. She loved to play outside in the park.";

#[tokio::test]
async fn stories260k_greedy_continuation_is_the_known_text() {
    let Some(path) = shared_model("stories260K.gguf") else {
        return;
    };
    let model = Arc::new(LlamaCppModel::load(path, LlamaCppLoadOptions::default()).unwrap());
    assert!(
        model.card().template().is_fallback(),
        "stories260K has no chat template"
    );
    let adapter = LlamaCppAdapter::from_loaded_model(model, LlamaCppConfig::default());
    let generation = adapter
        .generate(GenerationRequest {
            prompt: "Once upon a time".into(),
            sampling: Sampling::greedy(),
            max_tokens: 40,
            stop: vec![],
            constraint: None,
            control: Default::default(),
        })
        .await
        .unwrap();
    assert!(
        generation.text.starts_with(STORIES_CONTINUATION),
        "got {:?}",
        generation.text
    );
    assert_eq!(generation.completion_tokens, 40);
}

#[tokio::test]
async fn the_template_bos_is_not_doubled() {
    let model = Arc::clone(&TINY);
    let template = model.card().template();
    let bos = model.card().bos();
    // The card adds a BOS when the model wants one; "Hello" then starts with it.
    let adds_bos = model.tokenize_prompt("Hello").unwrap().first() == bos.as_ref();
    if template.bos_token().is_empty() || !adds_bos {
        println!("skipped: the byte-level test vocabulary (used without ../shared) adds no BOS");
        return;
    }
    let prompt = format!("{}Hello", template.bos_token());
    let tokens = model.tokenize_prompt(&prompt).unwrap();
    let bos_count = tokens.iter().filter(|t| Some(**t) == bos).count();
    assert_eq!(bos_count, 1, "{tokens:?}");
}

/// Calls that arrive together with a prefix no cache holds yet read it
/// once: the first reads it (over several steps: the batch is smaller than
/// the prefix) while the others wait, then they copy it.
#[tokio::test(flavor = "multi_thread")]
async fn calls_arriving_together_read_their_shared_prefix_once() {
    use dsrs_local::testing::task_model_path;
    let model =
        Arc::new(LlamaCppModel::load(task_model_path(), LlamaCppLoadOptions::default()).unwrap());
    let config = LlamaCppConfig::default()
        .with_context_length(4096)
        .with_batch_size(64)
        .with_parallel_sequences(4)
        .with_generation(GenerationConfig::default().with_max_concurrency(4));
    let together = LlamaCppAdapter::from_loaded_model(model, config);
    let prefix: String = (0..60)
        .map(|i| format!("Fact {i}: the sky is blue. "))
        .collect();
    let prompts: Vec<String> = (0..4).map(|i| format!("{prefix}Question {i}?")).collect();
    let prefix_tokens = together.backend().count_tokens(&prefix).unwrap();
    assert!(
        prefix_tokens > 4 * 64,
        "the prefix takes several steps to read"
    );
    let generations = futures::future::join_all(
        prompts
            .iter()
            .map(|p| together.generate(GenerationRequest::new(p.clone(), 8))),
    )
    .await;
    let mut cached: Vec<usize> = generations
        .into_iter()
        .map(|generation| generation.unwrap().cached_prompt_tokens)
        .collect();
    cached.sort_unstable();
    assert_eq!(cached[0], 0, "one call read the prefix: {cached:?}");
    assert!(
        cached[1..].iter().all(|&c| c + 2 >= prefix_tokens),
        "the others copied all of it ({prefix_tokens} tokens): {cached:?}"
    );
}

/// Concurrent calls are decoded together, as sequences of one batch sharing
/// their common prefixes and reading their forced markers ahead, and answer
/// exactly as the same calls made one by one, token by token, on a cold
/// context.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_calls_decoded_together_equal_calls_one_by_one() {
    use dsrs_local::testing::task_model_path;
    use dsrs_local::testing::tasks::{TaskFamily, TaskStream};
    let model =
        Arc::new(LlamaCppModel::load(task_model_path(), LlamaCppLoadOptions::default()).unwrap());
    let mut stream = TaskStream::held_out(99);
    let examples: Vec<_> = (0..18)
        .map(|i| stream.sample(TaskFamily::ALL[i % TaskFamily::ALL.len()], i % 3))
        .collect();
    let config = |calls: usize| {
        LlamaCppConfig::default()
            .with_context_length(4096)
            .with_parallel_sequences(calls)
            .with_generation(GenerationConfig::default().with_max_concurrency(calls))
    };
    let one_by_one = LlamaCppAdapter::from_loaded_model(
        Arc::clone(&model),
        config(1).with_prefix_reuse(false).with_fast_forward(false),
    );
    let together = LlamaCppAdapter::from_loaded_model(model, config(8));
    let lm = one_by_one.lm().await.unwrap();

    let mut expected = Vec::new();
    for example in &examples {
        let (_, generation) = one_by_one
            .predict(&lm, &example.signature, &example.inputs)
            .await
            .unwrap();
        expected.push(generation.text);
    }
    let calls = examples
        .iter()
        .map(|example| together.predict(&lm, &example.signature, &example.inputs));
    let (batched, cached): (Vec<String>, Vec<usize>) = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|result| {
            let generation = result.unwrap().1;
            (generation.text, generation.cached_prompt_tokens)
        })
        .unzip();
    assert_eq!(batched, expected);
    assert!(
        cached.iter().filter(|&&c| c > 0).count() > 1,
        "later calls took the shared prefix from a cache: {cached:?}"
    );
    let (alone, together) = (one_by_one.backend().stats(), together.backend().stats());
    assert_eq!(alone.peak_sequences, 1);
    assert_eq!(alone.forwarded_tokens, 0);
    assert!(
        together.peak_sequences > 1,
        "the calls were decoded together"
    );
    // This model's vocabulary holds most of a marker in one or two
    // tokens, so few are forced; the real models' tests see more.
    assert!(
        together.forwarded_tokens > 0,
        "markers were read ahead: {together:?}"
    );
    assert!(
        together.passes < alone.passes,
        "batching read the calls in fewer passes: {together:?} vs {alone:?}"
    );
}

/// A batch smaller than the number of sequences is raised to it: llama.cpp
/// keeps an output per sequence and aborts the process otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn a_one_token_batch_with_several_sequences_answers() {
    let adapter = LlamaCppAdapter::from_loaded_model(
        Arc::clone(&TINY),
        LlamaCppConfig::default()
            .with_context_length(2048)
            .with_batch_size(1)
            .with_parallel_sequences(2)
            .with_generation(GenerationConfig::default().with_max_concurrency(2)),
    );
    let calls = ["Once upon a time", "The sky"]
        .map(|prompt| adapter.generate(GenerationRequest::new(prompt, 8)));
    for generation in futures::future::join_all(calls).await {
        assert!(generation.unwrap().completion_tokens > 0);
    }
}

/// Dropping an adapter frees its context before the drop returns (its
/// worker, which holds the model, has ended), so the next load or memory
/// plan sees the memory; the worker used to free it up to a second later.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_adapter_has_freed_its_context() {
    let model =
        Arc::new(LlamaCppModel::load(&TINY_CHAT_MODEL.1, LlamaCppLoadOptions::default()).unwrap());
    for _ in 0..20 {
        let adapter = LlamaCppAdapter::from_loaded_model(
            Arc::clone(&model),
            LlamaCppConfig::default().with_context_length(512),
        );
        let generation = adapter
            .generate(GenerationRequest::new("Once upon a time", 4))
            .await
            .unwrap();
        assert!(generation.completion_tokens > 0);
        drop(adapter);
        assert_eq!(Arc::strong_count(&model), 1, "the worker still runs");
    }
}
