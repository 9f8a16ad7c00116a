//! A GPU against the CPU on the same file, per backend: what a user gets does
//! not depend on the device. These run where a GPU the backend drives is
//! compiled in and present — llama.cpp on CUDA or Vulkan, candle on CUDA (the
//! GPU machine, `specs/gpu.md`); elsewhere each prints why it skips.
//!
//! Tolerance: F32 weights, next-token logits within 1e-2 relative (L2 norm of
//! the difference over the CPU's; the kernels differ in summation order and
//! llama.cpp's CUDA matrix products may round activations to f16) and the
//! same greedy text for 32 tokens.

use std::path::Path;
use std::sync::Arc;

use dsrs_local::hardware::{AcceleratorKind, HardwareManager};
use dsrs_local::pool::{ModelPool, ModelSpec};
use dsrs_local::testing::{TestModelSpec, TestTokenizer, WeightType};
use dsrs_local::{
    Backend, CandleAdapter, CandleConfig, CandleDevice, CandleLoadOptions, CandleModel,
    GenerationRequest, LlamaCppAdapter, LlamaCppConfig, LlamaCppLoadOptions, LlamaCppModel,
    LocalAdapter, Sampling,
};

use crate::cross_backend::relative_difference;
use crate::support::shared_model;

const LOGIT_TOLERANCE: f64 = 1e-2;

/// The first GPU of this machine that this build drives with `backend`
/// (`llama.cpp` or `candle`), or why there is none.
fn gpu_for(backend: &str) -> Option<AcceleratorKind> {
    let profile = HardwareManager::detect();
    let drives = |kind| {
        profile
            .compiled
            .iter()
            .any(|b| b.name == backend && b.drives(kind))
    };
    let kind = profile
        .usable_accelerators()
        .map(|a| a.kind)
        .find(|&kind| drives(kind));
    if kind.is_none() {
        eprintln!("skipping: this build has no GPU that {backend} drives, or this machine none");
    }
    kind
}

/// The models compared: a test-built F32 llama, and stories260K (a trained
/// model) when `../shared` has it.
fn models(dir: &Path) -> Vec<std::path::PathBuf> {
    let path = dir.join("f32.gguf");
    TestModelSpec::tiny(TestTokenizer::ByteLevel)
        .with_weights(WeightType::F32)
        .write(&path)
        .unwrap();
    let mut models = vec![path];
    models.extend(shared_model("stories260K.gguf"));
    models
}

const PROMPT: &str = "The quick brown fox jumps over the lazy dog";

fn assert_logits_agree(
    backend: &str,
    kind: AcceleratorKind,
    path: &Path,
    cpu: Vec<f32>,
    gpu: Vec<f32>,
) {
    let difference = relative_difference(&gpu, &cpu);
    eprintln!(
        "{}: {backend} {kind:?} vs CPU logits {difference:.2e}",
        path.display()
    );
    assert!(difference < LOGIT_TOLERANCE, "{backend}: {difference}");
}

async fn greedy_text<B: Backend>(adapter: &LocalAdapter<B>) -> String {
    adapter
        .generate(GenerationRequest {
            prompt: "Once upon a time".into(),
            sampling: Sampling::greedy(),
            max_tokens: 32,
            stop: vec![],
            constraint: None,
            control: Default::default(),
        })
        .await
        .unwrap()
        .text
}

#[tokio::test]
async fn llama_cpp_on_the_gpu_matches_the_cpu() {
    let Some(kind) = gpu_for("llama.cpp") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for path in models(dir.path()) {
        let load = |gpu_layers| {
            Arc::new(
                LlamaCppModel::load(
                    &path,
                    LlamaCppLoadOptions::default().with_gpu_layers(gpu_layers),
                )
                .unwrap(),
            )
        };
        let (cpu, gpu) = (load(0), load(u32::MAX));
        assert_logits_agree(
            "llama.cpp",
            kind,
            &path,
            cpu.next_token_logits(PROMPT).unwrap(),
            gpu.next_token_logits(PROMPT).unwrap(),
        );
        let adapter = |model| LlamaCppAdapter::from_loaded_model(model, LlamaCppConfig::default());
        assert_eq!(
            greedy_text(&adapter(cpu)).await,
            greedy_text(&adapter(gpu)).await,
            "{}",
            path.display()
        );
    }
}

#[tokio::test]
async fn candle_on_cuda_matches_the_cpu() {
    if gpu_for("candle") != Some(AcceleratorKind::Cuda) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for path in models(dir.path()) {
        let load = |device| {
            let options = CandleLoadOptions::default().with_device(device);
            Arc::new(CandleModel::load(&path, options).unwrap())
        };
        let (cpu, gpu) = (load(CandleDevice::Cpu), load(CandleDevice::Auto));
        assert_eq!(
            gpu.device().kind,
            AcceleratorKind::Cuda,
            "Auto picks the CUDA device"
        );
        assert_logits_agree(
            "candle",
            AcceleratorKind::Cuda,
            &path,
            cpu.next_token_logits(PROMPT).unwrap(),
            gpu.next_token_logits(PROMPT).unwrap(),
        );
        let adapter = |model| CandleAdapter::from_loaded_model(model, CandleConfig::default());
        assert_eq!(
            greedy_text(&adapter(cpu)).await,
            greedy_text(&adapter(gpu)).await,
            "{}",
            path.display()
        );
    }
}

/// Every layer of a small model on the GPU for each backend that drives it;
/// a backend that does not (candle in a Vulkan build) is planned for the CPU
/// and says why.
#[test]
fn the_pool_puts_every_layer_on_the_gpu() {
    let Some(kind) = gpu_for("llama.cpp") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.gguf");
    TestModelSpec::tiny(TestTokenizer::ByteLevel)
        .write(&path)
        .unwrap();
    let pool = ModelPool::new(HardwareManager::detect());
    let plan = pool.plan::<LlamaCppModel>(&ModelSpec::gguf(&path)).unwrap();
    eprintln!("{plan}");
    assert_eq!(plan.gpu_layers(), plan.total_layers(), "{plan}");
    assert_eq!(plan.placement.device.map(|d| d.kind), Some(kind), "{plan}");

    let plan = pool.plan::<CandleModel>(&ModelSpec::gguf(&path)).unwrap();
    eprintln!("{plan}");
    let candle: Arc<CandleModel> = pool.load(ModelSpec::gguf(&path)).unwrap();
    if gpu_for("candle").is_some() {
        assert_eq!(plan.gpu_layers(), plan.total_layers(), "{plan}");
        assert_eq!(candle.device().kind, AcceleratorKind::Cuda, "{plan}");
    } else {
        assert_eq!(plan.gpu_layers(), 0, "{plan}");
        assert!(
            plan.reasons
                .iter()
                .any(|r| r.contains(&format!("candle backend cannot drive {kind:?}"))),
            "{plan}"
        );
        assert_eq!(candle.device().kind, AcceleratorKind::Cpu, "{plan}");
    }
}
