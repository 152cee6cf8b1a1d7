//! Small helpers for the hand-written CPU kernels.

use candle_core::{Result, Storage, Tensor};

/// Borrowed f32 data of a contiguous CPU tensor.
pub fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("expected a CPU tensor")
    };
    let data = &cpu.as_slice::<f32>()?[layout.start_offset()..][..t.elem_count()];
    f(data)
}

/// Dot product with eight partial sums, which the compiler vectorises (AVX2 with the
/// crate's target features) without reassociating floats by itself.
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
