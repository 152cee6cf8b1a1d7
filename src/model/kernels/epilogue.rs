//! What happens to a tile's finished sums, in every kernel: times the per-output int8
//! scales, plus the bias, through the activation, into the output rows. One place, so
//! the SIMD and portable paths of every layout apply the same operations in the same
//! order (which is what keeps them bit-identical).

use super::activation::SliceActivation;

/// Outputs per panel.
pub(super) const PANEL: usize = 16;

/// The output side of one tile.
///
/// Invariant (upheld where tiles are made): `scale`, if any, is valid for 16 floats;
/// `bias`, if any, for `cols`; `out` for writes of the tile's rows of `cols` floats (row
/// stride `ldo`) that nothing else accesses meanwhile; `cols ≤ 16`.
#[derive(Clone, Copy)]
pub(super) struct Epilogue {
    pub scale: Option<*const f32>,
    pub bias: Option<*const f32>,
    pub act: Option<SliceActivation>,
    pub out: *mut f32,
    pub ldo: usize,
    pub cols: usize,
}

impl Epilogue {
    /// Scales, adds the bias, applies the activation and writes the valid columns of
    /// row `r`.
    ///
    /// # Safety
    /// The invariant holds for more than `r` rows.
    pub unsafe fn finish(&self, r: usize, row: &mut [f32; PANEL]) {
        if let Some(s) = self.scale {
            // SAFETY: the scale pointer is valid for 16 floats.
            let s = unsafe { std::slice::from_raw_parts(s, PANEL) };
            for (v, &sc) in row.iter_mut().zip(s) {
                *v *= sc;
            }
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
        // SAFETY: output row r has `cols` writable floats; `row` is the caller's local.
        unsafe {
            std::ptr::copy_nonoverlapping(row.as_ptr(), self.out.add(r * self.ldo), self.cols)
        };
    }

    /// Whether a row needs nothing but the store (a whole panel, no scale, bias or
    /// activation).
    pub fn plain(&self) -> bool {
        self.cols == PANEL && self.scale.is_none() && self.bias.is_none() && self.act.is_none()
    }

    /// [`Self::finish`] from a register: scale and bias in the register, the
    /// activation in place in the output. A partial panel goes through `finish`.
    ///
    /// # Safety
    /// The invariant holds for more than `r` rows; the CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn store512(&self, r: usize, mut v: std::arch::x86_64::__m512) {
        use std::arch::x86_64::*;
        // SAFETY: the scales are valid for 16 floats, and with cols = 16 the bias and
        // output row r are too; nothing else accesses that row meanwhile.
        unsafe {
            if self.cols < PANEL {
                let mut row = [0f32; PANEL];
                _mm512_storeu_ps(row.as_mut_ptr(), v);
                return self.finish(r, &mut row);
            }
            if let Some(s) = self.scale {
                v = _mm512_mul_ps(v, _mm512_loadu_ps(s));
            }
            if let Some(b) = self.bias {
                v = _mm512_add_ps(v, _mm512_loadu_ps(b));
            }
            let out = self.out.add(r * self.ldo);
            _mm512_storeu_ps(out, v);
            if let Some(act) = self.act {
                act(std::slice::from_raw_parts_mut(out, PANEL));
            }
        }
    }
}

/// Splits `rows` into tiles of at most `mr` rows, as even as possible (32 rows by 6:
/// 6+6+5+5+5+5, not 6×5+2: a tile of one or two rows has too few accumulators to hide
/// the FMA latency), and walks `panels` one at a time, or two (`pairs`). Calls
/// `f(first row, rows, panel, second panel)` for each tile.
pub(super) fn for_each_tile(
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    mr: usize,
    pairs: bool,
    mut f: impl FnMut(usize, usize, usize, Option<usize>),
) {
    let tiles = rows.len().div_ceil(mr);
    let mut r = rows.start;
    for tile_index in 0..tiles {
        let rs = rows.len() / tiles + usize::from(tile_index < rows.len() % tiles);
        let mut p = panels.start;
        while p < panels.end {
            let second = (pairs && p + 1 < panels.end).then_some(p + 1);
            f(r, rs, p, second);
            p += if second.is_some() { 2 } else { 1 };
        }
        r += rs;
    }
}
