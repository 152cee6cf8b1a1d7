//! The decoder's self-attention cache: the keys and values of every token each row
//! (a beam of an input) has generated so far.
//!
//! Rows do not share a length: in a continuous batch an input that joins at step 40
//! starts at position 0 beside rows at position 40. A [`History`] (one per decoder,
//! shared by its layers, which all grow and reorder together) records, for every row,
//! which cache *cell* holds its token at each of its positions; each layer's
//! [`KvCache`] stores one key and one value per cell.

use rayon::prelude::*;

use candle_core::{DType, Result, Tensor};

use super::attention::attention;
use super::kernels::cpu::{is_cpu_f32, with_slice};
use super::kernels::dispatch::Kernels;
use super::kernels::small_attention;

/// Per row, the cache cells of its positions; and which cells are free.
///
/// Beams of one input share the cells of their common prefix: beam reordering and rows
/// leaving only rewrite paths, and a cell is reused once no path refers to it. So a
/// decode step copies no cache, and rows that joined late or leave early cost only
/// their own tokens.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Per row: the cell holding its token at each position, oldest first.
    paths: Vec<Vec<u32>>,
    /// Cells no path refers to, handed out before new ones.
    free: Vec<u32>,
    /// Cells handed out so far: ids `0..cells`.
    cells: usize,
    /// The rows the current step advances (all of them, or a subset while the others
    /// wait), in query-row order.
    stepping: Vec<u32>,
}

impl History {
    pub fn rows(&self) -> usize {
        self.paths.len()
    }

    /// Tokens row `row` has in the cache.
    pub fn len(&self, row: usize) -> usize {
        self.paths[row].len()
    }

    /// Whether no row has any token cached.
    pub fn is_empty(&self) -> bool {
        self.paths.iter().all(Vec::is_empty)
    }

    /// Cells in use: the tokens held for all rows (shared prefixes counted once).
    pub fn tokens_in_use(&self) -> usize {
        self.cells - self.free.len()
    }

    /// Adds `n` rows with empty histories after the existing ones.
    pub fn add_rows(&mut self, n: usize) {
        self.paths.resize(self.paths.len() + n, Vec::new());
    }

    /// Gives every row a cell for the token it adds in this step. Returns each row's
    /// position for that token (its length before the step).
    pub fn begin_step(&mut self) -> Vec<usize> {
        let all: Vec<u32> = (0..self.paths.len() as u32).collect();
        self.begin_step_rows(&all)
    }

    /// [`Self::begin_step`] for the rows `rows` only (ascending); the others keep their
    /// history and wait. Query row i of the step is row `rows[i]`.
    pub fn begin_step_rows(&mut self, rows: &[u32]) -> Vec<usize> {
        let mut positions = Vec::with_capacity(rows.len());
        for &r in rows {
            let path = &mut self.paths[r as usize];
            positions.push(path.len());
            let cell = self.free.pop().unwrap_or_else(|| {
                self.cells += 1;
                (self.cells - 1) as u32
            });
            path.push(cell);
        }
        self.stepping = rows.to_vec();
        positions
    }

    /// Rows the current step advances.
    pub fn stepping(&self) -> usize {
        self.stepping.len()
    }

    fn stepping_all(&self) -> bool {
        self.stepping.len() == self.paths.len()
    }

    /// The history of query row `i` of the current step, this step's cell last.
    fn path(&self, i: usize) -> &[u32] {
        &self.paths[self.stepping[i] as usize]
    }

    /// The cell query row `i` writes in this step.
    fn newest(&self, i: usize) -> usize {
        *self
            .path(i)
            .last()
            .expect("begin_step gave every row a cell") as usize
    }

    /// Keeps rows `index`, in that order (beam reordering, inputs leaving), and frees
    /// the cells no kept row refers to.
    pub fn select_rows(&mut self, index: &[u32]) {
        // Each kept path moves at its last use and is copied only for the uses before
        // (a beam that forked).
        let mut uses = vec![0u32; self.paths.len()];
        for &i in index {
            uses[i as usize] += 1;
        }
        let dropped = uses.contains(&0);
        let mut old: Vec<Vec<u32>> = std::mem::take(&mut self.paths);
        self.paths = index
            .iter()
            .map(|&i| {
                let i = i as usize;
                uses[i] -= 1;
                if uses[i] == 0 {
                    std::mem::take(&mut old[i])
                } else {
                    old[i].clone()
                }
            })
            .collect();
        if !dropped {
            // Every path survives: no cell can have lost its last reference.
            return;
        }
        let mut used = vec![false; self.cells];
        for &cell in self.paths.iter().flatten() {
            used[cell as usize] = true;
        }
        self.free = (0..self.cells as u32)
            .rev()
            .filter(|&c| !used[c as usize])
            .collect();
    }
}

/// One decoder layer's self-attention cache.
///
/// On the CPU in f32 it is a cell store: each token's keys and values are written once,
/// in place, into the cell its [`History`] path names, and read where they are. Elsewhere
/// (GPU, half precision) the cache is a pair of `[rows, heads, len, head_dim]` tensors
/// grown by concatenation, reordered with `index_select`, rows of different lengths
/// right-aligned under an additive mask.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    kind: CacheKind,
    /// Use the tensor cache even where the cell store applies (to test one against the
    /// other).
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
    Cells(CellStore),
}

impl KvCache {
    /// Adds this step's keys and values (`[rows, heads, 1, head_dim]`) and attends the
    /// queries (same shape) over each row's history, which [`History::begin_step`] has
    /// already extended by this step's cell. Returns `[rows, heads, 1, head_dim]`.
    pub fn attend(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f64,
        history: &History,
    ) -> Result<Tensor> {
        let (rows, heads, _, head_dim) = q.dims4()?;
        if rows != history.stepping() {
            candle_core::bail!(
                "self-attention: {rows} query rows for a step of {} rows",
                history.stepping()
            )
        }
        if matches!(self.kind, CacheKind::Empty) && !self.tensors_only && is_cpu_f32(&[q, k, v]) {
            self.kind = CacheKind::Cells(CellStore::new(heads, head_dim));
        }
        match &mut self.kind {
            CacheKind::Cells(store) => {
                let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
                with_slice(&k, |k| {
                    with_slice(&v, |v| {
                        store.write(k, v, history);
                        Ok(())
                    })
                })?;
                let out = with_slice(&q, |q| Ok(store.attend(q, scale as f32, history)))?;
                Tensor::from_vec(out, (rows, heads, 1, head_dim), q.device())
            }
            _ if !history.stepping_all() => candle_core::bail!(
                "a step over some rows only needs the CPU f32 cache (not {:?} on {:?})",
                q.dtype(),
                q.device()
            ),
            kind => {
                let (k, v) = match kind {
                    CacheKind::Tensors { k: pk, v: pv } => {
                        let (pk, pv) = (with_rows(pk, rows)?, with_rows(pv, rows)?);
                        (Tensor::cat(&[&pk, k], 2)?, Tensor::cat(&[&pv, v], 2)?)
                    }
                    _ => (k.clone(), v.clone()),
                };
                // Drop the columns no row reaches back to any more.
                let longest = (0..rows).map(|r| history.len(r)).max().unwrap_or(0);
                let width = k.dim(2)?;
                let (k, v) = if longest < width {
                    (
                        k.narrow(2, width - longest, longest)?.contiguous()?,
                        v.narrow(2, width - longest, longest)?.contiguous()?,
                    )
                } else {
                    (k.contiguous()?, v.contiguous()?)
                };
                let mask = right_aligned_mask(history, longest, q)?;
                let ctx = attention(q, &k, &v, mask.as_ref(), scale)?;
                *kind = CacheKind::Tensors { k, v };
                Ok(ctx)
            }
        }
    }

    /// Keeps rows `index` (in that order) of `rows`, as [`History::select_rows`] does for
    /// the paths. Rows that joined after the last step may be among them.
    pub fn select_rows(&mut self, index: &[u32], rows: usize) -> Result<()> {
        if let CacheKind::Tensors { k, v } = &mut self.kind {
            let idx = Tensor::new(index, k.device())?;
            *k = with_rows(k, rows)?.index_select(&idx, 0)?;
            *v = with_rows(v, rows)?.index_select(&idx, 0)?;
        }
        Ok(())
    }
}

/// `t` (`[n, heads, len, head_dim]`) with zero rows appended up to `rows`: rows that
/// joined since the last step, whose (masked) past is empty.
fn with_rows(t: &Tensor, rows: usize) -> Result<Tensor> {
    let (n, heads, len, d) = t.dims4()?;
    if n >= rows {
        return Ok(t.clone());
    }
    let zeros = Tensor::zeros((rows - n, heads, len, d), t.dtype(), t.device())?;
    Tensor::cat(&[t, &zeros], 0)
}

/// The additive mask `[rows, 1, 1, width]` under which row r sees only its own last
/// `len(r)` columns; none when every row sees all of them.
fn right_aligned_mask(history: &History, width: usize, like: &Tensor) -> Result<Option<Tensor>> {
    let rows = history.rows();
    if (0..rows).all(|r| history.len(r) == width) {
        return Ok(None);
    }
    let mask: Vec<f32> = (0..rows)
        .flat_map(|r| {
            let hidden = width - history.len(r);
            (0..width).map(move |c| if c < hidden { f32::NEG_INFINITY } else { 0.0 })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (rows, 1, 1, width), like.device())?;
    Ok(Some(if like.dtype() == DType::F32 {
        mask
    } else {
        mask.to_dtype(like.dtype())?
    }))
}

/// Keys and values by cell, `[cell][head][head_dim]`; see [`KvCache`].
#[derive(Debug, Clone)]
struct CellStore {
    k: Vec<f32>,
    v: Vec<f32>,
    heads: usize,
    head_dim: usize,
}

impl CellStore {
    fn new(heads: usize, head_dim: usize) -> Self {
        Self {
            k: Vec::new(),
            v: Vec::new(),
            heads,
            head_dim,
        }
    }

    fn cell_width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Writes row r's new key and value (`[rows, heads, head_dim]`) into its newest cell.
    fn write(&mut self, k: &[f32], v: &[f32], history: &History) {
        let width = self.cell_width();
        let needed = history.cells * width;
        if self.k.len() < needed {
            // Grow geometrically: cells are handed out one step at a time.
            let size = needed.max(2 * self.k.len());
            self.k.resize(size, 0.0);
            self.v.resize(size, 0.0);
        }
        for row in 0..history.stepping() {
            let at = history.newest(row) * width;
            self.k[at..at + width].copy_from_slice(&k[row * width..][..width]);
            self.v[at..at + width].copy_from_slice(&v[row * width..][..width]);
        }
    }

    /// Attention of `q` (`[rows, heads, head_dim]`) over every row's own history.
    fn attend(&self, q: &[f32], scale: f32, history: &History) -> Vec<f32> {
        let (heads, d) = (self.heads, self.head_dim);
        let kernels = Kernels::chosen();
        let mut out = vec![0f32; q.len()];
        out.par_chunks_mut(d).enumerate().for_each(|(rh, out)| {
            let (row, head) = (rh / heads, rh % heads);
            let path = history.path(row);
            let mut scores = vec![0f32; path.len()];
            let at = |p: usize| (path[p] as usize * heads + head) * d;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The cell store (no copies, a path per row) against concatenation, `index_select`
    /// and the right-aligned mask: beams reordered, rows dropped, rows joining with an
    /// empty past beside rows that have one.
    #[test]
    fn cell_store_matches_the_tensor_cache() {
        let dev = Device::Cpu;
        let (heads, d) = (2, 16);
        let mut history = History::default();
        let mut cells = KvCache::default();
        let mut tensors = KvCache {
            tensors_only: true,
            ..KvCache::default()
        };
        // Rows joining before each step, and the reorder applied after it.
        let plan: [(usize, Option<Vec<u32>>); 8] = [
            (4, Some(vec![0, 0, 1, 3])),
            (0, None),
            (2, Some(vec![3, 2, 2, 0, 4, 5])),
            (0, Some(vec![1, 3, 4])),
            (1, Some(vec![1, 1, 3, 2])),
            (0, Some(vec![2, 3])),
            (3, None),
            (0, Some(vec![4])),
        ];
        for (joining, reorder) in plan {
            history.add_rows(joining);
            let rows = history.rows();
            history.begin_step();
            let randn = || Tensor::randn(0f32, 1., (rows, heads, 1, d), &dev).unwrap();
            let (q, k, v) = (randn(), randn(), randn());
            let a = cells.attend(&q, &k, &v, 0.25, &history).unwrap();
            let b = tensors.attend(&q, &k, &v, 0.25, &history).unwrap();
            assert!(matches!(cells.kind, CacheKind::Cells(_)));
            assert!(matches!(tensors.kind, CacheKind::Tensors { .. }));
            assert!(crate::model::kernels::cpu::reference::max_diff(&a, &b) < 1e-5);
            if let Some(index) = reorder {
                history.select_rows(&index);
                cells.select_rows(&index, rows).unwrap();
                tensors.select_rows(&index, rows).unwrap();
            }
        }
        // One row is left; the cells of the dropped rows were freed for reuse.
        assert_eq!(history.rows(), 1);
        assert_eq!(history.tokens_in_use(), history.len(0));
    }
}
