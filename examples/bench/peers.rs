//! The systems a user would pick instead, built by `benches/setup-peers.sh`
//! under `target/peers`: llama.cpp's own `llama-bench` and `llama-server`,
//! and Python DSPy with `llama-cpp-python`'s server; and `llama-bench` on
//! our own llama.cpp build, which tells the engine's share of a gap. Each is optional: when
//! one is missing the benchmark says why and goes on without it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use dsrs_local::testing::LlamaServerProcess;
use serde_json::Value;

/// Where the peers live.
pub struct Peers {
    dir: PathBuf,
}

impl Peers {
    pub fn new(dir: PathBuf) -> Self {
        Peers { dir }
    }

    fn existing(&self, relative: &str, what: &str) -> Option<PathBuf> {
        let path = self.dir.join(relative);
        if path.exists() {
            Some(path)
        } else {
            println!(
                "skipping {what}: {} not found (run `bash benches/setup-peers.sh`)",
                path.display()
            );
            None
        }
    }

    pub fn llama_bench(&self) -> Option<PathBuf> {
        self.existing("llama.cpp-build/bin/llama-bench", "llama-bench")
    }

    /// `llama-bench` built on the llama.cpp that `LlamaCppAdapter` links
    /// (llama-cpp-sys-2's), where the one above runs llama-cpp-python's tree.
    pub fn llama_bench_same_build(&self) -> Option<PathBuf> {
        self.existing(
            "llama-bench-same-build/llama-bench",
            "llama-bench on our llama.cpp build",
        )
    }

    pub fn llama_server(&self) -> Option<PathBuf> {
        self.existing("llama.cpp-build/bin/llama-server", "llama-server")
    }

    pub fn python(&self) -> Option<PathBuf> {
        self.existing("venv/bin/python", "Python DSPy + llama-cpp-python")
    }
}

/// `llama-bench`'s figures for one model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LlamaBench {
    pub pp_tokens_per_s: f64,
    pub tg_tokens_per_s: f64,
    /// Generation after `depth` tokens in the cache (`None` where
    /// llama-bench printed no such entry).
    pub tg_deep_tokens_per_s: Option<f64>,
    pub build_commit: String,
    pub build_number: i64,
}

pub fn llama_bench(
    binary: &Path,
    model: &Path,
    prompt_tokens: usize,
    generated_tokens: usize,
    depth: usize,
    runs: usize,
    gpu: bool,
) -> anyhow::Result<LlamaBench> {
    let output = Command::new(binary)
        .arg("-m")
        .arg(model)
        .args(["-ngl", if gpu { "999" } else { "0" }])
        .args(["-p", &prompt_tokens.to_string()])
        .args(["-n", &generated_tokens.to_string()])
        .args(["-d", &format!("0,{depth}")])
        .args(["-t", &threads().to_string()])
        .args(["-r", &runs.to_string()])
        .args(["-o", "json"])
        .stderr(Stdio::null())
        .output()
        .context("running llama-bench")?;
    anyhow::ensure!(
        output.status.success(),
        "llama-bench failed: {}",
        output.status
    );
    let entries: Vec<Value> = serde_json::from_slice(&output.stdout)?;
    // One entry per test and depth.
    let rate = |prompt: bool, depth: usize| {
        entries
            .iter()
            .find(|entry| {
                (entry["n_prompt"].as_u64().unwrap_or(0) > 0) == prompt
                    && entry["n_depth"].as_u64().unwrap_or(0) == depth as u64
            })
            .and_then(|entry| entry["avg_ts"].as_f64())
            .context("llama-bench printed no such test")
    };
    let first = entries.first().context("llama-bench printed nothing")?;
    Ok(LlamaBench {
        pp_tokens_per_s: rate(true, 0)?,
        tg_tokens_per_s: rate(false, 0)?,
        tg_deep_tokens_per_s: rate(false, depth).ok(),
        build_commit: first["build_commit"].as_str().unwrap_or("?").to_string(),
        build_number: first["build_number"].as_i64().unwrap_or(-1),
    })
}

/// A running `llama-server`, stopped when dropped.
pub struct Server {
    _process: LlamaServerProcess,
    pub base_url: String,
}

impl Server {
    /// Starts llama-server as users run it for many clients: `slots` parallel
    /// slots over one unified KV cache of `context` cells, continuous
    /// batching and the prompt cache on (its defaults).
    ///
    /// `reply_tokens` is the server's default reply budget (`-n`): rig's
    /// OpenAI client, under dspy-rs 0.7.3's `LM`, does not send `max_tokens`,
    /// so without it a reply runs to an end token or the slot's context.
    pub fn start(
        binary: &Path,
        model: &Path,
        slots: usize,
        context: u32,
        reply_tokens: u32,
    ) -> anyhow::Result<Self> {
        let (slots, context) = (slots.to_string(), context.to_string());
        let (threads, reply_tokens) = (threads().to_string(), reply_tokens.to_string());
        let args = [
            "-np",
            &slots,
            "-c",
            &context,
            "-t",
            &threads,
            "--kv-unified",
            "-n",
            &reply_tokens,
        ];
        let process = LlamaServerProcess::start_binary(binary, model, &args)
            .map_err(anyhow::Error::msg)
            .context("starting llama-server")?;
        let base_url = format!("{}/v1", process.base_url);
        Ok(Server {
            _process: process,
            base_url,
        })
    }
}

/// Runs `benches/dspy_python.py` (Python DSPy against `base_url`, or against
/// llama-cpp-python's server on the same file, which it starts, when `None`)
/// and returns the JSON it prints last.
pub fn python_dspy(
    python: &Path,
    model: &Path,
    base_url: Option<&str>,
    examples: usize,
    runs: usize,
    max_tokens: usize,
    concurrency: usize,
) -> anyhow::Result<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/dspy_python.py");
    let mut command = Command::new(python);
    command.arg(script);
    if let Some(base_url) = base_url {
        command.args(["--base-url", base_url]);
    }
    let output = command
        .arg("--model")
        .arg(model)
        .args(["--examples", &examples.to_string()])
        .args(["--runs", &runs.to_string()])
        .args(["--max-tokens", &max_tokens.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--port", &free_port()?.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("running benches/dspy_python.py")?;
    anyhow::ensure!(
        output.status.success(),
        "dspy_python.py failed: {}",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout
        .lines()
        .last()
        .context("dspy_python.py printed nothing")?;
    Ok(serde_json::from_str(last)?)
}

pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
