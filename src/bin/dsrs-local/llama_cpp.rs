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
    let mut config = LlamaCppConfig::default().with_generation(settings.generation);
    if let Some(sequences) = settings.parallel {
        config = config.with_parallel_sequences(sequences);
    }
    let adapter = LlamaCppAdapter::from_loaded_model(model, config);
    let server = Server::bind(adapter, settings.address, settings.options).await?;
    announce(&plan, &server.base_url());
    server.serve(shutdown_signal()).await?;
    Ok(())
}
