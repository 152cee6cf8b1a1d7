//! Differentiable building blocks, written with candle's basic tensor ops so that
//! autograd reaches every parameter (the inference kernels are forward-only).

use candle_core::{DType, Module, Result, Tensor, D};
use rand::rngs::StdRng;
use rand::Rng;

use super::params::Params;
use crate::checkpoint::config::Activation;
use crate::model::linear::activate;

/// Where a block's parameters live: the parameters and a name prefix, as
/// candle-nn's `VarBuilder` (whose backends hand out plain tensors, not variables).
#[derive(Clone)]
pub struct Scope<'a> {
    params: &'a Params,
    prefix: String,
}

impl<'a> Scope<'a> {
    pub fn root(params: &'a Params) -> Self {
        Self {
            params,
            prefix: String::new(),
        }
    }

    pub fn pp(&self, name: impl AsRef<str>) -> Scope<'a> {
        Scope {
            params: self.params,
            prefix: self.name(name.as_ref()),
        }
    }

    /// The full parameter name of `name` in this scope.
    pub fn name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn get(&self, shape: impl Into<candle_core::Shape>, name: &str) -> anyhow::Result<Tensor> {
        self.params.get(shape, &self.name(name))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.params.contains(&self.name(name))
    }

    pub fn params(&self) -> &'a Params {
        self.params
    }
}

/// Randomness of one forward pass: `None` runs without dropout (evaluation, or
/// `--dropout false`).
pub struct Noise(pub Option<StdRng>);

impl Noise {
    pub fn off() -> Self {
        Self(None)
    }

    /// Inverted dropout as `nn.Dropout` in training mode: zero with probability `p`,
    /// scale the rest by 1/(1-p).
    pub fn dropout(&mut self, x: &Tensor, p: f64) -> Result<Tensor> {
        let Some(rng) = self.0.as_mut().filter(|_| p > 0.0) else {
            return Ok(x.clone());
        };
        let keep = (1.0 / (1.0 - p)) as f32;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
            .collect();
        x * Tensor::from_vec(mask, x.shape(), x.device())?
    }
}

/// `y = x Wᵀ + b` (`nn.Linear`, W `[out, in]`) or `y = x W + b` (GPT-2's `Conv1D`,
/// W `[in, out]`): the weight stays in its stored shape so it saves as it came.
pub struct Dense {
    weight: Tensor,
    bias: Option<Tensor>,
    stored_in_out: bool,
}

impl Dense {
    pub fn linear(s: &Scope, in_dim: usize, out_dim: usize) -> anyhow::Result<Self> {
        Ok(Self {
            weight: s.get((out_dim, in_dim), "weight")?,
            bias: Some(s.get(out_dim, "bias")?),
            stored_in_out: false,
        })
    }

    pub fn conv1d(s: &Scope, in_dim: usize, out_dim: usize) -> anyhow::Result<Self> {
        Ok(Self {
            weight: s.get((in_dim, out_dim), "weight")?,
            bias: Some(s.get(out_dim, "bias")?),
            stored_in_out: true,
        })
    }

    /// A projection onto `weight` `[out, in]` (a tied LM head) with an optional bias.
    pub fn tied(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            stored_in_out: false,
        }
    }
}

impl Module for Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // One 2-D matmul over all rows: a broadcast batched matmul would materialise
        // the weight's gradient once per batch row.
        let mut dims = x.dims().to_vec();
        let k = *dims.last().expect("rank ≥ 1");
        let x2 = x.reshape((x.elem_count() / k, k))?;
        let y = if self.stored_in_out {
            x2.matmul(&self.weight)?
        } else {
            x2.matmul(&self.weight.t()?)?
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        *dims.last_mut().expect("rank ≥ 1") = y.dim(1)?;
        y.reshape(dims)
    }
}

/// `LN(x) = (x − mean) / sqrt(var + eps) · γ + β` over the last dimension.
pub struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    pub fn load(s: &Scope, size: usize, eps: f64) -> anyhow::Result<Self> {
        Ok(Self {
            weight: s.get(size, "weight")?,
            bias: s.get(size, "bias")?,
            eps,
        })
    }
}

impl Module for Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// `dense` then the activation.
pub fn dense_activated(dense: &Dense, x: &Tensor, act: Activation) -> Result<Tensor> {
    activate(&dense.forward(x)?, act)
}

/// Softmax over the last dimension; the max is subtracted for range and carries no
/// gradient (softmax does not depend on it).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let e = x
        .broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?
        .exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// `log softmax` over the last dimension.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)
}

/// `[b, t, d]` → `[b, heads, t, d/heads]`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    x.reshape((b, t, heads, d / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// `[b, heads, t, dh]` → `[b, t, heads·dh]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, dh) = x.dims4()?;
    x.transpose(1, 2)?.contiguous()?.reshape((b, t, h * dh))
}

/// `softmax(q kᵀ · scale + mask) v` per head, with dropout `p` on the probabilities;
/// `mask` is additive and broadcasts to `[b, heads, tq, tk]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    p: f64,
    noise: &mut Noise,
) -> Result<Tensor> {
    let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(mask)?;
    // A query that may see no key at all (GPT-2's start token is its pad token, so the
    // first decoder position is masked from itself) gets a zero context, as torch's
    // scaled_dot_product_attention gives it; softmax alone would spread it evenly.
    let sees_any = mask
        .max_keepdim(D::Minus1)?
        .ge(f64::from(f32::MIN) / 2.0)?
        .to_dtype(DType::F32)?;
    let probs = softmax(&scores)?.broadcast_mul(&sees_any)?;
    noise.dropout(&probs, p)?.matmul(v)
}

/// Additive padding mask `[b, 1, 1, s]` from 1/0 `keep` flags `[b, s]`.
pub fn padding_mask(keep: &Tensor) -> Result<Tensor> {
    let (b, s) = keep.dims2()?;
    // transformers uses the dtype's minimum; any value that underflows exp() to 0 is
    // the same softmax.
    ((keep.to_dtype(DType::F32)? - 1.0)? * f64::from(f32::MAX))?.reshape((b, 1, 1, s))
}

/// Additive causal mask `[1, 1, t, t]`: position i sees positions ≤ i.
pub fn causal_mask(t: usize, device: &candle_core::Device) -> Result<Tensor> {
    let cells: Vec<f32> = (0..t * t)
        .map(|c| if c % t > c / t { f32::MIN } else { 0.0 })
        .collect();
    Tensor::from_vec(cells, (1, 1, t, t), device)
}
