//! How the process's C allocator hands freed tensor memory back to the system.
//!
//! libtorch allocates CPU tensors with `posix_memalign`. glibc serves large blocks with `mmap`
//! and unmaps them on free, but its threshold for "large" grows to the size of the last large
//! block freed (up to 32 MiB), after which blocks of that size come from the heap; and it trims
//! the heap's free top once that exceeds twice the threshold. Two opposite settings beat that
//! default, each for its own work:
//!
//! - [`return_large_blocks`]: a training pass with activation checkpointing frees and allocates
//!   activations of a few MiB each all the time, so the peak resident set ends up well above the
//!   peak of live tensors (on the reduced-width 256² U-Net at batch 1, 300 MiB above it:
//!   `docs/results/checkpoint_memory.md`). Fixing the threshold low keeps every tensor of at least
//!   that size in a mapping of its own, returned on free.
//! - [`keep_freed_blocks`]: sampling and evaluation, speed. The kernel zeroes a mapped block page by
//!   page on first touch, and under the default a pass maps and unmaps its larger activations
//!   and trims the heap's free top that the next pass faults in again. Keeping freed blocks makes
//!   the fashion-mnist preset's forward at batch 250 about 1.25× faster and the paper's U-Net's
//!   at batch 16 about 1.05× on the 2-core reference CPU (in PyTorch alike, with the same
//!   settings through glibc's environment variables), for a higher peak resident set (955 against
//!   783 MB for `ddpm sample` of 1,000 fashion-mnist images in batches of 250).

/// The threshold [`return_large_blocks`] is usually given: 1 MiB, so that every activation of a
/// 256² network is mapped alone while small tensors stay on the heap.
pub const LARGE_BLOCK_BYTES: usize = 1 << 20;

/// Serves every allocation of at least `bytes` with a mapping of its own, returned to the system
/// when freed (glibc's `mallopt(M_MMAP_THRESHOLD, bytes)`, which also turns off its dynamic
/// threshold). Process-wide; returns whether the allocator took the setting (false on platforms
/// other than Linux with glibc, for `bytes` that do not fit a C `int`, and where glibc refuses
/// the value: some versions refuse more than 32 MiB, Debian's 2.36 takes any `int`).
pub fn return_large_blocks(bytes: usize) -> bool {
    set(M_MMAP_THRESHOLD, bytes)
}

/// The threshold [`keep_freed_blocks`] is usually given: 1 GiB.
pub const KEPT_BLOCK_BYTES: usize = 1 << 30;

/// Serves every allocation below `bytes` from the heap and keeps up to `bytes` of freed heap top
/// resident (glibc's `mallopt(M_MMAP_THRESHOLD, bytes)` and `mallopt(M_TRIM_THRESHOLD, bytes)`,
/// which turn off the dynamic thresholds): freed activations are reused without page faults.
/// Process-wide; returns whether the allocator took both settings (false as for
/// [`return_large_blocks`]).
pub fn keep_freed_blocks(bytes: usize) -> bool {
    set(M_MMAP_THRESHOLD, bytes) && set(M_TRIM_THRESHOLD, bytes)
}

/// Whether the user set glibc's allocator through the environment (`MALLOC_MMAP_THRESHOLD_`,
/// `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_`, which also turns glibc's dynamic thresholds off,
/// or a `glibc.malloc` tunable in `GLIBC_TUNABLES`), in which case the commands leave it as they
/// were told.
pub fn set_by_environment() -> bool {
    [
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_TOP_PAD_",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some())
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc"))
}

/// The work a process does, for [`configure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Sampling and evaluation: forward passes only.
    Sampling,
    /// Training, with or without activation checkpointing.
    Training {
        /// Whether the network recomputes its activations in backward.
        gradient_checkpointing: bool,
    },
}

/// How the commands set glibc's allocator for `work` on `device`, unless the environment sets
/// it ([`set_by_environment`]); nothing off the CPU:
///
/// - sampling and evaluation: [`keep_freed_blocks`] up to 1 GiB, for speed;
/// - training with activation checkpointing: [`return_large_blocks`] from 1 MiB, so that
///   checkpointing's saving shows in the resident set;
/// - training without it: glibc's default, which trained as fast as keeping freed blocks on the
///   2-core reference CPU (the paper's U-Net at batch 16: 0.996×; the fashion-mnist preset, 150
///   steps: 1.0×) with a lower peak resident set.
pub fn configure(device: tch::Device, work: Work) {
    if device != tch::Device::Cpu || set_by_environment() {
        return;
    }
    match work {
        Work::Sampling => {
            keep_freed_blocks(KEPT_BLOCK_BYTES);
        }
        Work::Training {
            gradient_checkpointing: true,
        } => {
            return_large_blocks(LARGE_BLOCK_BYTES);
        }
        Work::Training { .. } => {}
    }
}

/// glibc's `M_TRIM_THRESHOLD` and `M_MMAP_THRESHOLD` (malloc.h).
const M_TRIM_THRESHOLD: i32 = -1;
const M_MMAP_THRESHOLD: i32 = -3;

/// `mallopt(param, bytes)`; false where it is refused or not glibc's.
fn set(param: i32, bytes: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        let Ok(value) = std::ffi::c_int::try_from(bytes) else {
            return false;
        };
        // SAFETY: mallopt takes two ints and may be called at any time; glibc serialises it with
        // its arenas' locks.
        unsafe { mallopt(param, value) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (param, bytes);
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
        assert!(keep_freed_blocks(KEPT_BLOCK_BYTES));
        assert!(!keep_freed_blocks(usize::MAX));
    }
}
