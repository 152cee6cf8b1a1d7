//! Seeded random initialisation: every tensor gets its own stream derived from the seed
//! and its name, split into fixed-size chunks with their own streams, so the values do
//! not depend on the thread count or on which other tensors exist.

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Uniform};
use rayon::prelude::*;

use super::plan::Init;

const CHUNK: usize = 1 << 18;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// The stream seed of tensor `name` under the user's `seed`.
pub fn tensor_seed(seed: u64, name: &str) -> u64 {
    splitmix64(seed ^ splitmix64(fnv1a(name)))
}

fn fill<D: Distribution<f32> + Sync>(v: &mut [f32], dist: D, seed: u64) {
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(i, chunk)| {
        let mut rng = StdRng::seed_from_u64(splitmix64(seed.wrapping_add(i as u64)));
        for x in chunk {
            *x = dist.sample(&mut rng);
        }
    });
}

/// Values of a tensor of `shape` initialised as `init`, row-major.
pub fn generate(init: Init, shape: &[usize], seed: u64) -> Vec<f32> {
    let n: usize = shape.iter().product();
    match init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Normal { std, zero_row } => {
            let mut v = vec![0.0f32; n];
            let dist = Normal::new(0.0f32, std).expect("a finite, non-negative std");
            fill(&mut v, dist, seed);
            if let (Some(r), Some(&rows)) = (zero_row, shape.first()) {
                let cols = n / rows.max(1);
                v[r * cols..(r + 1) * cols].fill(0.0);
            }
            v
        }
        Init::Uniform { bound } => {
            let mut v = vec![0.0f32; n];
            let dist = Uniform::new(-bound, bound).expect("a positive bound");
            fill(&mut v, dist, seed);
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_shaped() {
        let init = Init::Normal {
            std: 0.02,
            zero_row: Some(1),
        };
        let a = generate(init, &[1000, 300], tensor_seed(7, "w"));
        let b = generate(init, &[1000, 300], tensor_seed(7, "w"));
        let c = generate(init, &[1000, 300], tensor_seed(8, "w"));
        let d = generate(init, &[1000, 300], tensor_seed(7, "v"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert!(a[300..600].iter().all(|&x| x == 0.0));
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 1e-3, "{mean}");
        assert!((var.sqrt() - 0.02).abs() < 5e-4, "{}", var.sqrt());

        let u = generate(Init::Uniform { bound: 0.5 }, &[4096], 1);
        assert!(u.iter().all(|&x| (-0.5..0.5).contains(&x)));
        assert_eq!(generate(Init::Ones, &[3], 0), vec![1.0; 3]);
        assert_eq!(generate(Init::Zeros, &[2, 2], 0), vec![0.0; 4]);
    }
}
