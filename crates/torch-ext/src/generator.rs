//! Random generators a caller owns (`at::Generator`), and the ATen random ops that take one.
//!
//! tch 0.24 only exposes libtorch's process-wide default generator (`tch::manual_seed`). A
//! [`Generator`] is a separate stream: two of them, and the global one, never disturb each other,
//! so a run's noise is reproducible from its seed alone, whatever else the process draws. The
//! ops produce the same numbers as PyTorch's `torch.randn(..., generator=g)` and friends with a
//! generator seeded the same way (they are the same ATen kernels).

use crate::ffi::{self, CGenerator};
use crate::{Error, Result};
use std::ptr::NonNull;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

/// A random generator: a seed and a stream state (Mersenne Twister on CPU, Philox on CUDA).
///
/// Draws take `&mut self`; the generator can be moved to and shared between threads (libtorch
/// locks it inside every op).
pub struct Generator {
    raw: NonNull<CGenerator>,
    device: Device,
}

// SAFETY: `at::Generator` is a reference-counted handle to a GeneratorImpl whose every use in
// the shim (and in ATen's random ops) holds the generator's own mutex.
unsafe impl Send for Generator {}
// SAFETY: as above; the `&self` methods only read the seed or the state under that mutex.
unsafe impl Sync for Generator {}

impl Generator {
    /// A CPU generator seeded with `seed` (`torch.Generator().manual_seed(seed)`).
    pub fn cpu(seed: u64) -> Self {
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; the shim only fails on allocation failure.
        let result = ffi::torch("Generator::cpu", unsafe {
            ffi::te_generator_cpu(seed, &mut raw)
        });
        result.expect("creating a CPU generator cannot fail but for lack of memory");
        Self {
            raw: NonNull::new(raw).expect("the shim returned a generator"),
            device: Device::Cpu,
        }
    }

    /// A new CUDA generator for device `device_index`, seeded with `seed`
    /// (`torch.Generator("cuda:N").manual_seed(seed)`).
    ///
    /// # Errors
    /// [`Error::Torch`] when CUDA is not available or the index is out of range.
    pub fn cuda(seed: u64, device_index: usize) -> Result<Self> {
        let mut raw = std::ptr::null_mut();
        let index = i64::try_from(device_index).map_err(|_| {
            Error::InvalidArgument(format!("CUDA device index {device_index} is out of range"))
        })?;
        // SAFETY: `raw` is a valid out-pointer.
        ffi::torch("Generator::cuda", unsafe {
            ffi::te_generator_cuda(seed, index, &mut raw)
        })?;
        Ok(Self {
            raw: NonNull::new(raw).expect("the shim returned a generator"),
            device: Device::Cuda(device_index),
        })
    }

    /// A generator for `device`'s tensors, seeded with `seed`: [`Generator::cpu`] or
    /// [`Generator::cuda`]. The same seed gives other numbers on the two device types (Mersenne
    /// Twister and Philox).
    ///
    /// # Errors
    /// As [`Generator::cuda`]; [`Error::InvalidArgument`] for devices other than the CPU and CUDA.
    pub fn new(seed: u64, device: Device) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Self::cpu(seed)),
            Device::Cuda(index) => Self::cuda(seed, index),
            other => Err(Error::InvalidArgument(format!(
                "no generator for device {other:?}: only the CPU and CUDA have one"
            ))),
        }
    }

    /// A handle to libtorch's process-wide default generator of `device` (the one
    /// `tch::manual_seed` seeds and that ops without a generator draw from): the same stream,
    /// not a copy. For callers that have no generator of their own and must keep drawing what
    /// they drew before, such as a training-mode forward pass given none.
    ///
    /// # Errors
    /// [`Error::Torch`] when `device` has no default generator (no CUDA, an index out of range).
    pub fn global(device: Device) -> Result<Self> {
        let index = match device {
            Device::Cuda(index) => i64::try_from(index).map_err(|_| {
                Error::InvalidArgument(format!("CUDA device index {index} is out of range"))
            })?,
            _ => -1,
        };
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer.
        ffi::torch("Generator::global", unsafe {
            ffi::te_generator_default(ffi::device_type(device), index, &mut raw)
        })?;
        Ok(Self {
            raw: NonNull::new(raw).expect("the shim returned a generator"),
            device,
        })
    }

    /// A new, independent generator of the same device whose stream starts where this one's
    /// stands now: both draw the same numbers next, and neither disturbs the other. Activation
    /// checkpointing replays a block's dropout masks from one of these.
    ///
    /// # Errors
    /// As [`Generator::new`] for this generator's device.
    pub fn snapshot(&self) -> Result<Self> {
        let mut copy = Self::new(0, self.device)?;
        copy.set_state(&self.get_state())?;
        Ok(copy)
    }

    pub(crate) fn ptr(&self) -> *mut CGenerator {
        self.raw.as_ptr()
    }

    /// The device whose tensors this generator fills.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The seed this generator was last seeded with (`Generator.initial_seed()`).
    pub fn seed(&self) -> u64 {
        let mut seed = 0;
        // SAFETY: a live generator and a valid out-pointer.
        let result = ffi::torch("Generator::seed", unsafe {
            ffi::te_generator_seed(self.ptr(), &mut seed)
        });
        result.expect("reading a generator's seed cannot fail");
        seed
    }

    /// Reseeds the generator, restarting its stream (`Generator.manual_seed(seed)`).
    pub fn set_seed(&mut self, seed: u64) {
        // SAFETY: a live generator.
        let result = ffi::torch("Generator::set_seed", unsafe {
            ffi::te_generator_set_seed(self.ptr(), seed)
        });
        result.expect("seeding a generator cannot fail");
    }

    /// The full stream state as a `u8` CPU tensor (`Generator.get_state()`), for checkpoints.
    pub fn get_state(&self) -> Tensor {
        let mut out: *mut C_tensor = std::ptr::null_mut();
        // SAFETY: a live generator and a valid out-pointer; the handle is new and ours.
        let result = ffi::torch("Generator::get_state", unsafe {
            ffi::te_generator_get_state(self.ptr(), &mut out)
        });
        result.expect("reading a generator's state cannot fail");
        unsafe { ffi::from_handle(out) }
    }

    /// Restores a state from [`Generator::get_state`] of a generator of the same device type:
    /// the stream continues exactly where that one stood.
    ///
    /// # Errors
    /// [`Error::Torch`] when `state` is not such a state (wrong dtype or size).
    pub fn set_state(&mut self, state: &Tensor) -> Result<()> {
        // SAFETY: a live generator and a live tensor handle.
        ffi::torch("Generator::set_state", unsafe {
            ffi::te_generator_set_state(self.ptr(), ffi::handle(state))
        })
    }

    /// Standard normal samples (`torch.randn(shape, generator=self, dtype, device)`).
    ///
    /// # Shapes
    /// `shape` → a tensor of that shape.
    ///
    /// # Errors
    /// [`Error::Torch`] when `device` is not this generator's device type or `kind` is not a
    /// floating type.
    pub fn randn(&mut self, shape: &[i64], options: (Kind, Device)) -> Result<Tensor> {
        let mut xs = empty(shape, options)?;
        self.normal_(&mut xs, 0.0, 1.0)?;
        Ok(xs)
    }

    /// Standard normal samples shaped like `like`, with its dtype and device.
    ///
    /// # Errors
    /// As [`Generator::randn`].
    pub fn randn_like(&mut self, like: &Tensor) -> Result<Tensor> {
        self.randn(&like.size(), (like.kind(), like.device()))
    }

    /// Uniform integers in `[low, high)` as `i64` (`torch.randint(low, high, shape, generator=self)`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `low >= high`; [`Error::Torch`] on a device mismatch.
    pub fn randint(
        &mut self,
        low: i64,
        high: i64,
        shape: &[i64],
        device: Device,
    ) -> Result<Tensor> {
        if low >= high {
            return Err(Error::InvalidArgument(format!(
                "randint needs low < high, got [{low}, {high})"
            )));
        }
        let xs = empty(shape, (Kind::Int64, device))?;
        // SAFETY: live generator and tensor handles.
        ffi::torch("randint", unsafe {
            ffi::te_random_(ffi::handle(&xs), low, high, self.ptr())
        })?;
        Ok(xs)
    }

    /// A random permutation of `0..n` as `i64` (`torch.randperm(n, generator=self)`).
    ///
    /// # Errors
    /// [`Error::Torch`] on a device mismatch.
    pub fn randperm(&mut self, n: i64, device: Device) -> Result<Tensor> {
        let xs = empty(&[n], (Kind::Int64, device))?;
        // SAFETY: live generator and tensor handles.
        ffi::torch("randperm", unsafe {
            ffi::te_randperm_out(ffi::handle(&xs), n, self.ptr())
        })?;
        Ok(xs)
    }

    /// Fills `xs` with samples of N(mean, std²) (`Tensor.normal_(mean, std, generator=self)`).
    ///
    /// # Errors
    /// [`Error::Torch`] on a device mismatch, a non-floating dtype or `std < 0`.
    pub fn normal_(&mut self, xs: &mut Tensor, mean: f64, std: f64) -> Result<()> {
        // SAFETY: live generator and tensor handles.
        ffi::torch("normal_", unsafe {
            ffi::te_normal_(ffi::handle(xs), mean, std, self.ptr())
        })
    }

    /// Fills `xs` with samples of U[from, to) (`Tensor.uniform_(from, to, generator=self)`).
    ///
    /// # Errors
    /// [`Error::Torch`] on a device mismatch, a non-floating dtype or `from > to`.
    pub fn uniform_(&mut self, xs: &mut Tensor, from: f64, to: f64) -> Result<()> {
        // SAFETY: live generator and tensor handles.
        ffi::torch("uniform_", unsafe {
            ffi::te_uniform_(ffi::handle(xs), from, to, self.ptr())
        })
    }

    /// Fills `xs` with 1 with probability `p` and 0 otherwise (`Tensor.bernoulli_(p, generator=self)`).
    ///
    /// # Errors
    /// [`Error::Torch`] on a device mismatch or `p` outside `[0, 1]`.
    pub fn bernoulli_(&mut self, xs: &mut Tensor, p: f64) -> Result<()> {
        // SAFETY: live generator and tensor handles.
        ffi::torch("bernoulli_", unsafe {
            ffi::te_bernoulli_(ffi::handle(xs), p, self.ptr())
        })
    }
}

impl Generator {
    /// Dropout with masks from this generator: each element of `xs` is zeroed with probability
    /// `p` and the others scaled by `1 / (1 - p)` (`torch.nn.functional.dropout(xs, p,
    /// training=True)`, computed as ATen's CPU kernel does: a Bernoulli(1 − p) mask of `xs`'s
    /// shape and kind, divided by 1 − p, times `xs`). `p = 0` returns `xs` and draws nothing.
    ///
    /// # Shapes
    /// `xs`: any shape → the same shape and kind.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `p` is outside `[0, 1)`; [`Error::Torch`] when `xs` is
    /// not on this generator's device type or not floating.
    pub fn dropout(&mut self, xs: &Tensor, p: f64) -> Result<Tensor> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidArgument(format!(
                "dropout needs a probability in [0, 1), got {p}"
            )));
        }
        if p == 0.0 {
            return Ok(xs.shallow_clone());
        }
        let mut mask = xs.empty_like();
        self.bernoulli_(&mut mask, 1.0 - p)?;
        let _ = mask.g_div_scalar_(1.0 - p);
        Ok(xs * mask)
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        // SAFETY: we own the generator, and nothing else frees it.
        unsafe { ffi::te_generator_free(self.ptr()) }
    }
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("device", &self.device)
            .field("seed", &self.seed())
            .finish()
    }
}

fn empty(shape: &[i64], options: (Kind, Device)) -> Result<Tensor> {
    Tensor::f_empty(shape, options).map_err(|e| Error::Torch {
        op: "empty",
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(xs: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(&xs.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    #[test]
    fn a_snapshot_continues_the_stream_independently() {
        let mut gen = Generator::cpu(9);
        let _ = gen.randn(&[3], (Kind::Float, Device::Cpu)).unwrap();
        let mut copy = gen.snapshot().unwrap();
        let a = values(&gen.randn(&[5], (Kind::Float, Device::Cpu)).unwrap());
        assert_eq!(
            a,
            values(&copy.randn(&[5], (Kind::Float, Device::Cpu)).unwrap())
        );
        assert_ne!(
            a,
            values(&gen.randn(&[5], (Kind::Float, Device::Cpu)).unwrap())
        );
    }

    #[test]
    fn dropout_zeroes_at_rate_p_scales_the_rest_and_replays_from_a_snapshot() {
        let xs = Tensor::ones([10_000], (Kind::Float, Device::Cpu));
        let mut gen = Generator::cpu(1);
        let copy = gen.snapshot().unwrap();
        let out = gen.dropout(&xs, 0.25).unwrap();
        let kept = values(&out).iter().filter(|&&v| v != 0.0).count() as f64 / 10_000.0;
        assert!((kept - 0.75).abs() < 0.02, "kept {kept}");
        assert!(values(&out)
            .iter()
            .all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        assert!(copy
            .snapshot()
            .unwrap()
            .dropout(&xs, 0.25)
            .unwrap()
            .equal(&out));
        assert!(gen.dropout(&xs, 0.0).unwrap().equal(&xs));
        assert!(gen.dropout(&xs, 1.0).is_err());
    }

    #[test]
    fn the_same_seed_gives_the_same_numbers_and_another_seed_others() {
        let draw = |seed| {
            let mut gen = Generator::cpu(seed);
            values(&gen.randn(&[64], (Kind::Float, Device::Cpu)).unwrap())
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn matches_pytorchs_randn_with_a_seeded_generator() {
        // torch.randn(4, generator=torch.Generator().manual_seed(0)) in torch 2.11.0.
        let mut gen = Generator::cpu(0);
        let xs = values(&gen.randn(&[4], (Kind::Float, Device::Cpu)).unwrap());
        let expected = [1.5409961f32, -0.2934289, -2.1787894, 0.5684313];
        for (x, e) in xs.iter().zip(expected) {
            assert!((x - e as f64).abs() < 1e-6, "{xs:?}");
        }
    }

    #[test]
    fn generators_are_independent_of_each_other_and_of_the_global_one() {
        let reference = {
            let mut gen = Generator::cpu(42);
            (0..3)
                .map(|_| values(&gen.randn(&[8], (Kind::Float, Device::Cpu)).unwrap()))
                .collect::<Vec<_>>()
        };
        let mut gen = Generator::cpu(42);
        let mut other = Generator::cpu(42);
        let mut draws = vec![];
        for i in 0..3 {
            // Reseed and draw from the global generator, and draw from another generator with
            // the same seed, between our draws: neither may shift our stream.
            tch::manual_seed(1000 + i);
            let _ = Tensor::randn([8], (Kind::Float, Device::Cpu));
            let _ = other.randn(&[5], (Kind::Float, Device::Cpu)).unwrap();
            draws.push(values(
                &gen.randn(&[8], (Kind::Float, Device::Cpu)).unwrap(),
            ));
        }
        assert_eq!(draws, reference);
        // And the global generator is not driven by ours: the same global seed gives the same
        // numbers whether or not our generators drew in between.
        tch::manual_seed(5);
        let global_a = values(&Tensor::randn([8], (Kind::Float, Device::Cpu)));
        tch::manual_seed(5);
        let _ = gen.randn(&[100], (Kind::Float, Device::Cpu)).unwrap();
        let global_b = values(&Tensor::randn([8], (Kind::Float, Device::Cpu)));
        assert_eq!(global_a, global_b);
    }

    #[test]
    fn a_state_round_trip_reproduces_the_continuation() {
        let mut gen = Generator::cpu(3);
        let _ = gen.randn(&[10], (Kind::Float, Device::Cpu)).unwrap();
        let state = gen.get_state();
        assert_eq!(state.kind(), Kind::Uint8);
        let continuation = values(&gen.randn(&[16], (Kind::Float, Device::Cpu)).unwrap());
        let ints = values(&gen.randint(0, 1000, &[16], Device::Cpu).unwrap());

        // A fresh generator with another seed, given the state, continues identically.
        let mut restored = Generator::cpu(99);
        restored.set_state(&state).unwrap();
        assert_eq!(
            values(&restored.randn(&[16], (Kind::Float, Device::Cpu)).unwrap()),
            continuation
        );
        assert_eq!(
            values(&restored.randint(0, 1000, &[16], Device::Cpu).unwrap()),
            ints
        );
        assert_eq!(restored.seed(), 3, "the state carries the seed");
    }

    #[test]
    fn set_seed_restarts_the_stream() {
        let mut gen = Generator::cpu(11);
        let first = values(&gen.randn(&[6], (Kind::Float, Device::Cpu)).unwrap());
        let _ = gen.randn(&[6], (Kind::Float, Device::Cpu)).unwrap();
        gen.set_seed(11);
        assert_eq!(gen.seed(), 11);
        assert_eq!(
            values(&gen.randn(&[6], (Kind::Float, Device::Cpu)).unwrap()),
            first
        );
    }

    #[test]
    fn a_bad_state_is_an_error() {
        let mut gen = Generator::cpu(0);
        let err = gen
            .set_state(&Tensor::zeros([3], (Kind::Uint8, Device::Cpu)))
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Torch {
                    op: "Generator::set_state",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn random_ops_respect_their_ranges_and_shapes() {
        let mut gen = Generator::cpu(1);
        let like = Tensor::zeros([2, 3], (Kind::Double, Device::Cpu));
        let xs = gen.randn_like(&like).unwrap();
        assert_eq!((xs.size(), xs.kind()), (vec![2, 3], Kind::Double));

        let ints = gen.randint(-3, 4, &[1000], Device::Cpu).unwrap();
        assert_eq!(ints.kind(), Kind::Int64);
        let ints = values(&ints);
        assert!(ints.iter().all(|&v| (-3.0..4.0).contains(&v)));
        for v in -3..4 {
            assert!(ints.contains(&(v as f64)), "{v} never drawn in 1000 draws");
        }

        let mut us = Tensor::zeros([1000], (Kind::Float, Device::Cpu));
        gen.uniform_(&mut us, 2.0, 3.0).unwrap();
        let us = values(&us);
        assert!(us.iter().all(|&u| (2.0..3.0).contains(&u)));

        let mut bs = Tensor::zeros([1000], (Kind::Float, Device::Cpu));
        gen.bernoulli_(&mut bs, 0.25).unwrap();
        let bs = values(&bs);
        assert!(bs.iter().all(|&b| b == 0.0 || b == 1.0));
        let ones = bs.iter().filter(|&&b| b == 1.0).count();
        assert!((150..350).contains(&ones), "{ones} ones for p = 0.25");

        let mut ns = Tensor::zeros([4000], (Kind::Float, Device::Cpu));
        gen.normal_(&mut ns, 10.0, 0.5).unwrap();
        let mean = ns.mean(Kind::Double).double_value(&[]);
        let std = ns.std(true).double_value(&[]);
        assert!(
            (mean - 10.0).abs() < 0.05 && (std - 0.5).abs() < 0.05,
            "{mean} {std}"
        );

        let perm = gen.randperm(50, Device::Cpu).unwrap();
        let mut sorted = values(&perm);
        assert_ne!(
            sorted,
            (0..50).map(f64::from).collect::<Vec<_>>(),
            "not shuffled"
        );
        sorted.sort_by(f64::total_cmp);
        assert_eq!(sorted, (0..50).map(f64::from).collect::<Vec<_>>());
    }

    #[test]
    fn bad_arguments_are_errors_not_crashes() {
        let mut gen = Generator::cpu(0);
        assert!(matches!(
            gen.randint(3, 3, &[2], Device::Cpu),
            Err(Error::InvalidArgument(_))
        ));
        let err = gen.randn(&[2], (Kind::Int64, Device::Cpu)).unwrap_err();
        assert!(matches!(err, Error::Torch { op: "normal_", .. }), "{err}");
        let mut xs = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        assert!(gen.bernoulli_(&mut xs, 1.5).is_err());
    }

    #[cfg(feature = "cuda-tests")]
    #[test]
    fn cuda_generators_are_reproducible_and_restorable() {
        let cuda = (Kind::Float, Device::Cuda(0));
        let draw = |gen: &mut Generator| values(&gen.randn(&[1000], cuda).unwrap());
        let mut a = Generator::cuda(7, 0).unwrap();
        let mut b = Generator::cuda(7, 0).unwrap();
        let first = draw(&mut a);
        assert_eq!(first, draw(&mut b));
        let state = a.get_state();
        let next = draw(&mut a);
        assert_ne!(first, next);
        b.set_state(&state).unwrap();
        assert_eq!(draw(&mut b), next);
        // A CPU generator cannot fill a CUDA tensor.
        assert!(Generator::cpu(0).randn(&[2], cuda).is_err());
    }

    #[test]
    fn a_cuda_generator_needs_cuda() {
        match Generator::cuda(0, 0) {
            Ok(mut gen) => {
                assert!(tch::Cuda::is_available());
                let xs = gen.randn(&[4], (Kind::Float, Device::Cuda(0))).unwrap();
                assert_eq!(xs.device(), Device::Cuda(0));
                assert_eq!(gen.seed(), 0);
            }
            Err(err) => {
                assert!(!tch::Cuda::is_available(), "{err}");
                assert!(err.to_string().contains("CUDA"), "{err}");
            }
        }
        assert!(Generator::cuda(0, 1 << 20).is_err());
    }
}
