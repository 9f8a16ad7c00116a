//! HardwareManager on this machine and ModelPool sharing, single flight,
//! eviction and in-use protection.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use dsrs_local::gguf::GgufHeader;
use dsrs_local::hardware::{AcceleratorKind, DetectOptions, FakeGpu, HardwareManager};
use dsrs_local::pool::{ModelPool, ModelSpec};
use dsrs_local::testing::{TestModelSpec, TestTokenizer};
use dsrs_local::{Error, LoadModel, Placement, Result};

/// Four small model files, written once: three for the eviction test, one
/// for the single-flight test (tests run in parallel; each counts its own).
static MODELS: LazyLock<(tempfile::TempDir, Vec<PathBuf>)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let paths = (0..4)
        .map(|i| {
            let path = dir.path().join(format!("m{i}.gguf"));
            TestModelSpec::tiny(TestTokenizer::ByteLevel)
                .with_seed(i)
                .write(&path)
                .unwrap();
            path
        })
        .collect();
    (dir, paths)
});

/// Loads per file.
static LOADS: LazyLock<Mutex<HashMap<PathBuf, usize>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn loads_of(path: &Path) -> usize {
    LOADS.lock().unwrap().get(path).copied().unwrap_or(0)
}

/// A stand-in backend model that counts its loads; it drives CUDA GPUs.
#[derive(Debug)]
struct Counted {
    placement: Placement,
}

impl LoadModel for Counted {
    const BACKEND: &'static str = "counted";
    const SPLITS_LAYERS: bool = true;
    fn drives(kind: AcceleratorKind) -> bool {
        kind == AcceleratorKind::Cuda
    }
    fn load_placed(header: &GgufHeader, placement: &Placement) -> Result<Self> {
        *LOADS
            .lock()
            .unwrap()
            .entry(header.path.clone())
            .or_default() += 1;
        std::thread::sleep(Duration::from_millis(50));
        Ok(Counted {
            placement: placement.clone(),
        })
    }
}

/// Like `Counted`, but runs a model whole on one device and drives no GPU
/// (as candle in a Vulkan build sees a Vulkan card).
#[derive(Debug)]
struct CpuOnly;

impl LoadModel for CpuOnly {
    const BACKEND: &'static str = "cpu-only";
    const SPLITS_LAYERS: bool = false;
    fn drives(_: AcceleratorKind) -> bool {
        false
    }
    fn load_placed(_: &GgufHeader, _: &Placement) -> Result<Self> {
        Ok(CpuOnly)
    }
}

fn cpu_pool() -> ModelPool {
    ModelPool::new(HardwareManager::detect_with(&DetectOptions {
        force_cpu: true,
        fake_gpus: Vec::new(),
    }))
}

#[test]
fn this_machine_has_a_cpu_and_ram_and_plans_zero_gpu_layers() {
    let profile = HardwareManager::detect();
    println!("{profile}");
    assert!(profile.cpu.logical_cores >= 1 && profile.cpu.physical_cores >= 1);
    assert!(profile.memory.total > 0 && profile.memory.available <= profile.memory.total);
    let compiled = |name| profile.compiled.iter().any(|b| b.name == name);
    assert_eq!(compiled("llama.cpp"), cfg!(feature = "llamacpp"));
    assert_eq!(compiled("candle"), cfg!(feature = "candle"));
    if profile.accelerators.is_empty() {
        let plan = ModelPool::new(profile)
            .plan::<Counted>(&ModelSpec::gguf(&MODELS.1[0]))
            .unwrap();
        assert_eq!(plan.gpu_layers(), 0);
        assert!(plan.to_string().contains("CPU only"), "{plan}");
    }
}

#[test]
fn a_fake_gpu_gets_every_layer_of_a_backend_that_drives_it_and_none_of_one_that_does_not() {
    let profile = HardwareManager::detect_with(&DetectOptions {
        force_cpu: false,
        fake_gpus: vec![FakeGpu::cuda(8 << 30)],
    });
    let pool = ModelPool::new(profile);
    let spec = ModelSpec::gguf(&MODELS.1[0]);
    let plan = pool.plan::<Counted>(&spec).unwrap();
    if AcceleratorKind::Cuda.compiled_in() {
        assert_eq!(plan.gpu_layers(), plan.total_layers());
        assert_eq!(
            plan.placement.device.map(|d| (d.kind, d.index)),
            Some((AcceleratorKind::Cuda, 0)),
            "the loader is told which device"
        );
    } else {
        // A CUDA GPU in a build without CUDA is reported but not used.
        assert_eq!(plan.gpu_layers(), 0);
    }
    let plan = pool.plan::<CpuOnly>(&spec).unwrap();
    assert_eq!(plan.placement.device, None);
    if AcceleratorKind::Cuda.compiled_in() {
        assert!(
            plan.reasons
                .iter()
                .any(|r| r.contains("cpu-only backend cannot drive Cuda")),
            "{plan}"
        );
    }
}

/// A Vulkan card (an AMD one, say): llama.cpp plans every layer on it in a
/// Vulkan build, candle (no Vulkan) plans the CPU and says why; a build
/// without Vulkan reports the card and says which feature would use it.
#[cfg(all(feature = "llamacpp", feature = "candle"))]
#[test]
fn a_fake_vulkan_gpu_gets_llama_cpp_layers_in_a_vulkan_build_and_candle_stays_on_the_cpu() {
    let profile =
        HardwareManager::detect_with(&DetectOptions::parse("fake-gpu:vulkan:8GiB").unwrap());
    let listing = profile.to_string();
    let pool = ModelPool::new(profile);
    let spec = ModelSpec::gguf(&MODELS.1[0]);
    let llama = pool.plan::<dsrs_local::LlamaCppModel>(&spec).unwrap();
    let candle = pool.plan::<dsrs_local::CandleModel>(&spec).unwrap();
    assert_eq!(candle.gpu_layers(), 0, "{candle}");
    if AcceleratorKind::Vulkan.compiled_in() {
        assert_eq!(llama.gpu_layers(), llama.total_layers(), "{llama}");
        assert_eq!(
            llama.placement.device.map(|d| (d.kind, d.index)),
            Some((AcceleratorKind::Vulkan, 0))
        );
        assert!(
            candle
                .reasons
                .iter()
                .any(|r| r.contains("Vulkan0 (fake GPU (DSRS_DEVICE)) is not used: the candle backend cannot drive Vulkan")),
            "{candle}"
        );
    } else {
        assert_eq!(llama.gpu_layers(), 0, "{llama}");
        assert!(
            listing.contains("Vulkan0 (fake GPU (DSRS_DEVICE)): 8.0 GiB total, 8.0 GiB free [override; not compiled in: build with --features vulkan]"),
            "{listing}"
        );
    }
}

#[test]
fn a_load_hands_the_plans_placement_to_the_loader() {
    let pool = cpu_pool();
    let model = pool
        .load::<Counted>(ModelSpec::gguf(&MODELS.1[1]).with_context(300))
        .unwrap();
    assert_eq!(model.placement.context_length, 300);
    assert_eq!(model.placement.device, None);
}

#[test]
fn the_same_spec_gives_the_same_model_and_sixteen_first_requests_load_once() {
    let pool = Arc::new(cpu_pool());
    let path = MODELS.1[3].clone();
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let pool = Arc::clone(&pool);
            let path = path.clone();
            std::thread::spawn(move || {
                pool.load::<Counted>(ModelSpec::gguf(path).with_context(512))
                    .unwrap()
            })
        })
        .collect();
    let models: Vec<Arc<Counted>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(loads_of(&path), 1, "single flight");
    assert!(models.iter().all(|m| Arc::ptr_eq(m, &models[0])));
    assert_eq!(models[0].placement.context_length, 512);
    let again = pool
        .load::<Counted>(ModelSpec::gguf(&path).with_context(512))
        .unwrap();
    assert!(Arc::ptr_eq(&again, &models[0]));
}

#[test]
fn idle_models_are_evicted_least_recently_used_first_and_in_use_ones_never() {
    let probe = cpu_pool();
    let one = probe
        .plan::<Counted>(&ModelSpec::gguf(&MODELS.1[0]).with_context(256))
        .unwrap();
    let each = one.host_bytes;
    // Room for two models.
    let pool = cpu_pool().with_budget(each * 2 + each / 2);
    let spec = |i: usize| ModelSpec::gguf(&MODELS.1[i]).with_context(256);

    let first = pool.load::<Counted>(spec(0)).unwrap();
    drop(pool.load::<Counted>(spec(1)).unwrap());
    // Loading a third needs room: the idle second goes, the held first stays.
    let third = pool.load::<Counted>(spec(2)).unwrap();
    let loaded: Vec<PathBuf> = pool.loaded().into_iter().map(|e| e.path).collect();
    assert!(
        loaded.contains(&MODELS.1[0]) && loaded.contains(&MODELS.1[2]),
        "{loaded:?}"
    );
    assert!(!loaded.contains(&MODELS.1[1]));

    // With both loaded models in use there is no room for another.
    let err = pool.load::<Counted>(spec(1)).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");

    // Release one: now the least recently used idle model makes room.
    drop(first);
    pool.load::<Counted>(spec(1)).unwrap();
    let loaded: Vec<PathBuf> = pool.loaded().into_iter().map(|e| e.path).collect();
    assert!(!loaded.contains(&MODELS.1[0]), "{loaded:?}");
    drop(third);
    assert!(pool.unload(&MODELS.1[2]).unwrap());
    assert!(pool.loaded().iter().all(|e| e.path != MODELS.1[2]));
}

#[test]
fn bad_files_are_typed_errors() {
    let pool = cpu_pool();
    let err = pool
        .load::<Counted>(ModelSpec::gguf("/nonexistent.gguf"))
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent.gguf"), "{err}");
    let err = pool
        .plan::<Counted>(&ModelSpec::gguf("/nonexistent.gguf"))
        .unwrap_err();
    assert!(matches!(err, Error::ModelNotFound { .. }));
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    assert!(matches!(
        pool.plan::<Counted>(&ModelSpec::gguf(&junk)),
        Err(Error::InvalidModelFile { .. })
    ));
    let alien = dir.path().join("alien.gguf");
    TestModelSpec::tiny(TestTokenizer::ByteLevel)
        .with_architecture("frobnicator")
        .write(&alien)
        .unwrap();
    match pool.load::<Counted>(ModelSpec::gguf(&alien)) {
        Err(Error::UnsupportedArchitecture { architecture, .. }) => {
            assert_eq!(architecture, "frobnicator")
        }
        other => panic!("expected UnsupportedArchitecture, got {other:?}"),
    }
    // Too large for the pool's budget: how much it needs and what there is.
    let tiny_budget = cpu_pool().with_budget(1 << 20);
    match tiny_budget.load::<Counted>(ModelSpec::gguf(&MODELS.1[0])) {
        Err(Error::InsufficientMemory {
            needed, available, ..
        }) => assert!(needed > available),
        other => panic!("expected InsufficientMemory, got {other:?}"),
    }
}

#[cfg(feature = "llamacpp")]
#[tokio::test]
async fn llama_cpp_adapters_share_the_pools_model() {
    use dspy_rs::example;
    use dsrs_local::{LlamaCppAdapter, LlamaCppConfig, LlamaCppModel, LocalModel};
    let pool = cpu_pool();
    let spec = ModelSpec::gguf(&crate::conformance::TINY_CHAT_MODEL.1).with_context(1024);
    let model: Arc<LlamaCppModel> = pool.load(spec.clone()).unwrap();
    let again: Arc<LlamaCppModel> = pool.load(spec).unwrap();
    assert!(Arc::ptr_eq(&model, &again));
    assert_eq!(
        model.card().default_context(),
        1024,
        "the plan's context reaches the adapters"
    );
    let adapter = LlamaCppAdapter::from_loaded_model(model, LlamaCppConfig::default());
    let lm = adapter.lm().await.unwrap();
    let (data, _) = adapter
        .predict(
            &lm,
            &crate::QA::new(),
            &example! { "question": "input" => "hi" },
        )
        .await
        .unwrap();
    assert!(data["answer"].is_string());
}

#[test]
fn test_model_facts_match_what_the_written_header_says() {
    use dsrs_local::pool::plan::ModelFacts;
    use dsrs_local::testing::WeightType;
    let dir = tempfile::tempdir().unwrap();
    for weights in [WeightType::F32, WeightType::Q8_0, WeightType::Q4K] {
        let spec = TestModelSpec::tiny(TestTokenizer::ByteLevel).with_weights(weights);
        let path = dir.path().join(format!("{weights:?}.gguf"));
        spec.write(&path).unwrap();
        let from_file = ModelFacts::from_header(&GgufHeader::read(&path).unwrap()).unwrap();
        assert_eq!(from_file, spec.facts().unwrap(), "{weights:?}");
    }
}
