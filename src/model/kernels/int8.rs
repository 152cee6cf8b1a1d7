//! int8 weights × int8 activations with exact integer dot products (AVX-512 VNNI).
//!
//! What CTranslate2's int8 computes: each row of x is quantised on the fly with its own
//! scale, `x[r, i] ≈ sx[r] · xq[r, i]` (`sx[r] = max_i |x[r, i]| / 127`), the weights
//! are int8 with one scale per output, and
//!
//!   y[r, j] = sx[r] · s[j] · Σ_i xq[r, i] · wq[j, i]  (+ bias)
//!
//! with the sum in 32-bit integers, exact. `vpdpbusd` multiplies unsigned by signed
//! bytes, so x is stored as `xq + 128` and the extra `128 · Σ_i wq[j, i]` is taken off
//! once per output. It does four multiply-adds per 32-bit lane where f32 FMA does one.
//!
//! Layout: panels of 16 outputs as in `packed.rs`, with k in groups of four:
//! `[⌈k/4⌉][16][4]`, so one 64-byte vector holds four k of 16 outputs. Every kernel
//! set computes the same integers and the same float epilogue, so the results are
//! bit-identical whichever runs.

use rayon::prelude::*;

use super::activation::SliceActivation;
use super::dispatch::Kernels;
use super::packed::PANEL;

/// k values per 32-bit lane.
const GROUP: usize = 4;

/// Rows of x quantised to `xq + 128`, `kp` bytes each (k padded to whole groups with
/// the encoding of zero), and their scales.
pub struct QuantizedRows {
    kp: usize,
    values: Vec<u8>,
    scales: Vec<f32>,
}

#[cfg(test)]
impl QuantizedRows {
    /// The rows as the kernels see them, `sx · xq`, `k` floats each (for tests).
    pub fn dequantized(&self, k: usize) -> Vec<f32> {
        self.values
            .chunks_exact(self.kp)
            .zip(&self.scales)
            .flat_map(|(q, &s)| q[..k].iter().map(move |&v| (i32::from(v) - 128) as f32 * s))
            .collect()
    }
}

/// Quantises every row of `x` (`[m, k]`), rows in parallel.
pub fn quantize_rows(x: &[f32], k: usize) -> QuantizedRows {
    let kp = k.next_multiple_of(GROUP);
    let m = x.len() / k;
    let mut values = vec![128u8; m * kp];
    let mut scales = vec![0f32; m];
    values
        .par_chunks_mut(kp)
        .zip(scales.par_iter_mut())
        .zip(x.par_chunks(k))
        .for_each(|((q, s), row)| {
            let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            *s = amax / 127.0;
            let inverse = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            for (q, &v) in q.iter_mut().zip(row) {
                let t = v * inverse;
                // Round half away from zero (see `packed.rs` on `f32::round`).
                *q = ((t + 0.5f32.copysign(t)).clamp(-127.0, 127.0) as i32 + 128) as u8;
            }
        });
    QuantizedRows { kp, values, scales }
}

/// A weight matrix `[n, k]` as int8 in the grouped panel layout.
#[derive(Debug, Clone)]
pub struct DotPanels {
    n: usize,
    k: usize,
    kp: usize,
    values: Vec<i8>,
    /// Per output, padded with zeros to whole panels.
    scales: Vec<f32>,
    /// `128 · Σ_i wq[j, i]` per output (padded likewise).
    offsets: Vec<i32>,
}

impl DotPanels {
    /// Quantises and packs a row-major `[n, k]` matrix.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        let kp = k.next_multiple_of(GROUP);
        let panels = n.div_ceil(PANEL);
        let mut scales = vec![0f32; panels * PANEL];
        let mut offsets = vec![0i32; panels * PANEL];
        let mut values = vec![0i8; panels * kp * PANEL];
        values
            .par_chunks_mut(kp * PANEL)
            .zip(
                scales
                    .par_chunks_mut(PANEL)
                    .zip(offsets.par_chunks_mut(PANEL)),
            )
            .enumerate()
            .for_each(|(p, (panel, (scales, offsets)))| {
                for c in 0..PANEL.min(n - p * PANEL) {
                    let row = &w[(p * PANEL + c) * k..][..k];
                    let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
                    scales[c] = amax / 127.0;
                    let inverse = if amax > 0.0 { 127.0 / amax } else { 0.0 };
                    let mut sum = 0i32;
                    for (i, &v) in row.iter().enumerate() {
                        let t = v * inverse;
                        let q = (t + 0.5f32.copysign(t)).clamp(-127.0, 127.0) as i8;
                        sum += i32::from(q);
                        panel[(i / GROUP) * PANEL * GROUP + c * GROUP + i % GROUP] = q;
                    }
                    offsets[c] = 128 * sum;
                }
            });
        Self {
            n,
            k,
            kp,
            values,
            scales,
            offsets,
        }
    }

    /// Row `j` as stored, dequantised.
    pub fn row(&self, j: usize, out: &mut [f32]) {
        let panel = &self.values[(j / PANEL) * self.kp * PANEL..][..self.kp * PANEL];
        let c = j % PANEL;
        for (i, o) in out.iter_mut().enumerate().take(self.k) {
            *o = f32::from(panel[(i / GROUP) * PANEL * GROUP + c * GROUP + i % GROUP])
                * self.scales[j];
        }
    }

    /// Output rows `rows` × the columns of `panels`, from `x` quantised.
    ///
    /// # Safety
    /// `x` holds m rows of this matrix's k; `rows ⊂ 0..m`, `panels ⊂ 0..⌈n/16⌉`; `bias`,
    /// if any, has n entries; `out` is valid for writes of m × n floats (row stride n)
    /// and nothing else accesses this block of them during the call.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block(
        &self,
        kernels: Kernels,
        x: &QuantizedRows,
        bias: Option<&[f32]>,
        act: Option<SliceActivation>,
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
        out: *mut f32,
    ) {
        debug_assert_eq!(x.kp, self.kp);
        // SAFETY: row r < m of x, panel p < ⌈n/16⌉ with its 16 scales and offsets,
        // the bias from p·16, and output row r, column p·16 are inside their buffers,
        // as the caller promised for the rows and panels the tiles are made for.
        let tile = |r: usize, p: usize| unsafe {
            Tile {
                x: x.values.as_ptr().add(r * self.kp),
                sx: x.scales.as_ptr().add(r),
                groups: self.kp / GROUP,
                w: self.values.as_ptr().add(p * self.kp * PANEL),
                scale: self.scales.as_ptr().add(p * PANEL),
                offset: self.offsets.as_ptr().add(p * PANEL),
                bias: bias.map(|b| b.as_ptr().add(p * PANEL)),
                act,
                out: out.add(r * self.n + p * PANEL),
                ldo: self.n,
                cols: PANEL.min(self.n - p * PANEL),
            }
        };
        let mr = if kernels.has_avx512_vnni() { 12 } else { 1 };
        let tiles = rows.len().div_ceil(mr);
        let mut r = rows.start;
        for tile_index in 0..tiles {
            let rs = rows.len() / tiles + usize::from(tile_index < rows.len() % tiles);
            let mut p = panels.start;
            while p < panels.end {
                let t0 = tile(r, p);
                #[cfg(target_arch = "x86_64")]
                if kernels.has_avx512_vnni() {
                    let t1 = (p + 1 < panels.end).then(|| tile(r, p + 1));
                    // SAFETY: the tiles hold for rs ≤ 12 rows (above); `kernels`
                    // exists only where the CPU has AVX-512F/BW and VNNI.
                    unsafe { vnni::run(&t0, t1.as_ref(), rs) };
                    p += 2;
                    continue;
                }
                // SAFETY: the tile holds for rs rows.
                unsafe { t0.portable(rs) };
                p += 1;
            }
            r += rs;
        }
    }
}

/// One kernel call: some rows of quantised x against one panel.
///
/// Invariant (upheld in [`DotPanels::block`]): `x` is valid for reads of the tile's rows
/// of `groups · 4` bytes (row stride `groups · 4`) and `sx` of their scales; `w` for
/// `groups · 64` bytes; `scale` and `offset` for 16 values; `bias`, if any, for `cols`;
/// `out` for writes of the rows' `cols` floats (row stride `ldo`), nothing else
/// accessing them meanwhile; `cols ≤ 16`.
struct Tile {
    x: *const u8,
    sx: *const f32,
    groups: usize,
    w: *const i8,
    scale: *const f32,
    offset: *const i32,
    bias: Option<*const f32>,
    act: Option<SliceActivation>,
    out: *mut f32,
    ldo: usize,
    cols: usize,
}

impl Tile {
    /// The integer sums without SIMD.
    ///
    /// # Safety
    /// The tile's invariant holds for `rows` rows.
    unsafe fn portable(&self, rows: usize) {
        let kp = self.groups * GROUP;
        // SAFETY: as the invariant says.
        let (x, w) = unsafe {
            (
                std::slice::from_raw_parts(self.x, rows * kp),
                std::slice::from_raw_parts(self.w, kp * PANEL),
            )
        };
        for r in 0..rows {
            let mut acc = [0i32; PANEL];
            for (g, xg) in x[r * kp..][..kp].chunks_exact(GROUP).enumerate() {
                let wg = &w[g * PANEL * GROUP..][..PANEL * GROUP];
                for (a, wc) in acc.iter_mut().zip(wg.chunks_exact(GROUP)) {
                    for (&xv, &wv) in xg.iter().zip(wc) {
                        *a += i32::from(xv) * i32::from(wv);
                    }
                }
            }
            // SAFETY: r < rows.
            unsafe { self.finish(r, &acc) };
        }
    }

    /// `sx · s · (acc − offset)`, then bias and activation, into output row `r`.
    ///
    /// # Safety
    /// The tile's invariant holds for more than `r` rows.
    unsafe fn finish(&self, r: usize, acc: &[i32; PANEL]) {
        // SAFETY: as the invariant says.
        let (sx, scale, offset) = unsafe {
            (
                *self.sx.add(r),
                std::slice::from_raw_parts(self.scale, PANEL),
                std::slice::from_raw_parts(self.offset, PANEL),
            )
        };
        let mut row = [0f32; PANEL];
        for c in 0..PANEL {
            row[c] = (acc[c] - offset[c]) as f32 * sx * scale[c];
        }
        if let Some(b) = self.bias {
            // SAFETY: the bias pointer is valid for `cols` floats.
            let b = unsafe { std::slice::from_raw_parts(b, self.cols) };
            for (v, &bc) in row.iter_mut().zip(b) {
                *v += bc;
            }
        }
        if let Some(act) = self.act {
            act(&mut row[..self.cols]);
        }
        // SAFETY: output row r has `cols` writable floats; `row` is a local.
        unsafe {
            std::ptr::copy_nonoverlapping(row.as_ptr(), self.out.add(r * self.ldo), self.cols)
        };
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{Tile, GROUP, PANEL};
    use std::arch::x86_64::*;

    /// `rows` (1 ≤ rows ≤ 12) rows against one or two panels.
    ///
    /// # Safety
    /// The invariants of `t0` and `t1` (if any) hold for `rows` rows and they share x;
    /// the CPU has AVX-512F/BW and AVX512_VNNI.
    pub unsafe fn run(t0: &Tile, t1: Option<&Tile>, rows: usize) {
        macro_rules! dispatch {
            ($($r:literal)*) => {
                match (rows, t1) {
                    $(
                        // SAFETY: as the caller promised, with R = rows.
                        ($r, Some(t1)) => unsafe { tile::<$r, true>(t0, t1) },
                        // SAFETY: as the caller promised, with R = rows.
                        ($r, None) => unsafe { tile::<$r, false>(t0, t0) },
                    )*
                    _ => unreachable!("VNNI tile of {rows} rows"),
                }
            };
        }
        dispatch!(1 2 3 4 5 6 7 8 9 10 11 12);
    }

    /// `R` rows × one panel, or two (`TWO`: `t1` is the second), 2 × R integer
    /// accumulators.
    ///
    /// # Safety
    /// As [`run`] with `R` rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const R: usize, const TWO: bool>(t0: &Tile, t1: &Tile) {
        let mut acc = [[_mm512_setzero_si512(); 2]; R];
        let kp = t0.groups * GROUP;
        let w1p = t1.w;
        for g in 0..t0.groups {
            // SAFETY: both panels hold groups × 64 bytes and g < groups; row r < R of
            // x holds kp bytes.
            unsafe {
                let w0 = _mm512_loadu_si512(t0.w.add(g * PANEL * GROUP).cast());
                let w1 = _mm512_loadu_si512(w1p.add(g * PANEL * GROUP).cast());
                for (r, a) in acc.iter_mut().enumerate() {
                    let xg = t0.x.add(r * kp + g * GROUP).cast::<i32>().read_unaligned();
                    let xv = _mm512_set1_epi32(xg);
                    a[0] = _mm512_dpbusd_epi32(a[0], xv, w0);
                    if TWO {
                        a[1] = _mm512_dpbusd_epi32(a[1], xv, w1);
                    }
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let mut lanes = [0i32; PANEL];
            // SAFETY: `lanes` holds 16 i32; r < R for `finish`.
            unsafe {
                _mm512_storeu_si512(lanes.as_mut_ptr().cast(), a[0]);
                t0.finish(r, &lanes);
                if TWO {
                    _mm512_storeu_si512(lanes.as_mut_ptr().cast(), a[1]);
                    t1.finish(r, &lanes);
                }
            }
        }
    }
}
