//! Choosing the next token from logits: greedy at temperature 0, else
//! softmax at the temperature, cut to the nucleus (`top_p`), drawn with a
//! per-sequence RNG seeded from the request's `seed` (same seed, same logits
//! → same token).

/// How a sequence samples, and when it ends.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 keeps every token.
    pub top_p: f32,
    /// RNG seed; None draws one at random.
    pub seed: Option<u64>,
    /// Generation stops before the first occurrence of any of these.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_tokens: 16,
            temperature: 1.0,
            top_p: 1.0,
            seed: None,
            stop: Vec::new(),
        }
    }
}

/// A sequence's sampler.
pub struct Sampler {
    rng: fastrand::Rng,
    temperature: f64,
    top_p: f64,
    probs: Vec<(usize, f64)>,
}

impl Sampler {
    /// A sampler for these parameters.
    pub fn new(params: &SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        Sampler {
            rng,
            temperature: f64::from(params.temperature),
            top_p: f64::from(params.top_p),
            probs: Vec::new(),
        }
    }

    /// Picks a token index from one row of logits. Non-finite logits never
    /// win; an all-non-finite row yields token 0.
    pub fn sample(&mut self, logits: &[f32]) -> usize {
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let max = logits
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return 0;
        }
        self.probs.clear();
        let mut total = 0.0f64;
        for (i, &l) in logits.iter().enumerate() {
            if l.is_finite() {
                let p = ((f64::from(l) - f64::from(max)) / self.temperature).exp();
                if p > 0.0 {
                    self.probs.push((i, p));
                    total += p;
                }
            }
        }
        if self.probs.is_empty() || total <= 0.0 {
            return argmax(logits);
        }
        if self.top_p < 1.0 {
            // Highest first, ties by index: a total order, so the unstable
            // (faster) sort is still deterministic.
            self.probs
                .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let want = self.top_p * total;
            let mut mass = 0.0;
            let mut keep = 0;
            for (_, p) in &self.probs {
                mass += p;
                keep += 1;
                if mass >= want {
                    break;
                }
            }
            self.probs.truncate(keep.max(1));
            total = mass;
        }
        let mut target = self.rng.f64() * total;
        for &(i, p) in &self.probs {
            if target < p {
                return i;
            }
            target -= p;
        }
        self.probs.last().map_or(0, |(i, _)| *i)
    }
}

/// Index of the largest finite logit (the first on ties; 0 if none).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_finite() && l > best_value {
            best = i;
            best_value = l;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn params(temperature: f32, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            seed: Some(seed),
            ..SamplingParams::default()
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(&params(0.0, 1.0, 1));
        assert_eq!(s.sample(&[0.1, 3.0, f32::NAN, 3.0]), 1);
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..256).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut s = Sampler::new(&params(1.0, 0.9, seed));
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let mut s = Sampler::new(&params(1.0, 1e-6, 5));
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 2.0, 1.0]), 1);
        }
    }
}
