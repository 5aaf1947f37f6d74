//! The one pseudo-random generator: SplitMix64, small and well mixed, so batch orders, initial
//! weights, simulated tasks and test data are the same for the same seed on every machine.

/// SplitMix64 from a seed.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), with 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [-1, 1), with 24 bits, in f32.
    pub fn symmetric_f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// `n` values uniform in [-1, 1) from `seed`: test data, benchmark inputs, perturbed heads.
pub fn seeded(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = SplitMix(seed);
    (0..n).map(|_| rng.symmetric_f32()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_values_in_range() {
        let a = seeded(7, 1000);
        assert_eq!(a, seeded(7, 1000));
        assert_ne!(a, seeded(8, 1000));
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.1, "mean {mean}");
    }
}
