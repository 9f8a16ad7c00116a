//! One lock between llama.cpp's decodes and changes to its device memory.
//!
//! On CUDA, llama.cpp records each decode as a CUDA graph (a stream
//! capture). Freeing device memory in another thread meanwhile (a model or
//! context dropped: `cudaFree` synchronises the device), or loading a model
//! or creating a context, breaks the capture, and llama.cpp aborts the
//! process ("CUDA error: operation failed due to a previous error during
//! capture", seen with the suite's 16 threads on an H100; specs/gpu.md).
//! Decodes share the lock; loads, context creation and frees take it alone.
//! Without a GPU it costs one uncontended lock per decode step.

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

static DEVICE_MEMORY: RwLock<()> = RwLock::new(());

/// Held while a decode runs; any number at once.
pub(super) fn decoding() -> RwLockReadGuard<'static, ()> {
    // The lock guards no data: a panic elsewhere leaves nothing inconsistent.
    DEVICE_MEMORY.read().unwrap_or_else(PoisonError::into_inner)
}

/// Held while a model or context is loaded, created or freed; alone.
pub(super) fn changing() -> RwLockWriteGuard<'static, ()> {
    DEVICE_MEMORY
        .write()
        .unwrap_or_else(PoisonError::into_inner)
}
