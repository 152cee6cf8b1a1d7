//! Activations applied to slices of f32, as the packed matmul writes its outputs.
//!
//! Exact GELU is `x · ½ · (1 + erf(x / √2))`. PyTorch's CPU kernel evaluates it on
//! vectors with `Vectorized<float>::erf`: Abramowitz & Stegun 7.1.26,
//! `erf(|x|) ≈ 1 − (p₁t + p₂t² + p₃t³ + p₄t⁴ + p₅t⁵) e^{−x²}` with `t = 1 / (1 + p|x|)`
//! (absolute error below 1.5e-7), and a vectorized `exp`. This module evaluates the
//! same formula, eight lanes at a time, which is both closer to what transformers
//! computes and several times faster than a scalar `erff` per element (GELU was a
//! tenth of an encoder pass with libm's `erff`).

use super::dispatch::Kernels;
use crate::checkpoint::config::Activation;

/// Applies an activation to every element of a slice, in place.
pub type SliceActivation = fn(&mut [f32]);

/// The slice form of `act`; the non-GELU activations use candle's scalar functions.
pub fn slice_activation(act: Activation) -> SliceActivation {
    use candle_core::op::{Gelu, Relu, Silu, UnaryOpT};
    match act {
        Activation::Gelu => gelu_erf,
        Activation::GeluTanh => |xs| xs.iter_mut().for_each(|x| *x = <Gelu as UnaryOpT>::f32(*x)),
        Activation::Relu => |xs| xs.iter_mut().for_each(|x| *x = <Relu as UnaryOpT>::f32(*x)),
        Activation::Silu => |xs| xs.iter_mut().for_each(|x| *x = <Silu as UnaryOpT>::f32(*x)),
    }
}

const P: f32 = 0.327_591_1;
const A1: f32 = 0.254_829_6;
const A2: f32 = -0.284_496_74;
const A3: f32 = 1.421_413_7;
const A4: f32 = -1.453_152;
const A5: f32 = 1.061_405_4;

/// Exact (erf) GELU over a slice, with the process's kernel set.
pub fn gelu_erf(xs: &mut [f32]) {
    gelu_erf_with(Kernels::chosen(), xs)
}

/// [`gelu_erf`] with the given kernel set.
pub fn gelu_erf_with(kernels: Kernels, xs: &mut [f32]) {
    #[allow(unused_mut)] // only x86-64 has a vector path
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if kernels.has_avx2() {
        done = xs.len() / 8 * 8;
        // SAFETY: `kernels` exists only for sets this CPU supports, and this one
        // includes AVX2 and FMA.
        unsafe { avx2::gelu_erf(&mut xs[..done]) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = kernels;
    for x in &mut xs[done..] {
        *x = gelu_erf_scalar(*x);
    }
}

/// One element, same formula.
pub fn gelu_erf_scalar(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let t = 1.0 / P.mul_add(a, 1.0);
    let r = A5
        .mul_add(t, A4)
        .mul_add(t, A3)
        .mul_add(t, A2)
        .mul_add(t, A1);
    let erf = (-(-(z * z)).exp() * t).mul_add(r, 1.0).copysign(z);
    x * 0.5 * (1.0 + erf)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// GELU of every whole vector of eight in `xs` (a tail shorter than eight is left
    /// as it is).
    #[target_feature(enable = "avx2,fma")]
    pub fn gelu_erf(xs: &mut [f32]) {
        for chunk in xs.chunks_exact_mut(8) {
            // SAFETY: `chunk` holds exactly eight floats.
            let x = unsafe { _mm256_loadu_ps(chunk.as_ptr()) };
            let z = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
            let y = _mm256_mul_ps(
                _mm256_mul_ps(x, _mm256_set1_ps(0.5)),
                _mm256_add_ps(_mm256_set1_ps(1.0), erf(z)),
            );
            // SAFETY: as for the load.
            unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), y) };
        }
    }

    /// ATen's `Vectorized<float>::erf` (Abramowitz & Stegun 7.1.26).
    #[target_feature(enable = "avx2,fma")]
    fn erf(x: __m256) -> __m256 {
        let neg_zero = _mm256_set1_ps(-0.0);
        let one = _mm256_set1_ps(1.0);
        let sign = _mm256_and_ps(neg_zero, x);
        let a = _mm256_xor_ps(sign, x);
        let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(P), a, one));
        let r = _mm256_fmadd_ps(_mm256_set1_ps(A5), t, _mm256_set1_ps(A4));
        let r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(A3));
        let r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(A2));
        let r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(A1));
        let e = exp(_mm256_xor_ps(neg_zero, _mm256_mul_ps(x, x)));
        let y = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_xor_ps(neg_zero, e), t), r, one);
        _mm256_xor_ps(sign, y)
    }

    /// e^x, Cephes' single-precision polynomial after range reduction by ln 2
    /// (about 1 ulp); underflows to 0 below −87.3.
    #[target_feature(enable = "avx2,fma")]
    fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(x, _mm256_set1_ps(88.376_26));
        let x = _mm256_max_ps(x, _mm256_set1_ps(-88.376_26));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let p = _mm256_fmadd_ps(
            p,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        // 2ⁿ by building the exponent bits; n ≥ −127 after the clamp, and 2⁻¹²⁷ is
        // read as 0, which is what e^x is at that point in f32 anyway.
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Taylor series in f64 (accurate to ~1e-12 for |x| ≤ 3).
    fn erf_reference(x: f64) -> f64 {
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-18 {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn gelu_is_within_the_approximation_error_of_exact_gelu() {
        for kernels in Kernels::all_supported() {
            check_gelu(kernels);
        }
    }

    fn check_gelu(kernels: Kernels) {
        let xs: Vec<f32> = (-4000..=4000).map(|i| i as f32 * 0.001).collect();
        let mut got = xs.clone();
        gelu_erf_with(kernels, &mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            let exact = 0.5 * x as f64 * (1.0 + erf_reference(x as f64 / 2f64.sqrt()));
            // A&S 7.1.26: |Δerf| < 1.5e-7, plus a few f32 ulps (6e-8 each) in the
            // polynomial and exp; GELU scales that by ½|x|.
            let tol = 0.5 * (x.abs() as f64) * 4e-7 + 2e-7 * exact.abs() + 1e-9;
            assert!((g as f64 - exact).abs() <= tol, "x {x}: {g} vs {exact}");
        }
        // Far tails: GELU(x) is x, or 0.
        let mut tails = vec![-90.0f32, -30.0, -9.0, 9.0, 30.0, 90.0, 0.0, -0.0];
        gelu_erf_with(kernels, &mut tails);
        assert_eq!(tails, vec![-0.0, -0.0, -0.0, 9.0, 30.0, 90.0, 0.0, -0.0]);
        // Vector and scalar paths agree.
        for (&x, &g) in xs.iter().zip(&got) {
            let s = gelu_erf_scalar(x);
            assert!((s - g).abs() <= 2e-7 * (1.0 + g.abs()), "x {x}: {s} vs {g}");
        }
    }
}
