//! Scaled dot-product attention and the head reshapes around it.

use candle_core::{Module, Result, Tensor, D};

use super::kernels::small_attention;
use super::linear::Linear;

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

/// Applies a `Linear` and splits the result into heads.
pub fn project_heads(lin: &Linear, x: &Tensor, heads: usize) -> Result<Tensor> {
    split_heads(&lin.forward(x)?, heads)
}

/// Splits the last dimension into `n` equal chunks (GPT-2's fused projections).
pub fn chunk_last(x: &Tensor, n: usize) -> Result<Vec<Tensor>> {
    let d = x.dim(D::Minus1)? / n;
    (0..n).map(|i| x.narrow(D::Minus1, i * d, d)).collect()
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
