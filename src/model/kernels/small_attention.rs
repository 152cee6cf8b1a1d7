//! Attention for decode steps: a few query rows per (input, head) against a cached
//! key/value sequence. Batched GEMM calls would spend their time dispatching hundreds
//! of tiny products across threads; here every (input, head) pair is one task that
//! computes its scores, softmax and weighted sum of values in place.

use candle_core::{DType, Result, Tensor};

use super::cpu::{dot, with_slice};
use super::dispatch::Kernels;
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
    if k.dims() != [b, h, lk, d] || v.dims() != [b, h, lk, d] {
        candle_core::bail!(
            "attention: queries {:?}, keys {:?} and values {:?} do not match",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    if let Some(m) = mask {
        if m.elem_count() != b * lk {
            candle_core::bail!("attention: mask {:?} is not [{b}, 1, 1, {lk}]", m.dims())
        }
    }
    let kernels = Kernels::chosen();
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
                                    kernels,
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
///
/// Panics unless `out` and every key and value have `qi.len()` elements and `mask`, if
/// any, covers every key.
#[allow(clippy::too_many_arguments)]
pub fn attend_row<'a>(
    kernels: Kernels,
    qi: &[f32],
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    mask: Option<&[f32]>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = qi.len();
    assert_eq!(out.len(), d, "attend_row: output and query lengths differ");
    if let Some(m) = mask {
        assert!(
            m.len() >= scores.len(),
            "attend_row: mask shorter than the keys"
        );
    }
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(8) && kernels.has_avx2() {
        // SAFETY: `kernels` exists only for sets this CPU supports, and this one
        // includes AVX2 and FMA.
        unsafe { avx2::attend_row(qi, key, value, mask, scale, scores, out) };
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = kernels;
    for (t, s) in scores.iter_mut().enumerate() {
        let k = key(t);
        assert_eq!(k.len(), d, "attend_row: key {t} has the wrong length");
        *s = dot(qi, k) * scale + mask.map_or(0.0, |m| m[t]);
    }
    let sum = softmax_numerators(scores);
    out.fill(0.0);
    for (t, &p) in scores.iter().enumerate() {
        let w = p / sum;
        let v = value(t);
        assert_eq!(v.len(), d, "attend_row: value {t} has the wrong length");
        for (o, &x) in out.iter_mut().zip(v) {
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
    fn sum8(a: &[__m256; 8]) -> __m256 {
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
    /// in registers.
    ///
    /// Checks what its loads rely on: `qi.len()` a multiple of 8, `out.len() ==
    /// qi.len()`, every key and value at least `qi.len()` long (once per vector, not
    /// per element), and the mask, if any, at least as long as `scores`.
    #[target_feature(enable = "avx2,fma")]
    pub fn attend_row<'a>(
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
        assert!(d.is_multiple_of(8));
        assert_eq!(out.len(), d);
        if let Some(m) = mask {
            assert!(m.len() >= lk);
        }
        let q = qi.as_ptr();
        let scale_v = _mm256_set1_ps(scale);
        let mut t = 0;
        while t + 8 <= lk {
            let keys: [&[f32]; 8] = std::array::from_fn(|u| key(t + u));
            assert!(keys.iter().all(|k| k.len() >= d));
            let mut acc = [_mm256_setzero_ps(); 8];
            for c in (0..d).step_by(8) {
                // SAFETY: c + 8 ≤ d = qi.len() and every key holds at least d floats
                // (asserted above).
                unsafe {
                    let qv = _mm256_loadu_ps(q.add(c));
                    for (a, k) in acc.iter_mut().zip(&keys) {
                        *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.as_ptr().add(c)), *a);
                    }
                }
            }
            let mut s = _mm256_mul_ps(sum8(&acc), scale_v);
            if let Some(m) = mask {
                // SAFETY: t + 8 ≤ lk ≤ m.len() (asserted above).
                s = _mm256_add_ps(s, unsafe { _mm256_loadu_ps(m.as_ptr().add(t)) });
            }
            // SAFETY: t + 8 ≤ lk = scores.len().
            unsafe { _mm256_storeu_ps(scores.as_mut_ptr().add(t), s) };
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
                for (j, oj) in o.iter_mut().enumerate().take(width) {
                    // SAFETY: c0 + 8·width ≤ d ≤ vt.len() (d is a multiple of 8).
                    let x = unsafe { _mm256_loadu_ps(vt.as_ptr().add(c0 + j * 8)) };
                    *oj = _mm256_fmadd_ps(w, x, *oj);
                }
            }
            for (j, oj) in o.iter().enumerate().take(width) {
                // SAFETY: c0 + 8·width ≤ d = out.len().
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c0 + j * 8), *oj) };
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

    /// Every kernel set this CPU has, on the rows of one (input, head).
    #[test]
    fn every_kernel_set_matches_the_gemm_formulation() {
        for (lk, d) in [(5, 8), (37, 64), (16, 72), (19, 12)] {
            let [q, k, v, mask] = reference::inputs(1, lk, d, 2);
            let want = reference::attention(&q, &k, &v, &mask, 0.3);
            let [q, k, v, mask] =
                [&q, &k, &v, &mask].map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            for kernels in Kernels::all_supported() {
                let mut got = vec![0f32; 2 * 3 * d];
                for (bh, out) in got.chunks_mut(d).enumerate() {
                    let (kb, vb) = (&k[bh * lk * d..][..lk * d], &v[bh * lk * d..][..lk * d]);
                    attend_row(
                        kernels,
                        &q[bh * d..][..d],
                        |t| &kb[t * d..][..d],
                        |t| &vb[t * d..][..d],
                        Some(&mask[(bh / 3) * lk..][..lk]),
                        0.3,
                        &mut vec![0f32; lk],
                        out,
                    );
                }
                let got = candle_core::Tensor::from_vec(got, want.dims(), want.device()).unwrap();
                let diff = reference::max_diff(&got, &want);
                assert!(diff < 1e-5, "{:?} lk {lk} d {d}: {diff}", kernels.set());
            }
        }
    }
}
