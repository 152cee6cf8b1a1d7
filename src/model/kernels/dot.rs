//! Linear layers as dot products of small groups of low-precision values, where the CPU
//! has the instructions: int8 × int8 with exact integer sums (AVX-512 VNNI `vpdpbusd`,
//! four multiply-adds per 32-bit lane) and bf16 × bf16 with f32 sums (AVX512_BF16
//! `vdpbf16ps`, two per lane). f32 FMA does one per lane, so these raise the compute
//! peak the encoder and wide decode steps are bound by, not only the bytes read.
//!
//! Both round the activations too, as CTranslate2's int8 and torch's bf16 do:
//! - **int8**: x is quantised on the fly with a scale per row and block of 64 inputs,
//!   `x[r, i] ≈ sx[r, b] · xq[r, i]` (`sx[r, b] = max_{i∈b} |x[r, i]| / 127`); weights
//!   are int8 with one scale per output (`s[j]`, over the whole row), and
//!   `y[r, j] = s[j] · Σ_b sx[r, b] · Σ_{i∈b} xq[r, i] · wq[j, i]`, the inner sums in
//!   32-bit integers. One scale per whole row of x (CTranslate2's choice) let a few
//!   large hidden dimensions coarsen all the others: teacher-forced next-token agreement
//!   with f32 on a MiniLM BERT2BERT was 0.86 that way, 0.92 with blocks of 64, 0.95 with
//!   int8 weights alone (`cargo bench --bench fidelity`).
//!   `vpdpbusd` multiplies unsigned by signed bytes, so x is stored as `xq + 128` and
//!   `128 · Σ_{i∈b} wq[j, i]` is taken off each block's sum.
//! - **bf16**: x and W rounded to bf16 (nearest even), products summed in f32.
//!
//! Layout: panels of 16 outputs as in `packed.rs`, k in groups of 4 bytes (four int8 or
//! two bf16): `[⌈k/g⌉][16][g]`, one 64-byte vector per group of a panel. x rows are
//! stored the same way, a group read as one 32-bit broadcast. int8 results are
//! bit-identical on every kernel set (the same integers, the same float epilogue); the
//! portable bf16 sum may differ from the instruction's in the last bits.

use rayon::prelude::*;

use super::activation::SliceActivation;
use super::dispatch::Kernels;
use super::epilogue::{for_each_tile, Epilogue, PANEL};
use super::rounding::{bf16_bits, int8_scale, quantize};

/// Bytes per group: one 32-bit lane.
const GROUP_BYTES: usize = 4;
/// Rows per SIMD call: 12 × 2 accumulators + 2 weight vectors + 1 broadcast of the 32
/// zmm registers.
const MR: usize = 12;
/// Groups of 4 int8 inputs per activation scale (64 inputs).
const BLOCK_GROUPS: usize = 16;
/// Rows per int8 SIMD call: 6 × 2 panels × (an integer and a float accumulator) + 2
/// weight vectors + 1 broadcast of the 32 zmm registers.
const MR_INT8: usize = 6;
/// Activations below this many are encoded on the calling thread.
const PARALLEL_ELEMENTS: usize = 1 << 16;

/// The element type of a dot-product layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotKind {
    Int8,
    Bf16,
}

impl DotKind {
    /// Values per group.
    fn group(self) -> usize {
        match self {
            DotKind::Int8 => 4,
            DotKind::Bf16 => 2,
        }
    }

    /// Whether `kernels` has this kind's instruction.
    fn native(self, kernels: Kernels) -> bool {
        match self {
            DotKind::Int8 => kernels.has_avx512_vnni(),
            DotKind::Bf16 => kernels.has_avx512_bf16(),
        }
    }
}

fn bf16_value(bytes: &[u8]) -> f32 {
    half::bf16::from_bits(u16::from_le_bytes([bytes[0], bytes[1]])).to_f32()
}

/// Rows of x in a kind's encoding, `stride` bytes each (k padded to whole groups with
/// the encoding of zero), and their int8 scales (`blocks` per row).
pub struct DotRows {
    stride: usize,
    blocks: usize,
    bytes: Vec<u8>,
    scales: Vec<f32>,
}

/// Int8 scale blocks of a row of `groups` groups.
fn blocks_of(groups: usize) -> usize {
    groups.div_ceil(BLOCK_GROUPS)
}

/// Encodes every row of `x` (`[m, k]`), rows in parallel.
pub fn encode_rows(kind: DotKind, x: &[f32], k: usize) -> DotRows {
    let groups = k.div_ceil(kind.group());
    let stride = groups * GROUP_BYTES;
    let blocks = blocks_of(groups);
    let m = x.len() / k;
    let zero = match kind {
        DotKind::Int8 => 128u8,
        DotKind::Bf16 => 0,
    };
    let mut bytes = vec![zero; m * stride];
    let mut scales = vec![1f32; m * blocks];
    let encode = |((out, s), row): ((&mut [u8], &mut [f32]), &[f32])| match kind {
        DotKind::Int8 => {
            let width = BLOCK_GROUPS * 4;
            for ((out, s), block) in out.chunks_mut(width).zip(s).zip(row.chunks(width)) {
                let (scale, inverse) = int8_scale(block);
                *s = scale;
                for (q, &v) in out.iter_mut().zip(block) {
                    *q = (i32::from(quantize(v, inverse)) + 128) as u8;
                }
            }
        }
        DotKind::Bf16 => {
            for (q, &v) in out.chunks_exact_mut(2).zip(row) {
                q.copy_from_slice(&bf16_bits(v).to_le_bytes());
            }
        }
    };
    // A decode step's few rows are encoded in microseconds: handing them to other
    // threads would cost more.
    if m * k < PARALLEL_ELEMENTS {
        let rows = bytes
            .chunks_mut(stride)
            .zip(scales.chunks_mut(blocks))
            .zip(x.chunks(k));
        rows.for_each(encode);
    } else {
        let rows = bytes
            .par_chunks_mut(stride)
            .zip(scales.par_chunks_mut(blocks))
            .zip(x.par_chunks(k));
        rows.for_each(encode);
    }
    DotRows {
        stride,
        blocks,
        bytes,
        scales,
    }
}

#[cfg(test)]
impl DotRows {
    /// The rows as the kernels see them, `k` floats each.
    pub fn decoded(&self, kind: DotKind, k: usize) -> Vec<f32> {
        self.bytes
            .chunks_exact(self.stride)
            .zip(self.scales.chunks_exact(self.blocks))
            .flat_map(|(row, s)| {
                (0..k).map(move |i| match kind {
                    DotKind::Int8 => (i32::from(row[i]) - 128) as f32 * s[i / (BLOCK_GROUPS * 4)],
                    DotKind::Bf16 => bf16_value(&row[2 * i..]),
                })
            })
            .collect()
    }
}

/// A weight matrix `[n, k]` in a kind's grouped panel layout.
#[derive(Debug, Clone)]
pub struct DotPanels {
    kind: DotKind,
    n: usize,
    k: usize,
    /// Groups per row of k.
    groups: usize,
    bytes: Vec<u8>,
    /// int8: the scale of each output, padded with zeros to whole panels.
    scales: Vec<f32>,
    /// int8: `128 · Σ_{i∈b} wq[j, i]` per panel, block b and output: `[panel][b][16]`.
    offsets: Vec<i32>,
}

impl DotPanels {
    /// Encodes and packs a row-major `[n, k]` matrix.
    pub fn pack(kind: DotKind, w: &[f32], n: usize, k: usize) -> Self {
        let g = kind.group();
        let groups = k.div_ceil(g);
        let panels = n.div_ceil(PANEL);
        let panel_bytes = groups * PANEL * GROUP_BYTES;
        let mut bytes = vec![0u8; panels * panel_bytes];
        let mut scales = vec![0f32; panels * PANEL];
        let blocks = blocks_of(groups);
        let mut offsets = vec![0i32; panels * blocks * PANEL];
        bytes
            .par_chunks_mut(panel_bytes)
            .zip(
                scales
                    .par_chunks_mut(PANEL)
                    .zip(offsets.par_chunks_mut(blocks * PANEL)),
            )
            .enumerate()
            .for_each(|(p, (panel, (scales, offsets)))| {
                let cols = PANEL.min(n - p * PANEL);
                let rows: Vec<&[f32]> = (0..cols).map(|c| &w[(p * PANEL + c) * k..][..k]).collect();
                let mut inverse = [0f32; PANEL];
                if kind == DotKind::Int8 {
                    for (c, row) in rows.iter().enumerate() {
                        (scales[c], inverse[c]) = int8_scale(row);
                    }
                }
                let mut sums = vec![[0i32; PANEL]; blocks];
                // Written in order, one 4-byte lane after another; the padding past k
                // and past n stays zero.
                for (gi, group) in panel.chunks_exact_mut(PANEL * GROUP_BYTES).enumerate() {
                    let i0 = gi * g;
                    let width = g.min(k - i0);
                    for (c, row) in rows.iter().enumerate() {
                        let lane = &mut group[c * GROUP_BYTES..][..GROUP_BYTES];
                        let values = &row[i0..i0 + width];
                        match kind {
                            DotKind::Int8 => {
                                for (b, &v) in lane.iter_mut().zip(values) {
                                    let q = quantize(v, inverse[c]);
                                    sums[gi / BLOCK_GROUPS][c] += i32::from(q);
                                    *b = q as u8;
                                }
                            }
                            DotKind::Bf16 => {
                                for (b, &v) in lane.chunks_exact_mut(2).zip(values) {
                                    b.copy_from_slice(&bf16_bits(v).to_le_bytes());
                                }
                            }
                        }
                    }
                }
                for (o, s) in offsets.iter_mut().zip(sums.iter().flatten()) {
                    *o = 128 * s;
                }
            });
        Self {
            kind,
            n,
            k,
            groups,
            bytes,
            scales,
            offsets,
        }
    }

    pub fn kind(&self) -> DotKind {
        self.kind
    }

    /// Row `j` as stored, decoded.
    pub fn row(&self, j: usize, out: &mut [f32]) {
        let g = self.kind.group();
        let panel = &self.bytes[(j / PANEL) * self.groups * PANEL * GROUP_BYTES..];
        let c = j % PANEL;
        for (i, o) in out.iter_mut().enumerate().take(self.k) {
            let at = ((i / g) * PANEL + c) * GROUP_BYTES + (i % g) * (4 / g);
            *o = match self.kind {
                DotKind::Int8 => f32::from(panel[at] as i8) * self.scales[j],
                DotKind::Bf16 => bf16_value(&panel[at..]),
            };
        }
    }

    /// Output rows `rows` × the columns of `panels`, from `x` encoded by
    /// [`encode_rows`] with this matrix's kind and k.
    ///
    /// # Safety
    /// `x` holds m rows; `rows ⊂ 0..m`, `panels ⊂ 0..⌈n/16⌉`; `bias`, if any, has n
    /// entries; `out` is valid for writes of m × n floats (row stride n) and nothing
    /// else accesses this block of them during the call.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block(
        &self,
        kernels: Kernels,
        x: &DotRows,
        bias: Option<&[f32]>,
        act: Option<SliceActivation>,
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
        out: *mut f32,
    ) {
        debug_assert_eq!(x.stride, self.groups * GROUP_BYTES);
        // SAFETY: row r < m of x, panel p < ⌈n/16⌉ with its 16 scales and offsets,
        // the bias from p·16, and output row r, column p·16 are inside their buffers,
        // as the caller promised for the rows and panels the tiles are made for.
        let tile = |r: usize, p: usize| unsafe {
            Tile {
                kind: self.kind,
                x: x.bytes.as_ptr().add(r * x.stride),
                sx: x.scales.as_ptr().add(r * x.blocks),
                groups: self.groups,
                w: self
                    .bytes
                    .as_ptr()
                    .add(p * self.groups * PANEL * GROUP_BYTES),
                offset: self
                    .offsets
                    .as_ptr()
                    .add(p * blocks_of(self.groups) * PANEL),
                epilogue: Epilogue {
                    scale: (self.kind == DotKind::Int8)
                        .then(|| self.scales.as_ptr().add(p * PANEL)),
                    bias: bias.map(|b| b.as_ptr().add(p * PANEL)),
                    act,
                    out: out.add(r * self.n + p * PANEL),
                    ldo: self.n,
                    cols: PANEL.min(self.n - p * PANEL),
                },
            }
        };
        let native = self.kind.native(kernels);
        let mr = match (native, self.kind) {
            (false, _) => 1,
            (true, DotKind::Int8) => MR_INT8,
            (true, DotKind::Bf16) => MR,
        };
        for_each_tile(rows, panels, mr, native, |r, rs, p, second| {
            let t0 = tile(r, p);
            #[cfg(target_arch = "x86_64")]
            if native {
                let t1 = second.map(|p1| tile(r, p1));
                // SAFETY: the tiles hold for rs ≤ MR rows (above); `kernels` exists only
                // for sets the CPU has, and `native` says it has the kind's instruction.
                unsafe { simd::run(&t0, t1.as_ref(), rs) };
                return;
            }
            // SAFETY: the tile holds for rs rows.
            unsafe { t0.portable(rs) };
        });
    }
}

/// One kernel call: some rows of encoded x against one panel.
///
/// Invariant (upheld in [`DotPanels::block`]): `x` is valid for reads of the tile's rows
/// of `groups · 4` bytes (row stride `groups · 4`) and `sx` of their block scales (row
/// stride: blocks); `w` for `groups · 64` bytes; `offset` for 16 per block; the
/// epilogue's for the tile's rows (its scales: int8 only).
struct Tile {
    kind: DotKind,
    x: *const u8,
    sx: *const f32,
    groups: usize,
    w: *const u8,
    offset: *const i32,
    epilogue: Epilogue,
}

impl Tile {
    /// The same sums without SIMD.
    ///
    /// # Safety
    /// The tile's invariant holds for `rows` rows.
    unsafe fn portable(&self, rows: usize) {
        let stride = self.groups * GROUP_BYTES;
        // SAFETY: as the invariant says.
        let (x, w) = unsafe {
            (
                std::slice::from_raw_parts(self.x, rows * stride),
                std::slice::from_raw_parts(self.w, stride * PANEL),
            )
        };
        for r in 0..rows {
            let xr = &x[r * stride..][..stride];
            let lanes = xr
                .chunks_exact(GROUP_BYTES)
                .zip(w.chunks_exact(PANEL * GROUP_BYTES));
            match self.kind {
                DotKind::Int8 => {
                    let mut total = [0f32; PANEL];
                    let blocks = lanes.collect::<Vec<_>>();
                    for (b, block) in blocks.chunks(BLOCK_GROUPS).enumerate() {
                        let mut acc = [0i32; PANEL];
                        for (xg, wg) in block {
                            for (a, wc) in acc.iter_mut().zip(wg.chunks_exact(GROUP_BYTES)) {
                                for (&xv, &wv) in xg.iter().zip(wc) {
                                    *a += i32::from(xv) * i32::from(wv as i8);
                                }
                            }
                        }
                        // SAFETY: r < rows and b < blocks.
                        unsafe { self.add_block(r, b, &acc, &mut total) };
                    }
                    // SAFETY: r < rows.
                    unsafe { self.epilogue.finish(r, &mut total) };
                }
                DotKind::Bf16 => {
                    let mut acc = [0f32; PANEL];
                    for (xg, wg) in lanes {
                        let (x0, x1) = (bf16_value(&xg[..2]), bf16_value(&xg[2..]));
                        for (a, wc) in acc.iter_mut().zip(wg.chunks_exact(GROUP_BYTES)) {
                            *a += x0 * bf16_value(&wc[..2]) + x1 * bf16_value(&wc[2..]);
                        }
                    }
                    // SAFETY: r < rows.
                    unsafe { self.epilogue.finish(r, &mut acc) };
                }
            }
        }
    }

    /// int8: `total += sx[r, b] · (acc − offset[b])`, with one rounding (a fused
    /// multiply-add, as the SIMD kernel does).
    ///
    /// # Safety
    /// The tile's invariant holds for more than `r` rows and `b` blocks.
    unsafe fn add_block(&self, r: usize, b: usize, acc: &[i32; PANEL], total: &mut [f32; PANEL]) {
        let blocks = blocks_of(self.groups);
        // SAFETY: as the invariant says.
        let (sx, offset) = unsafe {
            (
                *self.sx.add(r * blocks + b),
                std::slice::from_raw_parts(self.offset.add(b * PANEL), PANEL),
            )
        };
        for c in 0..PANEL {
            total[c] = ((acc[c] - offset[c]) as f32).mul_add(sx, total[c]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{blocks_of, DotKind, Tile, BLOCK_GROUPS, GROUP_BYTES, PANEL};
    use std::arch::x86_64::*;

    /// `rows` (1 ≤ rows ≤ 12 for bf16, ≤ 6 for int8) rows against one or two panels,
    /// with the kind's instruction.
    ///
    /// # Safety
    /// The invariants of `t0` and `t1` (if any) hold for `rows` rows, and they share x
    /// and the kind; the CPU has AVX-512F/BW and the kind's instruction (VNNI or BF16).
    pub unsafe fn run(t0: &Tile, t1: Option<&Tile>, rows: usize) {
        macro_rules! dispatch {
            ($kernel:ident: $($r:literal)*) => {
                match (rows, t1) {
                    $(
                        ($r, Some(t1)) => $kernel::<$r, true>(t0, t1),
                        ($r, None) => $kernel::<$r, false>(t0, t0),
                    )*
                    _ => unreachable!("tile of {rows} rows"),
                }
            };
        }
        // SAFETY: as the caller promised, with R = rows and the kernel of the kind.
        unsafe {
            match t0.kind {
                DotKind::Int8 => dispatch!(int8: 1 2 3 4 5 6),
                DotKind::Bf16 => dispatch!(bf16: 1 2 3 4 5 6 7 8 9 10 11 12),
            }
        }
    }

    /// The 64 weight bytes of group `g` of a panel.
    ///
    /// # Safety
    /// The panel holds more than `g` groups; the CPU has AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn weights(w: *const u8, g: usize) -> __m512i {
        // SAFETY: as the caller promised.
        unsafe { _mm512_loadu_si512(w.add(g * PANEL * GROUP_BYTES).cast()) }
    }

    /// Group `g` of x row `r`, broadcast to every lane.
    ///
    /// # Safety
    /// Row `r` of the tile's x holds more than `g` groups; the CPU has AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn x_group(t: &Tile, r: usize, g: usize) -> __m512i {
        let stride = t.groups * GROUP_BYTES;
        // SAFETY: as the caller promised.
        unsafe {
            _mm512_set1_epi32(
                t.x.add(r * stride + g * GROUP_BYTES)
                    .cast::<i32>()
                    .read_unaligned(),
            )
        }
    }

    /// int8: `R` rows × one panel, or two (`TWO`: `t1` is the second).
    ///
    /// # Safety
    /// As [`run`] with `R` rows, kind int8.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn int8<const R: usize, const TWO: bool>(t0: &Tile, t1: &Tile) {
        let mut total = [[_mm512_setzero_ps(); 2]; R];
        let blocks = blocks_of(t0.groups);
        for b in 0..blocks {
            let mut acc = [[_mm512_setzero_si512(); 2]; R];
            for g in b * BLOCK_GROUPS..((b + 1) * BLOCK_GROUPS).min(t0.groups) {
                // SAFETY: both panels and every row hold `groups` groups.
                unsafe {
                    let w0 = weights(t0.w, g);
                    let w1 = weights(t1.w, g);
                    for (r, a) in acc.iter_mut().enumerate() {
                        let xv = x_group(t0, r, g);
                        a[0] = _mm512_dpbusd_epi32(a[0], xv, w0);
                        if TWO {
                            a[1] = _mm512_dpbusd_epi32(a[1], xv, w1);
                        }
                    }
                }
            }
            // SAFETY: each panel has 16 offsets per block and each row a scale per
            // block, b < blocks.
            unsafe {
                let off0 = _mm512_loadu_si512(t0.offset.add(b * PANEL).cast());
                let off1 = _mm512_loadu_si512(t1.offset.add(b * PANEL).cast());
                for (r, (a, t)) in acc.iter().zip(total.iter_mut()).enumerate() {
                    let sx = _mm512_set1_ps(*t0.sx.add(r * blocks + b));
                    let s0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(a[0], off0));
                    t[0] = _mm512_fmadd_ps(s0, sx, t[0]);
                    if TWO {
                        let s1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(a[1], off1));
                        t[1] = _mm512_fmadd_ps(s1, sx, t[1]);
                    }
                }
            }
        }
        for (r, t) in total.iter().enumerate() {
            // SAFETY: r < R.
            unsafe {
                t0.epilogue.store512(r, t[0]);
                if TWO {
                    t1.epilogue.store512(r, t[1]);
                }
            }
        }
    }

    /// bf16: `R` rows × one panel, or two (`TWO`: `t1` is the second).
    ///
    /// # Safety
    /// As [`run`] with `R` rows, kind bf16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn bf16<const R: usize, const TWO: bool>(t0: &Tile, t1: &Tile) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for g in 0..t0.groups {
            // SAFETY: both panels and every row hold `groups` groups; __m512i and
            // __m512bh are the same 64 bytes.
            unsafe {
                let w0: __m512bh = std::mem::transmute(weights(t0.w, g));
                let w1: __m512bh = std::mem::transmute(weights(t1.w, g));
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv: __m512bh = std::mem::transmute(x_group(t0, r, g));
                    a[0] = _mm512_dpbf16_ps(a[0], xv, w0);
                    if TWO {
                        a[1] = _mm512_dpbf16_ps(a[1], xv, w1);
                    }
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: r < R.
            unsafe {
                t0.epilogue.store512(r, a[0]);
                if TWO {
                    t1.epilogue.store512(r, a[1]);
                }
            }
        }
    }
}
