//! Channels-last memory format: NCHW tensors stored as NHWC (PyTorch's
//! `memory_format=torch.channels_last`).
//!
//! tch has no `to(memory_format=…)`, but a channels-last tensor is just an NCHW view of NHWC
//! storage, which `permute → contiguous → permute` produces. oneDNN (CPU) and cuDNN pick their
//! NHWC kernels when an input or a weight has these strides, and element-wise ops, norms and
//! autograd keep them, so converting the weights once is enough to run the whole network
//! channels-last; gradients follow their parameter's strides (PyTorch's gradient layout contract),
//! so an optimizer's state stays channels-last too.

use tch::nn::VarStore;
use tch::Tensor;

/// How a network's 4-D tensors are laid out in memory. The logical shape stays NCHW either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryFormat {
    /// Row-major NCHW.
    Contiguous,
    /// NHWC storage behind an NCHW shape.
    #[default]
    ChannelsLast,
}

impl MemoryFormat {
    /// The format this crate's networks measured fastest in, for the given device.
    ///
    /// Channels-last on both: on the 2-core CPU the notebook's training step runs about 1.3×
    /// faster than in NCHW (see `benches/unet.rs` and the crate docs), and on CUDA the NHWC
    /// cuDNN kernels are the ones that use tensor cores under bf16 autocast.
    pub fn preferred(_device: tch::Device) -> Self {
        MemoryFormat::ChannelsLast
    }
}

/// The same tensor in the given memory format; 4-D tensors only, others are returned as they are.
pub fn to_memory_format(xs: &Tensor, format: MemoryFormat) -> Tensor {
    if xs.dim() != 4 {
        return xs.shallow_clone();
    }
    match format {
        MemoryFormat::Contiguous => xs.contiguous(),
        MemoryFormat::ChannelsLast if is_channels_last(xs) => xs.shallow_clone(),
        MemoryFormat::ChannelsLast => xs.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]),
    }
}

/// True when a 4-D tensor has dense channels-last strides (`C` is the fastest dimension).
pub fn is_channels_last(xs: &Tensor) -> bool {
    if xs.dim() != 4 {
        return false;
    }
    let size = xs.size();
    let (c, h, w) = (size[1], size[2], size[3]);
    xs.stride() == [h * w * c, 1, w * c, c]
}

/// Converts every 4-D variable of a var store (the convolution kernels) to `format`, in place.
///
/// The networks convert their input to the format of their first convolution's kernel, so after
/// this call the whole forward and backward pass runs in `format`.
pub fn set_memory_format(vs: &VarStore, format: MemoryFormat) {
    tch::no_grad(|| {
        for (_, mut var) in vs.variables() {
            if var.dim() == 4 {
                let converted = to_memory_format(&var, format);
                var.set_data(&converted);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn converts_back_and_forth_without_changing_values() {
        let xs = Tensor::randn([2, 3, 4, 5], (Kind::Float, Device::Cpu));
        assert!(!is_channels_last(&xs));
        let cl = to_memory_format(&xs, MemoryFormat::ChannelsLast);
        assert!(is_channels_last(&cl));
        assert_eq!(cl.size(), [2, 3, 4, 5]);
        assert!(cl.equal(&xs));
        let back = to_memory_format(&cl, MemoryFormat::Contiguous);
        assert!(back.is_contiguous() && back.equal(&xs));
    }

    #[test]
    fn var_store_kernels_are_converted_in_place() {
        let vs = VarStore::new(Device::Cpu);
        let conv = tch::nn::conv2d(vs.root() / "conv", 3, 8, 3, Default::default());
        let before = conv.ws.copy();
        set_memory_format(&vs, MemoryFormat::ChannelsLast);
        // The layer holds the same variable, so it sees the new strides.
        assert!(is_channels_last(&conv.ws));
        assert!(conv.ws.equal(&before));
        assert!(conv.ws.requires_grad());
        set_memory_format(&vs, MemoryFormat::Contiguous);
        assert!(conv.ws.is_contiguous());
    }
}
