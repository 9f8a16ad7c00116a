//! Real models people download — SmolLM2-135M-Instruct (Q4_1, llama, its own
//! ChatML template) and Gemma 3 270M (Q4_K_M, gemma3, no template) — on each
//! backend: the conformance properties that do not depend on knowledge.
//! `make models` (and CI) fetch them; each test skips with a printed reason
//! when its file is absent, so a fresh clone's `cargo test` still passes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dspy_rs::{LM, MetaSignature, example};
use dsrs_local::{Backend, Error, FinishReason, GenerationConfig, LocalAdapter, ModelSource};
use serde_json::Value;

use crate::support::LmSettings;
use crate::{Arithmetic, CapitalFacts, MultiField, QA};

/// The cached file of a catalog model, or `None` with the reason printed.
pub fn real_model(name: &str) -> Option<PathBuf> {
    match ModelSource::parse(name).resolve() {
        Ok(path) => Some(path),
        Err(e) => {
            println!("skipped: {name} is not cached ({e})");
            None
        }
    }
}

/// How the tests reach a backend.
pub trait Engine: 'static {
    type Backend: Backend;
    /// An adapter on its own load of `path`, with 2048 tokens of context
    /// and forced tokens read ahead (`fast_forward`) or not.
    fn adapter_with(
        path: &Path,
        config: GenerationConfig,
        prefix_reuse: bool,
        fast_forward: bool,
    ) -> Result<LocalAdapter<Self::Backend>, Error>;

    /// An adapter with the default fast-forward (on).
    fn adapter(
        path: &Path,
        config: GenerationConfig,
        prefix_reuse: bool,
    ) -> Result<LocalAdapter<Self::Backend>, Error> {
        Self::adapter_with(path, config, prefix_reuse, true)
    }
}

#[cfg(feature = "llamacpp")]
pub struct OnLlamaCpp;

#[cfg(feature = "llamacpp")]
impl Engine for OnLlamaCpp {
    type Backend = dsrs_local::backends::llama_cpp::LlamaCppBackend;
    fn adapter_with(
        path: &Path,
        config: GenerationConfig,
        prefix_reuse: bool,
        fast_forward: bool,
    ) -> Result<LocalAdapter<Self::Backend>, Error> {
        use dsrs_local::{LlamaCppAdapter, LlamaCppConfig, LlamaCppLoadOptions, LlamaCppModel};
        let model = LlamaCppModel::load(path, LlamaCppLoadOptions::default())?;
        Ok(LlamaCppAdapter::from_loaded_model(
            Arc::new(model),
            LlamaCppConfig::default()
                .with_context_length(2048)
                .with_prefix_reuse(prefix_reuse)
                .with_fast_forward(fast_forward)
                .with_generation(config),
        ))
    }
}

#[cfg(feature = "candle")]
pub struct OnCandle;

#[cfg(feature = "candle")]
impl Engine for OnCandle {
    type Backend = dsrs_local::backends::candle::CandleBackend;
    fn adapter_with(
        path: &Path,
        config: GenerationConfig,
        prefix_reuse: bool,
        fast_forward: bool,
    ) -> Result<LocalAdapter<Self::Backend>, Error> {
        use dsrs_local::{CandleAdapter, CandleConfig, CandleLoadOptions, CandleModel};
        let model = CandleModel::load(path, CandleLoadOptions::default())?;
        Ok(CandleAdapter::from_loaded_model(
            Arc::new(model),
            CandleConfig::default()
                .with_context_length(2048)
                .with_prefix_reuse(prefix_reuse)
                .with_fast_forward(fast_forward)
                .with_generation(config),
        ))
    }
}

/// Greedy, constrained, text fields capped so a small model's rambling ends.
fn config() -> GenerationConfig {
    GenerationConfig::default()
        .with_temperature(0.0)
        .with_seed(1)
        .with_max_text_chars(120)
}

async fn lm_of<B: Backend>(adapter: &LocalAdapter<B>, max_tokens: u32) -> LM {
    adapter
        .lm()
        .await
        .expect("the adapter's LM")
        .with_settings(0.0, max_tokens)
}

/// What a parsed reply must hold: each output field with its declared type.
fn check_types(signature: &str, data: &std::collections::HashMap<String, Value>) {
    let is_text = |field: &str| data.get(field).is_some_and(Value::is_string);
    let ok = match signature {
        "QA" => is_text("answer"),
        "MultiField" => {
            data.get("doubled").is_some_and(Value::is_i64)
                && data.get("half").is_some_and(Value::is_number)
                && data.get("is_even").is_some_and(Value::is_boolean)
                && data
                    .get("digits")
                    .and_then(Value::as_array)
                    .is_some_and(|d| d.iter().all(Value::is_string))
                && is_text("comment")
        }
        "CapitalFacts" => data
            .get("capital")
            .is_some_and(|c| c["name"].is_string() && c["population"].is_u64()),
        "Arithmetic" => is_text("reasoning") && data.get("sum").is_some_and(Value::is_i64),
        other => panic!("no check for {other}"),
    };
    assert!(ok, "{signature}: {data:?}");
}

/// One call of each signature kind the crate's users write.
fn calls() -> Vec<(&'static str, Box<dyn MetaSignature>, dspy_rs::Example)> {
    vec![
        (
            "QA",
            Box::new(QA::new()),
            example! { "question": "input" => "What is the capital of France?" },
        ),
        (
            "MultiField",
            Box::new(MultiField::new()),
            example! { "number": "input" => 21, "language": "input" => "English" },
        ),
        (
            "CapitalFacts",
            Box::new(CapitalFacts::new()),
            example! { "country": "input" => "Japan" },
        ),
        (
            "Arithmetic",
            Box::new(Arithmetic::new()),
            example! { "a": "input" => 2, "b": "input" => 3 },
        ),
    ]
}

/// Every kind of output (text, int, float, bool, list, object, chain of
/// thought) parses with its declared type.
pub async fn typed_outputs_parse<E: Engine>(model: &str) {
    let Some(path) = real_model(model) else {
        return;
    };
    let adapter = E::adapter(&path, config(), true).unwrap();
    let lm = lm_of(&adapter, 256).await;
    for (name, signature, inputs) in calls() {
        let (data, generation) = adapter
            .predict(&lm, signature.as_ref(), &inputs)
            .await
            .unwrap_or_else(|e| panic!("{model} {name}: {e}"));
        check_types(name, &data);
        println!(
            "{model} {name}: {:?} in {} tokens",
            generation.finish_reason, generation.completion_tokens
        );
    }
}

/// With a budget too small for the model to finish on its own, the decoder
/// closes the reply in time: every reply parses, and one that was closed
/// early says `Length`. A budget below the shortest reply the signature
/// accepts is refused up front, with both numbers.
pub async fn a_small_budget_still_parses<E: Engine>(model: &str) {
    let Some(path) = real_model(model) else {
        return;
    };
    let adapter = E::adapter(&path, config().with_temperature(0.8), true).unwrap();
    let (mut forced, mut parsed) = (0, 0);
    for budget in [24u32, 48] {
        let lm = adapter.lm().await.unwrap().with_settings(0.8, budget);
        for (name, signature, inputs) in calls() {
            match adapter.predict(&lm, signature.as_ref(), &inputs).await {
                Ok((data, generation)) => {
                    check_types(name, &data);
                    assert!(generation.completion_tokens <= budget as usize);
                    parsed += 1;
                    if generation.finish_reason == FinishReason::Length {
                        forced += 1;
                    }
                }
                Err(Error::BudgetTooSmall { max_tokens, needed }) => {
                    assert!(max_tokens == budget as usize && needed > max_tokens);
                }
                Err(e) => panic!("{model} {name} in {budget} tokens: {e}"),
            }
        }
    }
    // QA's shortest reply is about 16 tokens: it fits every budget.
    assert!(parsed >= 4, "only {parsed} calls fitted their budget");
    assert!(
        forced > 0,
        "no reply needed closing: the budgets are not small"
    );
}

/// The reported prompt tokens are the tokenizer's count of the rendered prompt.
pub async fn usage_is_the_tokenizer_count<E: Engine>(model: &str) {
    let Some(path) = real_model(model) else {
        return;
    };
    let adapter = E::adapter(&path, config(), true).unwrap();
    let lm = lm_of(&adapter, 64).await;
    let inputs = example! { "question": "input" => "How many tokens is this?" };
    let prompt = adapter.render_prompt(&QA::new(), &inputs).unwrap();
    let (_, generation) = adapter.predict(&lm, &QA::new(), &inputs).await.unwrap();
    assert_eq!(
        generation.prompt_tokens,
        adapter.backend().count_tokens(&prompt).unwrap()
    );
    assert!(generation.completion_tokens > 0 && generation.completion_tokens <= 64);
}

/// 32 calls at once all complete and parse (in 24 tokens each: most need
/// closing to fit).
pub async fn thirty_two_concurrent_calls_parse<E: Engine>(model: &str) {
    let Some(path) = real_model(model) else {
        return;
    };
    let adapter = E::adapter(&path, config(), true).unwrap();
    let lm = lm_of(&adapter, 24).await;
    let calls = (0..32).map(|i| {
        let (adapter, lm) = (adapter.clone(), lm.clone());
        async move {
            let inputs = example! { "question": "input" => format!("What is {i} plus {i}?") };
            adapter.predict(&lm, &QA::new(), &inputs).await
        }
    });
    for result in futures::future::join_all(calls).await {
        let (data, _) = result.unwrap();
        check_types("QA", &data);
    }
}

/// A request sharing its system message and demos with the one before reads
/// only the rest from the cache, and answers exactly as a cold cache does.
pub async fn prefix_reuse_answers_as_a_cold_cache<E: Engine>(model: &str) {
    let Some(path) = real_model(model) else {
        return;
    };
    let mut signature = QA::new();
    signature
        .set_demos(vec![
            example! { "question": "input" => "2+2?", "answer": "output" => "4" },
            example! { "question": "input" => "Capital of Peru?", "answer": "output" => "Lima" },
        ])
        .unwrap();
    let warm = E::adapter(&path, config(), true).unwrap();
    let cold = E::adapter(&path, config(), false).unwrap();
    let lm = lm_of(&warm, 48).await;
    let mut reused = Vec::new();
    for question in ["Capital of Italy?", "3+4?", "3+4?"] {
        let inputs = example! { "question": "input" => question };
        let (_, a) = warm.predict(&lm, &signature, &inputs).await.unwrap();
        let (_, b) = cold.predict(&lm, &signature, &inputs).await.unwrap();
        assert_eq!(a.text, b.text, "{model}: {question}");
        assert_eq!(b.cached_prompt_tokens, 0);
        reused.push(a.cached_prompt_tokens);
    }
    assert!(
        reused[0] == 0 && reused[1] > 0 && reused[2] > reused[1],
        "{reused:?}"
    );
}

/// The same seed gives the same sampled reply.
pub async fn seeded_sampling_repeats<E: Engine>(model: &str) {
    let Some(path) = real_model(model) else {
        return;
    };
    let inputs = example! { "question": "input" => "Name an animal." };
    let mut replies = Vec::new();
    for _ in 0..2 {
        let adapter = E::adapter(&path, config().with_temperature(0.9).with_seed(7), true).unwrap();
        let lm = adapter.lm().await.unwrap().with_settings(0.9, 48);
        replies.push(
            adapter
                .predict(&lm, &QA::new(), &inputs)
                .await
                .unwrap()
                .1
                .text,
        );
    }
    assert_eq!(replies[0], replies[1]);
}

/// Reading the markers the grammar forces ahead keeps every reply valid and
/// saves passes. Not asserted: that each reply equals token-by-token
/// decoding's. In exact arithmetic it does (`decode::tests::a_draft_read_ahead_changes_no_reply`,
/// and the crate's own model in `llama_cpp.rs` and `candle.rs`), but a
/// quantized model's logits from a pass of several tokens differ in the
/// last bits from those of one token, and these models choose between
/// splits of a forced marker (`[[` or `[` `[`) on near ties: SmolLM2's
/// greedy replies change the same way when its prompt is read one token
/// per pass instead of 512 (`specs/prompt-protocol.md`). Printed instead.
pub async fn forced_tokens_read_ahead_keep_replies_valid<E: Engine>(model: &str) {
    let Some(path) = real_model(model) else {
        return;
    };
    for (temperature, seed) in [(0.0, 1), (0.9, 7)] {
        let config = || config().with_temperature(temperature).with_seed(seed);
        let ahead = E::adapter_with(&path, config(), false, true).unwrap();
        let stepwise = E::adapter_with(&path, config(), false, false).unwrap();
        let lm = ahead.lm().await.unwrap().with_settings(temperature, 64);
        let mut same = 0;
        for (name, signature, inputs) in calls() {
            let (data, a) = ahead
                .predict(&lm, signature.as_ref(), &inputs)
                .await
                .unwrap();
            check_types(name, &data);
            let (_, b) = stepwise
                .predict(&lm, signature.as_ref(), &inputs)
                .await
                .unwrap();
            same += usize::from(a.text == b.text);
        }
        let (ahead, stepwise) = (ahead.backend().stats(), stepwise.backend().stats());
        println!(
            "{model}, temperature {temperature}: {same} of {} replies as token by token; \
             {} of {} tokens read ahead",
            calls().len(),
            ahead.forwarded_tokens,
            ahead.sampled_tokens
        );
        assert_eq!(stepwise.forwarded_tokens, 0);
        assert!(
            ahead.forwarded_tokens * 5 > ahead.sampled_tokens,
            "{model}: only {} of {} tokens were read ahead",
            ahead.forwarded_tokens,
            ahead.sampled_tokens
        );
    }
}

/// The prompt uses the model's own turns: SmolLM2's template from its file,
/// Gemma's `<start_of_turn>` turns for a gemma file without one.
pub async fn the_prompt_uses_the_models_turns<E: Engine>(model: &str) {
    let Some(path) = real_model(model) else {
        return;
    };
    let adapter = E::adapter(&path, config(), true).unwrap();
    let inputs = example! { "question": "input" => "What is the capital of France?" };
    let prompt = adapter.render_prompt(&QA::new(), &inputs).unwrap();
    let (user, assistant, foreign) = if model.starts_with("gemma") {
        (
            "<start_of_turn>user\n",
            "<start_of_turn>model\n",
            "<|im_start|>",
        )
    } else {
        (
            "<|im_start|>user\n",
            "<|im_start|>assistant\n",
            "<start_of_turn>",
        )
    };
    assert!(
        prompt.contains(user) && prompt.ends_with(assistant) && !prompt.contains(foreign),
        "{prompt}"
    );
    // The turn markers are single special tokens, not text the model sees spelled out.
    let turn = adapter.backend().loaded_model().tokenize(user.trim_end());
    assert_eq!(turn.len(), 2, "{user:?} is {turn:?}");
}

/// `real_model_suite!(module, Engine, "model")`: the properties above for
/// one model on one backend.
#[macro_export]
macro_rules! real_model_suite {
    ($name:ident, $engine:ty, $model:literal) => {
        mod $name {
            use $crate::real_models as r;
            #[tokio::test(flavor = "multi_thread")]
            async fn typed_outputs_parse() {
                r::typed_outputs_parse::<$engine>($model).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn a_small_budget_still_parses() {
                r::a_small_budget_still_parses::<$engine>($model).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn usage_is_the_tokenizer_count() {
                r::usage_is_the_tokenizer_count::<$engine>($model).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn thirty_two_concurrent_calls_parse() {
                r::thirty_two_concurrent_calls_parse::<$engine>($model).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn prefix_reuse_answers_as_a_cold_cache() {
                r::prefix_reuse_answers_as_a_cold_cache::<$engine>($model).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn forced_tokens_read_ahead_keep_replies_valid() {
                r::forced_tokens_read_ahead_keep_replies_valid::<$engine>($model).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn seeded_sampling_repeats() {
                r::seeded_sampling_repeats::<$engine>($model).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn the_prompt_uses_the_models_turns() {
                r::the_prompt_uses_the_models_turns::<$engine>($model).await
            }
        }
    };
}

#[cfg(feature = "llamacpp")]
real_model_suite!(smollm2_on_llama_cpp, super::OnLlamaCpp, "smollm2-135m");
#[cfg(feature = "llamacpp")]
real_model_suite!(gemma3_on_llama_cpp, super::OnLlamaCpp, "gemma3-270m");
#[cfg(feature = "candle")]
real_model_suite!(smollm2_on_candle, super::OnCandle, "smollm2-135m");
#[cfg(feature = "candle")]
real_model_suite!(gemma3_on_candle, super::OnCandle, "gemma3-270m");

/// Drafts take only the batch room the other sequences' next tokens leave:
/// in a batch of one token per sequence, each call made four times at once
/// (the replies meet their markers together, a step or so apart; a real
/// model's markers are several forced tokens) answers and parses.
#[cfg(feature = "llamacpp")]
#[tokio::test(flavor = "multi_thread")]
async fn drafts_leave_room_for_every_sequence_in_a_full_batch() {
    use dsrs_local::{LlamaCppAdapter, LlamaCppConfig, LlamaCppLoadOptions, LlamaCppModel};
    let Some(path) = real_model("smollm2-135m") else {
        return;
    };
    let model = Arc::new(LlamaCppModel::load(&path, LlamaCppLoadOptions::default()).unwrap());
    let full = LlamaCppAdapter::from_loaded_model(
        model,
        LlamaCppConfig::default()
            .with_context_length(4096)
            .with_batch_size(4)
            .with_parallel_sequences(4)
            .with_generation(config().with_max_concurrency(4)),
    );
    let lm = lm_of(&full, 64).await;
    for (name, signature, inputs) in calls() {
        let together = (0..4).map(|_| full.predict(&lm, signature.as_ref(), &inputs));
        for result in futures::future::join_all(together).await {
            let (data, _) = result.unwrap();
            check_types(name, &data);
        }
    }
    let stats = full.backend().stats();
    assert_eq!(stats.peak_sequences, 4, "{stats:?}");
    assert!(stats.forwarded_tokens > 0, "drafts were read: {stats:?}");
}

/// The two backends on the same real file: same token ids, close logits.
#[cfg(all(feature = "llamacpp", feature = "candle"))]
mod across_backends {
    use dsrs_local::LocalModel as _;
    use dsrs_local::{CandleLoadOptions, CandleModel, LlamaCppLoadOptions, LlamaCppModel};

    use super::real_model;
    use crate::cross_backend::{SAMPLES, argmax, relative_difference};

    fn same_tokens(model: &str) {
        let Some(path) = real_model(model) else {
            return;
        };
        let theirs =
            LlamaCppModel::load(&path, LlamaCppLoadOptions::default().with_vocab_only(true))
                .unwrap();
        let ours = CandleModel::load(&path, CandleLoadOptions::default()).unwrap();
        let markers = "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]<|im_end|><end_of_turn>";
        for text in SAMPLES.iter().copied().chain([markers]) {
            assert_eq!(
                ours.tokenize(text),
                theirs.tokenize(text),
                "{model}: {text:?}"
            );
        }
        // The same tokens end a reply (Gemma: `<eos>` and `<end_of_turn>`).
        let end = |card: &dsrs_local::ModelCard| {
            let mut ids = card.end_of_generation().to_vec();
            ids.sort_unstable();
            ids
        };
        assert_eq!(end(ours.card()), end(theirs.card()), "{model}");
    }

    #[test]
    fn smollm2_tokens_equal_llama_cpp() {
        same_tokens("smollm2-135m");
    }

    #[test]
    fn gemma3_tokens_equal_llama_cpp() {
        same_tokens("gemma3-270m");
    }

    /// Next-token logits of both backends on a real file, for a chat prompt
    /// and for plain text: within `bound` (relative L2; both engines quantize
    /// the activations for the 4-bit matmuls, each its own way) and the same
    /// most likely token.
    fn logits_agree(model: &str, bound: f64) {
        let Some(path) = real_model(model) else {
            return;
        };
        let theirs = LlamaCppModel::load(&path, LlamaCppLoadOptions::default()).unwrap();
        let ours = CandleModel::load(&path, CandleLoadOptions::default()).unwrap();
        // Gemma 3 270M's window is 512 tokens: the long prompt reaches past it.
        let long = "The quick brown fox jumps over the lazy dog. ".repeat(60);
        let mut prompts = vec![
            "The capital of France is",
            "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
        ];
        if model.starts_with("gemma") {
            prompts.push(&long);
        }
        for prompt in prompts {
            let a = ours.next_token_logits(prompt).unwrap();
            let b = theirs.next_token_logits(prompt).unwrap();
            let difference = relative_difference(&a, &b);
            println!("{model}: relative logit difference {difference:.2e}");
            assert!(difference < bound, "{model}: {difference} on {prompt:?}");
            assert_eq!(argmax(&a), argmax(&b), "{model}: next token of {prompt:?}");
        }
    }

    /// SmolLM2-135M Q4_1 moves with the rounding of its 8-bit activations:
    /// on "The capital of France is", llama.cpp is 0.12 (relative L2) from
    /// the same weights applied to unrounded activations, candle's kernels
    /// 0.07, this crate's 0.06, and those three are 0.07–0.17 apart
    /// (measured 2026-12-04); on the other prompts all are within 0.04.
    #[test]
    fn smollm2_logits_agree() {
        logits_agree("smollm2-135m", 0.2);
    }

    /// Gemma 3 270M Q4_K_M likewise: on "The capital of France is" (the
    /// first prompt), this crate is 0.029 from the weights applied to
    /// unrounded activations, llama.cpp 0.063, candle's own kernels 0.062,
    /// and the three are 0.035–0.079 apart (measured 2026-12-05, after its
    /// Q5_0 products became the crate's, rounding as ggml does: 0.048 from
    /// llama.cpp before); on the others all are within 0.07.
    #[test]
    fn gemma3_logits_agree() {
        logits_agree("gemma3-270m", 0.1);
    }
}
