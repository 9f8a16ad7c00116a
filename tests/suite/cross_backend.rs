//! candle computes what llama.cpp computes: same tokens, same greedy text, same logits.

use std::sync::Arc;

use dsrs_local::backends::candle::tokenizer::GgufTokenizer;
use dsrs_local::gguf::GgufHeader;
use dsrs_local::testing::{TestModelSpec, TestTokenizer, WeightType};
use dsrs_local::{
    CandleAdapter, CandleConfig, CandleLoadOptions, CandleModel, GenerationRequest,
    LlamaCppAdapter, LlamaCppConfig, LlamaCppLoadOptions, LlamaCppModel, Sampling,
};

use crate::support::shared_model;

const SAMPLES: [&str; 8] = [
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
    model
        .llama_model()
        .vocab()
        .tokenize(text.as_bytes(), false, true)
        .into_iter()
        .map(|t| t.0 as u32)
        .collect()
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
    let prompt = "The quick brown fox jumps over the lazy dog";
    let ours = CandleModel::load(&path, CandleLoadOptions::default())
        .unwrap()
        .next_token_logits(prompt)
        .unwrap();
    let theirs = LlamaCppModel::load(&path, LlamaCppLoadOptions::default())
        .unwrap()
        .next_token_logits(prompt)
        .unwrap();
    assert_eq!(ours.len(), theirs.len());
    let diff: f64 = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = theirs
        .iter()
        .map(|b| f64::from(*b).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(diff / norm < 5e-3, "relative difference {}", diff / norm);
    let argmax = |v: &[f32]| dsrs_local::decode::argmax(v);
    assert_eq!(argmax(&ours), argmax(&theirs));
}
