//! One loopback server per process, for [`LocalAdapter::lm`]: every adapter
//! that hands out an `LM` is served under its own path
//! (`http://127.0.0.1:PORT/m/ID/v1`), so dspy-rs's HTTP route —
//! `forward_with_config`, `LM::call`, the optimizers — reaches the same
//! backend, worker and prefix cache as `Predict`.
//!
//! The server holds adapters weakly: an `LM` keeps no model alive, and a
//! request for an adapter that is gone gets a 404 saying so.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use dspy_rs::LM;
use tower::ServiceExt;

use super::engine::SharedEngine;
use super::errors::ApiError;
use super::{
    EngineSource, RunningServer, ServerOptions, app_state, model_name, router, spawn_server,
};
use crate::backend::Backend;
use crate::{Error, LocalAdapter, Result};

/// Reply budget of an `LM` whose adapter sets none (as dspy-rs's default).
const DEFAULT_LM_MAX_TOKENS: u32 = 512;

struct Registered {
    router: Router,
    /// Whether the adapter still exists.
    alive: Arc<dyn Fn() -> bool + Send + Sync>,
}

struct Loopback {
    base: String,
    routes: Arc<Mutex<HashMap<usize, Registered>>>,
    _server: RunningServer,
}

fn loopback() -> Result<&'static Loopback> {
    static LOOPBACK: OnceLock<Result<Loopback>> = OnceLock::new();
    LOOPBACK
        .get_or_init(|| {
            let routes: Arc<Mutex<HashMap<usize, Registered>>> = Arc::default();
            let table = Arc::clone(&routes);
            let app = Router::new().route(
                "/m/{id}/{*rest}",
                any(move |path, request| dispatch(Arc::clone(&table), path, request)),
            );
            let server = spawn_server(app, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
            Ok(Loopback {
                base: format!("http://{}", server.address()),
                routes,
                _server: server,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Hands a request to the router of adapter `id`, without the `/m/ID` prefix.
async fn dispatch(
    routes: Arc<Mutex<HashMap<usize, Registered>>>,
    Path((id, rest)): Path<(usize, String)>,
    mut request: Request<Body>,
) -> Response {
    let router = {
        let table = routes.lock().unwrap_or_else(PoisonError::into_inner);
        table
            .get(&id)
            .filter(|r| (r.alive)())
            .map(|r| r.router.clone())
    };
    let Some(router) = router else {
        return ApiError::not_found("no such model on this server (its adapter no longer exists)")
            .into_response();
    };
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    match format!("/{rest}{query}").parse::<Uri>() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => return ApiError::bad_request("the request path is not valid").into_response(),
    }
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

impl<B: Backend> LocalAdapter<B> {
    /// A dspy-rs `LM` served by this adapter: its `base_url` is this
    /// process's loopback server (started on first use, on a free port),
    /// which runs requests on this adapter's backend.
    ///
    /// `configure(adapter.lm().await?, adapter)` then makes every dspy-rs
    /// route local: `Predict::forward` through the adapter, and
    /// `forward_with_config`, `LM::call` and the optimizers (COPRO, MIPROv2,
    /// GEPA) through HTTP to the same engine. The `LM`'s temperature and
    /// reply budget are the adapter's (`GenerationConfig`), else greedy and
    /// 512 tokens; the server applies that budget, since dspy-rs's HTTP
    /// client sends none.
    pub async fn lm(&self) -> Result<LM> {
        let loopback = loopback()?;
        let id = self.identity();
        let config = self.config();
        let max_tokens = config.max_tokens.map_or(DEFAULT_LM_MAX_TOKENS, |n| {
            u32::try_from(n).unwrap_or(u32::MAX)
        });
        let temperature = config.temperature.unwrap_or(0.0);
        let options = ServerOptions::default().with_default_max_tokens(max_tokens as usize);
        let model = model_name(self, &options);
        {
            let mut table = loopback
                .routes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            table.retain(|_, registered| (registered.alive)());
            if let std::collections::hash_map::Entry::Vacant(entry) = table.entry(id) {
                let weak = self.downgrade();
                let alive_check = self.downgrade();
                let source = EngineSource::Weak(Arc::new(move || {
                    weak.upgrade()
                        .map(|adapter| Arc::new(adapter) as SharedEngine)
                }));
                entry.insert(Registered {
                    router: router(app_state(source, model.clone(), options)),
                    alive: Arc::new(move || alive_check.upgrade().is_some()),
                });
            }
        }
        LM::builder()
            .base_url(format!("{}/m/{id}/v1", loopback.base))
            .model(model)
            .temperature(temperature)
            .max_tokens(max_tokens)
            .build()
            .await
            .map_err(|e| Error::config(format!("building the LM failed: {e}")))
    }
}
