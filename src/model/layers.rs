//! Building blocks shared by the BERT and GPT-2 families: activations, scaled
//! dot-product attention, head splitting, and Conv1D-as-Linear loading.

use std::sync::Arc;

use rayon::prelude::*;

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{LayerNorm, VarBuilder};

use super::activation::slice_activation;
use super::cpu::with_slice;
use super::packed::PackedWeight;
use super::{cross_attention, small_attention};
use crate::checkpoint::config::Activation;

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
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let packable = weight.device().is_cpu()
            && weight.dtype() == DType::F32
            && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
        if !packable {
            return Ok(Self::Dense { weight, bias });
        }
        let (n, k) = weight.dims2()?;
        let w = weight.contiguous()?;
        let packed = with_slice(&w, |w| Ok(PackedWeight::pack(w, n, k)))?;
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

/// One decoder layer's self-attention cache.
///
/// On the CPU in f32 it is a slot cache: keys and values are written once, in place,
/// into preallocated `[slots, heads, capacity, head_dim]` buffers, and never moved.
/// Beam reordering and inputs leaving the batch only rewrite each row's *ancestry*
/// (which slot holds its token at each position), so a decode step copies no cache at
/// all; transformers concatenates the cache every step and gathers it on every
/// reorder. Elsewhere (GPU, half precision) the cache is a pair of tensors grown by
/// concatenation and reordered with `index_select`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    kind: CacheKind,
    /// Positions to reserve at the first step (the generation's maximum length).
    capacity_hint: usize,
    /// Use the tensor cache even where the slot cache applies (to test one against
    /// the other).
    tensors_only: bool,
}

#[derive(Debug, Clone, Default)]
enum CacheKind {
    #[default]
    Empty,
    Tensors {
        k: Tensor,
        v: Tensor,
    },
    Slots(SlotCache),
}

impl KvCache {
    pub fn with_capacity(positions: usize) -> Self {
        Self {
            kind: CacheKind::Empty,
            capacity_hint: positions,
            tensors_only: false,
        }
    }

    /// Adds this step's keys and values (`[rows, heads, 1, head_dim]`) and attends the
    /// queries (same shape) over every position so far. Returns `[rows, heads, 1, head_dim]`.
    pub fn attend(&mut self, q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        if matches!(self.kind, CacheKind::Empty) && !self.tensors_only && cpu_f32(&[q, k, v]) {
            let (rows, heads, _, head_dim) = k.dims4()?;
            self.kind = CacheKind::Slots(SlotCache::new(
                rows,
                heads,
                head_dim,
                self.capacity_hint.max(1),
            ));
        }
        match &mut self.kind {
            CacheKind::Slots(cache) => {
                let (rows, heads, _, head_dim) = q.dims4()?;
                let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
                with_slice(&k, |k| {
                    with_slice(&v, |v| {
                        cache.append(k, v, rows);
                        Ok(())
                    })
                })?;
                let out = with_slice(&q, |q| Ok(cache.attend(q, scale as f32)))?;
                Tensor::from_vec(out, (rows, heads, 1, head_dim), q.device())
            }
            kind => {
                let (k, v) = match kind {
                    CacheKind::Tensors { k: pk, v: pv } => (
                        Tensor::cat(&[&*pk, k], 2)?.contiguous()?,
                        Tensor::cat(&[&*pv, v], 2)?.contiguous()?,
                    ),
                    _ => (k.clone(), v.clone()),
                };
                let ctx = attention(q, &k, &v, None, scale)?;
                *kind = CacheKind::Tensors { k, v };
                Ok(ctx)
            }
        }
    }

    /// Keeps rows `index` (in that order): beam reordering and dropping finished inputs.
    pub fn select_rows(&mut self, index: &[u32]) -> Result<()> {
        match &mut self.kind {
            CacheKind::Empty => {}
            CacheKind::Slots(cache) => cache.select_rows(index),
            CacheKind::Tensors { k, v } => {
                let idx = Tensor::new(index, k.device())?;
                *k = k.index_select(&idx, 0)?;
                *v = v.index_select(&idx, 0)?;
            }
        }
        Ok(())
    }
}

/// Keys and values in place; see [`KvCache`].
#[derive(Debug, Clone)]
struct SlotCache {
    k: Vec<f32>,
    v: Vec<f32>,
    slots: usize,
    heads: usize,
    head_dim: usize,
    capacity: usize,
    /// Positions written so far.
    len: usize,
    /// For each live row, the slot that holds its token at each position.
    ancestry: Vec<Vec<u32>>,
}

impl SlotCache {
    fn new(slots: usize, heads: usize, head_dim: usize, capacity: usize) -> Self {
        let size = slots * heads * capacity * head_dim;
        Self {
            k: vec![0.0; size],
            v: vec![0.0; size],
            slots,
            heads,
            head_dim,
            capacity,
            len: 0,
            ancestry: vec![Vec::new(); slots],
        }
    }

    fn offset(&self, slot: usize, head: usize, position: usize) -> usize {
        ((slot * self.heads + head) * self.capacity + position) * self.head_dim
    }

    /// Reallocates for more slots or positions, keeping what was written.
    fn grow(&mut self, slots: usize, capacity: usize) {
        let mut bigger = SlotCache::new(slots, self.heads, self.head_dim, capacity);
        let written = self.len * self.head_dim;
        for slot in 0..self.slots {
            for head in 0..self.heads {
                let (from, to) = (self.offset(slot, head, 0), bigger.offset(slot, head, 0));
                bigger.k[to..to + written].copy_from_slice(&self.k[from..from + written]);
                bigger.v[to..to + written].copy_from_slice(&self.v[from..from + written]);
            }
        }
        bigger.len = self.len;
        bigger.ancestry = std::mem::take(&mut self.ancestry);
        *self = bigger;
    }

    /// Writes row r's new key and value into slot r at the next position.
    fn append(&mut self, k: &[f32], v: &[f32], rows: usize) {
        if rows > self.slots || self.len == self.capacity {
            let capacity = if self.len == self.capacity {
                self.capacity + self.capacity.max(16)
            } else {
                self.capacity
            };
            self.grow(rows.max(self.slots), capacity);
        }
        if self.len == 0 {
            self.ancestry = vec![Vec::new(); rows];
        }
        assert_eq!(
            self.ancestry.len(),
            rows,
            "rows changed without select_rows"
        );
        let d = self.head_dim;
        for row in 0..rows {
            for head in 0..self.heads {
                let at = self.offset(row, head, self.len);
                let from = (row * self.heads + head) * d;
                self.k[at..at + d].copy_from_slice(&k[from..from + d]);
                self.v[at..at + d].copy_from_slice(&v[from..from + d]);
            }
            self.ancestry[row].push(row as u32);
        }
        self.len += 1;
    }

    /// Attention of `q` (`[rows, heads, head_dim]`) over every row's own history.
    fn attend(&self, q: &[f32], scale: f32) -> Vec<f32> {
        let d = self.head_dim;
        let mut out = vec![0f32; q.len()];
        out.par_chunks_mut(d).enumerate().for_each(|(rh, out)| {
            let (row, head) = (rh / self.heads, rh % self.heads);
            let ancestry = &self.ancestry[row];
            let mut scores = vec![0f32; ancestry.len()];
            let at = |p: usize| self.offset(ancestry[p] as usize, head, p);
            small_attention::attend_row(
                &q[rh * d..][..d],
                |p| &self.k[at(p)..][..d],
                |p| &self.v[at(p)..][..d],
                None,
                scale,
                &mut scores,
                out,
            );
        });
        out
    }

    fn select_rows(&mut self, index: &[u32]) {
        self.ancestry = index
            .iter()
            .map(|&i| self.ancestry[i as usize].clone())
            .collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The slot cache (no copies, ancestry per row) against concatenation and
    /// `index_select`: beams reordered, rows dropped, capacity outgrown.
    #[test]
    fn slot_cache_matches_the_tensor_cache() {
        let dev = Device::Cpu;
        let (heads, d) = (2, 16);
        let mut slots = KvCache::with_capacity(3);
        let mut tensors = KvCache {
            tensors_only: true,
            ..KvCache::with_capacity(3)
        };
        // Rows per step and the reorder applied after it (None: rows stay).
        let plan: [(usize, Option<Vec<u32>>); 6] = [
            (4, Some(vec![0, 0, 1, 3])),
            (4, None),
            (4, Some(vec![3, 2, 2, 0])),
            (4, Some(vec![1, 3])),
            (2, Some(vec![1, 1])),
            (2, None),
        ];
        for (rows, reorder) in plan {
            let q = Tensor::randn(0f32, 1., (rows, heads, 1, d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1., (rows, heads, 1, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1., (rows, heads, 1, d), &dev).unwrap();
            let a = slots.attend(&q, &k, &v, 0.25).unwrap();
            let b = tensors.attend(&q, &k, &v, 0.25).unwrap();
            assert!(matches!(slots.kind, CacheKind::Slots(_)));
            assert!(matches!(tensors.kind, CacheKind::Tensors { .. }));
            assert!(crate::model::cpu::reference::max_diff(&a, &b) < 1e-5);
            if let Some(index) = reorder {
                slots.select_rows(&index).unwrap();
                tensors.select_rows(&index).unwrap();
            }
        }
    }
}
