//! `dsrs-local`: serve a local GGUF model over the OpenAI API, or say what
//! this machine has.
//!
//! ```text
//! dsrs-local serve MODEL [--host 127.0.0.1] [--port 8080] [--api-key KEY]
//!                        [--backend llamacpp|candle] [--parallel N] [--context N]
//!                        [--max-tokens N] [--max-waiting N]
//! dsrs-local detect
//! ```
//!
//! MODEL is a path, `owner/repo:file.gguf` from the Hugging Face cache, or
//! an Ollama name. Then point any OpenAI client at the printed URL, Python
//! DSPy included: `dspy.LM("openai/MODEL_NAME", api_base=URL, api_key=KEY)`.

#[cfg_attr(feature = "candle", path = "candle.rs")]
#[cfg_attr(not(feature = "candle"), path = "no_candle.rs")]
mod candle;
#[cfg_attr(feature = "llamacpp", path = "llama_cpp.rs")]
#[cfg_attr(not(feature = "llamacpp"), path = "no_llama_cpp.rs")]
mod llama_cpp;

use std::net::{IpAddr, SocketAddr};

use clap::{Parser, Subcommand, ValueEnum};
use dsrs_local::server::ServerOptions;
use dsrs_local::{HardwareManager, ModelPool, ModelSpec};

#[derive(Parser)]
#[command(
    name = "dsrs-local",
    version,
    about = "Local GGUF models for DSPy, over the OpenAI API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model at an OpenAI-compatible endpoint.
    Serve(ServeArgs),
    /// Print what this machine has and what this build can use.
    Detect,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A GGUF path, `owner/repo:file.gguf` (Hugging Face cache) or an Ollama name.
    model: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/*.
    #[arg(long, env = "DSRS_API_KEY")]
    api_key: Option<String>,
    /// The engine.
    #[arg(long, value_enum, default_value_t = BackendChoice::Llamacpp)]
    backend: BackendChoice,
    /// Requests decoded together (llama.cpp's continuous batching; default:
    /// all that can reach the engine at once).
    #[arg(long)]
    parallel: Option<usize>,
    /// Context window in tokens (default: the pool's plan).
    #[arg(long)]
    context: Option<u32>,
    /// Reply budget of requests that set none.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// The model's name in requests (default: the file's stem).
    #[arg(long)]
    model_name: Option<String>,
    /// Calls that may wait for the engine; more get 503 with Retry-After.
    #[arg(long, default_value_t = ServerOptions::default().max_waiting)]
    max_waiting: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendChoice {
    Llamacpp,
    Candle,
}

/// What `serve` hands to the chosen backend's module (in a build with no
/// backend, nothing reads it but the model's name and the address).
#[cfg_attr(not(any(feature = "llamacpp", feature = "candle")), allow(dead_code))]
pub(crate) struct Settings<'a> {
    pub(crate) pool: &'a ModelPool,
    pub(crate) spec: ModelSpec,
    pub(crate) address: SocketAddr,
    pub(crate) options: ServerOptions,
    pub(crate) generation: dsrs_local::GenerationConfig,
    pub(crate) parallel: Option<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Detect => {
            println!("{}", HardwareManager::detect());
            Ok(())
        }
        Command::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let pool = ModelPool::new(HardwareManager::detect());
    let mut spec = ModelSpec::named(&args.model);
    if let Some(context) = args.context {
        spec = spec.with_context(context);
    }
    let address = SocketAddr::new(args.host, args.port);
    let mut options = ServerOptions::default()
        .with_default_max_tokens(args.max_tokens)
        .with_max_waiting(args.max_waiting);
    if let Some(key) = args.api_key {
        options = options.with_api_key(key);
    }
    if let Some(name) = args.model_name {
        options = options.with_model_name(name);
    }
    let generation = dsrs_local::GenerationConfig::default()
        .with_max_tokens(args.max_tokens)
        .with_max_concurrency(args.parallel.unwrap_or(4).max(1) * 4);
    let settings = Settings {
        pool: &pool,
        spec,
        address,
        options,
        generation,
        parallel: args.parallel,
    };
    match args.backend {
        BackendChoice::Llamacpp => llama_cpp::serve(settings).await,
        BackendChoice::Candle => candle::serve(settings).await,
    }
}

/// Stops on Ctrl-C (and SIGTERM on Unix).
#[cfg_attr(not(any(feature = "llamacpp", feature = "candle")), allow(dead_code))]
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    eprintln!("stopping: letting running requests finish");
}

/// What the binary prints once it listens (tests read the URL from it).
#[cfg_attr(not(any(feature = "llamacpp", feature = "candle")), allow(dead_code))]
pub(crate) fn announce(plan: &dsrs_local::pool::plan::LoadPlan, base_url: &str) {
    use std::io::Write;
    println!("plan: {plan}");
    println!("serving at {base_url} (Ctrl-C stops)");
    let _ = std::io::stdout().flush();
}
