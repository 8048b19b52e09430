//! The training step as one CUDA graph (`--cuda-graph`, feature `cuda`): every kernel of
//! [`Trainer::device_step`] — t and ε draws, forward, backward, norm, the non-finite flag, the
//! learning rate, fused Adam, the buffer restore and the EMA — recorded once and replayed with a
//! single launch per step, as `torch.cuda.graphs`' whole-network capture does.
//!
//! The recipe (from `torch.cuda.graph`): a few eager steps on a side stream, so that cuDNN's
//! autotuning, cuBLAS handles and the caching allocator's first allocations do not land in the
//! graph; then one step captured on the side stream, in a private memory pool, with the run's
//! generators (t and ε, dropout) registered with the graph and autocast's weight cache off; then a replay per step,
//! after the batch is copied into the captured input. Host-side state that a replay cannot
//! change — the generator reseeds, the step counter, the reads of the statistics — stays outside
//! the graph: the generators are reseeded before each replay (a registered generator's seed and
//! offset are read by the replay), and every device tensor the graph touches is updated in
//! place, so its address stays the one captured.
//!
//! The step is the eager one: on the same inputs a replayed step computes what an eager step
//! computes, up to cuDNN choosing other algorithms.

use tch::{Device, Tensor};
use torch_ext::cuda::{CudaGraph, CudaStream};

use super::step::StepTensors;
use super::{StepOutcome, Trainer};
use crate::TrainError;

/// Eager steps on the side stream before the capture (`torch.cuda.graph`'s examples use 3; 11
/// for DDP, which this path refuses).
pub(super) const WARMUP_STEPS: u32 = 3;

/// The graph, its static input and outputs, and the warm-up still to do.
pub(super) struct GraphedStep {
    device_index: usize,
    side: CudaStream,
    warmup_left: u32,
    captured: Option<Captured>,
}

struct Captured {
    graph: CudaGraph,
    x_0: Tensor,
    /// A class-conditional run's labels (before label dropout, which the graph draws).
    labels: Option<Tensor>,
    /// Overwritten by every replay.
    outputs: StepTensors,
}

/// Copies of a replay's outputs, which the next replay overwrites.
fn outcome_of(outputs: &StepTensors) -> StepOutcome {
    StepOutcome::from(StepTensors {
        loss: outputs.loss.copy(),
        grad_norm: outputs.grad_norm.copy(),
        lr: outputs.lr.copy(),
        found_inf: outputs.found_inf.copy(),
    })
}

impl std::fmt::Debug for GraphedStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphedStep")
            .field("warmup_left", &self.warmup_left)
            .field("captured", &self.captured.is_some())
            .finish()
    }
}

fn graph_err(e: torch_ext::Error) -> TrainError {
    TrainError::CudaGraph(e.to_string())
}

impl GraphedStep {
    /// A graphed step for a trainer on `device`.
    ///
    /// # Errors
    /// [`TrainError::CudaGraph`] when `device` is not a CUDA device or CUDA fails.
    pub(super) fn new(device: Device) -> Result<Self, TrainError> {
        super::check_cuda_graph(device)?;
        let Device::Cuda(device_index) = device else {
            unreachable!("check_cuda_graph accepts CUDA devices only");
        };
        Ok(Self {
            device_index,
            side: CudaStream::from_pool(device_index, false).map_err(graph_err)?,
            warmup_left: WARMUP_STEPS,
            captured: None,
        })
    }

    /// One step on `x_0` (already on the device, queued on the current stream): eager on the
    /// side stream during the warm-up, then captured and replayed.
    pub(super) fn step(
        &mut self,
        trainer: &mut Trainer,
        x_0: Tensor,
        labels: Option<Tensor>,
    ) -> Result<StepOutcome, TrainError> {
        let current = CudaStream::current(self.device_index).map_err(graph_err)?;
        if let Some(captured) = &self.captured {
            tch::no_grad(|| {
                captured.x_0.shallow_clone().copy_(&x_0);
                if let (Some(static_labels), Some(labels)) = (&captured.labels, &labels) {
                    static_labels.shallow_clone().copy_(labels);
                }
            });
            captured.graph.replay().map_err(graph_err)?;
            return Ok(outcome_of(&captured.outputs));
        }
        self.side.wait_stream(&current).map_err(graph_err)?;
        if self.warmup_left > 0 {
            self.warmup_left -= 1;
            let outputs = {
                let _side = self.side.guard().map_err(graph_err)?;
                trainer.device_step(&x_0, labels.as_ref())
            };
            current.wait_stream(&self.side).map_err(graph_err)?;
            return Ok(StepOutcome::from(outputs));
        }
        // Capture this step (which runs nothing), then replay it (which runs it).
        let x_static = x_0;
        let labels_static = labels;
        let mut graph = CudaGraph::new().map_err(graph_err)?;
        graph.register_generator(&trainer.gen).map_err(graph_err)?;
        graph
            .register_generator(&trainer.dropout_gen)
            .map_err(graph_err)?;
        let outputs = {
            let _side = self.side.guard().map_err(graph_err)?;
            // As torch.cuda.graph asks: no autocast cache of cast weights across the capture.
            let _no_cache = torch_ext::AutocastCacheGuard::new(false).map_err(graph_err)?;
            graph.capture_begin().map_err(graph_err)?;
            let outputs = trainer.device_step(&x_static, labels_static.as_ref());
            graph.capture_end().map_err(graph_err)?;
            outputs
        };
        current.wait_stream(&self.side).map_err(graph_err)?;
        graph.replay().map_err(graph_err)?;
        let outcome = outcome_of(&outputs);
        self.captured = Some(Captured {
            graph,
            x_0: x_static,
            labels: labels_static,
            outputs,
        });
        Ok(outcome)
    }
}
