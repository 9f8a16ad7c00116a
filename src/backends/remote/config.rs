//! How the remote backend reaches its engines: endpoints, routing, retries.

use std::time::Duration;

use super::dialect::RemoteEngine;
use crate::{Error, Result};

/// Calls to different endpoints one call may make before it fails.
const DEFAULT_ATTEMPTS: usize = 3;
/// How long one call may take (a long reply on a loaded engine).
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(600);
/// How often every endpoint's `/health` is asked.
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// The serving engines a remote backend sends calls to, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConfig {
    pub(crate) endpoints: Vec<(String, RemoteEngine)>,
    pub(crate) model: Option<String>,
    pub(crate) affinity: bool,
    pub(crate) attempts: usize,
    pub(crate) call_timeout: Duration,
    pub(crate) health_interval: Duration,
    pub(crate) context_length: Option<usize>,
}

impl RemoteConfig {
    /// One endpoint: `base_url` is the engine's root (`http://host:8080`; a
    /// trailing `/v1` is accepted and taken off).
    pub fn new(base_url: impl Into<String>, engine: RemoteEngine) -> Self {
        RemoteConfig {
            endpoints: Vec::new(),
            model: None,
            affinity: true,
            attempts: DEFAULT_ATTEMPTS,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            health_interval: DEFAULT_HEALTH_INTERVAL,
            context_length: None,
        }
        .with_endpoint(base_url, engine)
    }

    /// Another endpoint, serving the same model.
    pub fn with_endpoint(mut self, base_url: impl Into<String>, engine: RemoteEngine) -> Self {
        let url = base_url.into();
        let url = url.trim_end_matches('/');
        let url = url.strip_suffix("/v1").unwrap_or(url);
        self.endpoints.push((url.to_string(), engine));
        self
    }

    /// The `model` every call names (vLLM's `--served-model-name`); unset,
    /// calls name none and each engine takes the model it serves.
    pub fn with_model(mut self, name: impl Into<String>) -> Self {
        self.model = Some(name.into());
        self
    }

    /// Whether calls that share a prompt prefix go to the same endpoint
    /// (default on); off, every call goes to the least-loaded one in turn.
    pub fn with_prefix_affinity(mut self, on: bool) -> Self {
        self.affinity = on;
        self
    }

    /// Endpoints one call may try before it fails (default 3, at least 1):
    /// a call that cannot reach its endpoint, or that the engine fails with
    /// a server error, goes to the next.
    pub fn with_attempts(mut self, attempts: usize) -> Self {
        self.attempts = attempts;
        self
    }

    /// Longest time one call may take on one endpoint (default 600 s).
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How often endpoints are checked (`GET /health`; default 2 s): one
    /// that is down takes calls again once it answers.
    pub fn with_health_interval(mut self, interval: Duration) -> Self {
        self.health_interval = interval;
        self
    }

    /// The context window prompts are checked against before they are
    /// sent (default: the model file's, at most 4096). Set it to the
    /// engines' own per-request context.
    pub fn with_context_length(mut self, tokens: usize) -> Self {
        self.context_length = Some(tokens);
        self
    }

    /// Refuses what cannot work, naming it.
    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidConfig { reason });
        for (url, _) in &self.endpoints {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid(format!(
                    "remote endpoint `{url}` is not an http:// or https:// URL"
                ));
            }
        }
        if self.attempts == 0 {
            return invalid("`attempts` must be at least 1".into());
        }
        if self.call_timeout.is_zero() || self.health_interval.is_zero() {
            return invalid("the call timeout and the health interval must not be zero".into());
        }
        if self.context_length == Some(0) {
            return invalid("`context_length` must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_taken_with_or_without_v1_and_bad_settings_are_named() {
        let config = RemoteConfig::new("http://a:8080/v1/", RemoteEngine::Vllm)
            .with_endpoint("http://b:8080", RemoteEngine::LlamaServer);
        let urls: Vec<&str> = config.endpoints.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(urls, ["http://a:8080", "http://b:8080"]);
        assert!(config.validate().is_ok());
        for bad in [
            RemoteConfig::new("a:8080", RemoteEngine::Vllm),
            config.clone().with_attempts(0),
            config.clone().with_call_timeout(Duration::ZERO),
            config.clone().with_context_length(0),
        ] {
            let error = bad.validate().expect_err("refused");
            assert!(matches!(error, Error::InvalidConfig { .. }), "{error}");
        }
    }
}
