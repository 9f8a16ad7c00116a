//! Keeps freed memory in the process (glibc).
//!
//! A training step allocates and frees hundreds of tensors of a few hundred
//! KiB to a few MiB. glibc serves each with a fresh `mmap` and returns it
//! with `munmap`, so every step pays page faults and kernel page clearing
//! for memory it just gave back (15 % of a step in `perf`). Raising the
//! thresholds makes freed blocks reused instead: 2150 → 2640 tokens/s
//! (measured with the same thresholds set through `GLIBC_TUNABLES`).

/// Serves every allocation up to 32 MiB from the heap, and trims the heap
/// only beyond 1 GiB free.
pub fn keep_freed_memory() {
    // SAFETY: `mallopt` only changes allocator parameters; called first
    // thing in `main`, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
