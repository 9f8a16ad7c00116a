//! Serving on llama.cpp.

use anyhow::Context;
use dsrs_local::server::Server;
use dsrs_local::{LlamaCppAdapter, LlamaCppConfig, LlamaCppModel};

use super::{Settings, announce, shutdown_signal};

pub(crate) async fn serve(settings: Settings<'_>) -> anyhow::Result<()> {
    let plan = settings.pool.plan::<LlamaCppModel>(&settings.spec)?;
    let model = settings
        .pool
        .load::<LlamaCppModel>(settings.spec)
        .context("loading the model")?;
    let adapter = LlamaCppAdapter::from_loaded_model(
        model,
        LlamaCppConfig::default()
            .with_parallel_sequences(settings.parallel)
            .with_generation(settings.generation),
    );
    let server = Server::bind(adapter, settings.address, settings.options).await?;
    announce(&plan, &server.base_url());
    server.serve(shutdown_signal()).await?;
    Ok(())
}
