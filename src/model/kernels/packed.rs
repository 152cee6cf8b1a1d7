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
//!
//! Weights may be stored as f32, bf16 or int8 ([`WeightFormat`]); the arithmetic is f32
//! FMA in every format. bf16 and int8 values are widened in registers as they are
//! loaded, so they halve or quarter the bytes a decode step reads (its bound at a few
//! rows) and the activations are never rounded. int8 keeps one scale per output, applied
//! to the finished sum.

use rayon::prelude::*;

use super::activation::SliceActivation;
use super::dispatch::Kernels;
use super::dot::{encode_rows, DotKind, DotPanels};
use super::epilogue::{for_each_tile, Epilogue, PANEL};
use super::rounding::{bf16_bits, int8_scale, quantize};
/// Rows per microkernel call (12 accumulators + 2 weight vectors + 1 broadcast = 15 of
/// the 16 AVX registers).
const MR: usize = 6;
/// Weight bytes one task keeps in the core's L2 cache while all rows pass over it.
const TASK_WEIGHT_BYTES: usize = 192 * 1024;
/// Rows one task takes, so that the encoder's thousands of rows split across cores too.
const TASK_ROWS: usize = 96;
/// Tasks per thread a matmul is split into at least (when it has that many panels).
const TASKS_PER_THREAD: usize = 4;

/// How a packed weight stores its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    #[default]
    F32,
    /// bf16, rounded to nearest even (as torch's `.to(torch.bfloat16)`).
    Bf16,
    /// Symmetric int8 with one f32 scale per output: `w[j, i] ≈ scale[j] · q[j, i]`,
    /// `scale[j] = max_i |w[j, i]| / 127` (CTranslate2's int8 weights).
    Int8,
}

impl WeightFormat {
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Int8 => "int8",
        }
    }

    /// Bytes per stored weight.
    pub fn bytes(self) -> usize {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::Bf16 => 2,
            WeightFormat::Int8 => 1,
        }
    }
}

/// The panels' values in one of the formats (same layout in each).
#[derive(Debug, Clone)]
enum Panels {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    /// `scales` has one entry per output, padded with zeros to whole panels, so a
    /// kernel can load a panel's 16 scales at once.
    Int8 {
        values: Vec<i8>,
        scales: Vec<f32>,
    },
    /// bf16 or int8 in the layout of the dot-product kernels (`dot.rs`), which round
    /// the activations too: chosen where the CPU has the instruction (AVX512_BF16,
    /// AVX-512 VNNI).
    Dot(DotPanels),
}

/// A weight matrix `[n, k]` in panel layout.
#[derive(Debug, Clone)]
pub struct PackedWeight {
    n: usize,
    k: usize,
    panels: Panels,
}

impl PackedWeight {
    /// Packs a row-major `[n, k]` matrix (`w[j * k + i]` = weight of input i for output j).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        Self::pack_as(w, n, k, WeightFormat::F32)
    }

    /// [`Self::pack`], storing the values in `format`.
    pub fn pack_as(w: &[f32], n: usize, k: usize, format: WeightFormat) -> Self {
        assert_eq!(w.len(), n * k);
        let panels = match format {
            WeightFormat::F32 => Panels::F32(pack_panels(w, n, k, |_, v| v)),
            WeightFormat::Bf16 if Kernels::chosen().has_avx512_bf16() => {
                Panels::Dot(DotPanels::pack(DotKind::Bf16, w, n, k))
            }
            WeightFormat::Bf16 => Panels::Bf16(pack_panels(w, n, k, |_, v| bf16_bits(v))),
            WeightFormat::Int8 if Kernels::chosen().has_avx512_vnni() => {
                Panels::Dot(DotPanels::pack(DotKind::Int8, w, n, k))
            }
            WeightFormat::Int8 => {
                let (mut scales, inverse): (Vec<f32>, Vec<f32>) =
                    w.par_chunks(k).map(int8_scale).unzip();
                let values = pack_panels(w, n, k, |j, v| quantize(v, inverse[j]));
                scales.resize(n.div_ceil(PANEL) * PANEL, 0.0);
                Panels::Int8 { values, scales }
            }
        };
        Self { n, k, panels }
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn format(&self) -> WeightFormat {
        match &self.panels {
            Panels::F32(_) => WeightFormat::F32,
            Panels::Bf16(_) => WeightFormat::Bf16,
            Panels::Int8 { .. } => WeightFormat::Int8,
            Panels::Dot(d) => match d.kind() {
                DotKind::Bf16 => WeightFormat::Bf16,
                DotKind::Int8 => WeightFormat::Int8,
            },
        }
    }

    /// Row `j` of the matrix as stored (dequantised: what the kernels multiply by).
    pub fn row(&self, j: usize, out: &mut [f32]) {
        if let Panels::Dot(d) = &self.panels {
            return d.row(j, out);
        }
        let at = |i: usize| (j / PANEL) * self.k * PANEL + i * PANEL + j % PANEL;
        for (i, o) in out.iter_mut().enumerate().take(self.k) {
            *o = match &self.panels {
                Panels::F32(v) => v[at(i)],
                Panels::Bf16(v) => half::bf16::from_bits(v[at(i)]).to_f32(),
                Panels::Int8 { values, scales } => values[at(i)] as f32 * scales[j],
                Panels::Dot(_) => unreachable!("handled above"),
            };
        }
    }

    /// The stored values' start, and the per-output scales (int8 only).
    fn raw(&self) -> (*const u8, Option<&[f32]>) {
        match &self.panels {
            Panels::F32(v) => (v.as_ptr().cast(), None),
            Panels::Bf16(v) => (v.as_ptr().cast(), None),
            Panels::Int8 { values, scales } => (values.as_ptr().cast(), Some(scales)),
            Panels::Dot(_) => unreachable!("the dot-product layout has its own tiles"),
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
        let panel_bytes = k * PANEL * self.format().bytes();
        let row_tasks = m.div_ceil(TASK_ROWS);
        // Enough tasks for every thread to take several: a 768-wide int8 layer fits in
        // three cache-sized tasks, and three tasks on two threads leave one idle half
        // the time.
        let col_tasks_wanted =
            (TASKS_PER_THREAD * rayon::current_num_threads()).div_ceil(row_tasks);
        let mut panels_per_task = (TASK_WEIGHT_BYTES / panel_bytes)
            .min(num_panels.div_ceil(col_tasks_wanted))
            .clamp(1, num_panels);
        if kernels.has_avx512() {
            // The AVX-512 kernel takes panels in pairs; an odd count per task would
            // leave every task a single-panel tail (k = 3072 gives one panel a task).
            panels_per_task = panels_per_task.next_multiple_of(2).min(num_panels);
        }
        let col_tasks = num_panels.div_ceil(panels_per_task);
        let encoded = match &self.panels {
            Panels::Dot(d) => Some(encode_rows(d.kind(), x, k)),
            _ => None,
        };
        (0..col_tasks * row_tasks).into_par_iter().for_each(|t| {
            let (rt, ct) = (t / col_tasks, t % col_tasks);
            let rows = rt * TASK_ROWS..((rt + 1) * TASK_ROWS).min(m);
            let panels = ct * panels_per_task..((ct + 1) * panels_per_task).min(num_panels);
            // SAFETY: rows ⊂ 0..m and panels ⊂ 0..num_panels, so the block lies inside
            // the m × n output the caller guarantees; tasks write disjoint blocks; x
            // quantised has the m rows of x.
            unsafe {
                match (&self.panels, &encoded) {
                    (Panels::Dot(d), Some(q)) => {
                        d.block(kernels, q, bias, act, rows, panels, out_ptr.0)
                    }
                    _ => self.block(kernels, x, bias, act, rows, panels, out_ptr),
                }
            }
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
        // AVX-512: tiles of up to 12 rows × two panels (24 zmm accumulators), so every
        // broadcast x value feeds two FMAs and every weight vector twelve.
        let avx512 = cfg!(target_arch = "x86_64") && kernels.has_avx512();
        let mr = if avx512 { 12 } else { MR };
        for_each_tile(rows, panels, mr, avx512, |r, rs, p, second| {
            // SAFETY: r..r + rs lies inside the block's rows and p (and the second
            // panel) inside its panels, as `tile_at` requires; the tiles' invariants
            // then hold for rs rows.
            unsafe {
                let t0 = self.tile_at(x, bias, act, r, p, out);
                #[cfg(target_arch = "x86_64")]
                if avx512 {
                    let t1 = second.map(|p1| self.tile_at(x, bias, act, r, p1, out));
                    // `kernels` exists only for sets this CPU supports, and this one
                    // has AVX-512F, AVX2 and FMA.
                    return avx512::run(&t0, t1.as_ref(), rs);
                }
                t0.run(kernels, rs)
            }
        });
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
        let format = self.format();
        let (values, scales) = self.raw();
        // SAFETY: rows from r of x are inside x; panel p (k × 16 values) is inside the
        // stored values; bias entries p·16.. are inside bias, and 16 scales from p·16
        // inside the padded scales; the output offset r·n + p·16 is inside the
        // caller's block.
        unsafe {
            Tile {
                x: x.as_ptr().add(r * k),
                k,
                format,
                w: values.add(p * k * PANEL * format.bytes()),
                epilogue: Epilogue {
                    scale: scales.map(|s| s.as_ptr().add(p * PANEL)),
                    bias: bias.map(|b| b.as_ptr().add(p * PANEL)),
                    act,
                    out: out.0.add(r * n + p * PANEL),
                    ldo: n,
                    cols: PANEL.min(n - p * PANEL),
                },
            }
        }
    }
}

/// `[n, k]` row-major into `⌈n/16⌉` panels of `[k][16]`, each value converted by
/// `convert(output j, value)`; the columns past n in the last panel are `T::default()`.
///
/// Every element is written once, in order (16 rows read side by side): no zero-fill
/// first, which with the page faults of fresh memory was a quarter of load time.
fn pack_panels<T: Copy + Default + Send + Sync>(
    w: &[f32],
    n: usize,
    k: usize,
    convert: impl Fn(usize, f32) -> T + Sync,
) -> Vec<T> {
    let len = n.div_ceil(PANEL) * k * PANEL;
    let mut panels: Vec<T> = Vec::with_capacity(len);
    panels.spare_capacity_mut()[..len]
        .par_chunks_mut(k * PANEL)
        .enumerate()
        .for_each(|(p, panel)| {
            let cols = PANEL.min(n - p * PANEL);
            let rows = &w[p * PANEL * k..][..cols * k];
            if cols == PANEL {
                // Blocks of 16 × 16, so that both the 16 rows read and the panel rows
                // written stay in L1.
                for i0 in (0..k).step_by(PANEL) {
                    let block = PANEL.min(k - i0);
                    for c in 0..PANEL {
                        let j = p * PANEL + c;
                        let src = &rows[c * k + i0..][..block];
                        for (di, &v) in src.iter().enumerate() {
                            panel[(i0 + di) * PANEL + c].write(convert(j, v));
                        }
                    }
                }
                return;
            }
            for (i, out) in panel.chunks_exact_mut(PANEL).enumerate() {
                for (c, o) in out.iter_mut().enumerate() {
                    o.write(if c < cols {
                        convert(p * PANEL + c, rows[c * k + i])
                    } else {
                        T::default()
                    });
                }
            }
        });
    // SAFETY: the loop above wrote all `len` elements (every panel, every k, all 16
    // columns).
    unsafe { panels.set_len(len) };
    panels
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint output blocks to rayon tasks (`write_all`).
unsafe impl Send for SendPtr {}
// SAFETY: as for Send: no two tasks write the same element.
unsafe impl Sync for SendPtr {}

/// One microkernel call: `mr` (≤ 6) rows of x against one panel.
///
/// Invariant (upheld where tiles are made, in `tile_at`): `x` is valid for reads of
/// `mr` rows of `k` floats (row stride `k`); `w` for `k × 16` values of `format`; the
/// epilogue's for `mr` rows (its scales: int8 only).
struct Tile {
    x: *const f32,
    k: usize,
    format: WeightFormat,
    w: *const u8,
    epilogue: Epilogue,
}

/// The stored formats as const-generic tags, so every kernel is compiled once per
/// format with the widening inlined into its k loop.
const F32: u8 = 0;
const BF16: u8 = 1;
const INT8: u8 = 2;

impl Tile {
    fn tag(&self) -> u8 {
        match self.format {
            WeightFormat::F32 => F32,
            WeightFormat::Bf16 => BF16,
            WeightFormat::Int8 => INT8,
        }
    }

    /// # Safety
    /// The tile's invariant holds for `mr` (1 ≤ mr ≤ 6) rows.
    unsafe fn run(&self, kernels: Kernels, mr: usize) {
        #[cfg(target_arch = "x86_64")]
        if kernels.has_avx2() {
            macro_rules! dispatch {
                ($($f:ident)*) => {
                    match (self.tag(), mr) {
                        $(
                            ($f, 6) => avx2::tile::<$f, 6>(self),
                            ($f, 5) => avx2::tile::<$f, 5>(self),
                            ($f, 4) => avx2::tile::<$f, 4>(self),
                            ($f, 3) => avx2::tile::<$f, 3>(self),
                            ($f, 2) => avx2::tile::<$f, 2>(self),
                            ($f, _) => avx2::tile::<$f, 1>(self),
                        )*
                        _ => unreachable!("weight format tag"),
                    }
                };
            }
            // SAFETY: `kernels` exists only for sets this CPU supports, and this one
            // includes AVX2 and FMA; the tile's invariant holds for mr rows, as
            // promised.
            unsafe { dispatch!(F32 BF16 INT8) };
            return;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = kernels;
        // SAFETY: as the caller promised.
        unsafe { self.portable(mr) };
    }

    /// Weight `c` of panel row `i`, widened to f32.
    ///
    /// # Safety
    /// `i < k`, `c < 16`.
    unsafe fn weight(&self, i: usize, c: usize) -> f32 {
        let at = i * PANEL + c;
        // SAFETY: the panel holds k × 16 values of `format`.
        unsafe {
            match self.format {
                WeightFormat::F32 => *self.w.cast::<f32>().add(at),
                WeightFormat::Bf16 => half::bf16::from_bits(*self.w.cast::<u16>().add(at)).to_f32(),
                WeightFormat::Int8 => *self.w.cast::<i8>().add(at) as f32,
            }
        }
    }

    /// The same products and sums, in the same order, without SIMD (and without fused
    /// multiply-adds, which baseline x86-64 lacks; results differ in the last bits).
    ///
    /// # Safety
    /// As [`Self::run`].
    unsafe fn portable(&self, mr: usize) {
        // SAFETY: the tile's invariant: row r < mr of x has k floats.
        let x = unsafe { std::slice::from_raw_parts(self.x, mr * self.k) };
        for r in 0..mr {
            let mut acc = [0f32; PANEL];
            for (i, &xv) in x[r * self.k..][..self.k].iter().enumerate() {
                for (c, a) in acc.iter_mut().enumerate() {
                    // SAFETY: i < k, c < 16.
                    *a += xv * unsafe { self.weight(i, c) };
                }
            }
            // SAFETY: r < mr.
            unsafe { self.epilogue.finish(r, &mut acc) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Tile, BF16, F32, PANEL};
    use std::arch::x86_64::*;

    /// Weights `8h..8h + 8` of panel row `i`, widened to f32.
    ///
    /// # Safety
    /// `w` holds k × 16 values of format `F`, `i < k`, `h < 2`; the CPU has AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load8<const F: u8>(w: *const u8, i: usize, h: usize) -> __m256 {
        let at = i * PANEL + 8 * h;
        // SAFETY: values at..at + 8 are inside the panel.
        unsafe {
            match F {
                F32 => _mm256_loadu_ps(w.cast::<f32>().add(at)),
                BF16 => {
                    let h = _mm_loadu_si128(w.cast::<u16>().add(at).cast());
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
                }
                _ => {
                    let q = _mm_loadl_epi64(w.cast::<i8>().add(at).cast());
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))
                }
            }
        }
    }

    /// `R` rows against one panel of format `F`, 2 × R accumulators.
    ///
    /// # Safety
    /// The tile's invariant holds for `R` rows, its format is `F`; the CPU has AVX2 and
    /// FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const F: u8, const R: usize>(t: &Tile) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let (x, w, k) = (t.x, t.w, t.k);
        for i in 0..k {
            // SAFETY: the panel holds k × 16 values and i < k; row r < R of x holds k
            // floats.
            unsafe {
                let w0 = load8::<F>(w, i, 0);
                let w1 = load8::<F>(w, i, 1);
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_broadcast_ss(&*x.add(r * k + i));
                    a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
                    a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let e = &t.epilogue;
            if e.plain() {
                // SAFETY: output row r < R has cols = 16 writable floats.
                unsafe {
                    _mm256_storeu_ps(e.out.add(r * e.ldo), a[0]);
                    _mm256_storeu_ps(e.out.add(r * e.ldo + 8), a[1]);
                }
            } else {
                let mut row = [0f32; PANEL];
                // SAFETY: `row` holds 16 floats; r < R.
                unsafe {
                    _mm256_storeu_ps(row.as_mut_ptr(), a[0]);
                    _mm256_storeu_ps(row.as_mut_ptr().add(8), a[1]);
                    e.finish(r, &mut row);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Tile, BF16, F32, INT8, PANEL};
    use std::arch::x86_64::*;

    /// `mr` (1 ≤ mr ≤ 12) rows against one or two panels.
    ///
    /// # Safety
    /// The invariants of `t0` and `t1` (if any) hold for `mr` rows, and they share `x`,
    /// `k` and the format; the CPU has AVX-512F, AVX2 and FMA.
    pub unsafe fn run(t0: &Tile, t1: Option<&Tile>, mr: usize) {
        macro_rules! dispatch {
            ($f:ident: $($r:literal)*) => {
                match (mr, t1) {
                    $(
                        ($r, Some(t1)) => tile::<$f, $r, true>(t0, t1),
                        ($r, None) => tile::<$f, $r, false>(t0, t0),
                    )*
                    _ => unreachable!("AVX-512 tile of {mr} rows"),
                }
            };
        }
        // SAFETY: as the caller promised, with R = mr and the tiles' format.
        unsafe {
            match t0.tag() {
                F32 => dispatch!(F32: 1 2 3 4 5 6 7 8 9 10 11 12),
                BF16 => dispatch!(BF16: 1 2 3 4 5 6 7 8 9 10 11 12),
                _ => dispatch!(INT8: 1 2 3 4 5 6 7 8 9 10 11 12),
            }
        }
    }

    /// The 16 weights of panel row `i`, widened to f32.
    ///
    /// # Safety
    /// `w` holds k × 16 values of format `F` and `i < k`; the CPU has AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn load16<const F: u8>(w: *const u8, i: usize) -> __m512 {
        let at = i * PANEL;
        // SAFETY: values at..at + 16 are inside the panel.
        unsafe {
            match F {
                F32 => _mm512_loadu_ps(w.cast::<f32>().add(at)),
                BF16 => {
                    let h = _mm256_loadu_si256(w.cast::<u16>().add(at).cast());
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
                }
                _ => {
                    let q = _mm_loadu_si128(w.cast::<i8>().add(at).cast());
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q))
                }
            }
        }
    }

    /// `R` rows against one panel, or two adjacent ones (`TWO`: `t1` is the second),
    /// 2 × R accumulators. Each output is a plain FMA chain over i = 0..k from zero, as
    /// in the AVX2 kernel, so the results are bit-identical to it.
    ///
    /// # Safety
    /// As [`run`] with `R` rows and format `F`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn tile<const F: u8, const R: usize, const TWO: bool>(t0: &Tile, t1: &Tile) {
        debug_assert!(t0.x == t1.x && t0.k == t1.k);
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let (x, w0p, w1p, k) = (t0.x, t0.w, t1.w, t0.k);
        for i in 0..k {
            // SAFETY: both panels hold k × 16 values and i < k; row r < R of x holds k
            // floats.
            unsafe {
                let w0 = load16::<F>(w0p, i);
                let w1 = if TWO { load16::<F>(w1p, i) } else { w0 };
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*x.add(r * k + i));
                    a[0] = _mm512_fmadd_ps(xv, w0, a[0]);
                    if TWO {
                        a[1] = _mm512_fmadd_ps(xv, w1, a[1]);
                    }
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: r < R rows, for both tiles.
            unsafe {
                t0.epilogue.store512(r, a[0]);
                if TWO {
                    t1.epilogue.store512(r, a[1]);
                }
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
            for format in FORMATS {
                check_against_naive(&x, &w, &b, (m, k, n), format);
            }
        }
    }

    const FORMATS: [WeightFormat; 3] = [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8];

    /// The matrix the kernels multiply by: W as stored, widened back to f32.
    fn stored(packed: &PackedWeight) -> Vec<f32> {
        let (n, k) = (packed.n, packed.k);
        let mut w = vec![0f32; n * k];
        for (j, row) in w.chunks_exact_mut(k).enumerate() {
            packed.row(j, row);
        }
        w
    }

    fn check_against_naive(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        (m, k, n): (usize, usize, usize),
        format: WeightFormat,
    ) {
        let packed = PackedWeight::pack_as(w, n, k, format);
        assert_eq!(packed.format(), format);
        let w = stored(&packed);
        // The dot-product layouts round x too: compare with x as they see it.
        let x_seen;
        let x = if let Panels::Dot(d) = &packed.panels {
            x_seen = encode_rows(d.kind(), x, k).decoded(d.kind(), k);
            &x_seen[..]
        } else {
            x
        };
        let relu: SliceActivation = |xs| xs.iter_mut().for_each(|v| *v = v.max(0.0));
        for (kernels, bias, act) in Kernels::all_supported().into_iter().flat_map(|ks| {
            [
                (ks, Some(b), None),
                (ks, None, None),
                (ks, Some(b), Some(relu)),
            ]
        }) {
            let mut out = vec![0f32; m * n];
            packed.matmul_with(kernels, x, bias, act, &mut out);
            if kernels == Kernels::chosen() {
                assert_eq!(out, packed.matmul_to_vec(x, bias, act));
            }
            let want = naive(x, &w, bias, k);
            for (g, e) in out.iter().zip(&want) {
                let e = act.map_or(*e, |f| {
                    let mut v = [*e];
                    f(&mut v);
                    v[0]
                });
                assert!((g - e).abs() < 1e-4, "{format:?} {m}x{k}x{n}: {g} vs {e}");
            }
        }
    }

    /// f32 is stored exactly; bf16 within 2⁻⁸ of each value (relative); int8
    /// within half a step of its row's scale, with the row's largest magnitude exact.
    #[test]
    fn stored_values_are_the_format_rounding_of_the_weights() {
        let (n, k) = (37, 29);
        let mut w = Lcg(5).take(n * k);
        w[3 * k..4 * k].fill(0.0);
        let exact = stored(&PackedWeight::pack_as(&w, n, k, WeightFormat::F32));
        assert_eq!(exact, w);
        let bf16 = stored(&PackedWeight::pack_as(&w, n, k, WeightFormat::Bf16));
        for (s, v) in bf16.iter().zip(&w) {
            assert!((s - v).abs() <= v.abs() / 256.0, "bf16 {v} stored as {s}");
        }
        let int8 = stored(&PackedWeight::pack_as(&w, n, k, WeightFormat::Int8));
        for (j, (s_row, w_row)) in int8.chunks(k).zip(w.chunks(k)).enumerate() {
            let amax = w_row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step = amax / 127.0;
            for (s, v) in s_row.iter().zip(w_row) {
                assert!(
                    (s - v).abs() <= step / 2.0 + 1e-7,
                    "row {j}: int8 {v} stored as {s}"
                );
            }
            let peak = s_row.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!((peak - amax).abs() <= 1e-6, "row {j}: {peak} vs {amax}");
        }
        assert!(int8[3 * k..4 * k].iter().all(|&v| v == 0.0));
    }

    /// The AVX-512 kernel computes each output as the same FMA chain as the AVX2 one
    /// (and the int8 dot-product kernel the same integers as its portable fallback),
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
            for (format, bias, act) in FORMATS.into_iter().flat_map(|f| {
                [
                    (f, None, None),
                    (f, Some(&b[..]), None),
                    (f, Some(&b[..]), Some(gelu)),
                ]
            }) {
                let packed = PackedWeight::pack_as(&w, n, k, format);
                let mut want = vec![0f32; m * n];
                let mut got = vec![1f32; m * n];
                packed.matmul_with(avx2, &x, bias, act, &mut want);
                packed.matmul_with(avx512, &x, bias, act, &mut got);
                // The bf16 instruction's sums may round differently from the portable
                // ones it is compared with; everything else must match to the bit.
                let bf16_dot =
                    matches!(&packed.panels, Panels::Dot(d) if d.kind() == DotKind::Bf16);
                let same = want.iter().zip(&got).all(|(a, b)| {
                    a.to_bits() == b.to_bits()
                        || bf16_dot && (a - b).abs() <= 1e-5 * a.abs().max(1.0)
                });
                assert!(same, "{format:?} {m}x{k}x{n}: AVX-512 differs from AVX2");
            }
        }
    }
}
