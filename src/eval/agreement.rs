//! How far a run's outputs agree with a reference run's, sequence by sequence: what the
//! bf16 and int8 fidelity figures report (each against f32 on the same inputs).

/// Agreement of `got` with `want`, over pairs of token sequences.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Agreement {
    pub sequences: usize,
    /// Sequences identical to the reference's.
    pub identical: usize,
    /// Sum over sequences of the share of positions holding the reference's token, out
    /// of the longer of the two (a sequence that stops early or runs on disagrees at
    /// every position past the shorter one).
    token_share_sum: f64,
}

impl Agreement {
    /// Adds one pair.
    pub fn add(&mut self, got: &[u32], want: &[u32]) {
        self.sequences += 1;
        self.identical += usize::from(got == want);
        let longer = got.len().max(want.len());
        self.token_share_sum += if longer == 0 {
            1.0
        } else {
            let same = got.iter().zip(want).filter(|(a, b)| a == b).count();
            same as f64 / longer as f64
        };
    }

    /// The tally of `got[i]` against `want[i]` for every pair.
    pub fn between(got: &[Vec<u32>], want: &[Vec<u32>]) -> Self {
        let mut a = Self::default();
        for (g, w) in got.iter().zip(want) {
            a.add(g, w);
        }
        a
    }

    /// Adds another tally.
    pub fn merge(&mut self, other: &Agreement) {
        self.sequences += other.sequences;
        self.identical += other.identical;
        self.token_share_sum += other.token_share_sum;
    }

    /// Share of sequences identical to the reference (1 when there are none).
    pub fn identical_share(&self) -> f64 {
        if self.sequences == 0 {
            1.0
        } else {
            self.identical as f64 / self.sequences as f64
        }
    }

    /// Mean over sequences of the per-token agreement (1 when there are none).
    pub fn token_agreement(&self) -> f64 {
        if self.sequences == 0 {
            1.0
        } else {
            self.token_share_sum / self.sequences as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_runs_agree_fully_and_differences_count_per_position() {
        let mut a = Agreement::default();
        a.add(&[1, 2, 3], &[1, 2, 3]);
        assert_eq!((a.identical_share(), a.token_agreement()), (1.0, 1.0));
        // One wrong token of four; then a sequence that stops two tokens early.
        a.add(&[1, 9, 3, 4], &[1, 2, 3, 4]);
        a.add(&[1, 2], &[1, 2, 3, 4]);
        assert_eq!(a.sequences, 3);
        assert!((a.identical_share() - 1.0 / 3.0).abs() < 1e-12);
        assert!((a.token_agreement() - (1.0 + 0.75 + 0.5) / 3.0).abs() < 1e-12);
        let pairs = Agreement::between(&[vec![1, 2], vec![5]], &[vec![1, 3], vec![5]]);
        assert_eq!((pairs.sequences, pairs.identical), (2, 1));
        assert!((pairs.token_agreement() - 0.75).abs() < 1e-12);
        let mut total = Agreement::default();
        total.merge(&a);
        total.merge(&a);
        assert_eq!(total.sequences, 6);
        assert!((total.token_agreement() - a.token_agreement()).abs() < 1e-12);
    }
}
