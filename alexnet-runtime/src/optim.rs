//! The paper's optimiser (section 5): stochastic gradient descent with momentum 0.9 and
//! weight decay 0.0005,
//!
//! ```text
//! v <- momentum * v - weight_decay * lr * w - lr * grad
//! w <- w + v
//! ```
//!
//! with a per-layer learning-rate multiplier.

use crate::error::{Error, Result};

/// Hyper-parameters of the update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

impl Default for Sgd {
    /// The paper's: learning rate 0.01, momentum 0.9, weight decay 0.0005.
    fn default() -> Self {
        Sgd {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0005,
        }
    }
}

impl Sgd {
    /// The first hyper-parameter out of range, if any: its name as a state file stores it
    /// (`lr`, `momentum`, `weight_decay`; the command line's flags are these with `-` for
    /// `_`), its value and the rule it breaks. The rules: a learning rate above 0,
    /// a momentum from 0 to below 1, a weight decay of 0 or more, all finite, and a weight
    /// decay that does not by itself make the weights grow (with no gradient the update is
    /// `w' = (1 + momentum - lr * weight_decay) w - momentum w_prev`, which is stable only
    /// while `lr * weight_decay < 2 (1 + momentum)`).
    ///
    /// One rule for every use: a run checks its settings with it when it starts and when
    /// it resumes ([`Sgd::validate`]).
    pub fn out_of_range(&self) -> Option<(&'static str, f32, String)> {
        let Sgd {
            lr,
            momentum,
            weight_decay,
        } = *self;
        if !(lr.is_finite() && lr > 0.0) {
            return Some((
                "lr",
                lr,
                "is out of range: it must be a number above 0".into(),
            ));
        }
        if !(momentum.is_finite() && (0.0..1.0).contains(&momentum)) {
            return Some((
                "momentum",
                momentum,
                "is out of range: it must be at least 0 and below 1 (the paper's is 0.9)".into(),
            ));
        }
        if !(weight_decay.is_finite() && weight_decay >= 0.0) {
            return Some((
                "weight_decay",
                weight_decay,
                "is out of range: it must be a number, 0 or more (the paper's is 0.0005)".into(),
            ));
        }
        let (shrink, limit) = (lr * weight_decay, 2.0 * (1.0 + momentum));
        if shrink >= limit {
            return Some((
                "weight_decay",
                weight_decay,
                format!(
                    "is too large for learning rate {lr} and momentum {momentum}: the weights would grow by themselves (learning rate x weight decay = {shrink} must be below 2 x (1 + momentum) = {limit})"
                ),
            ));
        }
        None
    }

    /// [`Sgd::out_of_range`] as an error: `momentum 2 is out of range: ...`.
    pub fn validate(&self) -> Result<()> {
        match self.out_of_range() {
            None => Ok(()),
            Some((name, value, rule)) => Err(Error::Invalid(format!("{name} {value} {rule}"))),
        }
    }

    /// One update of a tensor `w` with momentum `v` from `grad`; `lr_mult` scales the
    /// learning rate for this tensor.
    ///
    /// # Panics
    /// If the three slices differ in length.
    pub fn step(&self, w: &mut [f32], v: &mut [f32], grad: &[f32], lr_mult: f32) {
        assert!(
            w.len() == v.len() && w.len() == grad.len(),
            "sgd: tensor, momentum and gradient differ in length"
        );
        let lr = self.lr * lr_mult;
        for ((w, v), g) in w.iter_mut().zip(v.iter_mut()).zip(grad) {
            *v = self.momentum * *v - self.weight_decay * lr * *w - lr * g;
            *w += *v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_steps_by_hand() {
        let sgd = Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.5,
        };
        let (mut w, mut v) = (vec![1.0f32], vec![0.0f32]);
        sgd.step(&mut w, &mut v, &[2.0], 1.0);
        // v = 0 - 0.5*0.1*1 - 0.1*2 = -0.25; w = 0.75
        assert!((v[0] + 0.25).abs() < 1e-7 && (w[0] - 0.75).abs() < 1e-7);
        sgd.step(&mut w, &mut v, &[2.0], 2.0);
        // lr = 0.2: v = 0.9*-0.25 - 0.5*0.2*0.75 - 0.2*2 = -0.225 - 0.075 - 0.4 = -0.7; w = 0.05
        assert!((v[0] + 0.7).abs() < 1e-6 && (w[0] - 0.05).abs() < 1e-6);
    }
}
