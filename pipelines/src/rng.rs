//! Our own seeded, counter-based random numbers. candle's CPU RNG cannot be seeded,
//! so every random draw (init, split, shuffles) comes from here.
//!
//! A stream is keyed by `(seed, purpose)` through blake3; draw `i` of a stream is
//! `splitmix64(key + i)`, so any draw can be recomputed without replaying the stream
//! (resuming at step k draws what an uninterrupted run would have drawn).

#[derive(Debug, Clone)]
pub struct Rng {
    key: u64,
    counter: u64,
}

impl Rng {
    /// A stream for `purpose` (e.g. `"init/fc1.weight"`, `"shuffle/epoch=3"`) under `seed`.
    pub fn new(seed: u64, purpose: &str) -> Rng {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"pipe-rng-v1");
        hasher.update(&seed.to_le_bytes());
        hasher.update(purpose.as_bytes());
        let digest = hasher.finalize();
        let mut key = [0u8; 8];
        key.copy_from_slice(&digest.as_bytes()[..8]);
        Rng { key: u64::from_le_bytes(key), counter: 0 }
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut z = self.key.wrapping_add(self.counter.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        self.counter += 1;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in `0..n` (n > 0), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut rng = Rng::new(7, "x");
                move |_| rng.next_u64()
            })
            .collect();
        let mut again = Rng::new(7, "x");
        assert_eq!(a, (0..4).map(|_| again.next_u64()).collect::<Vec<_>>());
        assert_ne!(Rng::new(7, "y").next_u64(), a[0]);
        assert_ne!(Rng::new(8, "x").next_u64(), a[0]);
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut rng = Rng::new(1, "normal");
        let n = 20_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut items: Vec<u32> = (0..100).collect();
        Rng::new(3, "shuffle").shuffle(&mut items);
        assert_ne!(items, (0..100).collect::<Vec<_>>());
        items.sort_unstable();
        assert_eq!(items, (0..100).collect::<Vec<_>>());
    }
}
