//! libtorch's own log lines. c10d logs every failed attempt to reach a rendezvous store as an
//! error with the exception's C++ backtrace (about 25 frames each), before the rank group
//! returns the error that says what to do (`dist::DistError`); other libtorch code
//! logs warnings the same way. A program that reports errors itself turns them off at its
//! start with [`quiet_cpp_logs`]; `TORCH_CPP_LOG_LEVEL` (INFO, WARNING, ERROR or FATAL, as in
//! PyTorch) turns them back on.

/// libtorch's log levels, c10's numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CppLogLevel {
    /// Everything.
    Info = 0,
    /// Warnings and worse (libtorch's default).
    Warning = 1,
    /// Errors and worse.
    Error = 2,
    /// Only what precedes an abort.
    Fatal = 3,
}

/// Prints libtorch's log lines at `level` and above, process-wide, unless `TORCH_CPP_LOG_LEVEL`
/// is set: then that level, as PyTorch does at import.
///
/// # Errors
/// libtorch's, if it refuses (it does not).
pub fn set_cpp_log_level(level: CppLogLevel) -> crate::Result<()> {
    // SAFETY: sets a process-wide int flag (or parses an environment variable); no pointers.
    crate::ffi::torch("set_cpp_log_level", unsafe {
        crate::ffi::te_set_cpp_log_level(level as std::ffi::c_int)
    })
}

/// [`set_cpp_log_level`] at [`CppLogLevel::Fatal`]: libtorch prints nothing of its own unless
/// `TORCH_CPP_LOG_LEVEL` asks for it.
///
/// # Errors
/// As [`set_cpp_log_level`].
pub fn quiet_cpp_logs() -> crate::Result<()> {
    set_cpp_log_level(CppLogLevel::Fatal)
}
