//! How the process's C allocator hands freed tensor memory back to the system.
//!
//! libtorch allocates CPU tensors with `posix_memalign`. glibc serves large blocks with `mmap`
//! and unmaps them on free, but its threshold for "large" grows to the size of the last large
//! block freed (up to 32 MiB), after which blocks of that size come from the heap, whose freed
//! space stays in the resident set. A training pass frees and allocates activations of a few
//! MiB each all the time, the recomputations of activation checkpointing most of all, so the
//! peak resident set ends up well above the peak of live tensors (on the reduced-width 256²
//! U-Net at batch 1, 300 MiB above it: `docs/results/checkpoint_memory.md`). Fixing the
//! threshold keeps every tensor of at least that size in a mapping of its own, returned on free.

/// The threshold [`return_large_blocks`] is usually given: 1 MiB, so that every activation of a
/// 256² network is mapped alone while small tensors stay on the heap.
pub const LARGE_BLOCK_BYTES: usize = 1 << 20;

/// Serves every allocation of at least `bytes` with a mapping of its own, returned to the system
/// when freed (glibc's `mallopt(M_MMAP_THRESHOLD, bytes)`, which also turns off its dynamic
/// threshold). Process-wide; returns whether the allocator took the setting (false on platforms
/// other than Linux with glibc, for `bytes` that do not fit a C `int`, and where glibc refuses
/// the value: some versions refuse more than 32 MiB, Debian's 2.36 takes any `int`).
pub fn return_large_blocks(bytes: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// glibc's `M_MMAP_THRESHOLD` (malloc.h).
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        let Ok(value) = std::ffi::c_int::try_from(bytes) else {
            return false;
        };
        // SAFETY: mallopt takes two ints and may be called at any time; glibc serialises it with
        // its arenas' locks.
        unsafe { mallopt(M_MMAP_THRESHOLD, value) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = bytes;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_threshold_and_a_size_beyond_an_int_is_refused() {
        assert!(return_large_blocks(LARGE_BLOCK_BYTES));
        assert!(!return_large_blocks(usize::MAX));
    }
}
