//! What a training run needs in memory, before a long job finds out (`ddpm model memory`):
//! the bytes of the parameters, their gradients, Adam's moments and the EMA copy, counted from
//! the tensors themselves, and the peak activation bytes of one training step at batch 1
//! (forward, loss and backward at the configured precision), measured on the chosen device and
//! scaled by the images of one micro-batch (`batch_size / (grad_accum · world_size)`).
//!
//! How the peak is measured: one warm-up step first (it allocates the gradients and, on the
//! CPU, faults libtorch's kernels and thread pools into memory), then the measured step, whose
//! peak beyond the bytes live before it is the activations' (the gradients already exist):
//! - **CUDA** (feature `cuda`): the caching allocator's peak of bytes in live tensors
//!   (`torch.cuda.max_memory_allocated`), reset before the step.
//! - **CPU**: libtorch's CPU allocator is plain `malloc`, so the process's resident set is what
//!   the tensors take. Linux keeps its high-water mark (`VmHWM` in `/proc/self/status`), which
//!   writing `5` to `/proc/self/clear_refs` resets; the peak is the mark after the step minus
//!   the resident bytes before it. Before it, `malloc_trim(0)` hands the blocks the warm-up
//!   freed back to the kernel, so that the step's allocations show in the resident set instead
//!   of reusing pages already counted. Other threads must be idle meanwhile.

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use torch_ext::Generator;

use crate::config::TrainConfig;
use crate::objective::training_loss;
use crate::optim::Adam;
use crate::scaler::LossScaler;
use crate::TrainError;

/// The memory of a training run, in bytes (per rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReport {
    /// Trainable parameters.
    pub n_params: u64,
    /// Their f32 values (master weights; autocast casts copies during the forward pass).
    pub param_bytes: u64,
    /// Non-trainable buffers (BatchNorm running statistics).
    pub buffer_bytes: u64,
    /// One f32 gradient per parameter.
    pub grad_bytes: u64,
    /// Adam's first and second moments.
    pub optimizer_bytes: u64,
    /// The EMA copy of the weights and buffers.
    pub ema_bytes: u64,
    /// The peak activation bytes of one step at batch 1 (measured).
    pub activation_bytes_per_image: u64,
    /// Images per forward pass: `batch_size / (grad_accum · world_size)`.
    pub micro_batch: u64,
}

impl MemoryReport {
    /// The activation peak at the micro-batch: per image times the images.
    pub fn activation_bytes(&self) -> u64 {
        self.activation_bytes_per_image * self.micro_batch
    }

    /// Everything at once: the state that lives through the run plus the activation peak.
    pub fn total_bytes(&self) -> u64 {
        self.param_bytes
            + self.buffer_bytes
            + self.grad_bytes
            + self.optimizer_bytes
            + self.ema_bytes
            + self.activation_bytes()
    }
}

fn bytes_of(tensors: &[Tensor]) -> u64 {
    tensors
        .iter()
        .map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
        .sum()
}

/// Measures `config` for `world_size` ranks on `device` (see the module docs for how).
///
/// # Errors
/// [`TrainError::Config`] when the configuration is invalid, does not split into micro-batches,
/// its precision cannot run on `device`, or the peak cannot be read (a CPU that is not Linux's).
pub fn measure(
    config: &TrainConfig,
    world_size: usize,
    device: Device,
) -> Result<MemoryReport, TrainError> {
    config.validate()?;
    config.check_micro_batch(world_size)?;
    model::check_autocast(config.precision, device)
        .map_err(|e| TrainError::Config(format!("precision: {e}")))?;
    let vs = VarStore::new(device);
    let net = config
        .model
        .build_with(&vs.root(), &mut Generator::cpu(config.seed))
        .map_err(|e| TrainError::Config(e.to_string()))?;
    let (params, buffers): (Vec<Tensor>, Vec<Tensor>) = vs
        .variables()
        .into_values()
        .partition(Tensor::requires_grad);
    let optim = Adam::new(&vs, config.optim.clone());
    let param_bytes = bytes_of(&params);
    let n_params = params.iter().map(|t| t.numel() as u64).sum();
    let optimizer_bytes = bytes_of(
        &optim
            .state_tensors()
            .into_iter()
            .map(|(_, t)| t)
            .collect::<Vec<_>>(),
    );
    let ema_bytes = param_bytes + bytes_of(&buffers);
    let grad_bytes = param_bytes;
    let schedule = schedule::Schedule::new(&config.schedule)
        .map_err(|e| TrainError::Config(format!("schedule: {e}")))?;
    let sched = schedule::tensor::ScheduleTensors::new(&schedule, device);
    let (c, s) = (config.model.in_channels(), config.model.image_size());
    let x_0 = Tensor::zeros([1, c, s, s], (Kind::Float, device));
    let noise = Tensor::ones_like(&x_0);
    let t = Tensor::full([1], schedule.n_steps() as i64 / 2, (Kind::Int64, device));
    let scaler = config
        .precision
        .loss_scaling()
        .then(|| LossScaler::new(device));
    let autocast = config.precision.autocast_kind(device);
    let step = || {
        // Gradients accumulate: the second step writes into the warm-up's.
        let loss = training_loss(
            net.as_ref(),
            &sched,
            &config.objective,
            &x_0,
            &noise,
            &t,
            autocast,
        );
        match &scaler {
            Some(scaler) => scaler.scale_loss(&loss).backward(),
            None => loss.backward(),
        }
    };
    step();
    let peak = peak_bytes_during(device, step)?;
    Ok(MemoryReport {
        n_params,
        param_bytes,
        buffer_bytes: bytes_of(&buffers),
        grad_bytes,
        optimizer_bytes,
        ema_bytes,
        activation_bytes_per_image: peak,
        micro_batch: config.micro_batch(world_size) as u64,
    })
}

/// The most bytes `f` had allocated at once beyond what was live before it.
fn peak_bytes_during(device: Device, f: impl Fn()) -> Result<u64, TrainError> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(index) => {
            let err = |e: torch_ext::Error| TrainError::Config(format!("CUDA memory stats: {e}"));
            let stream = torch_ext::cuda::CudaStream::current(index).map_err(err)?;
            stream.synchronize().map_err(err)?;
            torch_ext::cuda::reset_peak_memory_stats(index).map_err(err)?;
            let before = torch_ext::cuda::memory_stats(index).map_err(err)?.allocated;
            f();
            stream.synchronize().map_err(err)?;
            let peak = torch_ext::cuda::memory_stats(index)
                .map_err(err)?
                .peak_allocated;
            Ok((peak - before).max(0) as u64)
        }
        Device::Cpu => {
            // SAFETY: glibc's malloc_trim only returns free memory to the kernel.
            #[cfg(target_env = "gnu")]
            unsafe {
                libc::malloc_trim(0);
            }
            let before = proc_status_kib("VmRSS")?;
            std::fs::write("/proc/self/clear_refs", "5").map_err(|e| {
                TrainError::Config(format!(
                    "cannot reset the resident high-water mark (/proc/self/clear_refs: {e}): the \
                     CPU measurement needs Linux"
                ))
            })?;
            f();
            let peak = proc_status_kib("VmHWM")?;
            Ok(peak.saturating_sub(before) * 1024)
        }
        other => Err(TrainError::Config(format!(
            "memory is measured on the CPU or CUDA{}, not on {other:?}",
            if cfg!(feature = "cuda") {
                ""
            } else {
                " (a build with feature `cuda`)"
            }
        ))),
    }
}

/// A `kB` line of `/proc/self/status`.
fn proc_status_kib(key: &str) -> Result<u64, TrainError> {
    let text = std::fs::read_to_string("/proc/self/status").map_err(|e| {
        TrainError::Config(format!(
            "cannot read /proc/self/status ({e}): the CPU measurement needs Linux"
        ))
    })?;
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(key)?.strip_prefix(':')?;
            rest.trim().strip_suffix("kB")?.trim().parse().ok()
        })
        .ok_or_else(|| TrainError::Config(format!("/proc/self/status has no {key} line")))
}
