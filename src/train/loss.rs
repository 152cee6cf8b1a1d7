//! Token cross-entropy over the vocabulary as one graph node on the CPU:
//! `ℓᵢ = wᵢ · (logsumexp(xᵢ) − xᵢ[yᵢ])`, with the gradient
//! `∂ℓᵢ/∂xᵢ = wᵢ · (softmax(xᵢ) − onehot(yᵢ))`, where the forward pass keeps each row's
//! logsumexp so that the backward pass is one pass over the logits.
//!
//! Written with candle's basic ops (max, subtract, exp, sum, log, gather) the same loss
//! takes about thirty passes over the `[tokens, vocab]` logits, the largest tensor of a
//! step: every op allocates its output, and every backward contribution is added into a
//! fresh zero tensor.

use std::sync::OnceLock;

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Per-row `wᵢ · (logsumexp(xᵢ) − xᵢ[yᵢ])` of `logits` `[rows, vocab]`; rows with
/// weight 0 (ignored labels) give 0 and no gradient.
pub fn token_nll(logits: &Tensor, labels: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let op = TokenNll {
        labels: labels.to_vec1::<u32>()?,
        weights: weights.to_vec1::<f32>()?,
        logsumexp: OnceLock::new(),
    };
    logits.contiguous()?.apply_op1(op)
}

struct TokenNll {
    labels: Vec<u32>,
    weights: Vec<f32>,
    /// Per row, set by the forward pass (0 for ignored rows, which get no gradient).
    logsumexp: OnceLock<Vec<f32>>,
}

/// The rows of a contiguous f32 `[rows, vocab]` tensor.
fn rows<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<(&'a [f32], usize, usize)> {
    let (n, vocab) = layout.shape().dims2()?;
    let CpuStorage::F32(data) = storage else {
        bail!("token_nll: logits must be f32")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("token_nll: logits must be contiguous")
    };
    Ok((&data[start..end], n, vocab))
}

fn logsumexp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + row.iter().map(|&x| (x - max).exp()).sum::<f32>().ln()
}

impl TokenNll {
    fn check(&self, n: usize, vocab: usize) -> Result<()> {
        if self.labels.len() != n || self.weights.len() != n {
            bail!("token_nll: {n} rows, {} labels", self.labels.len());
        }
        if let Some(&y) = self.labels.iter().find(|&&y| y as usize >= vocab) {
            bail!("token_nll: label {y} outside the vocabulary of {vocab}");
        }
        Ok(())
    }
}

impl CustomOp1 for TokenNll {
    fn name(&self) -> &'static str {
        "token-nll"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, n, vocab) = rows(storage, layout)?;
        self.check(n, vocab)?;
        let (lse, losses): (Vec<f32>, Vec<f32>) = x
            .par_chunks(vocab)
            .zip(self.labels.par_iter())
            .zip(self.weights.par_iter())
            .map(|((row, &y), &w)| {
                if w == 0.0 {
                    return (0.0, 0.0);
                }
                let l = logsumexp(row);
                (l, w * (l - row[y as usize]))
            })
            .unzip();
        // A second forward through the same op would compute the same values.
        let _ = self.logsumexp.set(lse);
        Ok((CpuStorage::F32(losses), Shape::from(n)))
    }

    fn bwd(&self, logits: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let Some(lse) = self.logsumexp.get() else {
            bail!("token_nll: backward before forward")
        };
        let op = TokenNllGrad {
            labels: &self.labels,
            weights: &self.weights,
            logsumexp: lse,
        };
        Ok(Some(logits.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

/// `gᵢ · wᵢ · (exp(xᵢ − logsumexpᵢ) − onehot(yᵢ))` from the logits and the incoming
/// per-row gradient `g`.
struct TokenNllGrad<'a> {
    labels: &'a [u32],
    weights: &'a [f32],
    logsumexp: &'a [f32],
}

impl CustomOp2 for TokenNllGrad<'_> {
    fn name(&self) -> &'static str {
        "token-nll-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, n, vocab) = rows(s1, l1)?;
        let CpuStorage::F32(g) = s2 else {
            bail!("token_nll: gradient must be f32")
        };
        let Some((start, end)) = l2.contiguous_offsets() else {
            bail!("token_nll: gradient must be contiguous")
        };
        let g = &g[start..end];
        if g.len() != n {
            bail!("token_nll: gradient of {} rows for {n}", g.len());
        }
        let mut out = vec![0f32; n * vocab];
        out.par_chunks_mut(vocab)
            .zip(x.par_chunks(vocab))
            .enumerate()
            .for_each(|(i, (dst, row))| {
                let scale = g[i] * self.weights[i];
                if scale == 0.0 {
                    return;
                }
                let lse = self.logsumexp[i];
                for (d, &x) in dst.iter_mut().zip(row) {
                    *d = scale * (x - lse).exp();
                }
                dst[self.labels[i] as usize] -= scale;
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// The same loss from candle's basic ops.
    fn composed(logits: &Tensor, labels: &Tensor, weights: &Tensor) -> Result<Tensor> {
        let shifted = logits.broadcast_sub(&logits.max_keepdim(D::Minus1)?.detach())?;
        let logp = shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)?;
        let picked = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
        (picked * weights)?.neg()
    }

    #[test]
    fn loss_and_gradient_match_the_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (5, 37), &dev)?))?;
        let labels = Tensor::new(&[3u32, 0, 36, 7, 7], &dev)?;
        let weights = Tensor::new(&[1f32, 0.0, 1.0, 1.0, 0.5], &dev)?;
        // A non-uniform incoming gradient, as a weighted sum gives.
        let mix = Tensor::new(&[1f32, 2.0, -1.0, 0.5, 3.0], &dev)?;
        let fused = token_nll(x.as_tensor(), &labels, &weights)?;
        let reference = composed(x.as_tensor(), &labels, &weights)?;
        let diff = (&fused - &reference)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "loss differs by {diff}");
        let g_fused = (fused * &mix)?.sum_all()?.backward()?;
        let g_ref = (reference * &mix)?.sum_all()?.backward()?;
        let (a, b) = (g_fused.get(&x).unwrap(), g_ref.get(&x).unwrap());
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "gradient differs by {diff}");
        // An ignored row has no gradient.
        let row1 = a.get(1)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(row1, 0.0);
        Ok(())
    }

    #[test]
    fn labels_outside_the_vocabulary_are_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 4), candle_core::DType::F32, &dev)?;
        let labels = Tensor::new(&[1u32, 4], &dev)?;
        let weights = Tensor::new(&[1f32, 1.0], &dev)?;
        assert!(token_nll(&x, &labels, &weights).is_err());
        Ok(())
    }
}
