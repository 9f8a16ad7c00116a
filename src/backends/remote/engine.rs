//! `RemoteBackend`: a generation is one `/v1/completions` call to the
//! endpoint the fleet picks, retried on the next when it cannot be served.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::runtime::Runtime;

use super::config::RemoteConfig;
use super::dialect::{RemoteReply, completion_body, error_message, read_completion};
use super::fleet::{EndpointStatus, Fleet, Lease};
use super::model::{BACKEND, RemoteModel};
use crate::backend::{Backend, EngineStats, Generation, GenerationRequest, LocalModel, Timings};
use crate::backends::common::EngineCounters;
use crate::error::cause;
use crate::{Error, Result};

/// How often a running call checks whether its caller gave up.
const CANCEL_POLL: Duration = Duration::from_millis(10);
/// Longest wait for one `/health` answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The remote backend: the served model's card, the fleet, an HTTP client.
///
/// [`generate`](Backend::generate) blocks; its call runs on the backend's
/// own small runtime, so it works from any thread (tokio's blocking pool,
/// where the adapter calls it, or a plain one).
#[derive(Debug)]
pub struct RemoteBackend {
    model: RemoteModel,
    fleet: Arc<Fleet>,
    client: reqwest::Client,
    config: RemoteConfig,
    counters: EngineCounters,
    runtime: BackgroundRuntime,
}

/// How one attempt on one endpoint ended.
enum Attempt {
    Answered(RemoteReply),
    /// The request itself was refused: every endpoint would refuse it.
    Refused(Error),
    /// The endpoint could not serve it: try another.
    Failed(Error),
}

impl RemoteBackend {
    /// Connects to the fleet serving the GGUF file at `model_file` (read
    /// for its chat template and vocabulary; the engines hold the weights).
    /// Every endpoint's `/health` is asked once before this returns; one
    /// that does not answer starts as down (calls still reach it when no
    /// other is left).
    pub fn connect(model_file: impl AsRef<std::path::Path>, config: RemoteConfig) -> Result<Self> {
        // `RemoteConfig::new` names the first endpoint: there is always one.
        config.validate()?;
        let model = RemoteModel::open(model_file.as_ref(), config.context_length)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dsrs-remote")
            .enable_all()
            .build()
            .map_err(|e| Error::inference(BACKEND, "starting the HTTP runtime failed", e))?;
        let client = reqwest::Client::builder()
            .timeout(config.call_timeout)
            .build()
            .map_err(|e| Error::inference(BACKEND, "building the HTTP client failed", e))?;
        let fleet = Arc::new(Fleet::new(&config.endpoints, config.affinity));
        let checker = HealthChecker {
            fleet: Arc::downgrade(&fleet),
            client: client.clone(),
            urls: fleet.urls(),
        };
        let runtime = BackgroundRuntime(Some(runtime));
        runtime.block_on(checker.round())?;
        runtime.spawn(checker.run(config.health_interval))?;
        Ok(RemoteBackend {
            model,
            fleet,
            client,
            config,
            counters: EngineCounters::default(),
            runtime,
        })
    }

    /// Each endpoint now: healthy or not, calls in flight.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        self.fleet.status()
    }

    /// One call: on each endpoint the fleet picks until one answers, the
    /// caller gives up (`None`), or `attempts` endpoints have failed.
    async fn call(
        &self,
        request: &GenerationRequest,
        prompt: &str,
        max_tokens: usize,
    ) -> Result<Option<RemoteReply>> {
        let mut tried = Vec::new();
        let mut last_failure = None;
        while tried.len() < self.config.attempts {
            let Some(lease) = self.fleet.pick(prompt, &tried) else {
                break;
            };
            tried.push(lease.index);
            let body = completion_body(
                lease.engine,
                self.config.model.as_deref(),
                prompt,
                request,
                max_tokens,
            );
            let attempt = tokio::select! {
                attempt = self.attempt(&lease, &body) => attempt,
                () = cancelled(request) => return Ok(None),
            };
            match attempt {
                Attempt::Answered(reply) => return Ok(Some(reply)),
                Attempt::Refused(error) => return Err(error),
                Attempt::Failed(error) => {
                    tracing::warn!(endpoint = %lease.url, %error, "remote call failed; trying another endpoint");
                    last_failure = Some(error);
                }
            }
        }
        Err(last_failure.unwrap_or_else(|| Error::Remote {
            endpoint: "fleet".into(),
            reason: "no endpoint left to try".into(),
            source: None,
        }))
    }

    /// One call on one endpoint. A refusal of the request itself (4xx) is
    /// the caller's error and ends the call; anything the endpoint could not
    /// do (unreachable, 5xx, a reply that does not read) marks it down.
    async fn attempt(&self, lease: &Lease<'_>, body: &Value) -> Attempt {
        let remote = |reason: String, source| Error::Remote {
            endpoint: lease.url.clone(),
            reason,
            source,
        };
        let url = format!("{}/v1/completions", lease.url);
        let response = match self.client.post(&url).json(body).send().await {
            Ok(response) => response,
            Err(e) => {
                self.fleet.mark_down(lease.index);
                return Attempt::Failed(remote("the call failed".into(), Some(cause(e))));
            }
        };
        let status = response.status();
        let text = match response.text().await {
            Ok(text) => text,
            Err(e) => {
                self.fleet.mark_down(lease.index);
                return Attempt::Failed(remote("the reply was cut off".into(), Some(cause(e))));
            }
        };
        if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
            // Not this endpoint's fault: every endpoint would refuse it.
            return Attempt::Refused(remote(
                format!("refused the request ({status}): {}", error_message(&text)),
                None,
            ));
        }
        if !status.is_success() {
            // A full queue (429, 503) is not a failure of the endpoint.
            if status.is_server_error() && status != reqwest::StatusCode::SERVICE_UNAVAILABLE {
                self.fleet.mark_down(lease.index);
            }
            return Attempt::Failed(remote(
                format!("answered {status}: {}", error_message(&text)),
                None,
            ));
        }
        let parsed = serde_json::from_str::<Value>(&text)
            .map_err(|e| e.to_string())
            .and_then(|json| read_completion(&json));
        match parsed {
            Ok(reply) => {
                self.fleet.mark_up(lease.index);
                Attempt::Answered(reply)
            }
            Err(reason) => {
                self.fleet.mark_down(lease.index);
                Attempt::Failed(remote(
                    format!("the reply is not a completion: {reason}"),
                    None,
                ))
            }
        }
    }
}

/// Resolves once the caller gives up on `request`.
async fn cancelled(request: &GenerationRequest) {
    while !request.control.is_cancelled() {
        tokio::time::sleep(CANCEL_POLL).await;
    }
}

impl Backend for RemoteBackend {
    fn loaded_model(&self) -> &dyn LocalModel {
        &self.model
    }

    fn context_length(&self) -> usize {
        self.model.card().default_context()
    }

    fn generate(&self, request: &GenerationRequest) -> Result<Generation> {
        let started = Instant::now();
        let prompt_tokens = self.count_tokens(&request.prompt)?;
        let context = self.context_length();
        if prompt_tokens >= context {
            return Err(Error::PromptTooLong {
                prompt_tokens,
                context_length: context,
            });
        }
        let max_tokens = request.max_tokens.min(context - prompt_tokens).max(1);
        let prompt = self.model.prompt_for_engine(&request.prompt);
        self.counters.started();
        let outcome = self
            .runtime
            .block_on(self.call(request, prompt, max_tokens));
        self.counters.ended();
        let reply = outcome??.unwrap_or_else(RemoteReply::cancelled);
        let completion_tokens = reply
            .completion_tokens
            .unwrap_or_else(|| self.model.tokenize(&reply.text).len());
        self.counters.sampled(completion_tokens);
        request.control.emit(reply.text.clone());
        Ok(Generation {
            text: reply.text,
            prompt_tokens: reply.prompt_tokens.unwrap_or(prompt_tokens),
            cached_prompt_tokens: reply.cached_tokens.unwrap_or(0),
            completion_tokens,
            finish_reason: reply.finish_reason,
            // The engine's own phases where it reports them; else the whole
            // call counts as decode. Token choice happens there, unseen.
            timings: match reply.engine_time {
                Some((prefill, decode)) => Timings {
                    prefill,
                    decode,
                    token_choice: Duration::ZERO,
                },
                None => Timings {
                    decode: started.elapsed(),
                    ..Timings::default()
                },
            },
        })
    }

    fn stats(&self) -> EngineStats {
        self.counters.stats()
    }
}

/// Asks every endpoint's `/health` in turn, marking each up or down, for as
/// long as the backend lives.
struct HealthChecker {
    fleet: Weak<Fleet>,
    client: reqwest::Client,
    urls: Vec<String>,
}

impl HealthChecker {
    async fn run(self, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            if self.fleet.strong_count() == 0 {
                return;
            }
            self.round().await;
        }
    }

    async fn round(&self) {
        let checks = self.urls.iter().map(|url| self.healthy(url));
        let results = futures_util::future::join_all(checks).await;
        let Some(fleet) = self.fleet.upgrade() else {
            return;
        };
        for (index, healthy) in results.into_iter().enumerate() {
            if healthy {
                fleet.mark_up(index);
            } else {
                fleet.mark_down(index);
            }
        }
    }

    /// Up when `/health` answers 2xx, or 404/405 (an engine without that
    /// route is answering); down on 503 (llama-server loading) or silence.
    async fn healthy(&self, url: &str) -> bool {
        let answer = self
            .client
            .get(format!("{url}/health"))
            .timeout(HEALTH_TIMEOUT)
            .send()
            .await;
        answer.is_ok_and(|r| {
            let status = r.status();
            status.is_success()
                || status == reqwest::StatusCode::NOT_FOUND
                || status == reqwest::StatusCode::METHOD_NOT_ALLOWED
        })
    }
}

/// The backend's runtime, shut down without waiting when the backend goes
/// (a runtime dropped the usual way inside an async context panics).
#[derive(Debug)]
struct BackgroundRuntime(Option<Runtime>);

impl BackgroundRuntime {
    /// Runs `future` to its end on the runtime, from a thread of its own:
    /// a caller inside another runtime's task (an async `connect`, a
    /// blocking call in async code) may not block on one in place.
    fn block_on<F>(&self, future: F) -> Result<F::Output>
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        let runtime = self
            .0
            .as_ref()
            .ok_or(Error::WorkerStopped { backend: BACKEND })?;
        std::thread::scope(|scope| scope.spawn(|| runtime.block_on(future)).join()).map_err(
            |panic| Error::GenerationPanicked {
                backend: BACKEND,
                message: crate::error::panic_message(panic.as_ref()),
            },
        )
    }
}

impl BackgroundRuntime {
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) -> Result<()> {
        let runtime = self
            .0
            .as_ref()
            .ok_or(Error::WorkerStopped { backend: BACKEND })?;
        runtime.spawn(task);
        Ok(())
    }
}

impl Drop for BackgroundRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
