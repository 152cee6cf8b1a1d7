//! Allocator settings for the engine's allocation pattern.
//!
//! Every layer of a forward pass allocates activations of megabytes (an encoder batch of
//! 8 × 256 tokens: 25 MB per FFN activation) and frees them moments later. glibc serves
//! such blocks with fresh `mmap`s and returns them with `munmap`, so every activation
//! is page-faulted in and zeroed by the kernel again: about a tenth of an encoder pass
//! went to page faults (`perf`), and keeping freed memory cut the batch-8 encoder pass
//! from 6.2 s to 5.1 s on the benchmark machine (`cargo bench --bench steps`). Peak
//! memory is unchanged: it is the same high-water mark, kept instead of returned.

use std::sync::Once;

/// Blocks below this size come from the heap and are reused after `free`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 1 << 30;
/// Free heap memory kept before glibc trims it back to the OS.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 1 << 30;

/// Applies the settings once per process (idempotent; a no-op off glibc).
pub fn keep_freed_memory() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; it is called before the
        // engine allocates its working memory.
        unsafe {
            // Older glibc caps the threshold at 32 MiB and rejects larger values.
            if libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 0 {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            }
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    });
}
