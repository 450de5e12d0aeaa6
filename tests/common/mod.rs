//! Helpers shared by the integration tests: the counter-based hash that
//! scripts/make_fixtures.py uses for weights, inputs and sketches (bit for bit), and
//! relative L2 error.
#![allow(dead_code)]

pub mod naive;

use alexnet::ir::Plan;
use alexnet::runtime::weights::NamedTensor;
use rand::Rng;

/// `n` values uniform in [-1, 1).
pub fn random(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `n` values uniform in [-scale, scale).
pub fn random_scaled(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Every parameter of `plan` uniform with bound sqrt(3 / fan-in) (fan-in 10 for biases), so
/// activations stay O(1) through deep networks.
pub fn fan_in_weights(plan: &Plan, rng: &mut impl Rng) -> Vec<NamedTensor> {
    plan.params()
        .into_iter()
        .map(|s| {
            let fan_in: usize = if s.shape.len() > 1 {
                s.shape[1..].iter().product()
            } else {
                10
            };
            NamedTensor {
                data: random_scaled(rng, s.len(), (3.0 / fan_in as f32).sqrt()),
                name: s.name,
                shape: s.shape,
            }
        })
        .collect()
}

/// Every parameter of `plan`, uniform in [-1, 1).
pub fn random_params(plan: &Plan, rng: &mut impl Rng) -> Vec<NamedTensor> {
    plan.params()
        .into_iter()
        .map(|s| NamedTensor {
            data: random(rng, s.len()),
            name: s.name,
            shape: s.shape,
        })
        .collect()
}

pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` values in `[-bound, bound)`, as `hash_uniform` in scripts/make_fixtures.py.
pub fn hash_uniform(seed: u64, stream: u64, n: usize, bound: f64) -> Vec<f32> {
    let base = seed.wrapping_add(stream << 40);
    (0..n as u64)
        .map(|i| {
            let u = (splitmix64(base.wrapping_add(i)) >> 40) as f64 / 16_777_216.0;
            ((2.0 * u - 1.0) * bound) as f32
        })
        .collect()
}

/// The fixture weights: He-uniform weights (bound sqrt(6 / fan_in)), biases in [-0.1, 0.1).
pub fn hash_weights(plan: &Plan, seed: u64) -> Vec<NamedTensor> {
    plan.params()
        .into_iter()
        .enumerate()
        .map(|(i, spec)| {
            let bound = if spec.shape.len() == 1 {
                0.1
            } else {
                (6.0 / spec.shape[1..].iter().product::<usize>() as f64).sqrt()
            };
            NamedTensor {
                data: hash_uniform(seed, i as u64, spec.len(), bound),
                name: spec.name,
                shape: spec.shape,
            }
        })
        .collect()
}

const SKETCH_SEED: u64 = 0x5EED_5EED;

/// 64 signed sums of `y`, as `sketch` in scripts/make_fixtures.py.
pub fn sketch(y: &[f32]) -> Vec<f64> {
    let mut out = vec![0.0f64; 64];
    for (i, &v) in y.iter().enumerate() {
        let h = splitmix64(SKETCH_SEED.wrapping_add(i as u64));
        for (j, o) in out.iter_mut().enumerate() {
            if (h >> j) & 1 == 1 {
                *o += v as f64;
            } else {
                *o -= v as f64;
            }
        }
    }
    out
}

/// `||a - b|| / ||b||`.
pub fn rel_l2<A: Copy + Into<f64>, B: Copy + Into<f64>>(a: &[A], b: &[B]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x.into(), y.into());
        num += (x - y) * (x - y);
        den += y * y;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// A `Preprocess` for the augmentation kernel's tests: `side` x `side` images cut to
/// `crop`, a random per-pixel mean in 60..190, colour components, per-channel divisors.
pub fn augment_preprocess(
    side: usize,
    crop: (usize, usize),
    rng: &mut impl Rng,
) -> alexnet::runtime::data::pipeline::Preprocess {
    use alexnet::runtime::data::augment::PcaColour;
    use alexnet::runtime::data::pipeline::{Preprocess, PIXEL_SCALE};
    Preprocess {
        side,
        crop,
        mean: (0..3 * side * side)
            .map(|_| rng.random_range(60.0..190.0))
            .collect(),
        scale: PIXEL_SCALE,
        std: [0.9, 1.1, 1.0],
        pca: Some(PcaColour {
            eigenvalues: [0.06, 0.007, 0.0015],
            eigenvectors: [[0.58, 0.58, 0.57], [0.7, 0.0, -0.71], [0.41, -0.82, 0.41]],
        }),
        classes: vec!["a".into()],
        source: "test".into(),
    }
}
