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
    let (inputs, heads, beams, d) = q.dims4()?;
    let src = v.dims()[2];
    let padded = keys.dims()[2] * KEY_BLOCK;
    let scale = scale as f32;
    let mut out = vec![0f32; inputs * heads * beams * d];
    with_slice(q, |qs| {
        with_slice(keys, |ks| {
            with_slice(v, |vs| {
                with_slice(mask, |ms| {
                    out.par_chunks_mut(beams * d)
                        .enumerate()
                        .for_each(|(ih, out_ih)| {
                            let head = Head {
                                q: &qs[ih * beams * d..][..beams * d],
                                keys: &ks[ih * d * padded..][..d * padded],
                                v: &vs[ih * src * d..][..src * d],
                                mask: &ms[(ih / heads) * src..][..src],
                                d,
                                src,
                                padded,
                                scale,
                            };
                            head.attend(out_ih);
                        });
                    Ok(())
                })
            })
        })
    })?;
    Tensor::from_vec(out, (inputs, heads, beams, d), q.device())
}

/// One (input, head): all its query rows against its keys and values.
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

impl Head<'_> {
    fn attend(&self, out: &mut [f32]) {
        let rows = self.q.len() / self.d;
        // Scores, then in place the softmax weights: one row of `padded` per query row,
        // of which the first `src` are real keys.
        let mut weights = vec![0f32; rows * self.padded];
        self.scores(&mut weights);
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
        self.weighted_values(&weights, out);
    }

    fn scores(&self, scores: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: AVX2 and FMA are available (checked above); the slices have the
            // lengths `attention` cut them to.
            unsafe { avx2::scores(self, scores) };
            return;
        }
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

    fn weighted_values(&self, weights: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.d.is_multiple_of(8)
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as in `scores`.
            unsafe { avx2::weighted_values(self, weights, out) };
            return;
        }
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
    pub unsafe fn scores(h: &Head, scores: &mut [f32]) {
        let rows = h.q.len() / h.d;
        let mut r = 0;
        while r < rows {
            let group = (rows - r).min(GROUP);
            match group {
                4 => score_rows::<4, 1>(h, r, scores),
                3 => score_rows::<3, 1>(h, r, scores),
                2 => score_rows::<2, 2>(h, r, scores),
                _ => score_rows::<1, 4>(h, r, scores),
            }
            r += group;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn score_rows<const R: usize, const B: usize>(h: &Head, r0: usize, scores: &mut [f32]) {
        let blocks = h.padded / KEY_BLOCK;
        let mut b = 0;
        while b + B <= blocks {
            score_pass::<R, B>(h, r0, b, scores);
            b += B;
        }
        while b < blocks {
            score_pass::<R, 1>(h, r0, b, scores);
            b += 1;
        }
    }

    /// Rows `r0..r0 + R` against key blocks `b0..b0 + B`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn score_pass<const R: usize, const B: usize>(
        h: &Head,
        r0: usize,
        b0: usize,
        scores: &mut [f32],
    ) {
        let (d, src, padded) = (h.d, h.src, h.padded);
        let q = h.q.as_ptr();
        let keys = h.keys.as_ptr().add(b0 * KEY_BLOCK * d);
        let mut acc = [[[_mm256_setzero_ps(); 2]; B]; R];
        for j in 0..d {
            let mut k = [[_mm256_setzero_ps(); 2]; B];
            for (b, kb) in k.iter_mut().enumerate() {
                let row = keys.add((b * d + j) * KEY_BLOCK);
                kb[0] = _mm256_loadu_ps(row);
                kb[1] = _mm256_loadu_ps(row.add(8));
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let qv = _mm256_broadcast_ss(&*q.add((r0 + r) * d + j));
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
                _mm256_storeu_ps(block.as_mut_ptr(), _mm256_mul_ps(ab[0], scale));
                _mm256_storeu_ps(block.as_mut_ptr().add(8), _mm256_mul_ps(ab[1], scale));
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
    pub unsafe fn weighted_values(h: &Head, weights: &[f32], out: &mut [f32]) {
        let rows = h.q.len() / h.d;
        let mut r = 0;
        while r < rows {
            let group = (rows - r).min(GROUP);
            match group {
                4 => value_rows::<4, 2>(h, r, weights, out),
                3 => value_rows::<3, 2>(h, r, weights, out),
                2 => value_rows::<2, 4>(h, r, weights, out),
                _ => value_rows::<1, 8>(h, r, weights, out),
            }
            r += group;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn value_rows<const R: usize, const W: usize>(
        h: &Head,
        r0: usize,
        weights: &[f32],
        out: &mut [f32],
    ) {
        let mut c = 0;
        while c + 8 * W <= h.d {
            value_pass::<R, W>(h, r0, c, weights, out);
            c += 8 * W;
        }
        while c < h.d {
            value_pass::<R, 1>(h, r0, c, weights, out);
            c += 8;
        }
    }

    /// Rows `r0..r0 + R`, output columns `c0..c0 + 8W`.
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
                let ahead = v.add((t + 8) * d) as *const i8;
                for line in (0..row_bytes).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.add(line));
                }
            }
            let mut vt = [_mm256_setzero_ps(); W];
            for (i, x) in vt.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(v.add(t * d + c0 + 8 * i));
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let wv = _mm256_broadcast_ss(&*w.add((r0 + r) * padded + t));
                for (ai, x) in a.iter_mut().zip(&vt) {
                    *ai = _mm256_fmadd_ps(wv, *x, *ai);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let o = out.as_mut_ptr().add((r0 + r) * d + c0);
            for (i, x) in a.iter().enumerate() {
                _mm256_storeu_ps(o.add(8 * i), *x);
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
            let got = attention(&q, &pack_keys(&k).unwrap(), &v, &mask, 0.125).unwrap();
            let want = reference::attention(&q, &k, &v, &mask, 0.125);
            let diff = reference::max_diff(&got, &want);
            assert!(diff < 1e-5, "beams {beams} src {src} d {d}: {diff}");
        }
    }
}
