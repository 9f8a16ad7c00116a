//! The llama.cpp backend, absent from this build.

use super::Settings;

pub(crate) async fn serve(settings: Settings<'_>) -> anyhow::Result<()> {
    anyhow::bail!(
        "cannot serve {} at {}: this build has no llama.cpp backend (build with --features llamacpp)",
        settings.spec.source,
        settings.address
    )
}
