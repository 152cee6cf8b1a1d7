//! Decode-step cross-attention on the CPU: the beams of one input are the query rows of
//! one attention against that input's encoder keys and values.
//!
//! Keys are packed when the encoder runs (once per input) into blocks of 16 keys stored
//! transposed, `[src_len/16][head_dim][16]` (see [`pack_keys`]): the scores of a group of
//! beams against one block are two vector accumulators per beam, updated with one
//! broadcast per (beam, dimension). Every key vector loaded serves all beams of the
//! group, no horizontal sums are needed, and the keys are read front to back. The
//! weighted sum of values works the same way, over up to 64 output columns per pass.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::cpu::with_slice;
use super::dispatch::Kernels;

/// Query rows per register group (4 rows × 2 vectors = 8 accumulators).
const GROUP: usize = 4;
/// Keys per packed block.
pub const KEY_BLOCK: usize = 16;

/// `[inputs, heads, src, d]` → `[inputs, heads, ⌈src/16⌉, d, 16]`, the last block padded
/// with zero keys (masked out by [`attention`]).
pub fn pack_keys(k: &Tensor) -> Result<Tensor> {
    let (inputs, heads, src, d) = k.dims4()?;
    let blocks = src.div_ceil(KEY_BLOCK);
    k.pad_with_zeros(2, 0, blocks * KEY_BLOCK - src)?
        .reshape((inputs, heads, blocks, KEY_BLOCK, d))?
        .transpose(3, 4)?
        .contiguous()
}

/// softmax(q Kᵀ · scale + mask) v for `q` `[inputs, heads, beams, d]`, `keys` from
/// [`pack_keys`], `v` `[inputs, heads, src, d]`, `mask` `[inputs, 1, 1, src]`
/// (additive), all contiguous f32 on the CPU. Returns `[inputs, heads, beams, d]`.
pub fn attention(
    q: &Tensor,
    keys: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    attention_with(Kernels::chosen(), q, keys, v, mask, scale)
}

/// [`attention`] with the given kernel set.
pub fn attention_with(
    kernels: Kernels,
    q: &Tensor,
    keys: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let (inputs, heads, beams, d) = q.dims4()?;
    let src = v.dims()[2];
    let blocks = src.div_ceil(KEY_BLOCK);
    let padded = blocks * KEY_BLOCK;
    if keys.dims() != [inputs, heads, blocks, d, KEY_BLOCK]
        || v.dims() != [inputs, heads, src, d]
        || mask.elem_count() != inputs * src
    {
        candle_core::bail!(
            "cross-attention: queries {:?}, packed keys {:?}, values {:?} and mask {:?} \
             do not match",
            q.dims(),
            keys.dims(),
            v.dims(),
            mask.dims()
        )
    }
    let scale = scale as f32;
    let mut out = vec![0f32; inputs * heads * beams * d];
    with_slice(q, |qs| {
        with_slice(keys, |ks| {
            with_slice(v, |vs| {
                with_slice(mask, |ms| {
                    out.par_chunks_mut(beams * d)
                        .enumerate()
                        .for_each(|(ih, out_ih)| {
                            let head = Head::new(
                                &qs[ih * beams * d..][..beams * d],
                                &ks[ih * d * padded..][..d * padded],
                                &vs[ih * src * d..][..src * d],
                                &ms[(ih / heads) * src..][..src],
                                scale,
                            );
                            head.attend(kernels, out_ih);
                        });
                    Ok(())
                })
            })
        })
    })?;
    Tensor::from_vec(out, (inputs, heads, beams, d), q.device())
}

/// One (input, head): softmax(q Kᵀ · scale + mask) v for `q` `[rows, d]`, `keys` one
/// head of [`pack_keys`] (`[⌈src/16⌉, d, 16]`), `v` `[src, d]`, `mask` `[src]`
/// (additive). Writes `[rows, d]` into `out`.
pub fn attend_head(
    kernels: Kernels,
    q: &[f32],
    keys: &[f32],
    v: &[f32],
    mask: &[f32],
    scale: f32,
    out: &mut [f32],
) {
    Head::new(q, keys, v, mask, scale).attend(kernels, out);
}

/// One (input, head): all its query rows against its keys and values.
///
/// Invariants (checked by [`Head::new`], relied on by the AVX2 loads): `q` holds
/// `rows · d` floats, `keys` `d · padded`, `v` `src · d`, `mask` `src`, where `padded`
/// is `src` rounded up to a multiple of 16.
struct Head<'a> {
    q: &'a [f32],
    /// Packed keys, `[padded / 16][d][16]`.
    keys: &'a [f32],
    v: &'a [f32],
    mask: &'a [f32],
    d: usize,
    src: usize,
    /// `src` rounded up to whole key blocks.
    padded: usize,
    scale: f32,
}

impl<'a> Head<'a> {
    fn new(q: &'a [f32], keys: &'a [f32], v: &'a [f32], mask: &'a [f32], scale: f32) -> Self {
        let src = mask.len();
        let padded = src.div_ceil(KEY_BLOCK) * KEY_BLOCK;
        assert!(
            src > 0 && v.len().is_multiple_of(src),
            "cross-attention: values"
        );
        let d = v.len() / src;
        assert!(
            d > 0 && q.len().is_multiple_of(d),
            "cross-attention: queries"
        );
        assert_eq!(keys.len(), d * padded, "cross-attention: packed keys");
        Self {
            q,
            keys,
            v,
            mask,
            d,
            src,
            padded,
            scale,
        }
    }

    fn rows(&self) -> usize {
        self.q.len() / self.d
    }

    fn attend(&self, kernels: Kernels, out: &mut [f32]) {
        let rows = self.rows();
        assert_eq!(out.len(), rows * self.d, "cross-attention: output");
        // Scores, then in place the softmax weights: one row of `padded` per query row,
        // of which the first `src` are real keys.
        let mut weights = vec![0f32; rows * self.padded];
        self.scores(kernels, &mut weights);
        for row in weights.chunks_mut(self.padded) {
            let row = &mut row[..self.src];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let mut sum = 0f32;
            for w in row.iter_mut() {
                *w = (*w - max).exp();
                sum += *w;
            }
            for w in row.iter_mut() {
                *w /= sum;
            }
        }
        self.weighted_values(kernels, &weights, out);
    }

    /// Scaled, masked scores into `scores` (`rows · padded`; the padding is left as it is).
    fn scores(&self, kernels: Kernels, scores: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if kernels.has_avx2() {
            // SAFETY: `kernels` exists only for sets this CPU supports, and this one
            // includes AVX2 and FMA.
            unsafe { avx2::scores(self, scores) };
            return;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = kernels;
        let (d, src, padded) = (self.d, self.src, self.padded);
        for (r, row) in scores.chunks_mut(padded).enumerate() {
            let q = &self.q[r * d..][..d];
            for (t, s) in row.iter_mut().enumerate().take(src) {
                let block = &self.keys[(t / KEY_BLOCK) * d * KEY_BLOCK..];
                let dot: f32 = (0..d)
                    .map(|j| q[j] * block[j * KEY_BLOCK + t % KEY_BLOCK])
                    .sum();
                *s = dot * self.scale + self.mask[t];
            }
        }
    }

    fn weighted_values(&self, kernels: Kernels, weights: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.d.is_multiple_of(8) && kernels.has_avx2() {
            // SAFETY: as in `scores`.
            unsafe { avx2::weighted_values(self, weights, out) };
            return;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = kernels;
        let (d, src) = (self.d, self.src);
        out.fill(0.0);
        for (r, o) in out.chunks_mut(d).enumerate() {
            for t in 0..src {
                let w = weights[r * self.padded + t];
                for (oj, &x) in o.iter_mut().zip(&self.v[t * d..][..d]) {
                    *oj += w * x;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Head, GROUP, KEY_BLOCK};
    use std::arch::x86_64::*;

    // Register blocking: R query rows × 8 vectors of accumulators. With fewer rows, a
    // pass covers more key blocks (scores) or more output columns (values), so that
    // there are always eight independent FMA chains.

    /// Scores in passes of (up to 4 rows) × (up to 4 blocks of 16 keys).
    #[target_feature(enable = "avx2,fma")]
    pub fn scores(h: &Head, scores: &mut [f32]) {
        let rows = h.rows();
        assert_eq!(scores.len(), rows * h.padded);
        let mut r = 0;
        while r < rows {
            let group = (rows - r).min(GROUP);
            // SAFETY: r + group ≤ rows, and `scores` is rows × padded (asserted above).
            unsafe {
                match group {
                    4 => score_rows::<4, 1>(h, r, scores),
                    3 => score_rows::<3, 1>(h, r, scores),
                    2 => score_rows::<2, 2>(h, r, scores),
                    _ => score_rows::<1, 4>(h, r, scores),
                }
            }
            r += group;
        }
    }

    /// # Safety
    /// `r0 + R ≤ h.rows()` and `scores.len() == h.rows() · h.padded`; the CPU has AVX2
    /// and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn score_rows<const R: usize, const B: usize>(h: &Head, r0: usize, scores: &mut [f32]) {
        let blocks = h.padded / KEY_BLOCK;
        let mut b = 0;
        // SAFETY: every pass covers blocks b..b + B ≤ blocks; rows as the caller promised.
        unsafe {
            while b + B <= blocks {
                score_pass::<R, B>(h, r0, b, scores);
                b += B;
            }
            while b < blocks {
                score_pass::<R, 1>(h, r0, b, scores);
                b += 1;
            }
        }
    }

    /// Rows `r0..r0 + R` against key blocks `b0..b0 + B`.
    ///
    /// # Safety
    /// `r0 + R ≤ h.rows()`, `b0 + B ≤ h.padded / 16`, `scores.len() == h.rows() ·
    /// h.padded`, and `h` keeps its invariants; the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn score_pass<const R: usize, const B: usize>(
        h: &Head,
        r0: usize,
        b0: usize,
        scores: &mut [f32],
    ) {
        let (d, src, padded) = (h.d, h.src, h.padded);
        let q = h.q.as_ptr();
        // SAFETY: block b0 starts at b0 · 16 · d < padded · d = h.keys.len().
        let keys = unsafe { h.keys.as_ptr().add(b0 * KEY_BLOCK * d) };
        let mut acc = [[[_mm256_setzero_ps(); 2]; B]; R];
        for j in 0..d {
            let mut k = [[_mm256_setzero_ps(); 2]; B];
            for (b, kb) in k.iter_mut().enumerate() {
                // SAFETY: the 16 keys of dimension j in block b0 + b end at
                // ((b0 + b) · d + j + 1) · 16 ≤ padded · d = h.keys.len().
                unsafe {
                    let row = keys.add((b * d + j) * KEY_BLOCK);
                    kb[0] = _mm256_loadu_ps(row);
                    kb[1] = _mm256_loadu_ps(row.add(8));
                }
            }
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: (r0 + r) · d + j < rows · d = h.q.len().
                let qv = unsafe { _mm256_broadcast_ss(&*q.add((r0 + r) * d + j)) };
                for (ab, kb) in a.iter_mut().zip(&k) {
                    ab[0] = _mm256_fmadd_ps(qv, kb[0], ab[0]);
                    ab[1] = _mm256_fmadd_ps(qv, kb[1], ab[1]);
                }
            }
        }
        let scale = _mm256_set1_ps(h.scale);
        for (r, a) in acc.iter().enumerate() {
            for (b, ab) in a.iter().enumerate() {
                let t = (b0 + b) * KEY_BLOCK;
                let mut block = [0f32; KEY_BLOCK];
                // SAFETY: `block` holds 16 floats.
                unsafe {
                    _mm256_storeu_ps(block.as_mut_ptr(), _mm256_mul_ps(ab[0], scale));
                    _mm256_storeu_ps(block.as_mut_ptr().add(8), _mm256_mul_ps(ab[1], scale));
                }
                let valid = src.saturating_sub(t).min(KEY_BLOCK);
                let row = &mut scores[(r0 + r) * padded + t..][..valid];
                for ((s, x), m) in row.iter_mut().zip(block).zip(&h.mask[t..]) {
                    *s = x + m;
                }
            }
        }
    }

    /// out[r] = Σ_t w[r, t] · v[t], in passes of (up to 4 rows) × (up to 64 columns).
    #[target_feature(enable = "avx2,fma")]
    pub fn weighted_values(h: &Head, weights: &[f32], out: &mut [f32]) {
        let rows = h.rows();
        assert!(h.d.is_multiple_of(8));
        assert_eq!(weights.len(), rows * h.padded);
        assert_eq!(out.len(), rows * h.d);
        let mut r = 0;
        while r < rows {
            let group = (rows - r).min(GROUP);
            // SAFETY: r + group ≤ rows; the lengths are asserted above.
            unsafe {
                match group {
                    4 => value_rows::<4, 2>(h, r, weights, out),
                    3 => value_rows::<3, 2>(h, r, weights, out),
                    2 => value_rows::<2, 4>(h, r, weights, out),
                    _ => value_rows::<1, 8>(h, r, weights, out),
                }
            }
            r += group;
        }
    }

    /// # Safety
    /// `r0 + R ≤ h.rows()`, `h.d` a multiple of 8, `weights.len() == h.rows() ·
    /// h.padded`, `out.len() == h.rows() · h.d`; the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn value_rows<const R: usize, const W: usize>(
        h: &Head,
        r0: usize,
        weights: &[f32],
        out: &mut [f32],
    ) {
        let mut c = 0;
        // SAFETY: every pass covers columns c..c + 8W ≤ d (d is a multiple of 8).
        unsafe {
            while c + 8 * W <= h.d {
                value_pass::<R, W>(h, r0, c, weights, out);
                c += 8 * W;
            }
            while c < h.d {
                value_pass::<R, 1>(h, r0, c, weights, out);
                c += 8;
            }
        }
    }

    /// Rows `r0..r0 + R`, output columns `c0..c0 + 8W`.
    ///
    /// # Safety
    /// As [`value_rows`], and `c0 + 8W ≤ h.d`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn value_pass<const R: usize, const W: usize>(
        h: &Head,
        r0: usize,
        c0: usize,
        weights: &[f32],
        out: &mut [f32],
    ) {
        let (d, src, padded) = (h.d, h.src, h.padded);
        let (v, w) = (h.v.as_ptr(), weights.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); W]; R];
        // A pass reads 32·W bytes of each value row; the first also fetches the whole
        // row a few rows ahead, so the later passes find it in cache and the first one
        // is not left waiting on strided misses.
        let row_bytes = d * 4;
        for t in 0..src {
            if c0 == 0 && t + 8 < src {
                // SAFETY: value row t + 8 < src lies inside h.v, and so does every
                // cache line of it that is prefetched (a hint; it reads nothing).
                unsafe {
                    let ahead = v.add((t + 8) * d) as *const i8;
                    for line in (0..row_bytes).step_by(64) {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.add(line));
                    }
                }
            }
            let mut vt = [_mm256_setzero_ps(); W];
            for (i, x) in vt.iter_mut().enumerate() {
                // SAFETY: t · d + c0 + 8i + 8 ≤ t · d + d ≤ src · d = h.v.len().
                *x = unsafe { _mm256_loadu_ps(v.add(t * d + c0 + 8 * i)) };
            }
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: (r0 + r) · padded + t < rows · padded = weights.len().
                let wv = unsafe { _mm256_broadcast_ss(&*w.add((r0 + r) * padded + t)) };
                for (ai, x) in a.iter_mut().zip(&vt) {
                    *ai = _mm256_fmadd_ps(wv, *x, *ai);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (i, x) in a.iter().enumerate() {
                // SAFETY: (r0 + r) · d + c0 + 8i + 8 ≤ rows · d = out.len().
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add((r0 + r) * d + c0 + 8 * i), *x) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::cpu::reference;

    #[test]
    fn matches_the_gemm_formulation() {
        // (beams, source length, head dim): full blocks of 16 keys and tails, row groups
        // of 4 and remainders, head dims with 16-column blocks, an 8-column tail, and
        // one not a multiple of 8 (the portable path).
        for (beams, src, d) in [
            (4, 256, 64),
            (5, 37, 24),
            (1, 9, 8),
            (3, 40, 12),
            (6, 16, 16),
        ] {
            let [q, k, v, mask] = reference::inputs(beams, src, d, 3);
            let want = reference::attention(&q, &k, &v, &mask, 0.125);
            for kernels in Kernels::all_supported() {
                let got =
                    attention_with(kernels, &q, &pack_keys(&k).unwrap(), &v, &mask, 0.125).unwrap();
                let diff = reference::max_diff(&got, &want);
                let set = kernels.set();
                assert!(diff < 1e-5, "{set:?} beams {beams} src {src} d {d}: {diff}");
            }
        }
    }
}
