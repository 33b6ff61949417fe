//! Choosing the next token from logits: greedy, or temperature with top-k and top-p (nucleus)
//! filtering as transformers applies them (temperature, then top-k, then top-p).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use ibench_shared::GenerationParams;

/// Per-sequence sampler with its own seeded random stream.
pub struct Sampler {
    params: GenerationParams,
    rng: StdRng,
}

/// Index of the largest value; the first one on ties (as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// log-softmax in f64 for stability.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&x| (x as f64 - lse) as f32).collect()
}

impl Sampler {
    pub fn new(params: &GenerationParams) -> Self {
        Self {
            params: params.clone(),
            rng: StdRng::seed_from_u64(params.seed),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let probs = filtered_probs(logits, &self.params);
        let r: f64 = self.rng.random();
        let mut acc = 0.0;
        for &(id, p) in &probs {
            acc += p;
            if r < acc {
                return id;
            }
        }
        probs
            .last()
            .map(|&(id, _)| id)
            .unwrap_or_else(|| argmax(logits))
    }
}

/// The candidate tokens and their renormalised probabilities after temperature, top-k and top-p,
/// sorted by decreasing probability.
pub fn filtered_probs(logits: &[f32], p: &GenerationParams) -> Vec<(u32, f64)> {
    let t = p.temperature.max(1e-6) as f64;
    let mut c: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, x as f64 / t))
        .collect();
    c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if p.top_k > 0 && p.top_k < c.len() {
        c.truncate(p.top_k);
    }
    let max = c[0].1;
    let mut probs: Vec<(u32, f64)> = c.iter().map(|&(i, x)| (i, (x - max).exp())).collect();
    let z: f64 = probs.iter().map(|x| x.1).sum();
    probs.iter_mut().for_each(|x| x.1 /= z);
    if p.top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (at least one token).
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (k, &(_, pr)) in probs.iter().enumerate() {
            acc += pr;
            if acc >= p.top_p as f64 {
                keep = k + 1;
                break;
            }
        }
        probs.truncate(keep.max(1));
        let z: f64 = probs.iter().map(|x| x.1).sum();
        probs.iter_mut().for_each(|x| x.1 /= z);
    }
    probs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        let mut s = Sampler::new(&GenerationParams::default());
        assert_eq!(s.sample(&[0.0, 0.5, 2.0]), 2);
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        // probabilities 0.5, 0.3, 0.2 at temperature 1
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let p = GenerationParams {
            temperature: 1.0,
            top_p: 0.75,
            ..Default::default()
        };
        let f = filtered_probs(&logits, &p);
        assert_eq!(f.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!((f[0].1 - 0.625).abs() < 1e-6);
        let p = GenerationParams {
            temperature: 1.0,
            top_p: 0.9,
            top_k: 1,
            ..Default::default()
        };
        assert_eq!(filtered_probs(&logits, &p).len(), 1);
    }

    #[test]
    fn sampling_with_a_seed_is_reproducible_and_follows_the_distribution() {
        let logits = [1.0f32, 1.0, 1.0, 1.0];
        let p = GenerationParams {
            temperature: 1.0,
            top_p: 1.0,
            seed: 7,
            ..Default::default()
        };
        let draw = |p: &GenerationParams| {
            let mut s = Sampler::new(p);
            (0..2000).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = draw(&p);
        assert_eq!(a, draw(&p));
        assert_ne!(
            a,
            draw(&GenerationParams {
                seed: 8,
                ..p.clone()
            })
        );
        for id in 0..4 {
            let n = a.iter().filter(|&&x| x == id).count();
            assert!(
                (400..600).contains(&n),
                "token {id} drawn {n} times of 2000"
            );
        }
    }

    #[test]
    fn log_softmax_normalises() {
        let l = log_softmax(&[1.0, 2.0, 3.0]);
        let s: f32 = l.iter().map(|x| x.exp()).sum();
        assert!((s - 1.0).abs() < 1e-6);
    }
}
