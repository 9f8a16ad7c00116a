//! What this machine has, and how the pool would size two model shapes on it.
//!
//! ```text
//! cargo run --example detect
//! DSRS_DEVICE=fake-gpu:4294967296 cargo run --example detect   # pretend a 4 GiB GPU
//! ```
//!
//! Prints the hardware profile (GPUs through NVML even in a CPU-only build),
//! then the load plans for a Qwen2.5-0.5B-shaped Q8_0 and a
//! Llama-3.1-8B-shaped Q4_K test model: with the accelerators this build can
//! use, and with every detected GPU (what a `--features cuda` build would do).
//! The plans are computed from the models' header facts; no weights are written.

use dsrs_local::HardwareManager;
use dsrs_local::pool::plan::{DeviceBudget, PlanRequest, plan};
use dsrs_local::testing::{TestModelSpec, WeightType, chat_tokenizer};

fn main() -> anyhow::Result<()> {
    let profile = HardwareManager::detect();
    println!("{profile}\n");
    let budgets = |usable_only: bool| -> Vec<DeviceBudget> {
        profile
            .accelerators
            .iter()
            .filter(|a| !usable_only || a.usable())
            .map(|a| DeviceBudget {
                id: a.id(),
                name: a.label(),
                available: a.memory.available(),
            })
            .collect()
    };
    let shapes = [
        (
            "Qwen2.5-0.5B-shaped Q8_0",
            TestModelSpec::qwen2_5_0_5b_shape(chat_tokenizer(), WeightType::Q8_0),
        ),
        (
            "Llama-3.1-8B-shaped Q4_K",
            TestModelSpec::llama_3_1_8b_shape(chat_tokenizer(), WeightType::Q4K),
        ),
    ];
    for (name, spec) in shapes {
        let facts = spec.facts()?;
        let weights_gib = facts.weight_bytes() as f64 / f64::from(1u32 << 30);
        println!(
            "{name} ({weights_gib:.2} GiB of weights, vocab {}):",
            facts.vocab
        );
        for (label, usable_only) in [("this build", true), ("every detected GPU", false)] {
            let request = PlanRequest::default();
            match plan(
                &facts,
                &budgets(usable_only),
                profile.memory.available,
                &request,
            ) {
                Ok(plan) => println!("  [{label}] {plan}"),
                Err(e) => println!("  [{label}] cannot load: {e}"),
            }
        }
        println!();
    }
    Ok(())
}
