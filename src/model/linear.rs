//! `y = act(x Wᵀ + b)`: the projections of every layer, and how they are loaded
//! (`nn.Linear`, and GPT-2's `Conv1D` stored transposed).

use std::sync::Arc;

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{LayerNorm, VarBuilder};

use super::kernels::activation::slice_activation;
use super::kernels::cpu::with_slice;
use super::kernels::packed::{PackedWeight, WeightFormat};
use crate::checkpoint::config::Activation;

/// `act(x)` with candle's tensor ops (the paths that do not fuse it into the matmul).
pub fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Gelu => x.gelu_erf(),
        Activation::GeluTanh => x.gelu(),
        Activation::Relu => x.relu(),
        Activation::Silu => x.silu(),
    }
}

/// `y = x Wᵀ + b` with W stored `[out, in]` as transformers stores `nn.Linear`.
/// On the CPU with f32 activations the weight is packed into panels once, at load time,
/// in the run's [`WeightFormat`] (`kernels/packed.rs`); other devices and dtypes use
/// candle's matmul.
#[derive(Debug, Clone)]
pub enum Linear {
    Packed {
        weight: Arc<PackedWeight>,
        bias: Option<Arc<[f32]>>,
    },
    Dense {
        weight: Tensor,
        bias: Option<Tensor>,
    },
}

impl Linear {
    /// `format` is how a packed weight is stored; it is ignored where weights stay
    /// dense tensors (their dtype is the run's).
    pub fn new(weight: Tensor, bias: Option<Tensor>, format: WeightFormat) -> Result<Self> {
        let packable = weight.device().is_cpu()
            && weight.dtype() == DType::F32
            && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
        if !packable {
            return Ok(Self::Dense { weight, bias });
        }
        let (n, k) = weight.dims2()?;
        let w = weight.contiguous()?;
        let packed = with_slice(&w, |w| Ok(PackedWeight::pack_as(w, n, k, format)))?;
        Ok(Self::Packed {
            weight: Arc::new(packed),
            bias: match &bias {
                Some(b) => Some(b.to_vec1::<f32>()?.into()),
                None => None,
            },
        })
    }

    /// `act(x Wᵀ + b)`. On the packed path the activation is applied as each output
    /// block is written (in parallel, while it is in cache), not as a separate pass.
    pub fn forward_activated(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        self.forward_with(x, Some(act))
    }

    fn forward_with(&self, x: &Tensor, act: Option<Activation>) -> Result<Tensor> {
        let k = x.dim(D::Minus1)?;
        let rows = x.elem_count() / k;
        match self {
            Self::Packed { weight, bias } => {
                if x.dtype() != DType::F32 || !x.device().is_cpu() {
                    candle_core::bail!(
                        "packed linear layer got a {:?} input on {:?}",
                        x.dtype(),
                        x.device()
                    );
                }
                let mut out_dims = x.dims().to_vec();
                *out_dims.last_mut().expect("rank ≥ 1") = weight.rows();
                let x = x.contiguous()?;
                let epilogue = act.map(slice_activation);
                let out = with_slice(&x, |xs| {
                    Ok(weight.matmul_to_vec(xs, bias.as_deref(), epilogue))
                })?;
                Tensor::from_vec(out, out_dims, x.device())
            }
            Self::Dense { weight, bias } => {
                let mut out_dims = x.dims().to_vec();
                *out_dims.last_mut().expect("rank ≥ 1") = weight.dim(0)?;
                let y = x.reshape((rows, k))?.matmul(&weight.t()?)?;
                let y = match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                };
                let y = y.reshape(out_dims)?;
                match act {
                    Some(act) => activate(&y, act),
                    None => Ok(y),
                }
            }
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, None)
    }
}

/// An `nn.Linear` with bias, `[out, in]`.
pub fn linear(
    in_dim: usize,
    out_dim: usize,
    vb: VarBuilder,
    format: WeightFormat,
) -> Result<Linear> {
    let w = vb.get((out_dim, in_dim), "weight")?;
    let b = vb.get(out_dim, "bias")?;
    Linear::new(w, Some(b), format)
}

/// GPT-2's `Conv1D` stores its weight as `[in, out]`; transposing once at load time turns
/// it into an ordinary `Linear` (y = x Wᵀ + b with W `[out, in]`).
pub fn conv1d(
    in_dim: usize,
    out_dim: usize,
    vb: VarBuilder,
    format: WeightFormat,
) -> Result<Linear> {
    let w = vb.get((in_dim, out_dim), "weight")?.t()?.contiguous()?;
    let b = vb.get(out_dim, "bias")?;
    Linear::new(w, Some(b), format)
}

pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(size, eps, vb)
}
