//! Building blocks shared by the BERT and GPT-2 families: activations, scaled
//! dot-product attention, head splitting, and Conv1D-as-Linear loading.

use std::sync::Arc;

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{LayerNorm, VarBuilder};

use super::cpu::with_slice;
use super::packed::PackedWeight;
use super::{cross_attention, small_attention};
use crate::checkpoint::config::Activation;

/// The activation of one element, exactly as candle's tensor op computes it in f32.
pub fn activation_f32(act: Activation) -> fn(f32) -> f32 {
    use candle_core::op::{Gelu, GeluErf, Relu, Silu, UnaryOpT};
    match act {
        Activation::Gelu => <GeluErf as UnaryOpT>::f32,
        Activation::GeluTanh => <Gelu as UnaryOpT>::f32,
        Activation::Relu => <Relu as UnaryOpT>::f32,
        Activation::Silu => <Silu as UnaryOpT>::f32,
    }
}

pub fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Gelu => x.gelu_erf(),
        Activation::GeluTanh => x.gelu(),
        Activation::Relu => x.relu(),
        Activation::Silu => x.silu(),
    }
}

/// `y = x Wᵀ + b` with W stored `[out, in]` as transformers stores `nn.Linear`.
/// On the CPU in f32 the weight is packed into panels once, at load time
/// (`packed.rs`); other devices and dtypes use candle's matmul.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

#[derive(Debug, Clone)]
enum Weight {
    Packed {
        packed: Arc<PackedWeight>,
        /// The bias as a plain vector, for the packed kernel.
        bias: Option<Arc<[f32]>>,
    },
    Dense(Tensor),
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let packable = weight.device().is_cpu()
            && weight.dtype() == DType::F32
            && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
        let weight = if packable {
            let (n, k) = weight.dims2()?;
            let w = weight.contiguous()?;
            let packed = with_slice(&w, |w| Ok(PackedWeight::pack(w, n, k)))?;
            let bias = match &bias {
                Some(b) => Some(b.to_vec1::<f32>()?.into()),
                None => None,
            };
            Weight::Packed {
                packed: Arc::new(packed),
                bias,
            }
        } else {
            Weight::Dense(weight)
        };
        Ok(Self { weight, bias })
    }

    fn out_features(&self) -> Result<usize> {
        match &self.weight {
            Weight::Packed { packed, .. } => Ok(packed.rows()),
            Weight::Dense(w) => w.dim(0),
        }
    }
}

impl Linear {
    /// `act(x Wᵀ + b)`. On the packed path the activation is applied as each output
    /// block is written (in parallel, while it is in cache), not as a separate pass.
    pub fn forward_activated(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        match &self.weight {
            Weight::Packed { .. } => self.forward_with(x, Some(activation_f32(act))),
            Weight::Dense(_) => activate(&self.forward(x)?, act),
        }
    }

    fn forward_with(&self, x: &Tensor, epilogue: Option<fn(f32) -> f32>) -> Result<Tensor> {
        let k = x.dim(D::Minus1)?;
        let rows = x.elem_count() / k;
        let mut out_dims = x.dims().to_vec();
        *out_dims.last_mut().expect("rank ≥ 1") = self.out_features()?;
        match &self.weight {
            Weight::Packed { packed, bias } if x.dtype() == DType::F32 && x.device().is_cpu() => {
                let x = x.contiguous()?;
                let mut out = vec![0f32; rows * packed.rows()];
                with_slice(&x, |xs| {
                    packed.matmul(xs, bias.as_deref(), epilogue, &mut out);
                    Ok(())
                })?;
                Tensor::from_vec(out, out_dims, x.device())
            }
            Weight::Packed { .. } => candle_core::bail!(
                "packed linear layer got a {:?} input on {:?}",
                x.dtype(),
                x.device()
            ),
            Weight::Dense(w) => {
                let y = x.reshape((rows, k))?.matmul(&w.t()?)?;
                let y = match &self.bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                };
                let y = y.reshape(out_dims)?;
                match epilogue {
                    Some(_) => candle_core::bail!("activation epilogues are for packed weights"),
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

pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get((out_dim, in_dim), "weight")?;
    let b = vb.get(out_dim, "bias")?;
    Linear::new(w, Some(b))
}

pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(size, eps, vb)
}

/// GPT-2's `Conv1D` stores its weight as `[in, out]`; transposing once at load time turns
/// it into an ordinary `Linear` (y = x Wᵀ + b with W `[out, in]`).
pub fn conv1d(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get((in_dim, out_dim), "weight")?.t()?.contiguous()?;
    let b = vb.get(out_dim, "bias")?;
    Linear::new(w, Some(b))
}

/// `[batch, len, heads·head_dim]` → `[batch, heads, len, head_dim]`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, l, d) = x.dims3()?;
    x.reshape((b, l, heads, d / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// `[batch, heads, len, head_dim]` → `[batch, len, heads·head_dim]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, l, dh) = x.dims4()?;
    x.transpose(1, 2)?.contiguous()?.reshape((b, l, h * dh))
}

/// softmax(q kᵀ · scale + mask) v over the last two dimensions.
/// `mask` is additive (0 or a very negative number) and broadcasts over the scores.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    if small_attention::eligible(q, k, v) {
        return small_attention::attention(q, k, v, mask, scale);
    }
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
}

/// Encoder keys and values of one decoder layer, computed once per input. Values are
/// `[inputs, heads, src_len, head_dim]`; keys the same, or on the CPU in f32 packed for
/// the cross-attention kernel (`cross_attention::pack_keys`, rank 5).
pub fn cross_keys_values(k: &Tensor, v: &Tensor, heads: usize) -> Result<(Tensor, Tensor)> {
    let (k, v) = (split_heads(k, heads)?, split_heads(v, heads)?);
    if cpu_f32(&[&k, &v]) {
        Ok((cross_attention::pack_keys(&k)?, v))
    } else {
        Ok((k, v))
    }
}

fn cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
}

/// Cross-attention where every input's encoder K/V serve all of its beams:
/// the beams become query rows of one attention per input, so K/V are never copied
/// per beam. `q`: `[inputs·beams, 1, d]`; `k`, `v` from [`cross_keys_values`];
/// `mask`: `[inputs, 1, 1, src_len]`. Returns `[inputs·beams, 1, d]`.
pub fn cross_attention_shared(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let (rows, _, d) = q.dims3()?;
    let (inputs, heads, _, head_dim) = v.dims4()?;
    let beams = rows / inputs;
    let q = q
        .reshape((inputs, beams, heads, head_dim))?
        .transpose(1, 2)?
        .contiguous()?;
    let ctx = if k.rank() == 5 && cpu_f32(&[&q, v, mask]) {
        cross_attention::attention(&q, k, v, mask, scale)?
    } else {
        attention(&q, k, v, Some(mask), scale)?
    }; // [inputs, heads, beams, head_dim]
    ctx.transpose(1, 2)?.contiguous()?.reshape((rows, 1, d))
}

/// Appends one step's keys/values to a layer's self-attention cache (`[rows, heads, t, dh]`).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

impl KvCache {
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match (&self.k, &self.v) {
            (Some(pk), Some(pv)) => (
                Tensor::cat(&[pk, k], 2)?.contiguous()?,
                Tensor::cat(&[pv, v], 2)?.contiguous()?,
            ),
            _ => (k.clone(), v.clone()),
        };
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        Ok((k, v))
    }

    /// Keeps rows `index` (in that order): beam reordering and dropping finished inputs.
    pub fn select_rows(&mut self, index: &Tensor) -> Result<()> {
        if let Some(k) = &self.k {
            self.k = Some(k.index_select(index, 0)?);
        }
        if let Some(v) = &self.v {
            self.v = Some(v.index_select(index, 0)?);
        }
        Ok(())
    }
}

/// Applies a `Linear` and splits the result into heads.
pub fn project_heads(lin: &Linear, x: &Tensor, heads: usize) -> Result<Tensor> {
    split_heads(&lin.forward(x)?, heads)
}

/// Splits the last dimension into `n` equal chunks (GPT-2's fused projections).
pub fn chunk_last(x: &Tensor, n: usize) -> Result<Vec<Tensor>> {
    let d = x.dim(D::Minus1)? / n;
    (0..n).map(|i| x.narrow(D::Minus1, i * d, d)).collect()
}
