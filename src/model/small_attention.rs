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
                                    kb,
                                    vb,
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

fn attend_row(
    qi: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = qi.len();
    let mut max = f32::NEG_INFINITY;
    for (t, s) in scores.iter_mut().enumerate() {
        let mut x = dot(qi, &k[t * d..][..d]) * scale;
        if let Some(m) = mask {
            x += m[t];
        }
        *s = x;
        max = max.max(x);
    }
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    for (t, &p) in scores.iter().enumerate() {
        let w = p / sum;
        for (o, &x) in out.iter_mut().zip(&v[t * d..][..d]) {
            *o += w * x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_the_gemm_formulation() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 3, 4, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (2, 3, 5, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (2, 3, 5, 8), &dev).unwrap();
        let mask = Tensor::new(
            &[0f32, 0., 0., f32::MIN, f32::MIN, 0., 0., 0., 0., 0.],
            &dev,
        )
        .unwrap()
        .reshape((2, 1, 1, 5))
        .unwrap();
        let got = attention(&q, &k, &v, Some(&mask), 0.3).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * 0.3)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let want = candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(&v)
            .unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }
}
