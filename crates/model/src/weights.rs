//! Weights on disk in the `.safetensors` format, checked key by key, and the parameter table
//! that `ddpm model summary` prints.
//!
//! Files hold a model's full state: the trainable parameters and the buffers (BatchNorm running
//! statistics), under the reference PyTorch names, so that a diffusers `UNet2DModel` or a PyTorch
//! `state_dict` loads here one to one and the other way round.

use crate::error::{ModelError, ShapeMismatch, WeightMismatch};
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// The number of trainable scalars in a var store (buffers such as running statistics excluded).
pub fn parameter_count(vs: &VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

/// One tensor of a var store, as the parameter table lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterInfo {
    /// The dotted name (`down_blocks.0.resnets.1.conv1.weight`).
    pub name: String,
    /// The shape.
    pub shape: Vec<i64>,
    /// The number of scalars.
    pub numel: i64,
    /// False for buffers (BatchNorm statistics), which the optimizer does not update.
    pub trainable: bool,
}

/// Every tensor of a var store in creation order, which the networks make equal to the reference
/// PyTorch module's `state_dict` order; buffers follow the parameters of their module.
pub fn parameters(vs: &VarStore) -> Vec<ParameterInfo> {
    let named = vs.variables();
    let by_ptr: HashMap<usize, &String> = named
        .iter()
        .map(|(name, t)| (t.data_ptr() as usize, name))
        .collect();
    let mut trainable: Vec<&String> = vs
        .trainable_variables()
        .iter()
        .filter_map(|t| by_ptr.get(&(t.data_ptr() as usize)).copied())
        .collect();
    let module_of = |name: &str| {
        name.rsplit_once('.')
            .map_or(String::new(), |(module, _)| module.to_string())
    };
    // tch creates a layer's bias before its weight; PyTorch lists the weight first.
    let leaf_rank = |name: &str| match name.rsplit('.').next() {
        Some("weight") => 0,
        Some("bias") => 1,
        _ => 2,
    };
    let mut start = 0;
    while start < trainable.len() {
        let module = module_of(trainable[start]);
        let end = (start..trainable.len())
            .find(|&i| module_of(trainable[i]) != module)
            .unwrap_or(trainable.len());
        trainable[start..end].sort_by_key(|name| leaf_rank(name));
        start = end;
    }
    let mut buffers: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    for name in named.keys().filter(|name| !trainable.contains(name)) {
        buffers.entry(module_of(name)).or_default().push(name);
    }
    // PyTorch's BatchNorm order.
    let rank = |name: &str| match name.rsplit('.').next() {
        Some("running_mean") => 0,
        Some("running_var") => 1,
        Some("num_batches_tracked") => 2,
        _ => 3,
    };
    for names in buffers.values_mut() {
        names.sort_by_key(|name| (rank(name), name.to_string()));
    }
    let info = |name: &String, trainable: bool| {
        let tensor = &named[name];
        ParameterInfo {
            name: name.clone(),
            shape: tensor.size(),
            numel: tensor.numel() as i64,
            trainable,
        }
    };
    let mut out = Vec::with_capacity(named.len());
    for (i, name) in trainable.iter().enumerate() {
        out.push(info(name, true));
        let module = module_of(name);
        let module_ends = trainable
            .get(i + 1)
            .is_none_or(|next| module_of(next) != module);
        if module_ends {
            for buffer in buffers.remove(&module).unwrap_or_default() {
                out.push(info(buffer, false));
            }
        }
    }
    for buffer in buffers.into_values().flatten() {
        out.push(info(buffer, false));
    }
    out
}

/// Formats `1234567` as `1,234,567`.
fn thousands(n: i64) -> String {
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// The layer table: one row per trainable tensor (name, shape, parameters), then the totals.
pub fn parameter_table(vs: &VarStore) -> String {
    let params = parameters(vs);
    let shape_of = |p: &ParameterInfo| format!("{:?}", p.shape);
    let rows: Vec<&ParameterInfo> = params.iter().filter(|p| p.trainable).collect();
    let name_w = rows.iter().map(|p| p.name.len()).max().unwrap_or(0).max(4);
    let shape_w = rows
        .iter()
        .map(|p| shape_of(p).len())
        .max()
        .unwrap_or(0)
        .max(5);
    let total = parameter_count(vs);
    let count_w = thousands(total).len().max(6);
    let mut out = format!(
        "{:<name_w$}  {:<shape_w$}  {:>count_w$}\n",
        "name", "shape", "params"
    );
    out.push_str(&format!("{}\n", "-".repeat(name_w + shape_w + count_w + 4)));
    for p in &rows {
        out.push_str(&format!(
            "{:<name_w$}  {:<shape_w$}  {:>count_w$}\n",
            p.name,
            shape_of(p),
            thousands(p.numel)
        ));
    }
    out.push_str(&format!("{}\n", "-".repeat(name_w + shape_w + count_w + 4)));
    let bytes = total * 4;
    out.push_str(&format!(
        "trainable parameters: {} in {} tensors ({:.1} MiB as f32)\n",
        thousands(total),
        rows.len(),
        bytes as f64 / (1024.0 * 1024.0)
    ));
    let buffers: Vec<&ParameterInfo> = params.iter().filter(|p| !p.trainable).collect();
    if !buffers.is_empty() {
        let n: i64 = buffers.iter().map(|p| p.numel).sum();
        out.push_str(&format!(
            "buffers (not trained, e.g. BatchNorm running statistics): {} in {} tensors\n",
            thousands(n),
            buffers.len()
        ));
    }
    out
}

/// Loads every variable of `vs` from a `.safetensors` file.
///
/// The file must hold exactly the var store's tensors: a missing, unexpected or mis-shaped key,
/// or an integer tensor for a float variable, is an error that lists them all, and nothing is
/// loaded then. Floating-point data is converted to each variable's kind (an f16 or bf16 file
/// loads into f32 variables), and copied onto its device and memory format. A floating-point
/// tensor that holds a NaN or an infinity is refused too, before anything is copied (one fused
/// reduction, see [`first_non_finite`]).
///
/// # Errors
/// [`ModelError::Read`] when the file cannot be read, [`ModelError::Corrupt`] when it is not
/// valid safetensors, [`ModelError::Mismatch`] when its keys do not fit,
/// [`ModelError::NonFinite`] naming the first tensor with a NaN or an infinity.
pub fn load_safetensors(vs: &mut VarStore, path: &Path) -> Result<(), ModelError> {
    load_safetensors_renamed(vs, path, &|name| name.to_string())
}

/// [`load_safetensors`] with every key of the file passed through `rename` first, for files that
/// use other names for the same tensors (e.g. [`crate::UNetConfig::modern_diffusers_key`] for
/// the legacy names of old diffusers folders). Messages list the renamed keys.
///
/// # Errors
/// As [`load_safetensors`].
pub fn load_safetensors_renamed(
    vs: &mut VarStore,
    path: &Path,
    rename: &dyn Fn(&str) -> String,
) -> Result<(), ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|err| ModelError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("{err:?}"),
    })?;
    let entries = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let shape = view.shape().iter().map(|&d| d as i64).collect();
            let kind = file_kind(view.dtype());
            (rename(&name), shape, kind, Source::View(view))
        })
        .collect();
    load_entries(vs, path, entries)
}

/// Loads every variable of `vs` from named tensors read elsewhere (a PyTorch `state_dict`, say),
/// with the checks of [`load_safetensors`]; `path` names their file in messages.
///
/// # Errors
/// [`ModelError::Mismatch`] when the names, shapes or dtypes do not fit,
/// [`ModelError::NonFinite`] when a value is NaN or infinite; nothing is loaded then.
pub fn load_named_tensors(
    vs: &mut VarStore,
    path: &Path,
    tensors: &[(String, Tensor)],
) -> Result<(), ModelError> {
    let entries = tensors
        .iter()
        .map(|(name, t)| {
            (
                name.clone(),
                t.size(),
                Ok(t.kind()),
                Source::Tensor(t.shallow_clone()),
            )
        })
        .collect();
    load_entries(vs, path, entries)
}

/// Where a tensor's data comes from.
enum Source<'a> {
    View(safetensors::tensor::TensorView<'a>),
    Tensor(Tensor),
}

/// The kind of a safetensors dtype, or its name when tch has no such kind.
fn file_kind(dtype: Dtype) -> Result<Kind, String> {
    Ok(match dtype {
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        other => return Err(format!("{other:?}")),
    })
}

/// Whether a tensor of kind `found` can fill a variable of `kind`: floats from floats, integers
/// from integers.
fn kind_fits(found: Kind, kind: Kind) -> bool {
    let float = |k: Kind| matches!(k, Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double);
    float(found) == float(kind)
}

type Entry<'a> = (String, Vec<i64>, Result<Kind, String>, Source<'a>);

/// A file tensor's shape, kind (or its dtype's name) and data.
type Found<'a> = (Vec<i64>, Result<Kind, String>, Source<'a>);

/// Checks `entries` against the variables of `vs` and, when every one fits and is finite, copies
/// them in.
fn load_entries(vs: &mut VarStore, path: &Path, entries: Vec<Entry<'_>>) -> Result<(), ModelError> {
    let variables = vs.variables();
    let mut by_name: HashMap<String, Found<'_>> = HashMap::new();
    let mut mismatch = WeightMismatch::default();
    for (name, shape, kind, source) in entries {
        if !variables.contains_key(&name) {
            mismatch.unexpected.push(name);
            continue;
        }
        match by_name.entry(name) {
            std::collections::hash_map::Entry::Occupied(slot) => {
                // Two keys of the file renamed to one (e.g. both `query` and `to_q`).
                mismatch
                    .unexpected
                    .push(format!("{} (a second time)", slot.key()));
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert((shape, kind, source));
            }
        }
    }
    let mut plan = Vec::with_capacity(variables.len());
    for (name, var) in &variables {
        let Some((found, kind, source)) = by_name.remove(name) else {
            mismatch.missing.push(name.clone());
            continue;
        };
        if found != var.size() {
            mismatch.wrong_shape.push(ShapeMismatch {
                name: name.clone(),
                expected: var.size(),
                found,
            });
            continue;
        }
        match kind {
            Ok(kind) if kind_fits(kind, var.kind()) => plan.push((name, var, source, kind)),
            Ok(kind) => mismatch.wrong_dtype.push((
                name.clone(),
                format!("{kind:?} for a {:?} variable", var.kind()),
            )),
            Err(dtype) => mismatch.wrong_dtype.push((
                name.clone(),
                format!("{dtype} for a {:?} variable", var.kind()),
            )),
        }
    }
    mismatch.missing.sort();
    mismatch.unexpected.sort();
    mismatch.wrong_shape.sort_by(|a, b| a.name.cmp(&b.name));
    mismatch.wrong_dtype.sort();
    if !mismatch.is_empty() {
        return Err(ModelError::Mismatch {
            path: path.to_path_buf(),
            mismatch: Box::new(mismatch),
        });
    }
    tch::no_grad(|| -> Result<(), ModelError> {
        let mut loaded = Vec::with_capacity(plan.len());
        for (name, var, source, kind) in plan {
            let src = match source {
                Source::View(view) => Tensor::f_from_data_size(view.data(), &var.size(), kind)?,
                Source::Tensor(t) => t,
            };
            loaded.push((name.clone(), var, src));
        }
        // Checked before anything is copied, so that a damaged file leaves the model untouched.
        if let Some(name) = first_non_finite(loaded.iter().map(|(name, _, src)| (name, src))) {
            let src = &loaded.iter().find(|(n, _, _)| n == &name).expect("named").2;
            return Err(ModelError::NonFinite {
                path: path.to_path_buf(),
                tensor: name,
                n_bad: non_finite_count(src),
                numel: src.numel(),
            });
        }
        for (_, var, src) in loaded {
            var.shallow_clone().f_copy_(&src)?;
        }
        Ok(())
    })
}

/// The name of the first floating-point tensor that holds a NaN or an infinity, if any.
///
/// One reduction for all of them: each tensor's `isfinite().all()` is computed where the tensor
/// lives, the flags are stacked and reduced, and a single boolean crosses to the host. Only
/// when that says something is wrong are the flags read back to find the name.
pub fn first_non_finite<'a, N, I>(named: I) -> Option<String>
where
    N: AsRef<str> + 'a,
    I: IntoIterator<Item = (N, &'a Tensor)>,
{
    let (names, flags): (Vec<N>, Vec<Tensor>) = named
        .into_iter()
        .filter(|(_, t)| t.is_floating_point() && t.numel() > 0)
        .map(|(name, t)| {
            let flag = tch::no_grad(|| t.isfinite().all());
            // Tensors on different devices are reduced on the CPU (a 1-element copy each).
            (name, flag)
        })
        .unzip();
    if flags.is_empty() {
        return None;
    }
    let device = flags[0].device();
    let flags: Vec<Tensor> = flags
        .into_iter()
        .map(|f| {
            if f.device() == device {
                f
            } else {
                f.to_device(device)
            }
        })
        .collect();
    let flags = Tensor::stack(&flags, 0);
    if bool::try_from(flags.all()).unwrap_or(false) {
        return None;
    }
    let flags = Vec::<bool>::try_from(flags.to_device(Device::Cpu)).unwrap_or_default();
    flags
        .iter()
        .position(|ok| !ok)
        .map(|idx| names[idx].as_ref().to_string())
}

/// How many values of `t` are NaN or infinite.
fn non_finite_count(t: &Tensor) -> i64 {
    tch::no_grad(|| t.isfinite().logical_not().sum(Kind::Int64).int64_value(&[]))
}

/// Checks that every floating-point variable of `vs` is finite; `path` names where the values
/// came from in the error.
///
/// # Errors
/// [`ModelError::NonFinite`] naming the file and the first bad tensor.
pub fn check_finite(vs: &VarStore, path: &Path) -> Result<(), ModelError> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    check_finite_named(&named, path)
}

/// [`check_finite`] for named tensors read elsewhere (optimizer moments, say).
///
/// # Errors
/// [`ModelError::NonFinite`] naming the file and the first bad tensor.
pub fn check_finite_named(named: &[(String, Tensor)], path: &Path) -> Result<(), ModelError> {
    match first_non_finite(named.iter().map(|(n, t)| (n, t))) {
        None => Ok(()),
        Some(name) => {
            let t = &named.iter().find(|(n, _)| n == &name).expect("named").1;
            Err(ModelError::NonFinite {
                path: path.to_path_buf(),
                tensor: name,
                n_bad: non_finite_count(t),
                numel: t.numel(),
            })
        }
    }
}

/// A CPU tensor in standard layout, serialised on demand.
struct TensorBytes {
    tensor: Tensor,
    shape: Vec<usize>,
    dtype: Dtype,
}

impl View for TensorBytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let mut data = vec![0u8; self.data_len()];
        self.tensor.copy_data_u8(&mut data, self.tensor.numel());
        Cow::Owned(data)
    }
    fn data_len(&self) -> usize {
        self.tensor.numel() * self.tensor.kind().elt_size_in_bytes()
    }
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// Saves every variable of `vs` (parameters and buffers) to a `.safetensors` file, in standard
/// (NCHW) layout whatever the var store's memory format, with the `{"format": "pt"}` metadata that
/// Hugging Face loaders expect. The file is written next to its destination and renamed into
/// place, so an interrupted save never leaves a truncated file under `path`.
///
/// # Errors
/// [`ModelError::Write`] naming the file; [`ModelError::WriteIo`] when the file system fails
/// (a full disk, say), with the IO error.
pub fn save_safetensors(vs: &VarStore, path: &Path) -> Result<(), ModelError> {
    let named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    save_named_safetensors(&named, path)
}

/// [`save_safetensors`] for named tensors that are not a var store (optimizer moments, say).
///
/// # Errors
/// As [`save_safetensors`].
pub fn save_named_safetensors(named: &[(String, Tensor)], path: &Path) -> Result<(), ModelError> {
    let write_err = |reason: String| ModelError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let io_err = |source: std::io::Error| ModelError::WriteIo {
        path: path.to_path_buf(),
        source,
    };
    let mut tensors = Vec::new();
    for (name, var) in named {
        let dtype = dtype_of(var.kind())
            .ok_or_else(|| write_err(format!("{name} has an unsupported kind {:?}", var.kind())))?;
        let tensor = tch::no_grad(|| var.detach().to_device(Device::Cpu).contiguous());
        let shape = tensor.size().iter().map(|&d| d as usize).collect();
        tensors.push((
            name.clone(),
            TensorBytes {
                tensor,
                shape,
                dtype,
            },
        ));
    }
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".partial");
    let tmp = path.with_file_name(tmp_name);
    safetensors::serialize_to_file(tensors, &metadata, &tmp).map_err(|err| {
        let _ = std::fs::remove_file(&tmp);
        match err {
            safetensors::SafeTensorError::IoError(source) => io_err(source),
            other => write_err(format!("{other:?}")),
        }
    })?;
    std::fs::rename(&tmp, path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(3_482_231), "3,482,231");
        assert_eq!(thousands(35_746_307), "35,746,307");
        assert_eq!(thousands(-1000), "-1,000");
    }

    #[test]
    fn buffers_follow_their_module_in_creation_order() {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let _a = tch::nn::conv2d(&root / "conv", 1, 2, 3, Default::default());
        let _bn = tch::nn::batch_norm2d(&root / "bn", 2, Default::default());
        let _b = tch::nn::linear(&root / "fc", 2, 2, Default::default());
        let names: Vec<String> = parameters(&vs).into_iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "conv.weight",
                "conv.bias",
                "bn.weight",
                "bn.bias",
                "bn.running_mean",
                "bn.running_var",
                "fc.weight",
                "fc.bias"
            ]
        );
    }
}
