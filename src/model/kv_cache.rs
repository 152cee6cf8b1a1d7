//! One decoder layer's self-attention cache: the keys and values of every token
//! generated so far, per row (inputs × beams).

use rayon::prelude::*;

use candle_core::{Result, Tensor};

use super::attention::attention;
use super::kernels::cpu::{is_cpu_f32, with_slice};
use super::kernels::dispatch::Kernels;
use super::kernels::small_attention;

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
        if matches!(self.kind, CacheKind::Empty) && !self.tensors_only && is_cpu_f32(&[q, k, v]) {
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
        let kernels = Kernels::chosen();
        let mut out = vec![0f32; q.len()];
        out.par_chunks_mut(d).enumerate().for_each(|(rh, out)| {
            let (row, head) = (rh / self.heads, rh % self.heads);
            let ancestry = &self.ancestry[row];
            let mut scores = vec![0f32; ancestry.len()];
            let at = |p: usize| self.offset(ancestry[p] as usize, head, p);
            small_attention::attend_row(
                kernels,
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
            assert!(crate::model::kernels::cpu::reference::max_diff(&a, &b) < 1e-5);
            if let Some(index) = reorder {
                slots.select_rows(&index).unwrap();
                tensors.select_rows(&index).unwrap();
            }
        }
    }
}
