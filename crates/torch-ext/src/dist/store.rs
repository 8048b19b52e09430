//! c10d's `TCPStore`, the key-value store the ranks meet through.

use super::{c_string, i64_of, millis};
use crate::ffi::{self, CStore};
use crate::{Error, Result};
use std::ffi::c_int;
use std::ptr::NonNull;
use std::time::Duration;

/// A c10d `TCPStore`: the key-value store ranks meet through.
pub struct TcpStore {
    pub(super) raw: NonNull<CStore>,
}

// SAFETY: c10d stores are used from several threads inside c10d itself (each call takes the
// store's lock or its own socket).
unsafe impl Send for TcpStore {}
// SAFETY: as above.
unsafe impl Sync for TcpStore {}

impl TcpStore {
    /// Hosts (`is_server`) or joins the store at `addr:port` for `world_size` ranks.
    ///
    /// The server waits, up to `timeout`, until all `world_size` ranks (itself included) have
    /// connected; a client retries connecting for about `timeout` (libtorch's randomised
    /// backoff can overshoot it by up to about as much again). `timeout` also bounds every
    /// later `get` and the rendezvous of process groups made from this store.
    ///
    /// # Errors
    /// [`Error::Distributed`] when the port is taken, the server cannot be reached, or not all
    /// ranks arrive in time.
    pub fn new(
        addr: &str,
        port: u16,
        world_size: usize,
        is_server: bool,
        timeout: Duration,
    ) -> Result<Self> {
        Self::create(addr, port, Some(world_size), is_server, timeout)
    }

    /// Joins the store at `addr:port` as a client without knowing the world size, as every rank
    /// does under torchrun with `TORCHELASTIC_USE_AGENT_STORE=True`.
    ///
    /// # Errors
    /// [`Error::Distributed`] when the server cannot be reached within about `timeout` (see
    /// [`TcpStore::new`]).
    pub fn connect(addr: &str, port: u16, timeout: Duration) -> Result<Self> {
        Self::create(addr, port, None, false, timeout)
    }

    fn create(
        addr: &str,
        port: u16,
        world_size: Option<usize>,
        is_server: bool,
        timeout: Duration,
    ) -> Result<Self> {
        let host = c_string("the store address", addr)?;
        let world = match world_size {
            Some(n) if n >= 1 => i64_of("world size", n)?,
            Some(n) => {
                return Err(Error::InvalidArgument(format!(
                    "world size must be at least 1, got {n}"
                )))
            }
            None => -1,
        };
        let mut raw = std::ptr::null_mut();
        // SAFETY: a NUL-terminated host and a valid out-pointer.
        ffi::dist("TcpStore", unsafe {
            ffi::te_tcp_store_new(
                host.as_ptr(),
                port,
                world,
                c_int::from(is_server),
                millis(timeout)?,
                &mut raw,
            )
        })?;
        Ok(Self {
            raw: NonNull::new(raw).expect("the shim returned a store"),
        })
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// [`Error::Distributed`] when the server is gone.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let key = c_string("the key", key)?;
        // SAFETY: a live store, a NUL-terminated key, `value` valid for its length.
        ffi::dist("TcpStore::set", unsafe {
            ffi::te_store_set(self.raw.as_ptr(), key.as_ptr(), value.as_ptr(), value.len())
        })
    }

    /// The value of `key`, waiting (up to the store's timeout) until some rank sets it.
    ///
    /// # Errors
    /// [`Error::Distributed`] on timeout or when the server is gone.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let key = c_string("the key", key)?;
        let mut data = std::ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: a live store, a NUL-terminated key and valid out-pointers.
        ffi::dist("TcpStore::get", unsafe {
            ffi::te_store_get(self.raw.as_ptr(), key.as_ptr(), &mut data, &mut len)
        })?;
        // SAFETY: on success `data` holds `len` bytes from malloc, which we copy and free.
        let value = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        unsafe { ffi::te_free_bytes(data) };
        Ok(value)
    }

    /// Adds `delta` to the integer at `key` (0 when unset) and returns the new value: a
    /// cross-rank counter.
    ///
    /// # Errors
    /// [`Error::Distributed`] when the server is gone or the value is not an integer.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let key = c_string("the key", key)?;
        let mut out = 0i64;
        // SAFETY: a live store, a NUL-terminated key and a valid out-pointer.
        ffi::dist("TcpStore::add", unsafe {
            ffi::te_store_add(self.raw.as_ptr(), key.as_ptr(), delta, &mut out)
        })?;
        Ok(out)
    }
}

impl Drop for TcpStore {
    fn drop(&mut self) {
        // SAFETY: we own this reference; process groups hold their own.
        unsafe { ffi::te_store_free(self.raw.as_ptr()) }
    }
}

impl std::fmt::Debug for TcpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStore").finish_non_exhaustive()
    }
}
