//! A request's starting x_T read from a file (`ddpm sample --noise FILE`) in place of the seeded
//! draw: `.npy`, `.npz` (its one array, or `noise`) or `.safetensors` (its one tensor, or
//! `noise`), f32 `[N, C, H, W]`. From the same file a deterministic sampler gives the same
//! images in this toolkit and in diffusers, or two samplers can be compared from one start.
//! Image `i` of the request starts from row `i` of the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::SampleError;

/// The starting noise of every image of a request, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct InitialNoise {
    /// The file it came from (for messages).
    pub path: PathBuf,
    /// `[N, C, H, W]`.
    pub shape: [usize; 4],
    values: Arc<Vec<f32>>,
    /// The first row of the file that this (sliced) noise starts at.
    first: usize,
}

impl InitialNoise {
    /// Reads `path`.
    ///
    /// # Errors
    /// [`SampleError::Source`] naming the file when it cannot be read, holds several arrays and
    /// none called `noise`, or an array that is not f32 of four dimensions.
    pub fn read(path: &Path) -> Result<Self, SampleError> {
        let fail = |message: String| SampleError::Source {
            path: path.to_path_buf(),
            message,
        };
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let (shape, values) = match ext {
            "npy" => {
                let bytes =
                    std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
                let array = data::images::NpyArray::from_npy_bytes(&bytes, path)
                    .map_err(|e| fail(e.to_string()))?;
                from_npy(array).map_err(fail)?
            }
            "npz" => {
                let arrays = data::images::read_npz(path).map_err(|e| fail(e.to_string()))?;
                let names: Vec<String> = arrays.iter().map(|(n, _)| n.clone()).collect();
                let array = pick(arrays, &names).map_err(fail)?;
                from_npy(array).map_err(fail)?
            }
            "safetensors" => {
                let tensors = Tensor::read_safetensors(path).map_err(|e| fail(e.to_string()))?;
                let names: Vec<String> = tensors.iter().map(|(n, _)| n.clone()).collect();
                let tensor = pick(tensors, &names).map_err(fail)?;
                if tensor.kind() != Kind::Float {
                    return Err(fail(format!(
                        "the noise is {:?}: it must be f32",
                        tensor.kind()
                    )));
                }
                let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
                let values =
                    Vec::<f32>::try_from(tensor.flatten(0, -1)).map_err(|e| fail(e.to_string()))?;
                (shape, values)
            }
            _ => {
                return Err(fail(
                    "the noise must be a .npy, .npz or .safetensors file".into(),
                ))
            }
        };
        let shape: [usize; 4] = shape.as_slice().try_into().map_err(|_| {
            fail(format!(
                "the noise has shape {shape:?}: it must be [N, C, H, W]"
            ))
        })?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(fail("the noise holds values that are not finite".into()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            shape,
            values: Arc::new(values),
            first: 0,
        })
    }

    /// Checks that the noise fits a request of `n_images` images of `[C, H, W]`
    /// `image_shape`.
    ///
    /// # Errors
    /// [`SampleError::Config`] naming the file's shape, the model's image shape and the count.
    pub fn check(&self, image_shape: [i64; 3], n_images: usize) -> Result<(), SampleError> {
        let [n, c, h, w] = self.shape;
        let want = image_shape.map(|d| d as usize);
        if [c, h, w] != want || n != n_images {
            return Err(SampleError::Config(format!(
                "the noise of {} has shape [{n}, {c}, {h}, {w}], but the model draws images of \
                 [C, H, W] = {want:?} and {n_images} images are asked for (-n): it must be \
                 [{n_images}, {}, {}, {}]",
                self.path.display(),
                want[0],
                want[1],
                want[2]
            )));
        }
        Ok(())
    }

    /// The rows `first..first + n` (for a batch, or a rank's share of a request).
    ///
    /// # Panics
    /// When the rows reach past the noise.
    pub fn slice(&self, first: usize, n: usize) -> Self {
        assert!(
            first + n <= self.shape[0],
            "rows {first}..{} of {}",
            first + n,
            self.shape[0]
        );
        Self {
            shape: [n, self.shape[1], self.shape[2], self.shape[3]],
            first: self.first + first,
            ..self.clone()
        }
    }

    /// The noise as an f32 `[N, C, H, W]` tensor on `device`.
    pub fn to_tensor(&self, device: Device) -> Tensor {
        let row: usize = self.shape[1..].iter().product();
        let values = &self.values[self.first * row..(self.first + self.shape[0]) * row];
        let shape: Vec<i64> = self.shape.iter().map(|&d| d as i64).collect();
        Tensor::from_slice(values)
            .reshape(shape.as_slice())
            .to_device(device)
    }
}

/// The one entry of `entries`, or the one called `noise`.
fn pick<T>(entries: Vec<(String, T)>, names: &[String]) -> Result<T, String> {
    if entries.len() == 1 {
        return Ok(entries.into_iter().next().expect("one entry").1);
    }
    entries
        .into_iter()
        .find(|(name, _)| name == "noise")
        .map(|(_, value)| value)
        .ok_or_else(|| {
            format!("it holds the arrays {names:?}: hold one, or call the noise `noise`")
        })
}

/// The shape and f32 values of an `.npy` array.
fn from_npy(array: data::images::NpyArray) -> Result<(Vec<usize>, Vec<f32>), String> {
    match array.data {
        data::images::NpyData::F32(values) => Ok((array.shape, values)),
        other => Err(format!(
            "the noise is {}: it must be f32 (`<f4`)",
            match other {
                data::images::NpyData::U8(_) => "uint8",
                data::images::NpyData::F64(_) => "float64",
                data::images::NpyData::I64(_) => "int64",
                data::images::NpyData::F32(_) => unreachable!(),
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use data::images::{write_npz, NpyArray, NpyData};

    fn values(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32 * 0.25 - 3.0).collect()
    }

    #[test]
    fn every_format_reads_the_same_noise_and_rows_slice() {
        let dir = tempfile::tempdir().unwrap();
        let shape = vec![3, 1, 2, 2];
        let array = NpyArray::new(shape.clone(), NpyData::F32(values(12))).unwrap();
        let npy = dir.path().join("x.npy");
        std::fs::write(&npy, array.to_npy_bytes()).unwrap();
        let npz = dir.path().join("x.npz");
        let other = NpyArray::new(vec![1], NpyData::F32(vec![0.0])).unwrap();
        write_npz(&npz, &[("other", &other), ("noise", &array)]).unwrap();
        let st = dir.path().join("x.safetensors");
        let t = Tensor::from_slice(&values(12)).reshape([3, 1, 2, 2]);
        Tensor::write_safetensors(&[("x_T", &t)], &st).unwrap();
        for path in [&npy, &npz, &st] {
            let noise = InitialNoise::read(path).unwrap();
            assert_eq!(noise.shape, [3, 1, 2, 2], "{}", path.display());
            let xs = noise.to_tensor(Device::Cpu);
            assert_eq!(Vec::<f32>::try_from(xs.flatten(0, -1)).unwrap(), values(12));
            let rows = noise.slice(1, 2).slice(1, 1).to_tensor(Device::Cpu);
            assert_eq!(
                Vec::<f32>::try_from(rows.flatten(0, -1)).unwrap(),
                values(12)[8..]
            );
        }
    }

    #[test]
    fn unfit_noise_is_refused_naming_the_file_and_both_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let npy = dir.path().join("x.npy");
        let array = NpyArray::new(vec![2, 1, 2, 2], NpyData::F32(values(8))).unwrap();
        std::fs::write(&npy, array.to_npy_bytes()).unwrap();
        let noise = InitialNoise::read(&npy).unwrap();
        noise.check([1, 2, 2], 2).unwrap();
        let err = noise.check([3, 2, 2], 2).unwrap_err().to_string();
        assert!(
            err.contains("[2, 1, 2, 2]") && err.contains("[3, 2, 2]") && err.contains("-n"),
            "{err}"
        );
        assert!(noise
            .check([1, 2, 2], 5)
            .unwrap_err()
            .to_string()
            .contains("[5, 1, 2, 2]"));
        let read_err = |name: &str, array: NpyArray| {
            let path = dir.path().join(name);
            std::fs::write(&path, array.to_npy_bytes()).unwrap();
            let err = InitialNoise::read(&path).unwrap_err().to_string();
            assert!(err.starts_with(&path.display().to_string()), "{err}");
            err
        };
        let f64s = NpyArray::new(vec![1, 1, 1, 1], NpyData::F64(vec![0.0])).unwrap();
        assert!(read_err("f64.npy", f64s).contains("f32"));
        let flat = NpyArray::new(vec![4], NpyData::F32(values(4))).unwrap();
        assert!(read_err("flat.npy", flat).contains("[N, C, H, W]"));
        let nan = NpyArray::new(vec![1, 1, 1, 1], NpyData::F32(vec![f32::NAN])).unwrap();
        assert!(read_err("nan.npy", nan).contains("finite"));
        let txt = dir.path().join("x.txt");
        std::fs::write(&txt, "1").unwrap();
        assert!(InitialNoise::read(&txt)
            .unwrap_err()
            .to_string()
            .contains(".npy, .npz"));
    }
}
