//! An OpenAI-compatible HTTP server over a local adapter: the seam every
//! version of dspy-rs, Python DSPy and every OpenAI client share.
//!
//! It drives the adapter's own backend — the same loaded model, worker,
//! continuous batching and prefix cache as `Predict` in the same process —
//! through the adapter's concurrency limit, so HTTP calls and in-process
//! calls queue together.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/chat/completions` | chat, `stream: true` as server-sent events, `n`, `response_format`, DSPy prompts held to their field grammar |
//! | `POST /v1/completions` | raw text continuation |
//! | `GET /v1/models` | the served model |
//! | `GET /health` | `{"status": "ok"}` |
//! | `GET /metrics` | Prometheus text |
//!
//! Two ways to run it: [`Server::start`] or [`Server::bind`] (the `dsrs-local serve` binary) on
//! an address of your choice, or [`LocalAdapter::lm`](crate::LocalAdapter::lm),
//! which registers the adapter with one loopback server per process and
//! returns a dspy-rs `LM` pointing at it. `specs/server.md` has the details.

mod chat;
mod completions;
mod engine;
mod errors;
mod loopback;
mod metrics;
mod request;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::oneshot;

use crate::backend::Backend;
use crate::{Error, LocalAdapter, Result};
use engine::{Engine, SharedEngine};
use errors::ApiError;
use metrics::Metrics;

/// Limits and defaults of a server.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ServerOptions {
    /// The model's name in requests and `/v1/models`; `None` = the file's stem.
    pub model_name: Option<String>,
    /// Requests must carry `Authorization: Bearer <key>` (on `/v1/*`).
    pub api_key: Option<String>,
    /// Reply budget when a request sets neither `max_tokens` nor
    /// `max_completion_tokens` (rig's OpenAI client never does); `None` = the
    /// adapter's `GenerationConfig::max_tokens`, else 512.
    pub default_max_tokens: Option<usize>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most messages in one chat request.
    pub max_messages: usize,
    /// Most choices (`n`) in one request.
    pub max_choices: usize,
    /// Most calls waiting for the engine before new ones get 503.
    pub max_waiting: usize,
    /// Hold replies to a DSPy `ChatAdapter` prompt (recognised from its
    /// system message) to that signature's field grammar.
    pub dspy_grammar: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            model_name: None,
            api_key: None,
            default_max_tokens: None,
            max_body_bytes: 8 << 20,
            max_messages: 1024,
            max_choices: 16,
            max_waiting: 1024,
            dspy_grammar: true,
        }
    }
}

impl ServerOptions {
    /// Names the model.
    #[must_use]
    pub fn with_model_name(mut self, name: impl Into<String>) -> Self {
        self.model_name = Some(name.into());
        self
    }
    /// Requires this API key.
    #[must_use]
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }
    /// Sets the reply budget of requests that name none.
    #[must_use]
    pub fn with_default_max_tokens(mut self, tokens: usize) -> Self {
        self.default_max_tokens = Some(tokens.max(1));
        self
    }
    /// Sets how many calls may wait for the engine before new ones get 503.
    #[must_use]
    pub fn with_max_waiting(mut self, calls: usize) -> Self {
        self.max_waiting = calls;
        self
    }
}

/// Where a router finds its engine: held, or looked up per request (the
/// loopback server holds adapters weakly, so it keeps no model alive).
#[derive(Clone)]
enum EngineSource {
    Held(SharedEngine),
    Weak(Arc<dyn Fn() -> Option<SharedEngine> + Send + Sync>),
}

/// What every handler of one served model shares.
#[derive(Clone)]
struct AppState {
    source: EngineSource,
    model_name: String,
    options: Arc<ServerOptions>,
    metrics: Arc<Metrics>,
    created: u64,
}

impl AppState {
    fn engine(&self) -> std::result::Result<SharedEngine, ApiError> {
        match &self.source {
            EngineSource::Held(engine) => Ok(Arc::clone(engine)),
            EngineSource::Weak(upgrade) => upgrade().ok_or_else(|| {
                ApiError::not_found("the model was unloaded: its adapter no longer exists")
            }),
        }
    }

    /// Refuses a request for another model.
    fn check_model(&self, model: Option<&str>) -> std::result::Result<(), ApiError> {
        match model {
            Some(name) if name != self.model_name => Err(ApiError::not_found(format!(
                "the model `{name}` does not exist; this server serves `{}`",
                self.model_name
            ))
            .with_param("model")),
            _ => Ok(()),
        }
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The routes over one model.
fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/chat/completions", post(chat::handle))
        .route("/completions", post(completions::handle))
        .route("/models", get(models))
        .layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .nest("/v1", v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.options.max_body_bytes))
        .with_state(state)
}

fn app_state(source: EngineSource, model_name: String, options: ServerOptions) -> AppState {
    AppState {
        source,
        model_name,
        options: Arc::new(options),
        metrics: Arc::new(Metrics::default()),
        created: unix_seconds(),
    }
}

/// The model's name: the options', else the file's stem.
fn model_name(engine: &dyn Engine, options: &ServerOptions) -> String {
    options.model_name.clone().unwrap_or_else(|| {
        engine
            .card()
            .path()
            .file_stem()
            .map_or_else(|| "local".to_string(), |s| s.to_string_lossy().into_owned())
    })
}

async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.options.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn not_found(request: Request<Body>) -> ApiError {
    ApiError::not_found(format!(
        "no route {} {}; this server has /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics",
        request.method(),
        request.uri().path()
    ))
}

async fn models(State(state): State<AppState>) -> std::result::Result<Response, ApiError> {
    let engine = state.engine()?;
    Ok(axum::Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_name,
            "object": "model",
            "created": state.created,
            "owned_by": "dsrs-local",
            "meta": {
                "backend": engine.card().backend(),
                "architecture": engine.card().architecture(),
                "context_length": engine.context_length(),
            },
        }],
    }))
    .into_response())
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let (load, stats) = state
        .engine()
        .map(|e| (e.load(), e.stats()))
        .unwrap_or_default();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(load, stats),
    )
        .into_response()
}

/// A server running on a thread of its own until [`stop`](RunningServer::stop)
/// or drop.
#[derive(Debug)]
pub struct RunningServer {
    address: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its OpenAI base URL: `http://ADDRESS/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// Stops accepting requests, lets running ones finish, and waits.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Starts servers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Server;

impl Server {
    /// Serves `adapter` on `address` (port 0 picks a free one) on a thread
    /// with its own runtime, and returns once it listens.
    pub fn start<B: Backend>(
        adapter: LocalAdapter<B>,
        address: SocketAddr,
        options: ServerOptions,
    ) -> Result<RunningServer> {
        let engine: SharedEngine = Arc::new(adapter);
        let name = model_name(engine.as_ref(), &options);
        let app = router(app_state(EngineSource::Held(engine), name, options));
        spawn_server(app, address)
    }

    /// Binds `address` (port 0 picks a free one) for `adapter`, on the
    /// current runtime; [`BoundServer::serve`] then answers requests.
    pub async fn bind<B: Backend>(
        adapter: LocalAdapter<B>,
        address: SocketAddr,
        options: ServerOptions,
    ) -> Result<BoundServer> {
        let engine: SharedEngine = Arc::new(adapter);
        let name = model_name(engine.as_ref(), &options);
        let app = router(app_state(EngineSource::Held(engine), name, options));
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| bind_error(address, e))?;
        let address = listener.local_addr().map_err(|e| bind_error(address, e))?;
        Ok(BoundServer {
            listener,
            app,
            address,
        })
    }
}

/// A server bound to its address, not yet answering ([`Server::bind`]).
#[derive(Debug)]
pub struct BoundServer {
    listener: tokio::net::TcpListener,
    app: Router,
    address: SocketAddr,
}

impl BoundServer {
    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its OpenAI base URL: `http://ADDRESS/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// Answers requests until `shutdown` resolves (Ctrl-C, for the binary),
    /// then lets running requests finish.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        axum::serve(self.listener, self.app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Error::config(format!("the server failed: {e}")))
    }
}

fn bind_error(address: SocketAddr, error: std::io::Error) -> Error {
    Error::config(format!("cannot listen on {address}: {error}"))
}

/// Binds now (so the port is known and errors are the caller's), then runs
/// `app` on a thread with a runtime of its own: it outlives the caller's
/// runtime (each `#[tokio::test]` has one).
fn spawn_server(app: Router, address: SocketAddr) -> Result<RunningServer> {
    let listener = std::net::TcpListener::bind(address).map_err(|e| bind_error(address, e))?;
    let address = listener.local_addr().map_err(|e| bind_error(address, e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| bind_error(address, e))?;
    let (shutdown, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("dsrs-server".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("dsrs-server")
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, "the server's runtime could not start");
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!(%error, "the server could not take its socket");
                        return;
                    }
                };
                let stopped = async {
                    let _ = stopped.await;
                };
                if let Err(error) = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
                {
                    tracing::error!(%error, "the server stopped");
                }
            });
        })
        .map_err(|e| Error::config(format!("cannot start the server thread: {e}")))?;
    Ok(RunningServer {
        address,
        shutdown: Some(shutdown),
        thread: Some(thread),
    })
}
