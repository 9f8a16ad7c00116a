//! Serving on candle (one request at a time per model; `--parallel` does not apply).

use anyhow::Context;
use dsrs_local::server::Server;
use dsrs_local::{CandleAdapter, CandleConfig, CandleModel};

use super::{Settings, announce, shutdown_signal};

pub(crate) async fn serve(settings: Settings<'_>) -> anyhow::Result<()> {
    if settings.parallel.is_some_and(|p| p > 1) {
        eprintln!("note: candle decodes one request at a time; --parallel does not apply");
    }
    let plan = settings.pool.plan::<CandleModel>(&settings.spec)?;
    let model = settings
        .pool
        .load::<CandleModel>(settings.spec)
        .context("loading the model")?;
    let adapter = CandleAdapter::from_loaded_model(
        model,
        CandleConfig::default().with_generation(settings.generation),
    );
    let server = Server::bind(adapter, settings.address, settings.options).await?;
    announce(&plan, &server.base_url());
    server.serve(shutdown_signal()).await?;
    Ok(())
}
