//! Matrix products with few rows (decode steps: one row per beam), `y = x Wᵀ + b`.
//!
//! With a handful of rows the product is bound by reading W, not by arithmetic: the
//! fastest schedule streams every weight row once, from both cores, and dots it with all
//! rows of x while it is in cache. A general GEMM blocks for reuse that isn't there and
//! reads W at about half the memory bandwidth (see docs/PERFORMANCE.md).

use rayon::prelude::*;

use super::cpu::dot;

/// Rows up to which the streaming kernel beats the general GEMM.
pub const MAX_ROWS: usize = 16;

/// Weight rows per parallel task: large enough to amortise scheduling, small enough to
/// split the LM head and the FFN evenly across cores.
const ROWS_PER_TASK: usize = 64;

/// `out[r, j] = Σ_k x[r, k] · w[j, k] + bias[j]` for `x`: `[rows, k]`, `w`: `[n, k]`,
/// `out`: `[rows, n]`, all row-major.
pub fn matmul_xwt(x: &[f32], w: &[f32], bias: Option<&[f32]>, k: usize, out: &mut [f32]) {
    let rows = x.len() / k;
    let n = w.len() / k;
    assert_eq!(x.len(), rows * k);
    assert_eq!(w.len(), n * k);
    assert_eq!(out.len(), rows * n);
    // Compute into [n, rows] so that each task owns a contiguous block, then transpose.
    let mut out_t = vec![0f32; n * rows];
    out_t
        .par_chunks_mut(ROWS_PER_TASK * rows)
        .enumerate()
        .for_each(|(task, chunk)| {
            let first = task * ROWS_PER_TASK;
            for (pair, dots) in chunk.chunks_mut(2 * rows).enumerate() {
                let j = first + 2 * pair;
                dot_weight_rows(x, w, j, k, dots);
                if let Some(b) = bias {
                    for (i, d) in dots.iter_mut().enumerate() {
                        *d += b[j + i / rows];
                    }
                }
            }
        });
    for j in 0..n {
        for r in 0..rows {
            out[r * n + j] = out_t[j * rows + r];
        }
    }
}

/// Dots of every row of x with weight rows `j` and `j + 1` (or `j` alone at the end):
/// `dots` is `[1 or 2, rows]`.
fn dot_weight_rows(x: &[f32], w: &[f32], j: usize, k: usize, dots: &mut [f32]) {
    let rows = x.len() / k;
    let w0 = &w[j * k..(j + 1) * k];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            if dots.len() == 2 * rows {
                let w1 = &w[(j + 1) * k..(j + 2) * k];
                let (d0, d1) = dots.split_at_mut(rows);
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                unsafe { avx2::dot_rows2(x, w0, w1, k, d0, d1) };
            } else {
                // SAFETY: as above.
                unsafe { avx2::dot_rows(x, w0, k, dots) };
            }
            return;
        }
    }
    for (i, d) in dots.iter_mut().enumerate() {
        let (wi, r) = (j + i / rows, i % rows);
        *d = dot(&x[r * k..(r + 1) * k], &w[wi * k..(wi + 1) * k]);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let hi = _mm256_extractf128_ps(v, 1);
        let lo = _mm256_castps256_ps128(v);
        let s = _mm_add_ps(hi, lo);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Up to four rows of x against one weight row per pass.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_rows(x: &[f32], wj: &[f32], k: usize, dots: &mut [f32]) {
        let rows = dots.len();
        let vec_k = k / 8 * 8;
        let w = wj.as_ptr();
        let mut r = 0;
        while r < rows {
            let group = (rows - r).min(4);
            let xp = x.as_ptr().add(r * k);
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i < vec_k {
                let wv = _mm256_loadu_ps(w.add(i));
                for (g, a) in acc.iter_mut().enumerate().take(group) {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(g * k + i)), wv, *a);
                }
                i += 8;
            }
            for (g, a) in acc.iter().enumerate().take(group) {
                let mut s = hsum(*a);
                for t in vec_k..k {
                    s += *xp.add(g * k + t) * *w.add(t);
                }
                dots[r + g] = s;
            }
            r += group;
        }
    }

    /// Up to four rows of x against two weight rows per pass: every loaded x vector
    /// feeds two FMAs and every weight vector four.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_rows2(
        x: &[f32],
        w0: &[f32],
        w1: &[f32],
        k: usize,
        d0: &mut [f32],
        d1: &mut [f32],
    ) {
        let rows = d0.len();
        let vec_k = k / 8 * 8;
        let (p0, p1) = (w0.as_ptr(), w1.as_ptr());
        let mut r = 0;
        while r < rows {
            let group = (rows - r).min(4);
            let xp = x.as_ptr().add(r * k);
            let mut a0 = [_mm256_setzero_ps(); 4];
            let mut a1 = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i < vec_k {
                if r == 0 && i % 16 == 0 {
                    // Two pairs of weight rows ahead (4k floats on): fetch them while
                    // this pair computes (one cache line per 16 floats).
                    _mm_prefetch::<_MM_HINT_T0>(p0.wrapping_add(i + 4 * k) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(p1.wrapping_add(i + 4 * k) as *const i8);
                }
                let v0 = _mm256_loadu_ps(p0.add(i));
                let v1 = _mm256_loadu_ps(p1.add(i));
                for g in 0..group {
                    let xv = _mm256_loadu_ps(xp.add(g * k + i));
                    a0[g] = _mm256_fmadd_ps(xv, v0, a0[g]);
                    a1[g] = _mm256_fmadd_ps(xv, v1, a1[g]);
                }
                i += 8;
            }
            for g in 0..group {
                let (mut s0, mut s1) = (hsum(a0[g]), hsum(a1[g]));
                for t in vec_k..k {
                    let xv = *xp.add(g * k + t);
                    s0 += xv * *p0.add(t);
                    s1 += xv * *p1.add(t);
                }
                d0[r + g] = s0;
                d1[r + g] = s1;
            }
            r += group;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], w: &[f32], bias: Option<&[f32]>, k: usize) -> Vec<f32> {
        let (rows, n) = (x.len() / k, w.len() / k);
        let mut out = vec![0f32; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let mut s = 0f64;
                for i in 0..k {
                    s += x[r * k + i] as f64 * w[j * k + i] as f64;
                }
                out[r * n + j] = s as f32 + bias.map_or(0.0, |b| b[j]);
            }
        }
        out
    }

    #[test]
    fn matches_naive_for_odd_shapes() {
        let mut seed = 7u32;
        let mut rand = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for (rows, k, n) in [
            (1, 32, 5),
            (3, 37, 130),
            (4, 768, 200),
            (7, 19, 64),
            (16, 64, 129),
        ] {
            let x: Vec<f32> = (0..rows * k).map(|_| rand()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rand()).collect();
            let b: Vec<f32> = (0..n).map(|_| rand()).collect();
            let mut out = vec![0f32; rows * n];
            matmul_xwt(&x, &w, Some(&b), k, &mut out);
            let want = naive(&x, &w, Some(&b), k);
            for (g, e) in out.iter().zip(&want) {
                assert!((g - e).abs() < 1e-4, "{rows}x{k}x{n}: {g} vs {e}");
            }
        }
    }
}
