//! `y = x Wᵀ + b` on the CPU with W packed once, at load time, into column panels.
//!
//! A general GEMM (candle's `gemm` crate) re-packs the weight on every call. In a decode
//! step with 8–64 rows that packing costs about as much as the arithmetic, because every
//! weight is used only by those few rows. Packing once removes that cost for every
//! batch size, and one kernel then serves decode steps (a few rows, bound by reading W)
//! and the encoder (thousands of rows, bound by FMA throughput).
//!
//! Layout: W `[n, k]` becomes `⌈n/16⌉` panels of `[k][16]`: for each k, the 16 weights of
//! 16 consecutive outputs are contiguous. The microkernel keeps a 6 × 16 block of
//! outputs in 12 AVX registers, and for every k loads two weight vectors and broadcasts
//! one x value per row: 12 FMAs per 8 loads, with no horizontal sums.
//! With AVX-512 a panel is one zmm vector, and the kernel keeps 12 rows × two panels in
//! 24 of the 32 registers (24 FMAs per 14 loads); every output is the same FMA chain
//! over k in both, so the two sets give bit-identical results.

use rayon::prelude::*;

use super::activation::SliceActivation;
use super::dispatch::Kernels;

/// Outputs per panel (two AVX vectors).
pub const PANEL: usize = 16;
/// Rows per microkernel call (12 accumulators + 2 weight vectors + 1 broadcast = 15 of
/// the 16 AVX registers).
const MR: usize = 6;
/// Weight bytes one task keeps in the core's L2 cache while all rows pass over it.
const TASK_WEIGHT_BYTES: usize = 192 * 1024;
/// Rows one task takes, so that the encoder's thousands of rows split across cores too.
const TASK_ROWS: usize = 96;

/// A weight matrix `[n, k]` in panel layout.
#[derive(Debug, Clone)]
pub struct PackedWeight {
    n: usize,
    k: usize,
    panels: Vec<f32>,
}

impl PackedWeight {
    /// Packs a row-major `[n, k]` matrix (`w[j * k + i]` = weight of input i for output j).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k);
        let num_panels = n.div_ceil(PANEL);
        let mut panels = vec![0f32; num_panels * k * PANEL];
        panels
            .par_chunks_mut(k * PANEL)
            .enumerate()
            .for_each(|(p, panel)| {
                for c in 0..PANEL.min(n - p * PANEL) {
                    let row = &w[(p * PANEL + c) * k..][..k];
                    for (i, &v) in row.iter().enumerate() {
                        panel[i * PANEL + c] = v;
                    }
                }
            });
        Self { n, k, panels }
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    /// Row `j` of the original matrix (the embedding of token j when W is a tied
    /// word-embedding table).
    pub fn row(&self, j: usize, out: &mut [f32]) {
        let panel = &self.panels[(j / PANEL) * self.k * PANEL..][..self.k * PANEL];
        for (i, o) in out.iter_mut().enumerate().take(self.k) {
            *o = panel[i * PANEL + j % PANEL];
        }
    }

    /// `out[r, j] = act(Σ_i x[r, i] · W[j, i] + bias[j])` for `x`: `[m, k]`, `out`:
    /// `[m, n]`; bias and activation optional. Panics if the lengths do not fit.
    pub fn matmul(
        &self,
        x: &[f32],
        bias: Option<&[f32]>,
        act: Option<SliceActivation>,
        out: &mut [f32],
    ) {
        self.matmul_with(Kernels::chosen(), x, bias, act, out)
    }

    /// [`Self::matmul`] with the given kernel set.
    pub fn matmul_with(
        &self,
        kernels: Kernels,
        x: &[f32],
        bias: Option<&[f32]>,
        act: Option<SliceActivation>,
        out: &mut [f32],
    ) {
        assert_eq!(out.len(), x.len() / self.k * self.n);
        // SAFETY: `out` holds exactly the m × n floats `write_all` writes.
        unsafe { self.write_all(kernels, x, bias, act, SendPtr(out.as_mut_ptr())) };
    }

    /// [`Self::matmul`] into a new vector, without zeroing it first (the kernel writes
    /// every element; clearing megabytes of activations per layer showed up in profiles).
    pub fn matmul_to_vec(
        &self,
        x: &[f32],
        bias: Option<&[f32]>,
        act: Option<SliceActivation>,
    ) -> Vec<f32> {
        let len = x.len() / self.k * self.n;
        let mut out = Vec::with_capacity(len);
        // SAFETY: the buffer has room for the m × n floats, `write_all` writes every one
        // of them through the raw pointer (no reference to uninitialised memory is
        // made), and only then is the length set.
        unsafe {
            self.write_all(Kernels::chosen(), x, bias, act, SendPtr(out.as_mut_ptr()));
            out.set_len(len);
        }
        out
    }

    /// Writes all m × n outputs through `out_ptr` (m = `x.len() / k`); panics unless
    /// `x` is whole rows and `bias`, if any, has n entries.
    ///
    /// # Safety
    /// `out_ptr` must be valid for writes of m × n floats, and nothing else may access
    /// them during the call.
    unsafe fn write_all(
        &self,
        kernels: Kernels,
        x: &[f32],
        bias: Option<&[f32]>,
        act: Option<SliceActivation>,
        out_ptr: SendPtr,
    ) {
        let (n, k) = (self.n, self.k);
        let m = x.len() / k;
        assert_eq!(x.len(), m * k);
        if let Some(b) = bias {
            assert_eq!(b.len(), n);
        }
        let num_panels = n.div_ceil(PANEL);
        let mut panels_per_task = (TASK_WEIGHT_BYTES / (k * PANEL * 4)).clamp(1, num_panels);
        if kernels.has_avx512() {
            // The AVX-512 kernel takes panels in pairs; an odd count per task would
            // leave every task a single-panel tail (k = 3072 gives one panel a task).
            panels_per_task = panels_per_task.next_multiple_of(2).min(num_panels);
        }
        let col_tasks = num_panels.div_ceil(panels_per_task);
        let row_tasks = m.div_ceil(TASK_ROWS);
        (0..col_tasks * row_tasks).into_par_iter().for_each(|t| {
            let (rt, ct) = (t / col_tasks, t % col_tasks);
            let rows = rt * TASK_ROWS..((rt + 1) * TASK_ROWS).min(m);
            let panels = ct * panels_per_task..((ct + 1) * panels_per_task).min(num_panels);
            // SAFETY: rows ⊂ 0..m and panels ⊂ 0..num_panels, so the block lies inside
            // the m × n output the caller guarantees; tasks write disjoint blocks.
            unsafe { self.block(kernels, x, bias, act, rows, panels, out_ptr) };
        });
    }

    /// Output rows `rows` × the columns of `panels`.
    ///
    /// # Safety
    /// `x.len() == m · k` and `bias`, if any, has n entries (as `write_all` asserts);
    /// `rows ⊂ 0..m`, `panels ⊂ 0..⌈n/16⌉`; `out` is valid for writes of m × n floats
    /// and nothing else accesses this block of them during the call.
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        &self,
        kernels: Kernels,
        x: &[f32],
        bias: Option<&[f32]>,
        act: Option<SliceActivation>,
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
        out: SendPtr,
    ) {
        #[cfg(target_arch = "x86_64")]
        if kernels.has_avx512() {
            // SAFETY: as the caller promised.
            unsafe { self.block_avx512(kernels, x, bias, act, rows, panels, out) };
            return;
        }
        let (n, k) = (self.n, self.k);
        // Tiles as even as possible (32 rows: 6+6+5+5+5+5, not 6×5+2): a tile of one or
        // two rows has too few accumulators to hide the FMA latency.
        let tiles = rows.len().div_ceil(MR);
        let mut r = rows.start;
        for tile_index in 0..tiles {
            let mr = rows.len() / tiles + usize::from(tile_index < rows.len() % tiles);
            for p in panels.clone() {
                let cols = PANEL.min(n - p * PANEL);
                // SAFETY: rows r..r + mr of x (k floats each) are inside x; panel p
                // (k × 16 floats) is inside self.panels; bias entries p·16..p·16 + cols
                // are inside bias; the output rows r..r + mr, columns p·16..p·16 + cols
                // (row stride n) are inside this task's block, which the caller
                // guarantees.
                unsafe {
                    let tile = Tile {
                        x: x.as_ptr().add(r * k),
                        k,
                        w: self.panels.as_ptr().add(p * k * PANEL),
                        bias: bias.map(|b| b.as_ptr().add(p * PANEL)),
                        act,
                        out: out.0.add(r * n + p * PANEL),
                        ldo: n,
                        cols,
                    };
                    tile.run(kernels, mr);
                }
            }
            r += mr;
        }
    }
}

impl PackedWeight {
    /// The tile of panel `p`, rows `r..` of x (how many rows is the caller's to say).
    ///
    /// # Safety
    /// As for [`Self::block`], with `r` inside the block's rows and `p` inside its panels.
    unsafe fn tile_at(
        &self,
        x: &[f32],
        bias: Option<&[f32]>,
        act: Option<SliceActivation>,
        r: usize,
        p: usize,
        out: SendPtr,
    ) -> Tile {
        let (n, k) = (self.n, self.k);
        // SAFETY: rows from r of x are inside x; panel p (k × 16 floats) is inside
        // self.panels; bias entries p·16.. are inside bias; the output offset
        // r·n + p·16 is inside the caller's block.
        unsafe {
            Tile {
                x: x.as_ptr().add(r * k),
                k,
                w: self.panels.as_ptr().add(p * k * PANEL),
                bias: bias.map(|b| b.as_ptr().add(p * PANEL)),
                act,
                out: out.0.add(r * n + p * PANEL),
                ldo: n,
                cols: PANEL.min(n - p * PANEL),
            }
        }
    }

    /// [`Self::block`] with the AVX-512 microkernel: tiles of up to 12 rows × two
    /// panels (24 zmm accumulators), so every broadcast x value feeds two FMAs and
    /// every weight vector twelve.
    ///
    /// # Safety
    /// As [`Self::block`]; `kernels.has_avx512()`.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block_avx512(
        &self,
        kernels: Kernels,
        x: &[f32],
        bias: Option<&[f32]>,
        act: Option<SliceActivation>,
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
        out: SendPtr,
    ) {
        assert!(kernels.has_avx512());
        let tiles = rows.len().div_ceil(avx512::MR);
        let mut r = rows.start;
        for tile_index in 0..tiles {
            let mr = rows.len() / tiles + usize::from(tile_index < rows.len() % tiles);
            let mut p = panels.start;
            while p < panels.end {
                // SAFETY: r..r + mr lies inside the block's rows and p (and p + 1 when
                // it is used) inside its panels, as `tile_at` requires.
                let t0 = unsafe { self.tile_at(x, bias, act, r, p, out) };
                let t1 = if p + 1 < panels.end {
                    // SAFETY: as for t0, with p + 1 inside the block's panels.
                    Some(unsafe { self.tile_at(x, bias, act, r, p + 1, out) })
                } else {
                    None
                };
                // SAFETY: the tiles' invariants hold for mr rows (above); `kernels`
                // exists only for sets this CPU supports, and this one has AVX-512F,
                // AVX2 and FMA (asserted above).
                unsafe { avx512::run(&t0, t1.as_ref(), mr) };
                p += 2;
            }
            r += mr;
        }
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint output blocks to rayon tasks (`write_all`).
unsafe impl Send for SendPtr {}
// SAFETY: as for Send: no two tasks write the same element.
unsafe impl Sync for SendPtr {}

/// One microkernel call: `mr` (≤ 6) rows of x against one panel.
///
/// Invariant (upheld where tiles are made, in `block`): `x` is valid for reads of `mr`
/// rows of `k` floats (row stride `k`); `w` for `k × 16` floats; `bias`, if any, for
/// `cols` floats; `out` for writes of `mr` rows of `cols` floats (row stride `ldo`) that
/// nothing else accesses meanwhile; `cols ≤ 16`.
struct Tile {
    x: *const f32,
    k: usize,
    w: *const f32,
    bias: Option<*const f32>,
    act: Option<SliceActivation>,
    out: *mut f32,
    ldo: usize,
    cols: usize,
}

impl Tile {
    /// # Safety
    /// The tile's invariant holds for `mr` (1 ≤ mr ≤ 6) rows.
    unsafe fn run(&self, kernels: Kernels, mr: usize) {
        #[cfg(target_arch = "x86_64")]
        if kernels.has_avx2() {
            // SAFETY: `kernels` exists only for sets this CPU supports, and this one
            // includes AVX2 and FMA; the pointers as the caller promised.
            unsafe {
                match mr {
                    6 => avx2::tile::<6>(self),
                    5 => avx2::tile::<5>(self),
                    4 => avx2::tile::<4>(self),
                    3 => avx2::tile::<3>(self),
                    2 => avx2::tile::<2>(self),
                    _ => avx2::tile::<1>(self),
                }
            }
            return;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = kernels;
        // SAFETY: as the caller promised.
        unsafe { self.portable(mr) };
    }

    /// The same products and sums, in the same order, without SIMD (and without fused
    /// multiply-adds, which baseline x86-64 lacks; results differ in the last bits).
    ///
    /// # Safety
    /// As [`Self::run`].
    unsafe fn portable(&self, mr: usize) {
        // SAFETY: the tile's invariant: row r < mr of x has k floats, the panel k × 16.
        let (x, w) = unsafe {
            (
                std::slice::from_raw_parts(self.x, mr * self.k),
                std::slice::from_raw_parts(self.w, self.k * PANEL),
            )
        };
        for r in 0..mr {
            let mut acc = [0f32; PANEL];
            for (&xv, wi) in x[r * self.k..][..self.k].iter().zip(w.chunks_exact(PANEL)) {
                for (a, &wv) in acc.iter_mut().zip(wi) {
                    *a += xv * wv;
                }
            }
            // SAFETY: r < mr.
            unsafe { self.store(r, &mut acc) };
        }
    }

    /// Adds the bias, applies the activation and writes the valid columns of one row.
    ///
    /// # Safety
    /// The tile's invariant holds for more than `r` rows.
    unsafe fn store(&self, r: usize, acc: &mut [f32; PANEL]) {
        if let Some(b) = self.bias {
            // SAFETY: the bias pointer is valid for `cols` floats.
            let b = unsafe { std::slice::from_raw_parts(b, self.cols) };
            for (a, &bc) in acc.iter_mut().zip(b) {
                *a += bc;
            }
        }
        if let Some(act) = self.act {
            act(&mut acc[..self.cols]);
        }
        // SAFETY: output row r has `cols` writable floats at r · ldo, and `acc` (a local)
        // does not overlap them.
        unsafe {
            std::ptr::copy_nonoverlapping(acc.as_ptr(), self.out.add(r * self.ldo), self.cols)
        };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Tile, PANEL};
    use std::arch::x86_64::*;

    /// `R` rows against one panel, 2 × R accumulators.
    ///
    /// # Safety
    /// The tile's invariant holds for `R` rows; the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const R: usize>(t: &Tile) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let (x, w, k) = (t.x, t.w, t.k);
        for i in 0..k {
            // SAFETY: the panel holds k × 16 floats and i < k; row r < R of x holds k
            // floats.
            unsafe {
                let w0 = _mm256_loadu_ps(w.add(i * PANEL));
                let w1 = _mm256_loadu_ps(w.add(i * PANEL + 8));
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_broadcast_ss(&*x.add(r * k + i));
                    a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
                    a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            if t.cols == PANEL && t.bias.is_none() && t.act.is_none() {
                // SAFETY: output row r < R has cols = 16 writable floats.
                unsafe {
                    _mm256_storeu_ps(t.out.add(r * t.ldo), a[0]);
                    _mm256_storeu_ps(t.out.add(r * t.ldo + 8), a[1]);
                }
            } else {
                let mut row = [0f32; PANEL];
                // SAFETY: `row` holds 16 floats; r < R for `store`.
                unsafe {
                    _mm256_storeu_ps(row.as_mut_ptr(), a[0]);
                    _mm256_storeu_ps(row.as_mut_ptr().add(8), a[1]);
                    t.store(r, &mut row);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Tile, PANEL};
    use std::arch::x86_64::*;

    /// Rows per microkernel call: 12 × 2 accumulators + 2 weight vectors + 1 broadcast
    /// = 27 of the 32 zmm registers.
    pub const MR: usize = 12;

    /// `mr` (1 ≤ mr ≤ 12) rows against one or two panels.
    ///
    /// # Safety
    /// The invariants of `t0` and `t1` (if any) hold for `mr` rows, and they share `x`
    /// and `k`; the CPU has AVX-512F, AVX2 and FMA.
    pub unsafe fn run(t0: &Tile, t1: Option<&Tile>, mr: usize) {
        macro_rules! dispatch {
            ($($r:literal)*) => {
                match (mr, t1) {
                    $(
                        // SAFETY: as the caller promised, with R = mr.
                        ($r, Some(t1)) => unsafe { tile2::<$r>(t0, t1) },
                        // SAFETY: as the caller promised, with R = mr.
                        ($r, None) => unsafe { tile1::<$r>(t0) },
                    )*
                    _ => unreachable!("AVX-512 tile of {mr} rows"),
                }
            };
        }
        dispatch!(1 2 3 4 5 6 7 8 9 10 11 12);
    }

    /// `R` rows against two adjacent panels, 2 × R accumulators. Each output is a
    /// plain FMA chain over i = 0..k from zero, as in the AVX2 kernel, so the results
    /// are bit-identical to it.
    ///
    /// # Safety
    /// As [`run`] with `t1` present and `R` rows.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn tile2<const R: usize>(t0: &Tile, t1: &Tile) {
        debug_assert!(t0.x == t1.x && t0.k == t1.k);
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let (x, w0p, w1p, k) = (t0.x, t0.w, t1.w, t0.k);
        for i in 0..k {
            // SAFETY: both panels hold k × 16 floats and i < k; row r < R of x holds k
            // floats.
            unsafe {
                let w0 = _mm512_loadu_ps(w0p.add(i * PANEL));
                let w1 = _mm512_loadu_ps(w1p.add(i * PANEL));
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*x.add(r * k + i));
                    a[0] = _mm512_fmadd_ps(xv, w0, a[0]);
                    a[1] = _mm512_fmadd_ps(xv, w1, a[1]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: r < R rows, for both tiles.
            unsafe {
                store(t0, r, a[0]);
                store(t1, r, a[1]);
            }
        }
    }

    /// `R` rows against one panel (the last, odd one of a task).
    ///
    /// # Safety
    /// As [`run`] with `R` rows.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn tile1<const R: usize>(t: &Tile) {
        let mut acc = [_mm512_setzero_ps(); R];
        let (x, w, k) = (t.x, t.w, t.k);
        for i in 0..k {
            // SAFETY: the panel holds k × 16 floats and i < k; row r < R of x holds k
            // floats.
            unsafe {
                let wv = _mm512_loadu_ps(w.add(i * PANEL));
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*x.add(r * k + i));
                    *a = _mm512_fmadd_ps(xv, wv, *a);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: r < R.
            unsafe { store(t, r, *a) };
        }
    }

    /// Writes row `r` of a tile: straight from the register when the panel is whole
    /// and nothing follows, else through [`Tile::store`].
    ///
    /// # Safety
    /// The tile's invariant holds for more than `r` rows; the CPU has AVX-512F.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn store(t: &Tile, r: usize, a: __m512) {
        if t.cols == PANEL && t.bias.is_none() && t.act.is_none() {
            // SAFETY: output row r has cols = 16 writable floats.
            unsafe { _mm512_storeu_ps(t.out.add(r * t.ldo), a) };
        } else {
            let mut row = [0f32; PANEL];
            // SAFETY: `row` holds 16 floats; r is a row of the tile.
            unsafe {
                _mm512_storeu_ps(row.as_mut_ptr(), a);
                t.store(r, &mut row);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reproducible values in [-0.5, 0.5).
    struct Lcg(u32);

    impl Lcg {
        fn take(&mut self, len: usize) -> Vec<f32> {
            (0..len)
                .map(|_| {
                    self.0 = self.0.wrapping_mul(1664525).wrapping_add(1013904223);
                    (self.0 >> 8) as f32 / (1 << 24) as f32 - 0.5
                })
                .collect()
        }
    }

    fn naive(x: &[f32], w: &[f32], bias: Option<&[f32]>, k: usize) -> Vec<f32> {
        let (m, n) = (x.len() / k, w.len() / k);
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[j * k + i] as f64)
                    .sum();
                out[r * n + j] = s as f32 + bias.map_or(0.0, |b| b[j]);
            }
        }
        out
    }

    #[test]
    fn matches_naive_for_odd_shapes() {
        let mut rng = Lcg(11u32);
        for (m, k, n) in [
            (1, 32, 5),
            (3, 37, 130),
            (4, 768, 200),
            (7, 19, 64),
            (13, 64, 129),
            (200, 50, 33),
        ] {
            let (x, w, b) = (rng.take(m * k), rng.take(n * k), rng.take(n));
            let packed = PackedWeight::pack(&w, n, k);
            let relu: SliceActivation = |xs| xs.iter_mut().for_each(|v| *v = v.max(0.0));
            for (kernels, bias, act) in Kernels::all_supported().into_iter().flat_map(|ks| {
                [
                    (ks, Some(&b[..]), None),
                    (ks, None, None),
                    (ks, Some(&b[..]), Some(relu)),
                ]
            }) {
                let mut out = vec![0f32; m * n];
                packed.matmul_with(kernels, &x, bias, act, &mut out);
                if kernels == Kernels::chosen() {
                    assert_eq!(out, packed.matmul_to_vec(&x, bias, act));
                }
                let want = naive(&x, &w, bias, k);
                for (g, e) in out.iter().zip(&want) {
                    let e = act.map_or(*e, |f| {
                        let mut v = [*e];
                        f(&mut v);
                        v[0]
                    });
                    assert!((g - e).abs() < 1e-4, "{m}x{k}x{n}: {g} vs {e}");
                }
            }
            let mut row = vec![0f32; k];
            packed.row(n - 1, &mut row);
            assert_eq!(row, w[(n - 1) * k..]);
        }
    }

    /// The AVX-512 kernel computes each output as the same FMA chain as the AVX2 one,
    /// so the two agree to the bit (which keeps the parity tests independent of the
    /// set), for tile and panel tails and for task splits of many rows and panels.
    #[test]
    fn avx512_is_bit_identical_to_avx2() {
        let (Some(avx2), Some(avx512)) = (
            Kernels::supported(super::super::dispatch::KernelSet::Avx2),
            Kernels::supported(super::super::dispatch::KernelSet::Avx512),
        ) else {
            eprintln!("skipped: this CPU lacks AVX-512");
            return;
        };
        let mut rng = Lcg(7u32);
        let gelu: SliceActivation = |xs| xs.iter_mut().for_each(|v| *v *= v.tanh());
        for (m, k, n) in [
            (1, 768, 48),
            (4, 768, 200),
            (5, 3072, 33),
            (11, 17, 16),
            (12, 64, 31),
            (13, 129, 129),
            (25, 300, 80),
            (97, 96, 47),
            (200, 768, 257),
        ] {
            let (x, w, b) = (rng.take(m * k), rng.take(n * k), rng.take(n));
            let packed = PackedWeight::pack(&w, n, k);
            for (bias, act) in [
                (None, None),
                (Some(&b[..]), None),
                (Some(&b[..]), Some(gelu)),
            ] {
                let mut want = vec![0f32; m * n];
                let mut got = vec![1f32; m * n];
                packed.matmul_with(avx2, &x, bias, act, &mut want);
                packed.matmul_with(avx512, &x, bias, act, &mut got);
                let same = want
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{m}x{k}x{n}: AVX-512 differs from AVX2");
            }
        }
    }
}
