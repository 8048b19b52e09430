//! The training loop's per-step statistics, kept on the device so that a step never waits for
//! the host: the non-finite check, the skip counters behind the NaN guard's abort rule, and the
//! loss and gradient norm that `metrics.jsonl` reports. `DeviceStats::read` brings them all
//! to the host in one transfer; the trainer reads every `log_every` and `checkpoint_every` steps
//! and at the end of the run.

use tch::{Device, Kind, Tensor};

/// Whether a step's loss or gradient norm (0-dim tensors on the device) is NaN or infinite,
/// decided on the device: a bool tensor, and the f32 `found_inf` (1 or 0) that the fused
/// optimizer and the EMA read to skip the step.
///
/// `0·s ≠ 0` for `s = loss + norm` in f64 is true exactly when either is NaN or infinite (0·∞ is
/// NaN, and f32 values cannot overflow an f64 sum): a handful of small kernels, where `isfinite`
/// on both would take more.
pub fn non_finite(loss: &Tensor, norm: &Tensor) -> (Tensor, Tensor) {
    let sum = loss.detach().to_kind(Kind::Double) + norm.to_kind(Kind::Double);
    let found = (sum * 0.0).ne(0.0);
    let found_inf = found.to_kind(Kind::Float);
    (found, found_inf)
}

/// Accumulators on the device (0-dim f64 tensors), and the host-side bookkeeping of the current
/// metrics window.
#[derive(Debug)]
pub(crate) struct DeviceStats {
    /// Sum of the finite steps' losses since the window started.
    loss_sum: Tensor,
    /// The gradient norm of the last finite step (0 before the first).
    last_norm: Tensor,
    /// Steps skipped since the start of the run.
    skipped: Tensor,
    /// Non-finite steps in a row up to the last step.
    in_a_row: Tensor,
    /// The longest such run since the last read, a run still going included.
    worst_in_a_row: Tensor,
    /// The learning rate of the last step.
    last_lr: Tensor,
    /// The step at which the window started, and the skip count then (known from a read).
    window_start: u64,
    skipped_at_window_start: u64,
}

/// What [`DeviceStats::read`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StatsRead {
    /// Mean loss over the window's finite steps (NaN when there were none).
    pub(crate) window_loss: f64,
    /// The gradient norm of the last finite step.
    pub(crate) last_norm: f64,
    /// Steps skipped since the start of the run.
    pub(crate) skipped: u64,
    /// The longest run of non-finite steps since the previous read.
    pub(crate) worst_in_a_row: u64,
    /// The learning rate of the last step.
    pub(crate) lr: f64,
}

impl DeviceStats {
    /// Counters for a run at `step` that has skipped `skipped` steps so far.
    pub(crate) fn new(device: Device, step: u64, skipped: u64) -> Self {
        let zero = || Tensor::zeros([], (Kind::Double, device));
        Self {
            loss_sum: zero(),
            last_norm: zero(),
            skipped: Tensor::full([], skipped as f64, (Kind::Double, device)),
            in_a_row: zero(),
            worst_in_a_row: zero(),
            last_lr: Tensor::full([], f64::NAN, (Kind::Double, device)),
            window_start: step,
            skipped_at_window_start: skipped,
        }
    }

    /// Records a step's loss, gradient norm and learning rate (0-dim tensors on the device) and
    /// returns [`non_finite`] of the loss and norm.
    ///
    /// `overflow` is an fp16 run's loss-scaler `found_inf` (one element): the step is skipped
    /// then too, but a step whose gradient overflowed at a finite loss does not count towards
    /// the abort rule's run of non-finite steps, since the scaler answers it by halving the
    /// scale (as `torch.amp.GradScaler` does, which never stops a run).
    pub(crate) fn record(
        &mut self,
        loss: &Tensor,
        norm: &Tensor,
        lr: &Tensor,
        overflow: Option<&Tensor>,
    ) -> (Tensor, Tensor) {
        let loss = loss.detach().to_kind(Kind::Double);
        let norm = norm.to_kind(Kind::Double);
        let (mut found, mut found_inf) = non_finite(&loss, &norm);
        let mut counted = found_inf.shallow_clone();
        if let Some(overflow) = overflow {
            let overflow = overflow.reshape([]).gt(0.0);
            let loss_bad = (&loss * 0.0).ne(0.0).to_kind(Kind::Float);
            counted = loss_bad.where_self(&overflow, &found_inf);
            found = found.logical_or(&overflow);
            found_inf = found.to_kind(Kind::Float);
        }
        let _ = self.skipped.g_add_(&found_inf);
        let _ = self.in_a_row.g_add_scalar_(1.0).g_mul_(&counted);
        let _ = self
            .worst_in_a_row
            .maximum_out(&self.worst_in_a_row, &self.in_a_row);
        let _ = self
            .loss_sum
            .g_add_(&Tensor::where_scalarself(&found, 0.0, &loss));
        let kept = self.last_norm.where_self(&found, &norm);
        self.last_norm.copy_(&kept);
        self.last_lr = lr.shallow_clone();
        (found, found_inf)
    }

    /// Reads every counter in one device-to-host transfer (a synchronisation) at `step`, and
    /// restarts the run-length maximum.
    pub(crate) fn read(&mut self, step: u64) -> StatsRead {
        let values = Vec::<f64>::try_from(Tensor::stack(
            &[
                &self.loss_sum,
                &self.last_norm,
                &self.skipped,
                &self.worst_in_a_row,
                &self.last_lr.to_kind(Kind::Double),
            ],
            0,
        ))
        .expect("five scalars");
        self.worst_in_a_row.copy_(&self.in_a_row);
        let skipped = values[2] as u64;
        let window_steps = step - self.window_start;
        let finite = window_steps.saturating_sub(skipped - self.skipped_at_window_start);
        StatsRead {
            window_loss: if finite > 0 {
                values[0] / finite as f64
            } else {
                f64::NAN
            },
            last_norm: values[1],
            skipped,
            worst_in_a_row: values[3] as u64,
            lr: values[4],
        }
    }

    /// Starts a new metrics window at `step`, after a read that found `skipped` skips.
    pub(crate) fn start_window(&mut self, step: u64, skipped: u64) {
        let _ = self.loss_sum.zero_();
        self.window_start = step;
        self.skipped_at_window_start = skipped;
    }

    /// Steps skipped since the start of the run (a synchronisation).
    pub(crate) fn skipped(&self) -> u64 {
        self.skipped.double_value(&[]) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(v: f32) -> Tensor {
        Tensor::from(v)
    }

    #[test]
    fn counts_skips_runs_and_the_finite_mean() {
        let mut stats = DeviceStats::new(Device::Cpu, 10, 2);
        let lr = Tensor::from(0.5f64);
        let steps = [
            (1.0, 3.0, false),
            (f32::NAN, 1.0, true),
            (2.0, f32::INFINITY, true),
            (3.0, f32::NEG_INFINITY, true),
            (4.0, 5.0, false),
            (f32::NAN, f32::NAN, true),
        ];
        for (loss, norm, bad) in steps {
            let (found, found_inf) = stats.record(&scalar(loss), &scalar(norm), &lr, None);
            assert_eq!(found.kind(), Kind::Bool);
            assert_eq!((found_inf.kind(), found_inf.dim()), (Kind::Float, 0));
            assert_eq!(found_inf.double_value(&[]), if bad { 1.0 } else { 0.0 });
        }
        let read = stats.read(16);
        assert_eq!(read.skipped, 2 + 4);
        assert_eq!(read.worst_in_a_row, 3);
        assert_eq!(read.window_loss, (1.0 + 4.0) / 2.0);
        assert_eq!(read.last_norm, 5.0);
        assert_eq!(read.lr, 0.5);
        // The run still going (one step) is where the next read's maximum starts.
        stats.start_window(16, read.skipped);
        let (_, _) = stats.record(&scalar(f32::NAN), &scalar(1.0), &lr, None);
        let read = stats.read(17);
        assert_eq!((read.skipped, read.worst_in_a_row), (7, 2));
        assert!(read.window_loss.is_nan(), "no finite step in the window");
        assert_eq!(read.last_norm, 5.0, "the last finite step's norm");
        // A finite value of f32's largest magnitude is finite.
        let (_, found_inf) = stats.record(&scalar(f32::MAX), &scalar(f32::MAX), &lr, None);
        assert_eq!(found_inf.double_value(&[]), 0.0);
    }
}
