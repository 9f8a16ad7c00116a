//! `--gpu` runs: the pool's plan for each model against the memory the GPU
//! really uses (NVML, device 0), after loading and after a full-context run.

use std::path::Path;
use std::sync::Arc;

use dsrs_local::pool::{ModelPool, ModelSpec};
use dsrs_local::{LlamaCppAdapter, LlamaCppConfig, LlamaCppModel};
use serde_json::{Value, json};

/// Bytes in use on GPU 0, all processes together.
pub fn vram_used() -> Option<u64> {
    let nvml = nvml_wrapper::Nvml::init().ok()?;
    let device = nvml.device_by_index(0).ok()?;
    Some(device.memory_info().ok()?.used)
}

/// Loads `path` through the pool with its plan, measures the GPU memory the
/// load and a full-context generation add, and returns the model and the
/// comparison.
pub async fn planned_llama_load(
    pool: &ModelPool,
    path: &Path,
) -> anyhow::Result<(Arc<LlamaCppModel>, Value)> {
    let spec = ModelSpec::gguf(path);
    let plan = pool.plan::<LlamaCppModel>(&spec)?;
    println!("plan for {}: {plan}", path.display());
    let before = vram_used();
    let model: Arc<LlamaCppModel> = pool.load(spec)?;
    let after_load = vram_used();

    // A prompt that fills the planned context, in an adapter of that context.
    let adapter = LlamaCppAdapter::from_loaded_model(Arc::clone(&model), LlamaCppConfig::default());
    let prompt = super::fixed_prompt(adapter.backend().as_ref(), plan.context as usize - 64)?;
    let generation = adapter.generate(super::raw_request(&prompt, 16)).await?;
    let after_run = vram_used();
    drop(adapter);

    let delta = |after: Option<u64>| match (before, after) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    let (load, run) = (delta(after_load), delta(after_run));
    let ratio = |measured: Option<u64>, planned: u64| measured.map(|m| m as f64 / planned as f64);
    let report = json!({
        "model": path.display().to_string(),
        "plan": plan.to_string(),
        "gpu_layers": plan.gpu_layers(),
        "total_layers": plan.total_layers(),
        "context": plan.context,
        "planned_weight_bytes": plan.gpu_weight_bytes,
        "planned_total_bytes": plan.gpu_bytes(),
        "measured_after_load_bytes": load,
        "measured_after_full_context_bytes": run,
        "load_vs_planned_weights": ratio(load, plan.gpu_weight_bytes),
        "run_vs_planned_total": ratio(run, plan.gpu_bytes()),
        "full_context_prompt_tokens": generation.prompt_tokens,
    });
    println!(
        "VRAM: after load {} MiB (plan: weights {} MiB), after a {}-token run {} MiB (plan: {} MiB in all)",
        load.map_or("?".into(), |b| (b >> 20).to_string()),
        plan.gpu_weight_bytes >> 20,
        generation.prompt_tokens,
        run.map_or("?".into(), |b| (b >> 20).to_string()),
        plan.gpu_bytes() >> 20,
    );
    Ok((model, report))
}
