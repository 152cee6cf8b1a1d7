//! The Trainer's optimiser: `torch.optim.AdamW`, the linear warm-up/decay schedule of
//! `get_linear_schedule_with_warmup`, and `clip_grad_norm_`.

use std::collections::HashMap;

use anyhow::{Context, Result};
use candle_core::Tensor;

use super::params::Param;

/// AdamW hyper-parameters (the Trainer's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 5e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// `lr · factor(step)`: linear warm-up from 0 over `warmup` steps, then linear decay to
/// 0 at `total`. `step` counts the optimiser steps already taken.
pub fn scheduled_lr(base: f64, step: usize, warmup: usize, total: usize) -> f64 {
    let factor = if step < warmup {
        step as f64 / warmup.max(1) as f64
    } else {
        (total.saturating_sub(step) as f64 / total.saturating_sub(warmup).max(1) as f64).max(0.0)
    };
    base * factor
}

struct Moments {
    m: Tensor,
    v: Tensor,
}

/// AdamW over a fixed list of parameters.
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Param>,
    moments: Vec<Moments>,
    /// Optimiser steps taken.
    steps: usize,
}

impl AdamW {
    pub fn new(params: Vec<Param>, config: AdamWConfig) -> Result<Self> {
        let moments = params
            .iter()
            .map(|p| {
                Ok(Moments {
                    m: p.var.zeros_like()?,
                    v: p.var.zeros_like()?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            config,
            params,
            moments,
            steps: 0,
        })
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    pub fn steps(&self) -> usize {
        self.steps
    }

    /// One update with learning rate `lr` and `grads[i]` for `params()[i]`:
    ///   θ ← θ·(1 − lr·λ);  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²
    ///   θ ← θ − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        let c = self.config;
        self.steps += 1;
        let t = self.steps as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        for ((p, g), mo) in self.params.iter().zip(grads).zip(&mut self.moments) {
            let mut theta = p.var.as_tensor().detach();
            if p.decays && c.weight_decay != 0.0 {
                theta = (theta * (1.0 - lr * c.weight_decay))?;
            }
            mo.m = ((&mo.m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            mo.v = ((&mo.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((mo.v.sqrt()? / bias2_sqrt)? + c.eps)?;
            let update = ((&mo.m / denom)? * (lr / bias1))?;
            p.var.set(&(theta - update)?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`m.NAME`, `v.NAME`), to resume from.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (p, mo) in self.params.iter().zip(&self.moments) {
            out.insert(format!("m.{}", p.name), mo.m.clone());
            out.insert(format!("v.{}", p.name), mo.v.clone());
        }
        out
    }

    /// Restores [`Self::state`] saved after `steps` optimiser steps.
    pub fn restore(&mut self, state: &HashMap<String, Tensor>, steps: usize) -> Result<()> {
        for (p, mo) in self.params.iter().zip(&mut self.moments) {
            let get = |k: &str| -> Result<Tensor> {
                let t = state
                    .get(&format!("{k}.{}", p.name))
                    .with_context(|| format!("optimizer state lacks `{k}.{}`", p.name))?;
                Ok(t.to_device(p.var.device())?)
            };
            mo.m = get("m")?;
            mo.v = get("v")?;
        }
        self.steps = steps;
        Ok(())
    }
}

/// Scales `grads` so that their joint L2 norm is at most `max_norm`
/// (`clip_grad_norm_`, which multiplies by `max_norm / (norm + 1e-6)` clamped to 1).
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut sq = 0.0f64;
    for g in grads.iter() {
        sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
    }
    let norm = sq.sqrt();
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(norm)
}

/// Gradients summed over micro-batches (gradient accumulation).
#[derive(Default)]
pub struct GradSum {
    sums: Vec<Option<Tensor>>,
}

impl GradSum {
    /// Adds the gradients `store` holds for `params` (a parameter the loss did not
    /// reach gets none).
    pub fn add(
        &mut self,
        params: &[Param],
        store: &candle_core::backprop::GradStore,
    ) -> Result<()> {
        if self.sums.is_empty() {
            self.sums = vec![None; params.len()];
        }
        for (sum, p) in self.sums.iter_mut().zip(params) {
            if let Some(g) = store.get(p.var.as_tensor()) {
                *sum = Some(match sum.take() {
                    Some(s) => (s + g)?,
                    None => g.clone(),
                });
            }
        }
        Ok(())
    }

    /// The sums (zeros for unreached parameters), and a reset.
    pub fn take_sum(&mut self, params: &[Param]) -> Result<Vec<Tensor>> {
        let sums = std::mem::take(&mut self.sums);
        params
            .iter()
            .zip(sums.into_iter().chain(std::iter::repeat(None)))
            .map(|(p, s)| match s {
                Some(s) => Ok(s),
                None => Ok(p.var.as_tensor().zeros_like()?),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(scheduled_lr(1.0, 0, 0, 10), 1.0);
        assert_eq!(scheduled_lr(1.0, 5, 0, 10), 0.5);
        assert_eq!(scheduled_lr(1.0, 0, 4, 10), 0.0);
        assert_eq!(scheduled_lr(1.0, 2, 4, 10), 0.5);
        assert_eq!(scheduled_lr(1.0, 4, 4, 10), 1.0);
        assert_eq!(scheduled_lr(1.0, 7, 4, 10), 0.5);
        assert_eq!(scheduled_lr(1.0, 12, 4, 10), 0.0);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let dev = candle_core::Device::Cpu;
        let mut g = vec![
            Tensor::new(&[3.0f32], &dev).unwrap(),
            Tensor::new(&[4.0f32], &dev).unwrap(),
        ];
        let norm = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let v: f32 = g[0].to_vec1::<f32>().unwrap()[0];
        assert!((v - 0.6).abs() < 1e-5, "{v}");
        let mut small = vec![Tensor::new(&[0.3f32], &dev).unwrap()];
        clip_grad_norm(&mut small, 1.0).unwrap();
        assert_eq!(small[0].to_vec1::<f32>().unwrap(), vec![0.3]);
    }
}
