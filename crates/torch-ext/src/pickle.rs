//! Loading `torch.save`d state dicts (`torch::jit::pickle_load`), such as diffusers'
//! `diffusion_pytorch_model.bin` or a PyTorch checkpoint's `model.state_dict()`.
//!
//! Only torch's zip format (the default of `torch.save` since torch 1.6) is read; the pickle
//! inside must be a dict (or `OrderedDict`, as `state_dict()` returns) of str → tensor.

use crate::ffi;
use crate::{Error, Result};
use std::ffi::{c_char, CString};
use std::path::Path;
use tch::Tensor;
use torch_sys::C_tensor;

/// The `(name, tensor)` pairs of a `torch.save`d state dict, in the file's order. Tensors are on
/// the CPU, with the dtypes and shapes they were saved with.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::StateDict`] when it is not a zip-format
/// `torch.save` file, or holds something else than a dict of str → tensor (the message says
/// what was found: a list, a dict with a non-tensor value at some key, ...).
pub fn load_state_dict(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    let path = path.as_ref();
    // Opened here first, for an IO error that carries the path; libtorch then reads the records
    // it needs straight from the file, so only the tensors themselves are held in memory.
    std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let c_path = {
        use std::os::unix::ffi::OsStrExt;
        CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            Error::InvalidArgument(format!("{} contains a NUL byte", path.display()))
        })?
    };
    let mut named = std::ptr::null_mut();
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    let result = ffi::torch("load_state_dict", unsafe {
        ffi::te_load_state_dict_file(c_path.as_ptr(), &mut named)
    });
    let to_state_dict_error = |err| match err {
        Error::Torch { message, .. } => Error::StateDict {
            path: path.to_path_buf(),
            message,
        },
        other => other,
    };
    result.map_err(to_state_dict_error)?;
    collect(named).map_err(to_state_dict_error)
}

/// [`load_state_dict`] from the bytes of such a file.
///
/// # Errors
/// [`Error::Torch`] with the reason when the bytes are not such a file.
pub fn load_state_dict_from_bytes(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let mut named = std::ptr::null_mut();
    // SAFETY: `bytes` is valid for its length; `named` is a valid out-pointer.
    ffi::torch("load_state_dict", unsafe {
        ffi::te_load_state_dict(bytes.as_ptr().cast::<c_char>(), bytes.len(), &mut named)
    })?;
    collect(named)
}

/// Takes the shim's named tensors apart (and frees them, also if a `get` fails half-way).
fn collect(named: *mut ffi::CNamedTensors) -> Result<Vec<(String, Tensor)>> {
    struct Owned(*mut ffi::CNamedTensors);
    impl Drop for Owned {
        fn drop(&mut self) {
            // SAFETY: the shim allocated it and nothing else frees it.
            unsafe { ffi::te_named_tensors_free(self.0) }
        }
    }
    let named = Owned(named);
    // SAFETY: a live object from the shim.
    let len = unsafe { ffi::te_named_tensors_len(named.0) };
    let mut out = Vec::with_capacity(len);
    for index in 0..len {
        let mut name: *const c_char = std::ptr::null();
        let mut name_len = 0usize;
        let mut tensor: *mut C_tensor = std::ptr::null_mut();
        // SAFETY: index < len; valid out-pointers.
        ffi::torch("load_state_dict", unsafe {
            ffi::te_named_tensors_get(named.0, index, &mut name, &mut name_len, &mut tensor)
        })?;
        // SAFETY: `name` points at `name_len` bytes owned by `named`, alive here; the tensor
        // handle is new and ours.
        let name = unsafe { std::slice::from_raw_parts(name.cast::<u8>(), name_len) };
        let tensor = unsafe { ffi::from_handle(tensor) };
        out.push((String::from_utf8_lossy(name).into_owned(), tensor));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn values(xs: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(&xs.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    #[test]
    fn reads_a_module_state_dict_in_order_with_dtypes_and_values() {
        // scripts/make_fixture.py: a module's state_dict() (an OrderedDict with `_metadata`).
        let named = load_state_dict(fixture("state_dict.pt")).unwrap();
        let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a.weight", "b.weight", "b.bias", "b.num_batches"]);
        let (_, a) = &named[0];
        assert_eq!((a.size(), a.kind()), (vec![2, 3], Kind::Float));
        assert_eq!(values(a), [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
        let (_, b_weight) = &named[1];
        assert_eq!(
            (b_weight.size(), b_weight.kind()),
            (vec![2, 2], Kind::BFloat16)
        );
        assert_eq!(values(b_weight), [-1.0, -0.5, 0.0, 0.5]);
        let (_, b_bias) = &named[2];
        assert_eq!(values(b_bias), [0.25, -0.25]);
        let (_, steps) = &named[3];
        assert_eq!((steps.kind(), steps.int64_value(&[])), (Kind::Int64, 7));
    }

    #[test]
    fn reading_bytes_gives_what_reading_the_file_gives() {
        let path = fixture("state_dict.pt");
        let from_file = load_state_dict(&path).unwrap();
        let from_bytes = load_state_dict_from_bytes(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(from_file.len(), from_bytes.len());
        for ((n1, t1), (n2, t2)) in from_file.iter().zip(&from_bytes) {
            assert_eq!(n1, n2);
            assert!(t1.equal(t2), "{n1}");
        }
        let err = load_state_dict_from_bytes(b"nope").unwrap_err();
        assert!(matches!(err, Error::Torch { .. }), "{err}");
    }

    #[test]
    fn reads_a_plain_dict_with_a_non_contiguous_tensor() {
        let named = load_state_dict(fixture("plain_dict.pt")).unwrap();
        assert_eq!(named.len(), 1);
        let (name, t) = &named[0];
        assert_eq!(name, "t.weight");
        // Saved as arange(6).reshape(2, 3).t(): a transposed view.
        assert_eq!(t.size(), vec![3, 2]);
        assert_eq!(values(t), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }

    #[test]
    fn a_pickled_list_is_rejected_naming_what_was_found() {
        let err = load_state_dict(fixture("list.pt")).unwrap_err();
        assert!(matches!(err, Error::StateDict { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("list.pt") && message.contains("found a list"),
            "{message}"
        );
    }

    #[test]
    fn a_dict_with_a_non_tensor_value_is_rejected_naming_the_key() {
        let err = load_state_dict(fixture("dict_with_int.pt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("found an int at key 'epoch'"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_torch_save_zip_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.bin");
        std::fs::write(&path, b"\x80\x02}q\x00.not a zip").unwrap();
        let err = load_state_dict(&path).unwrap_err().to_string();
        assert!(err.contains("not a zip archive"), "{err}");
        // A zip that is not a torch.save archive is a libtorch error, not a crash.
        std::fs::write(&path, b"PK\x03\x04garbage").unwrap();
        assert!(matches!(
            load_state_dict(&path),
            Err(Error::StateDict { .. })
        ));
        let missing = dir.path().join("missing.bin");
        assert!(matches!(load_state_dict(&missing), Err(Error::Io { .. })));
    }
}
