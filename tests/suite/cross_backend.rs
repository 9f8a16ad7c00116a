//! candle computes what llama.cpp computes: same tokens, same greedy text, same logits.

use std::sync::Arc;

use dsrs_local::LocalModel as _;
use dsrs_local::gguf::GgufHeader;
use dsrs_local::testing::{GgufTokenizer, TestModelSpec, TestTokenizer, WeightType};
use dsrs_local::{
    CandleAdapter, CandleConfig, CandleLoadOptions, CandleModel, GenerationRequest,
    LlamaCppAdapter, LlamaCppConfig, LlamaCppLoadOptions, LlamaCppModel, Sampling,
};

use crate::support::shared_model;

pub const SAMPLES: [&str; 8] = [
    "Hello world! How are you today?",
    "  leading spaces,   runs of   spaces\tand\ttabs\n\nnew lines  ",
    "Accents: café, naïve, Ångström, São Paulo, Zürich",
    "CJK: 你好，世界。日本語のテキスト。한국어 문장",
    "Emoji: 🦀🚀 👩‍💻 ✅❌",
    "Numbers 1234567 and 3.14159, code: fn main() { println!(\"{}\", x); }",
    "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]",
    "",
];

fn llama_cpp_tokens(path: &std::path::Path, text: &str) -> Vec<u32> {
    // llama.cpp's own tokenizer on a vocabulary-only load.
    let model =
        LlamaCppModel::load(path, LlamaCppLoadOptions::default().with_vocab_only(true)).unwrap();
    model.tokenize(text)
}

fn same_tokens_as_llama_cpp(vocab_file: &str) {
    let Some(path) = shared_model(&format!("vocab/{vocab_file}")) else {
        return;
    };
    let tokenizer = GgufTokenizer::from_header(&GgufHeader::read(&path).unwrap()).unwrap();
    for text in SAMPLES {
        let ours = tokenizer.encode(text, false);
        let theirs = llama_cpp_tokens(&path, text);
        assert_eq!(ours, theirs, "{vocab_file}: {text:?}");
    }
}

#[test]
fn bpe_deepseek_coder_tokens_equal_llama_cpp() {
    same_tokens_as_llama_cpp("ggml-vocab-deepseek-coder-chat.gguf");
}

#[test]
fn bpe_gpt2_tokens_equal_llama_cpp() {
    same_tokens_as_llama_cpp("ggml-vocab-gpt-2.gguf");
}

#[test]
fn spm_llama_tokens_equal_llama_cpp() {
    same_tokens_as_llama_cpp("ggml-vocab-llama-spm.gguf");
}

#[test]
fn spm_phi3_tokens_equal_llama_cpp() {
    same_tokens_as_llama_cpp("ggml-vocab-phi-3.gguf");
}

#[test]
fn byte_level_test_vocabulary_tokens_equal_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bytes.gguf");
    TestModelSpec::tiny(TestTokenizer::ByteLevel)
        .write(&path)
        .unwrap();
    let tokenizer = GgufTokenizer::from_header(&GgufHeader::read(&path).unwrap()).unwrap();
    for text in SAMPLES {
        assert_eq!(
            tokenizer.encode(text, false),
            llama_cpp_tokens(&path, text),
            "{text:?}"
        );
    }
}

/// Greedy, no constraint, the same prompt on both backends.
async fn greedy(
    prompt: &str,
    max_tokens: usize,
    llama: &LlamaCppAdapter,
    candle: &CandleAdapter,
) -> (String, String) {
    let request = GenerationRequest {
        prompt: prompt.into(),
        sampling: Sampling::greedy(),
        max_tokens,
        stop: vec![],
        constraint: None,
        control: Default::default(),
    };
    let a = llama.generate(request.clone()).await.unwrap();
    let b = candle.generate(request).await.unwrap();
    assert_eq!(a.prompt_tokens, b.prompt_tokens, "same prompt tokens");
    (a.text, b.text)
}

#[tokio::test]
async fn stories260k_first_64_tokens_agree() {
    let Some(path) = shared_model("stories260K.gguf") else {
        return;
    };
    let llama = LlamaCppAdapter::from_loaded_model(
        Arc::new(LlamaCppModel::load(&path, LlamaCppLoadOptions::default()).unwrap()),
        LlamaCppConfig::default(),
    );
    let candle = CandleAdapter::from_loaded_model(
        Arc::new(CandleModel::load(&path, CandleLoadOptions::default()).unwrap()),
        CandleConfig::default(),
    );
    let (a, b) = greedy("Once upon a time", 64, &llama, &candle).await;
    assert!(
        a.starts_with(crate::llama_cpp::STORIES_CONTINUATION),
        "{a:?}"
    );
    assert_eq!(a, b);
}

/// Both engines' next-token logits for `prompt` on the file at `path`
/// agree within `tolerance` (relative L2) and pick the same token; returns
/// the difference.
fn assert_next_token_agrees(path: &std::path::Path, prompt: &str, tolerance: f64) -> f64 {
    let ours = CandleModel::load(path, CandleLoadOptions::default())
        .unwrap()
        .next_token_logits(prompt)
        .unwrap();
    let theirs = LlamaCppModel::load(path, LlamaCppLoadOptions::default())
        .unwrap()
        .next_token_logits(prompt)
        .unwrap();
    let difference = relative_difference(&ours, &theirs);
    assert!(difference < tolerance, "relative difference {difference}");
    assert_eq!(argmax(&ours), argmax(&theirs));
    difference
}

/// On a test-built F32 model the two engines' next-token logits agree within
/// 5e-3 relative (L2 norm of the difference over the norm of llama.cpp's), and
/// pick the same token. The weights are the same f32 numbers; the difference
/// comes from llama.cpp keeping its KV cache in f16 (candle keeps f32) and from
/// different kernels and summation orders (measured here: 1.5e-3).
#[test]
fn f32_model_logits_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f32.gguf");
    TestModelSpec::tiny(TestTokenizer::ByteLevel)
        .with_weights(WeightType::F32)
        .write(&path)
        .unwrap();
    assert_next_token_agrees(&path, "The quick brown fox jumps over the lazy dog", 5e-3);
}

/// A file without `output.weight` (tied embeddings, as Qwen2.5-0.5B's)
/// projects through the token embedding on both engines alike.
#[test]
fn tied_embeddings_logits_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tied.gguf");
    let mut spec = TestModelSpec::tiny(TestTokenizer::ByteLevel)
        .with_family(dsrs_local::testing::TestArchitecture::Qwen2)
        .with_weights(WeightType::F32);
    spec.tied_embeddings = true;
    spec.write(&path).unwrap();
    // A GGUF tensor name is its length (u64) then its bytes.
    let name = [&13u64.to_le_bytes()[..], b"output.weight"].concat();
    let bytes = std::fs::read(&path).unwrap();
    assert!(!bytes.windows(name.len()).any(|w| w == name));
    assert_next_token_agrees(&path, "The quick brown fox jumps over the lazy dog", 5e-3);
}

/// Past 4096 positions (where candle-transformers' llama stopped) candle
/// still computes what llama.cpp computes.
#[test]
fn logits_agree_past_4096_positions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.gguf");
    let mut spec = TestModelSpec::tiny(TestTokenizer::ByteLevel).with_weights(WeightType::F32);
    spec.context_length = 8192;
    spec.write(&path).unwrap();
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(120);
    let tokens = CandleModel::load(&path, CandleLoadOptions::default())
        .unwrap()
        .tokenize_prompt(&prompt)
        .unwrap()
        .len();
    assert!(tokens > 4200, "the prompt is {tokens} tokens");
    let difference = assert_next_token_agrees(&path, &prompt, 1e-2);
    println!("{tokens} tokens: relative logit difference {difference:.2e}");
}

/// qwen2 and qwen3 files (and F16, Q8_0, Q4_K weights) load on both backends,
/// answer a constrained `Predict`, and agree on the next token.
#[tokio::test]
async fn qwen2_qwen3_and_quantized_llama_models_run_on_both_backends() {
    use dsrs_local::testing::TestArchitecture;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (TestArchitecture::Qwen2, WeightType::F32),
        (TestArchitecture::Qwen3, WeightType::F32),
        (TestArchitecture::Llama, WeightType::F16),
        (TestArchitecture::Llama, WeightType::Q8_0),
        (TestArchitecture::Llama, WeightType::Q4K),
    ];
    for (family, weights) in cases {
        let mut spec = TestModelSpec::tiny(TestTokenizer::ByteLevel)
            .with_family(family)
            .with_weights(weights);
        spec.hidden = 256; // a K-quant block is 256 wide
        spec.ffn = 512;
        let path = dir
            .path()
            .join(format!("{}-{weights:?}.gguf", family.name()));
        spec.write(&path).unwrap();

        let llama_model =
            Arc::new(LlamaCppModel::load(&path, LlamaCppLoadOptions::default()).unwrap());
        let candle_model =
            Arc::new(CandleModel::load(&path, CandleLoadOptions::default()).unwrap());
        let prompt = "The quick brown fox";
        let theirs = llama_model.next_token_logits(prompt).unwrap();
        let ours = candle_model.next_token_logits(prompt).unwrap();
        let difference = relative_difference(&ours, &theirs);
        println!("{family:?} {weights:?}: relative logit difference {difference:.2e}");
        if matches!(weights, WeightType::F32 | WeightType::F16) {
            let argmax = argmax;
            assert_eq!(
                argmax(&ours),
                argmax(&theirs),
                "{family:?} {weights:?}: next token"
            );
            assert!(difference < 5e-3, "{family:?} {weights:?}: {difference}");
        } else {
            // Quantized weights: both engines also quantize the activations,
            // rounding them differently; the logits stay close, not equal.
            assert!(difference < 0.1, "{family:?} {weights:?}: {difference}");
        }

        let config = dsrs_local::GenerationConfig::default().with_max_text_chars(40);
        let llama = LlamaCppAdapter::from_loaded_model(
            llama_model,
            LlamaCppConfig::default().with_generation(config.clone()),
        );
        let candle = CandleAdapter::from_loaded_model(
            candle_model,
            CandleConfig::default().with_generation(config),
        );
        let lm = llama.lm().await.unwrap();
        let inputs = dspy_rs::example! { "question": "input" => "Why?" };
        for (name, result) in [
            (
                "llama.cpp",
                llama.predict(&lm, &crate::QA::new(), &inputs).await,
            ),
            (
                "candle",
                candle.predict(&lm, &crate::QA::new(), &inputs).await,
            ),
        ] {
            let (data, _) =
                result.unwrap_or_else(|e| panic!("{family:?} {weights:?} on {name}: {e}"));
            assert!(data["answer"].is_string());
        }
    }
}

pub fn relative_difference(ours: &[f32], theirs: &[f32]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    let diff: f64 = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = theirs
        .iter()
        .map(|b| f64::from(*b).powi(2))
        .sum::<f64>()
        .sqrt();
    diff / norm
}

/// The whole chat path — template, special tokens, BOS — gives the same
/// prompt tokens on both backends, for BPE and SentencePiece vocabularies,
/// and both answer a constrained `Predict`.
#[tokio::test]
async fn rendered_chat_prompts_tokenize_the_same_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for vocab in [
        "ggml-vocab-deepseek-coder-chat.gguf",
        "ggml-vocab-phi-3.gguf",
        "ggml-vocab-llama-spm.gguf",
        "ggml-vocab-gpt-2.gguf",
    ] {
        let Some(vocab_path) = shared_model(&format!("vocab/{vocab}")) else {
            continue;
        };
        let path = dir.path().join(vocab);
        TestModelSpec::tiny(TestTokenizer::CopyFrom(vocab_path))
            .write(&path)
            .unwrap();
        let config = dsrs_local::GenerationConfig::default().with_max_text_chars(40);
        let llama = LlamaCppAdapter::from_loaded_model(
            Arc::new(LlamaCppModel::load(&path, LlamaCppLoadOptions::default()).unwrap()),
            LlamaCppConfig::default().with_generation(config.clone()),
        );
        let candle = CandleAdapter::from_loaded_model(
            Arc::new(CandleModel::load(&path, CandleLoadOptions::default()).unwrap()),
            CandleConfig::default().with_generation(config),
        );
        let lm = llama.lm().await.unwrap();
        let mut signature = crate::QA::new();
        dspy_rs::MetaSignature::set_demos(
            &mut signature,
            vec![dspy_rs::example! { "question": "input" => "Où est Zürich? 🏔", "answer": "output" => "En Suisse." }],
        )
        .unwrap();
        let inputs = dspy_rs::example! { "question": "input" => "什么是  DSPy?\n\tExplain." };
        let (_, a) = llama.predict(&lm, &signature, &inputs).await.unwrap();
        let (_, b) = candle.predict(&lm, &signature, &inputs).await.unwrap();
        assert_eq!(a.prompt_tokens, b.prompt_tokens, "{vocab}: prompt tokens");
        let prompt = llama.render_prompt(&signature, &inputs).unwrap();
        assert_eq!(
            dsrs_local::Backend::count_tokens(llama.backend().as_ref(), &prompt).unwrap(),
            dsrs_local::Backend::count_tokens(candle.backend().as_ref(), &prompt).unwrap(),
            "{vocab}"
        );
        checked += 1;
    }
    println!("checked {checked} vocabularies");
}

/// The crate's own model has its own SentencePiece vocabulary (merges across
/// spaces, isolated digits): the candle tokenizer must match llama.cpp's on it.
#[test]
fn task_model_vocabulary_tokens_equal_llama_cpp() {
    let path = dsrs_local::testing::task_model_path();
    let tokenizer = GgufTokenizer::from_header(&GgufHeader::read(&path).unwrap()).unwrap();
    let chat =
        "<|im_start|>user\n[[ ## a ## ]]\n12\n\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n";
    for text in SAMPLES.iter().chain([&chat]) {
        assert_eq!(
            tokenizer.encode(text, false),
            llama_cpp_tokens(&path, text),
            "{text:?}"
        );
    }
}

/// Both backends give the crate's own model's held-out questions the same
/// answers, one by one (greedy, constrained).
#[tokio::test]
async fn both_backends_answer_the_task_model_questions_alike() {
    use dsrs_local::testing::tasks::score;
    let path = dsrs_local::testing::task_model_path();
    let llama = LlamaCppAdapter::from_loaded_model(
        Arc::new(LlamaCppModel::load(&path, LlamaCppLoadOptions::default()).unwrap()),
        LlamaCppConfig::default().with_context_length(2048),
    );
    let candle = CandleAdapter::from_loaded_model(
        Arc::new(CandleModel::load(&path, CandleLoadOptions::default()).unwrap()),
        CandleConfig::default().with_context_length(2048),
    );
    let lm = llama.lm().await.unwrap();
    for (family, examples) in crate::conformance::held_out_questions() {
        let on_llama = score(&llama, &lm, &examples).await;
        let on_candle = score(&candle, &lm, &examples).await;
        assert_eq!(on_llama.correct, on_candle.correct, "{}", family.name());
        assert_eq!(
            format!("{:?}", on_llama.misses),
            format!("{:?}", on_candle.misses),
            "{}",
            family.name()
        );
    }
}

/// The id of the largest logit (the lowest id on ties).
pub fn argmax(logits: &[f32]) -> Option<usize> {
    logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .fold(None, |best: Option<(usize, f32)>, (i, &l)| match best {
            Some((_, b)) if b >= l => best,
            _ => Some((i, l)),
        })
        .map(|(i, _)| i)
}

/// Gemma 2, Gemma 3 and Phi-3 files (test-built, F32) give the same
/// next-token logits on both backends, for a prompt that reaches well past
/// the Gemma files' sliding window (so local and global layers differ), and
/// both answer a constrained `Predict`.
#[tokio::test]
async fn gemma2_gemma3_and_phi3_models_agree_with_llama_cpp() {
    use dsrs_local::testing::{TEST_SLIDING_WINDOW, TestArchitecture};
    let dir = tempfile::tempdir().unwrap();
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(4);
    for family in [
        TestArchitecture::Gemma2,
        TestArchitecture::Gemma3,
        TestArchitecture::Phi3,
    ] {
        let mut spec = TestModelSpec::tiny(TestTokenizer::ByteLevel).with_family(family);
        if family == TestArchitecture::Gemma3 {
            // Five local layers, then a global one. (Deeper random models
            // drift further apart: at 6 layers llama's own differ by 1.8e-2,
            // from llama.cpp's f16 KV cache.)
            spec.layers = 6;
        }
        let path = dir.path().join(format!("{}.gguf", family.name()));
        spec.write(&path).unwrap();
        let candle = CandleModel::load(&path, CandleLoadOptions::default()).unwrap();
        let tokens = candle.tokenize_prompt(&prompt).unwrap().len();
        assert!(tokens > 4 * TEST_SLIDING_WINDOW, "{tokens} tokens");
        let ours = candle.next_token_logits(&prompt).unwrap();
        // llama.cpp on the CPU too: on a GPU its f16 products are
        // `gpu.rs`'s to check, with their own tolerance.
        let theirs = LlamaCppModel::load(&path, LlamaCppLoadOptions::default().with_gpu_layers(0))
            .unwrap()
            .next_token_logits(&prompt)
            .unwrap();
        let difference = relative_difference(&ours, &theirs);
        println!("{family:?}: relative logit difference {difference:.2e}");
        assert!(difference < 5e-3, "{family:?}: {difference}");
        assert_eq!(argmax(&ours), argmax(&theirs), "{family:?}: next token");

        let adapter = CandleAdapter::from_loaded_model(
            Arc::new(candle),
            CandleConfig::default()
                .with_generation(dsrs_local::GenerationConfig::default().with_max_text_chars(40)),
        );
        let lm = adapter.lm().await.unwrap();
        let inputs = dspy_rs::example! { "question": "input" => "Why?" };
        let (data, _) = adapter
            .predict(&lm, &crate::QA::new(), &inputs)
            .await
            .unwrap_or_else(|e| panic!("{family:?}: {e}"));
        assert!(data["answer"].is_string());
    }
}
