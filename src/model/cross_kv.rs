//! The encoder's keys and values as one decoder layer's cross-attention reads them:
//! computed once per input when the encoder runs, then attended by every beam of that
//! input at every decode step.

use candle_core::{Result, Tensor};

use super::attention::{attention, split_heads};
use super::kernels::cpu::is_cpu_f32;
use super::kernels::cross_attention;

/// One decoder layer's cross-attention keys and values; dimension 0 is the input.
#[derive(Debug, Clone)]
pub enum CrossKv {
    /// On the CPU in f32: keys packed for the cross-attention kernel
    /// (`[inputs, heads, ⌈src/16⌉, head_dim, 16]`, see `cross_attention::pack_keys`),
    /// values `[inputs, heads, src, head_dim]`.
    Packed { keys: Tensor, values: Tensor },
    /// Elsewhere: keys and values `[inputs, heads, src, head_dim]`.
    Dense { keys: Tensor, values: Tensor },
}

impl CrossKv {
    /// From projected encoder states `k`, `v`: `[inputs, src, heads·head_dim]`.
    pub fn new(k: &Tensor, v: &Tensor, heads: usize) -> Result<Self> {
        let (keys, values) = (split_heads(k, heads)?, split_heads(v, heads)?);
        if is_cpu_f32(&[&keys, &values]) {
            Ok(Self::Packed {
                keys: cross_attention::pack_keys(&keys)?,
                values,
            })
        } else {
            Ok(Self::Dense { keys, values })
        }
    }

    fn parts(&self) -> (&Tensor, &Tensor) {
        match self {
            Self::Packed { keys, values } | Self::Dense { keys, values } => (keys, values),
        }
    }

    /// Keeps the inputs at `index` (a u32 tensor), in that order.
    pub fn select_inputs(&self, index: &Tensor) -> Result<Self> {
        let (k, v) = self.parts();
        let (keys, values) = (k.index_select(index, 0)?, v.index_select(index, 0)?);
        Ok(match self {
            Self::Packed { .. } => Self::Packed { keys, values },
            Self::Dense { .. } => Self::Dense { keys, values },
        })
    }

    /// Cross-attention where every input's encoder K/V serve all of its beams: the
    /// beams become query rows of one attention per input, so K/V are never copied per
    /// beam. `q`: `[inputs·beams, 1, d]`; `mask`: `[inputs, 1, 1, src_len]`.
    /// Returns `[inputs·beams, 1, d]`.
    pub fn attend(&self, q: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
        let (rows, _, d) = q.dims3()?;
        let (_, values) = self.parts();
        let (inputs, heads, _, head_dim) = values.dims4()?;
        let beams = rows / inputs;
        let q = q
            .reshape((inputs, beams, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let ctx = match self {
            Self::Packed { keys, values } if is_cpu_f32(&[&q, mask]) => {
                cross_attention::attention(&q, keys, values, mask, scale)?
            }
            Self::Packed { .. } => candle_core::bail!(
                "packed cross-attention keys need f32 CPU queries and mask, got {:?} on {:?}",
                q.dtype(),
                q.device()
            ),
            Self::Dense { keys, values } => attention(&q, keys, values, Some(mask), scale)?,
        }; // [inputs, heads, beams, head_dim]
        ctx.transpose(1, 2)?.contiguous()?.reshape((rows, 1, d))
    }
}
