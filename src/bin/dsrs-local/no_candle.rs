//! The candle backend, absent from this build.

use super::Settings;

pub(crate) async fn serve(settings: Settings<'_>) -> anyhow::Result<()> {
    anyhow::bail!(
        "cannot serve {} at {}: this build has no candle backend (build with --features candle)",
        settings.spec.source,
        settings.address
    )
}
