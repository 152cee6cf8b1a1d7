//! Attention for decode steps: a few query rows per (input, head) against a cached
//! key/value sequence. Batched GEMM calls would spend their time dispatching hundreds
//! of tiny products across threads; here every (input, head) pair is one task that
//! computes its scores, softmax and weighted sum of values in place.

use candle_core::{DType, Result, Tensor};

use super::cpu::{dot, with_slice};
use rayon::prelude::*;

/// Query rows up to which this kernel is used instead of batched GEMM.
pub const MAX_QUERY_ROWS: usize = 16;

pub fn eligible(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    q.device().is_cpu()
        && [q, k, v]
            .iter()
            .all(|t| t.dtype() == DType::F32 && t.is_contiguous() && t.rank() == 4)
        && q.dims()[2] <= MAX_QUERY_ROWS
}

/// softmax(q kᵀ·scale + mask) v. `q`: `[b, h, lq, d]`, `k`/`v`: `[b, h, lk, d]`,
/// `mask`: additive, `[b, 1, 1, lk]` (f32) or none.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (b, h, lq, d) = q.dims4()?;
    let lk = k.dims()[2];
    let scale = scale as f32;
    let mask = match mask {
        Some(m) => Some(m.to_dtype(DType::F32)?.contiguous()?),
        None => None,
    };
    let mut out = vec![0f32; b * h * lq * d];
    with_slice(q, |qs| {
        with_slice(k, |ks| {
            with_slice(v, |vs| {
                let mut run = |ms: Option<&[f32]>| {
                    out.par_chunks_mut(lq * d)
                        .enumerate()
                        .for_each(|(bh, out_bh)| {
                            let batch = bh / h;
                            let kb = &ks[bh * lk * d..][..lk * d];
                            let vb = &vs[bh * lk * d..][..lk * d];
                            let mb = ms.map(|m| &m[batch * lk..][..lk]);
                            let mut scores = vec![0f32; lk];
                            for i in 0..lq {
                                let qi = &qs[(bh * lq + i) * d..][..d];
                                attend_row(
                                    qi,
                                    |t| &kb[t * d..][..d],
                                    |t| &vb[t * d..][..d],
                                    mb,
                                    scale,
                                    &mut scores,
                                    &mut out_bh[i * d..][..d],
                                );
                            }
                        });
                };
                match &mask {
                    Some(m) => with_slice(m, |ms| {
                        run(Some(ms));
                        Ok(())
                    }),
                    None => {
                        run(None);
                        Ok(())
                    }
                }
            })
        })
    })?;
    Tensor::from_vec(out, (b, h, lq, d), q.device())
}

/// One query row against `scores.len()` keys; `key(t)` and `value(t)` give position
/// t's vectors (contiguous rows here, scattered slots in the decoder's cache).
pub fn attend_row<'a>(
    qi: &[f32],
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    mask: Option<&[f32]>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if qi.len().is_multiple_of(8)
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { avx2::attend_row(qi, key, value, mask, scale, scores, out) };
        return;
    }
    for (t, s) in scores.iter_mut().enumerate() {
        *s = dot(qi, key(t)) * scale + mask.map_or(0.0, |m| m[t]);
    }
    let sum = softmax_numerators(scores);
    out.fill(0.0);
    for (t, &p) in scores.iter().enumerate() {
        let w = p / sum;
        for (o, &x) in out.iter_mut().zip(value(t)) {
            *o += w * x;
        }
    }
}

/// Replaces scores by exp(score − max) and returns their sum.
fn softmax_numerators(scores: &mut [f32]) -> f32 {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Sums of each of eight vectors, as one vector: `[Σa₀, Σa₁, …, Σa₇]`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sum8(a: &[__m256; 8]) -> __m256 {
        let h01 = _mm256_hadd_ps(a[0], a[1]);
        let h23 = _mm256_hadd_ps(a[2], a[3]);
        let h45 = _mm256_hadd_ps(a[4], a[5]);
        let h67 = _mm256_hadd_ps(a[6], a[7]);
        let h0123 = _mm256_hadd_ps(h01, h23);
        let h4567 = _mm256_hadd_ps(h45, h67);
        let lo = _mm256_permute2f128_ps(h0123, h4567, 0x20);
        let hi = _mm256_permute2f128_ps(h0123, h4567, 0x31);
        _mm256_add_ps(lo, hi)
    }

    /// Scores eight keys at a time (eight dot products reduced together, no horizontal
    /// sum per key), softmax, then the weighted sum of values with the output row held
    /// in registers. `qi.len()` is a multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn attend_row<'a>(
        qi: &[f32],
        key: impl Fn(usize) -> &'a [f32],
        value: impl Fn(usize) -> &'a [f32],
        mask: Option<&[f32]>,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let d = qi.len();
        let lk = scores.len();
        assert_eq!(out.len(), d);
        let q = qi.as_ptr();
        let scale_v = _mm256_set1_ps(scale);
        let mut t = 0;
        while t + 8 <= lk {
            let keys: [&[f32]; 8] = std::array::from_fn(|u| key(t + u));
            assert!(keys.iter().all(|k| k.len() >= d));
            let mut acc = [_mm256_setzero_ps(); 8];
            for c in (0..d).step_by(8) {
                let qv = _mm256_loadu_ps(q.add(c));
                for (a, k) in acc.iter_mut().zip(&keys) {
                    *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.as_ptr().add(c)), *a);
                }
            }
            let mut s = _mm256_mul_ps(sum8(&acc), scale_v);
            if let Some(m) = mask {
                s = _mm256_add_ps(s, _mm256_loadu_ps(m.as_ptr().add(t)));
            }
            _mm256_storeu_ps(scores.as_mut_ptr().add(t), s);
            t += 8;
        }
        for (t, s) in scores.iter_mut().enumerate().skip(t) {
            *s = super::dot(qi, &key(t)[..d]) * scale + mask.map_or(0.0, |m| m[t]);
        }
        let sum = super::softmax_numerators(scores);

        // Output columns in blocks of up to 64 (eight registers).
        for c0 in (0..d).step_by(64) {
            let width = (d - c0).min(64) / 8;
            let mut o = [_mm256_setzero_ps(); 8];
            for (t, &p) in scores.iter().enumerate() {
                let w = _mm256_set1_ps(p / sum);
                let vt = value(t);
                assert!(vt.len() >= d);
                let row = vt.as_ptr().add(c0);
                for (j, oj) in o.iter_mut().enumerate().take(width) {
                    *oj = _mm256_fmadd_ps(w, _mm256_loadu_ps(row.add(j * 8)), *oj);
                }
            }
            for (j, oj) in o.iter().enumerate().take(width) {
                _mm256_storeu_ps(out.as_mut_ptr().add(c0 + j * 8), *oj);
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
        // (query rows, keys, head dim): blocks of eight keys with and without a tail,
        // head dims below, at and above one 64-wide output block, and one not a
        // multiple of 8 (the portable path).
        for (lq, lk, d) in [
            (4, 5, 8),
            (3, 37, 64),
            (1, 16, 72),
            (2, 19, 12),
            (4, 256, 64),
        ] {
            let [q, k, v, mask] = reference::inputs(lq, lk, d, 2);
            let got = attention(&q, &k, &v, Some(&mask), 0.3).unwrap();
            let want = reference::attention(&q, &k, &v, &mask, 0.3);
            let diff = reference::max_diff(&got, &want);
            assert!(diff < 1e-5, "lq {lq} lk {lk} d {d}: {diff}");
        }
    }
}
