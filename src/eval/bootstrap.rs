//! Bootstrap confidence intervals as `rouge_score.scoring.BootstrapAggregator`
//! computes them.
//!
//! Python draws its resamples from numpy's legacy global generator
//! (`np.random.choice`, i.e. MT19937 with masked rejection sampling). We
//! re-implement exactly that generator instead of using `rand`, so that
//! `BootstrapAggregator::new(seed)` reproduces Python's low/mid/high bit for
//! bit when Python ran `np.random.seed(seed)` right before `aggregate()`.
//! Note that Python's `mid` is the *median* of the bootstrap means (its
//! docstring calls it the mean); the plain mean is exposed as `mean`.

use serde::Serialize;

use super::rouge::{RougeScores, RougeType, Score};

/// low / mid / high bounds (2.5th, 50th and 97.5th percentile of the bootstrap
/// means by default) plus the plain mean over the added samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AggregateScore {
    pub low: Score,
    pub mid: Score,
    pub high: Score,
    pub mean: Score,
}

/// Collects per-example scores and aggregates them with bootstrap resampling.
#[derive(Debug, Clone)]
pub struct BootstrapAggregator {
    confidence_interval: f64,
    n_samples: usize,
    seed: u32,
    // Insertion-ordered: Python aggregates score types in dict order, and all
    // types draw from one shared random stream, so order changes the results.
    scores: Vec<(RougeType, Vec<Score>)>,
}

impl BootstrapAggregator {
    /// 95% interval, 1000 resamples (the Python defaults).
    pub fn new(seed: u32) -> Self {
        Self::with_options(0.95, 1000, seed).expect("defaults are valid")
    }

    /// Same argument checks as Python: interval in [0, 1], `n_samples > 0`.
    pub fn with_options(
        confidence_interval: f64,
        n_samples: usize,
        seed: u32,
    ) -> Result<Self, super::EvalError> {
        if !(0.0..=1.0).contains(&confidence_interval) {
            return Err(super::EvalError::Invalid(
                "confidence_interval must be in range [0, 1]".into(),
            ));
        }
        if n_samples == 0 {
            return Err(super::EvalError::Invalid(
                "n_samples must be positive".into(),
            ));
        }
        Ok(Self {
            confidence_interval,
            n_samples,
            seed,
            scores: Vec::new(),
        })
    }

    pub fn add_scores(&mut self, scores: &RougeScores) {
        for &(kind, score) in &scores.0 {
            match self.scores.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, list)) => list.push(score),
                None => self.scores.push((kind, vec![score])),
            }
        }
    }

    /// Aggregates every score type, in the order first added. Deterministic:
    /// the generator is re-seeded on each call.
    pub fn aggregate(&self) -> Vec<(RougeType, AggregateScore)> {
        let mut rng = Mt19937::new(self.seed);
        self.scores
            .iter()
            .map(|(kind, list)| (*kind, self.aggregate_one(list, &mut rng)))
            .collect()
    }

    fn aggregate_one(&self, rows: &[Score], rng: &mut Mt19937) -> AggregateScore {
        let n = rows.len();
        let rows: Vec<[f64; 3]> = rows
            .iter()
            .map(|s| [s.precision, s.recall, s.fmeasure])
            .collect();
        let mut means: [Vec<f64>; 3] = Default::default();
        for _ in 0..self.n_samples {
            // numpy's axis-0 mean of a C-ordered matrix adds row by row.
            let mut sum = [0.0f64; 3];
            for _ in 0..n {
                let row = &rows[rng.below(n as u32) as usize];
                for j in 0..3 {
                    sum[j] += row[j];
                }
            }
            for j in 0..3 {
                means[j].push(sum[j] / n as f64);
            }
        }
        for col in &mut means {
            col.sort_by(f64::total_cmp);
        }
        let delta = (1.0 - self.confidence_interval) / 2.0;
        let at = |q: f64| {
            let v: Vec<f64> = means.iter().map(|col| percentile(col, q)).collect();
            Score {
                precision: v[0],
                recall: v[1],
                fmeasure: v[2],
            }
        };
        let mut mean = [0.0f64; 3];
        for row in &rows {
            for j in 0..3 {
                mean[j] += row[j];
            }
        }
        AggregateScore {
            low: at(100.0 * delta),
            mid: at(100.0 * 0.5),
            high: at(100.0 * (1.0 - delta)),
            mean: Score {
                precision: mean[0] / n as f64,
                recall: mean[1] / n as f64,
                fmeasure: mean[2] / n as f64,
            },
        }
    }
}

/// `np.percentile(sorted, q)` with the default "linear" method, including
/// numpy's two-sided lerp (`b - (b - a) * (1 - t)` when `t >= 0.5`).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let virtual_index = (n - 1) as f64 * (q / 100.0);
    if virtual_index >= (n - 1) as f64 {
        return sorted[n - 1];
    }
    if virtual_index < 0.0 {
        return sorted[0];
    }
    let prev = virtual_index.floor();
    let t = virtual_index - prev;
    let (a, b) = (sorted[prev as usize], sorted[prev as usize + 1]);
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// The 32-bit Mersenne Twister as numpy's legacy `RandomState` uses it.
struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    /// `np.random.seed(seed)` for an integer seed (`init_genrand`).
    fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let prev = state[i - 1];
            state[i] = 1812433253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for k in 0..624 {
                let y = (self.state[k] & 0x8000_0000) | (self.state[(k + 1) % 624] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                self.state[k] = self.state[(k + 397) % 624] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// A uniform integer in `0..n`, as `randint(0, n)` draws it: mask to the
    /// next power of two and reject; a range of one value consumes nothing.
    fn below(&mut self, n: u32) -> u32 {
        let max = n - 1;
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16] {
            mask |= mask >> shift;
        }
        loop {
            let v = self.next_u32() & mask;
            if v <= max {
                return v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_reference_sequence() {
        // First outputs of init_genrand(5489), the reference implementation's default seed.
        let mut mt = Mt19937::new(5489);
        let got: Vec<u32> = (0..3).map(|_| mt.next_u32()).collect();
        assert_eq!(got, vec![3499211612, 581869302, 3890346734]);
    }

    #[test]
    fn numpy_choice_sequence() {
        // np.random.seed(42); np.random.choice(np.arange(10), size=10)
        let mut mt = Mt19937::new(42);
        let got: Vec<u32> = (0..10).map(|_| mt.below(10)).collect();
        assert_eq!(got, vec![6, 3, 7, 4, 6, 9, 2, 6, 7, 4]);
    }

    #[test]
    fn percentile_matches_numpy() {
        // np.percentile([1., 2., 4., 8.], [2.5, 50, 97.5]) == [1.075, 3.0, 7.7]
        let v = [1.0, 2.0, 4.0, 8.0];
        assert!((percentile(&v, 2.5) - 1.075).abs() < 1e-12);
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert!((percentile(&v, 97.5) - 7.7).abs() < 1e-12);
    }
}
