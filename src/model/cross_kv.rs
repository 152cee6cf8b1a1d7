//! The encoder's keys and values as the decoder's cross-attention reads them: computed
//! once per input when the encoder runs, kept at that input's own length, and attended
//! by every beam of that input at every decode step.
//!
//! Inputs encoded together are padded to the longest of them for the encoder; their
//! keys and values are cut back to each input's length here, so that an input reads the
//! same keys and values whatever it was encoded with or decodes beside, and inputs
//! encoded at different times (a continuous batch) share decode steps.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::attention::{attention, split_heads};
use super::kernels::cpu::{is_cpu_f32, with_slice};
use super::kernels::cross_attention::{self, KEY_BLOCK};
use super::kernels::dispatch::Kernels;

/// One decoder layer's cross-attention keys and values for one input.
#[derive(Debug, Clone)]
pub enum CrossKv {
    /// On the CPU in f32: keys packed for the cross-attention kernel
    /// (`[heads, ⌈src/16⌉, head_dim, 16]`, see `cross_attention::pack_keys`), values
    /// `[heads, src, head_dim]`.
    Packed {
        keys: Vec<f32>,
        values: Vec<f32>,
        heads: usize,
        src: usize,
    },
    /// Elsewhere: keys and values `[1, heads, src, head_dim]`.
    Dense { keys: Tensor, values: Tensor },
}

impl CrossKv {
    /// From the projected encoder states `k`, `v` (`[inputs, padded_src, heads·head_dim]`)
    /// of inputs of lengths `lens`: one `CrossKv` per input, at its own length.
    pub fn per_input(k: &Tensor, v: &Tensor, heads: usize, lens: &[usize]) -> Result<Vec<Self>> {
        lens.iter()
            .enumerate()
            .map(|(i, &len)| {
                let own = |t: &Tensor| -> Result<Tensor> {
                    split_heads(&t.narrow(0, i, 1)?.narrow(1, 0, len)?.contiguous()?, heads)
                };
                let (keys, values) = (own(k)?, own(v)?);
                if is_cpu_f32(&[&keys, &values]) {
                    Ok(Self::Packed {
                        keys: cross_attention::pack_keys(&keys)?
                            .flatten_all()?
                            .to_vec1()?,
                        values: values.flatten_all()?.to_vec1()?,
                        heads,
                        src: len,
                    })
                } else {
                    Ok(Self::Dense { keys, values })
                }
            })
            .collect()
    }

    /// Encoder positions this input has.
    pub fn src_len(&self) -> usize {
        match self {
            Self::Packed { src, .. } => *src,
            Self::Dense { values, .. } => values.dims()[2],
        }
    }
}

/// What the decoder reads from the encoder for one input: every layer's keys and values.
#[derive(Debug, Clone)]
pub struct EncodedInput {
    layers: Vec<CrossKv>,
}

impl EncodedInput {
    pub fn new(layers: Vec<CrossKv>) -> Self {
        Self { layers }
    }

    /// The input's length in tokens.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, CrossKv::src_len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The rows of one decode step grouped by input, in row order: input `i` has
/// `rows[i]` consecutive rows (its beams), which all read `inputs[i]`.
pub struct CrossBatch<'a> {
    inputs: Vec<&'a EncodedInput>,
    rows: Vec<usize>,
}

impl<'a> CrossBatch<'a> {
    pub fn new(inputs: Vec<&'a EncodedInput>, rows: Vec<usize>) -> Self {
        assert_eq!(inputs.len(), rows.len(), "one row count per input");
        Self { inputs, rows }
    }

    /// Every input with the same number of rows (a static batch).
    pub fn uniform(inputs: &'a [EncodedInput], rows_per_input: usize) -> Self {
        Self::new(inputs.iter().collect(), vec![rows_per_input; inputs.len()])
    }

    pub fn total_rows(&self) -> usize {
        self.rows.iter().sum()
    }

    /// Cross-attention of decoder layer `layer` for one new token per row: every row's
    /// query against its own input's keys and values, the beams of an input as query
    /// rows of one attention so that K/V are never copied per beam.
    /// `q`: `[rows, 1, d]`; returns `[rows, 1, d]`.
    pub fn attend(&self, layer: usize, q: &Tensor, scale: f64) -> Result<Tensor> {
        let (rows, _, d) = q.dims3()?;
        if rows != self.total_rows() {
            candle_core::bail!(
                "cross-attention: {rows} query rows for inputs with {} rows",
                self.total_rows()
            )
        }
        let kvs: Vec<&CrossKv> = self.inputs.iter().map(|e| &e.layers[layer]).collect();
        if is_cpu_f32(&[q]) && kvs.iter().all(|kv| matches!(kv, CrossKv::Packed { .. })) {
            return self.attend_packed(&kvs, q, scale);
        }
        let mut parts = Vec::with_capacity(kvs.len());
        let mut first = 0;
        for (kv, &n) in kvs.iter().zip(&self.rows) {
            let CrossKv::Dense { keys, values } = kv else {
                candle_core::bail!("packed cross-attention keys need f32 CPU queries")
            };
            let heads = keys.dims()[1];
            let qi = q
                .narrow(0, first, n)?
                .reshape((1, n, heads, d / heads))?
                .transpose(1, 2)?
                .contiguous()?;
            let ctx = attention(&qi, keys, values, None, scale)?; // [1, heads, n, head_dim]
            parts.push(ctx.transpose(1, 2)?.contiguous()?.reshape((n, 1, d))?);
            first += n;
        }
        Tensor::cat(&parts, 0)
    }

    fn attend_packed(&self, kvs: &[&CrossKv], q: &Tensor, scale: f64) -> Result<Tensor> {
        let (rows, _, d) = q.dims3()?;
        let kernels = Kernels::chosen();
        let longest = kvs.iter().map(|kv| kv.src_len()).max().unwrap_or(0);
        // Each input's keys are exactly its own: nothing to mask.
        let no_mask = vec![0f32; longest];
        let mut firsts = Vec::with_capacity(self.rows.len());
        let mut first = 0;
        for &n in &self.rows {
            firsts.push(first);
            first += n;
        }
        let Some(CrossKv::Packed { heads, .. }) = kvs.first() else {
            return Tensor::zeros((0, 1, d), q.dtype(), q.device());
        };
        let heads = *heads;
        let head_dim = d / heads;
        let tasks: Vec<(usize, usize)> = (0..kvs.len())
            .flat_map(|i| (0..heads).map(move |h| (i, h)))
            .collect();
        let mut out = vec![0f32; rows * d];
        with_slice(q, |qs| {
            let results: Vec<Vec<f32>> = tasks
                .par_iter()
                .map(|&(i, h)| {
                    let CrossKv::Packed {
                        keys, values, src, ..
                    } = kvs[i]
                    else {
                        unreachable!("checked by the caller")
                    };
                    let (n, first) = (self.rows[i], firsts[i]);
                    let padded = src.div_ceil(KEY_BLOCK) * KEY_BLOCK;
                    let mut qh = Vec::with_capacity(n * head_dim);
                    for r in first..first + n {
                        qh.extend_from_slice(&qs[r * d + h * head_dim..][..head_dim]);
                    }
                    let mut ctx = vec![0f32; n * head_dim];
                    cross_attention::attend_head(
                        kernels,
                        &qh,
                        &keys[h * head_dim * padded..][..head_dim * padded],
                        &values[h * src * head_dim..][..src * head_dim],
                        &no_mask[..*src],
                        scale as f32,
                        &mut ctx,
                    );
                    ctx
                })
                .collect();
            for (&(i, h), ctx) in tasks.iter().zip(results) {
                for (j, row) in ctx.chunks(head_dim).enumerate() {
                    let r = firsts[i] + j;
                    out[r * d + h * head_dim..][..head_dim].copy_from_slice(row);
                }
            }
            Ok(())
        })?;
        Tensor::from_vec(out, (rows, 1, d), q.device())
    }
}
