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
///
/// Which one is faster depends on the network, not only on the device: on the 2-core reference
/// CPU, the notebook's SimpleUnet trains about 1.3× faster channels-last, while the paper's U-Net
/// trains about 1.3× faster in NCHW (its GroupNorm and attention backward passes are slower
/// channels-last), in Rust and in PyTorch alike. [`crate::ModelConfig::build`] therefore lays the
/// kernels out in each architecture's measured preference
/// ([`crate::UNetConfig::preferred_memory_format`],
/// [`crate::SimpleUnetConfig::preferred_memory_format`]), and [`set_memory_format`] overrides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryFormat {
    /// Row-major NCHW.
    #[default]
    Contiguous,
    /// NHWC storage behind an NCHW shape.
    ChannelsLast,
}

/// The same tensor in the given memory format; 4-D tensors only, others are returned as they are.
///
/// The result has exactly the format's strides, also where size-1 dimensions make both layouts
/// the same memory (a 1×1 kernel), as `Tensor.to(memory_format=…)` does: libtorch picks its NHWC
/// kernels from the strides.
pub fn to_memory_format(xs: &Tensor, format: MemoryFormat) -> Tensor {
    if xs.dim() != 4 {
        return xs.shallow_clone();
    }
    let strides = strides_of(&xs.size(), format);
    if xs.stride() == strides {
        return xs.shallow_clone();
    }
    // An in-place copy into fresh storage: autograd records it when `xs` needs gradients.
    let mut out = Tensor::empty_strided(xs.size(), &strides, (xs.kind(), xs.device()));
    out.copy_(xs);
    out
}

/// The strides of an NCHW shape in a format.
fn strides_of(size: &[i64], format: MemoryFormat) -> Vec<i64> {
    let (c, h, w) = (size[1], size[2], size[3]);
    match format {
        MemoryFormat::Contiguous => vec![c * h * w, h * w, w, 1],
        MemoryFormat::ChannelsLast => vec![h * w * c, 1, w * c, c],
    }
}

/// True when a 4-D tensor has exactly channels-last strides (`C` is the fastest dimension).
pub fn is_channels_last(xs: &Tensor) -> bool {
    xs.dim() == 4 && xs.stride() == strides_of(&xs.size(), MemoryFormat::ChannelsLast)
}

/// Converts every 4-D variable of a var store (the convolution kernels) to `format`, in place.
///
/// The networks convert their input to the format of their first convolution's kernel, so after
/// this call the whole forward and backward pass runs in `format`. Call it before creating
/// optimizer state, which copies the parameters' layout.
pub fn set_memory_format(vs: &VarStore, format: MemoryFormat) {
    for (_, var) in vs.variables() {
        convert_in_place(&var, format);
    }
}

/// Re-lays out one variable in place: every handle to it (the layers', the var store's) sees the
/// new strides, and it stays the same autograd leaf.
pub(crate) fn convert_in_place(var: &Tensor, format: MemoryFormat) {
    if var.dim() == 4 {
        tch::no_grad(|| {
            let converted = to_memory_format(var, format);
            var.shallow_clone().set_data(&converted);
        });
    }
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
    fn one_by_one_kernels_get_exact_strides_and_gradients_flow_through() {
        let xs = Tensor::randn([3, 28, 1, 1], (Kind::Float, Device::Cpu));
        let cl = to_memory_format(&xs, MemoryFormat::ChannelsLast);
        assert_eq!(cl.stride(), [28, 1, 28, 28]);
        assert_eq!(
            to_memory_format(&cl, MemoryFormat::Contiguous).stride(),
            [28, 1, 1, 1]
        );
        let leaf = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        to_memory_format(&leaf, MemoryFormat::ChannelsLast)
            .sum(Kind::Float)
            .backward();
        assert!(leaf.grad().equal(&Tensor::ones_like(&leaf)));
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
