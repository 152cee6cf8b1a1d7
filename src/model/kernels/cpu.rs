//! Small helpers for the hand-written CPU kernels.

use candle_core::{DType, Result, Storage, Tensor};

/// Borrowed f32 data of a contiguous CPU tensor, in row-major order. A strided view
/// (a transpose, a narrowed column range) is refused: its elements are not the
/// `elem_count` consecutive floats from its start offset.
pub fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    if !layout.is_contiguous() {
        candle_core::bail!("the CPU kernels need a contiguous tensor, got {layout:?}")
    }
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("expected a CPU tensor")
    };
    let data = cpu.as_slice::<f32>()?;
    let Some(data) = data
        .get(layout.start_offset()..)
        .and_then(|d| d.get(..t.elem_count()))
    else {
        candle_core::bail!("tensor layout {layout:?} runs past its storage")
    };
    f(data)
}

/// Whether the kernels can take these tensors: contiguous f32 on the CPU.
pub fn is_cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
}

/// Dot product with eight partial sums, which the compiler vectorises without
/// reassociating floats by itself (SSE2 on baseline x86-64; AVX2 when inlined into the
/// AVX2 kernels).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// What the attention kernels are checked against.
#[cfg(test)]
pub mod reference {
    use candle_core::{Device, Tensor};

    /// Random `[2, 3, rows, d]` queries and `[2, 3, keys, d]` keys and values, and an
    /// additive `[2, 1, 1, keys]` mask with which input 0 ignores its last `masked` keys
    /// (padding) and input 1 sees all.
    pub fn inputs(rows: usize, keys: usize, d: usize, masked: usize) -> [Tensor; 4] {
        let dev = Device::Cpu;
        let randn = |len| Tensor::randn(0f32, 1., (2, 3, len, d), &dev).unwrap();
        let mask: Vec<f32> = (0..2 * keys)
            .map(|i| {
                if i < keys && i >= keys - masked {
                    f32::MIN
                } else {
                    0.
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (2, 1, 1, keys), &dev).unwrap();
        [randn(rows), randn(keys), randn(keys), mask]
    }

    /// softmax(q kᵀ · scale + mask) v with candle's matmul and softmax.
    pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Tensor {
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale)
            .unwrap()
            .broadcast_add(mask)
            .unwrap();
        candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(v)
            .unwrap()
    }

    /// Largest absolute difference between two tensors of one shape.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }
}
