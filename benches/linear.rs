//! `y = x Wᵀ + b` at bert-base shapes: candle's GEMM (the baseline, as `x.matmul(Wᵀ)`)
//! against the packed-panel kernel the engine uses on the CPU, and that kernel with each
//! kernel set this CPU supports (portable / AVX2 / AVX-512), with the AVX-512 : AVX2 ratio;
//! then each weight format (f32 / bf16 / int8) streaming a decoder's worth of weights
//! from memory, as a decode step does, with the ratio to f32.
//!
//! cargo bench --bench linear [-- ROWS...] [--formats-only]

use std::time::Instant;

use candle_core::{Device, Tensor};
use encdec::model::bench::{cross_attention, pack_keys, small_attention, Kernels, PackedWeight};
use encdec::model::{KernelSet, WeightFormat};

fn median_seconds(mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[3]
}

/// One pass over 36 matrices of 3072 × 768 (85 M weights: 340 MB in f32, more than any
/// cache), as a decode step passes over its layers, per weight format.
fn formats(rows: &[usize], dev: &Device) -> candle_core::Result<()> {
    let (n, k, count) = (3072, 768, 36);
    let weights: Vec<Vec<f32>> = (0..count)
        .map(|_| {
            Tensor::randn(0f32, 1., (n, k), dev)?
                .flatten_all()?
                .to_vec1::<f32>()
        })
        .collect::<candle_core::Result<_>>()?;
    println!("weight formats: {count} matrices {n} x {k} in turn; ms per pass, GB/s of weights, GFLOP/s, time / f32");
    let packed: Vec<(WeightFormat, Vec<PackedWeight>)> =
        [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8]
            .into_iter()
            .map(|f| {
                (
                    f,
                    weights
                        .iter()
                        .map(|w| PackedWeight::pack_as(w, n, k, f))
                        .collect(),
                )
            })
            .collect();
    for &m in rows {
        let x = Tensor::randn(0f32, 1., (m, k), dev)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut out = vec![0f32; m * n];
        let mut f32_time = 0.0;
        for (format, ws) in &packed {
            let s = median_seconds(|| {
                for w in ws {
                    w.matmul(&x, None, None, &mut out);
                }
            });
            if *format == WeightFormat::F32 {
                f32_time = s;
            }
            let bytes = (count * n * k * format.bytes()) as f64;
            let flops = 2.0 * (count * m * n * k) as f64;
            println!(
                "rows {m:<5} {:<5} {:9.2} ms {:7.1} GB/s {:7.1} GFLOP/s  {:.2}",
                format.name(),
                s * 1e3,
                bytes / s / 1e9,
                flops / s / 1e9,
                s / f32_time
            );
        }
    }
    println!();
    Ok(())
}

fn main() -> candle_core::Result<()> {
    let rows: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rows = if rows.is_empty() {
        vec![1, 4, 16, 32, 64, 512]
    } else {
        rows
    };
    let dev = Device::Cpu;
    formats(&rows, &dev)?;
    if std::env::args().any(|a| a == "--formats-only") {
        return Ok(());
    }
    println!("rows   n      k      candle ms  packed ms  (ratio)  packed GFLOP/s");
    for (n, k) in [(768, 768), (3072, 768), (768, 3072), (30522, 768)] {
        let w = Tensor::randn(0f32, 1., (n, k), &dev)?;
        let b = Tensor::randn(0f32, 1., n, &dev)?;
        let (wv, bv) = (w.flatten_all()?.to_vec1::<f32>()?, b.to_vec1::<f32>()?);
        let packed = PackedWeight::pack(&wv, n, k);
        for &m in &rows {
            let x = Tensor::randn(0f32, 1., (m, k), &dev)?;
            let xv = x.flatten_all()?.to_vec1::<f32>()?;
            let wt = w.t()?;
            let candle = median_seconds(|| {
                x.matmul(&wt).unwrap().broadcast_add(&b).unwrap();
            });
            let mut out = vec![0f32; m * n];
            let packed_s = median_seconds(|| packed.matmul(&xv, Some(&bv), None, &mut out));
            let gflops = 2.0 * (m * n * k) as f64 / packed_s / 1e9;
            println!(
                "{m:<6} {n:<6} {k:<6} {:9.3}  {:9.3}  ({:.2})  {gflops:8.1}",
                candle * 1e3,
                packed_s * 1e3,
                packed_s / candle
            );
        }
    }
    println!();
    let sets = Kernels::all_supported();
    println!(
        "packed kernel per kernel set, ms ({})",
        sets.iter()
            .map(|s| s.set().name())
            .collect::<Vec<_>>()
            .join(" / ")
    );
    for (n, k) in [(768, 768), (3072, 768), (768, 3072), (30522, 768)] {
        let w = Tensor::randn(0f32, 1., (n, k), &dev)?;
        let b = Tensor::randn(0f32, 1., n, &dev)?;
        let (wv, bv) = (w.flatten_all()?.to_vec1::<f32>()?, b.to_vec1::<f32>()?);
        let packed = PackedWeight::pack(&wv, n, k);
        for &m in &rows {
            let xv = Tensor::randn(0f32, 1., (m, k), &dev)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let mut out = vec![0f32; m * n];
            let times: Vec<(KernelSet, f64)> = sets
                .iter()
                .map(|&ks| {
                    let s =
                        median_seconds(|| packed.matmul_with(ks, &xv, Some(&bv), None, &mut out));
                    (ks.set(), s)
                })
                .collect();
            let of = |set| times.iter().find(|(s, _)| *s == set).map(|(_, t)| *t);
            let ratio = match (of(KernelSet::Avx512), of(KernelSet::Avx2)) {
                (Some(a), Some(b)) => format!("avx512/avx2 {:.2}", a / b),
                _ => String::new(),
            };
            let ms: Vec<String> = times
                .iter()
                .map(|(_, t)| format!("{:8.3}", t * 1e3))
                .collect();
            println!("{m:<6} {n:<6} {k:<6} {}  {ratio}", ms.join(" "));
        }
    }
    println!();
    println!(
        "cross-attention, 12 heads × 64, 256 source tokens, 12 layers' keys/values in turn \
         (as a decode step reads them): row-wise kernel (baseline) vs packed-key kernel, per layer"
    );
    for (inputs, beams) in [(1, 4), (8, 4), (32, 4), (32, 1)] {
        let layers = (0..12)
            .map(|_| {
                let k = Tensor::randn(0f32, 1., (inputs, 12, 256, 64), &dev)?;
                let v = Tensor::randn(0f32, 1., (inputs, 12, 256, 64), &dev)?;
                let packed = pack_keys(&k)?;
                Ok((k, packed, v))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let q = Tensor::randn(0f32, 1., (inputs, 12, beams, 64), &dev)?;
        let mask = Tensor::zeros((inputs, 1, 1, 256), candle_core::DType::F32, &dev)?;
        let rows = median_seconds(|| {
            for (k, _, v) in &layers {
                small_attention(&q, k, v, Some(&mask), 0.125).unwrap();
            }
        }) / 12.0;
        let packed = median_seconds(|| {
            for (_, kp, v) in &layers {
                cross_attention(&q, kp, v, &mask, 0.125).unwrap();
            }
        }) / 12.0;
        println!(
            "inputs {inputs:<3} beams {beams}: {:8.3} ms  {:8.3} ms  ({:.2})",
            rows * 1e3,
            packed * 1e3,
            packed / rows
        );
    }
    Ok(())
}
