//! Scoring a classifier's predictions: top-1 and top-5 error, mean cross-entropy, the
//! per-class confusion matrix, and the paper's test-time averaging of the softmax over
//! several patches of each image ([`average_crops`]).

use std::fmt::Write as _;

use crate::error::{Error, Result};
use crate::ir::Plan;
use crate::tensor::Tensor;

/// The classes ranked by probability, highest first, ties broken by the lower index: the
/// first `k` as `(class, probability)`.
pub fn top_k(probs: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order.into_iter().take(k).map(|c| (c, probs[c])).collect()
}

/// The rank of class `c` (0 = the prediction) in the order of [`top_k`]; past every class
/// when a probability is NaN (such an image counts as wrong). The trainer's inference
/// scores use the same rule.
pub(crate) fn rank(probs: &[f32], c: usize) -> usize {
    if probs.iter().any(|q| q.is_nan()) {
        return probs.len();
    }
    let p = probs[c];
    probs
        .iter()
        .enumerate()
        .filter(|&(j, &q)| q > p || (q == p && j < c))
        .count()
}

/// What one step or one evaluation saw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchStats {
    pub images: usize,
    /// Mean cross-entropy.
    pub loss: f64,
    pub top1_correct: usize,
    pub top5_correct: usize,
    /// Training steps whose update was skipped because their loss or gradients were not
    /// finite (`OnNonFinite::Skip`, in the run module); their images count nowhere else.
    pub skipped: usize,
}

impl BatchStats {
    pub fn top1_error(&self) -> f64 {
        1.0 - self.top1_correct as f64 / self.images.max(1) as f64
    }

    pub fn top5_error(&self) -> f64 {
        1.0 - self.top5_correct as f64 / self.images.max(1) as f64
    }

    /// Adds another batch's statistics (losses weighted by images).
    pub fn merge(&mut self, o: &BatchStats) {
        self.skipped += o.skipped;
        let n = self.images + o.images;
        if n > 0 {
            self.loss = (self.loss * self.images as f64 + o.loss * o.images as f64) / n as f64;
        }
        self.images = n;
        self.top1_correct += o.top1_correct;
        self.top5_correct += o.top5_correct;
    }
}

/// Loss and top-k counts of `plan`'s inference output `out` on a checked batch.
pub(crate) fn output_stats(plan: &Plan, out: &Tensor, labels: &[u32], batch: usize) -> BatchStats {
    let classes = out.len() / batch.max(1);
    let probabilities = plan
        .layers
        .last()
        .is_some_and(|l| l.op.kind().must_be_last());
    let mut stats = BatchStats {
        images: batch,
        loss: 0.0,
        top1_correct: 0,
        top5_correct: 0,
        skipped: 0,
    };
    let labels_usize: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    if probabilities {
        let mut loss = 0.0;
        for (row, &label) in out.data().chunks(classes).zip(&labels_usize) {
            // NaN stays NaN (so a caller sees the divergence); 0 gives the largest loss.
            let q = row[label];
            loss -= f64::from(if q.is_nan() {
                q
            } else {
                q.max(f32::MIN_POSITIVE)
            })
            .ln();
            let beaten = rank(row, label);
            stats.top1_correct += usize::from(beaten == 0);
            stats.top5_correct += usize::from(beaten < 5);
        }
        stats.loss = loss / batch as f64;
    } else {
        let l = crate::cpu::loss::softmax_cross_entropy(out.data(), &labels_usize, classes);
        stats.loss = l.loss;
        stats.top1_correct = l.top1_correct;
        stats.top5_correct = l.top5_correct;
    }
    stats
}

/// The mean of each image's `crops` consecutive rows of `classes` probabilities: the
/// paper's prediction from ten patches. `probs` holds `images * crops` rows.
pub fn average_crops(probs: &[f32], crops: usize, classes: usize) -> Result<Vec<f32>> {
    let row = crops * classes;
    if crops == 0 || classes == 0 || !probs.len().is_multiple_of(row) {
        return Err(Error::Invalid(format!(
            "average_crops: {} values are not whole images of {crops} crops x {classes} classes",
            probs.len()
        )));
    }
    Ok(probs
        .chunks(row)
        .flat_map(|image| {
            (0..classes).map(move |c| {
                let sum: f64 = (0..crops).map(|k| f64::from(image[k * classes + c])).sum();
                (sum / crops as f64) as f32
            })
        })
        .collect())
}

/// Running scores over the images seen so far.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    classes: usize,
    /// `confusion[truth * classes + predicted]`.
    confusion: Vec<u64>,
    top5: u64,
    images: u64,
    loss: f64,
}

impl Evaluation {
    /// Scores for a classifier of `classes` outputs.
    pub fn new(classes: usize) -> Self {
        Evaluation {
            classes,
            confusion: vec![0; classes * classes],
            top5: 0,
            images: 0,
            loss: 0.0,
        }
    }

    /// Adds a batch: `probs` holds one row of `classes` probabilities per label. An error
    /// if the sizes disagree or a label is not a class.
    pub fn add(&mut self, probs: &[f32], labels: &[u32]) -> Result<()> {
        if probs.len() != labels.len() * self.classes {
            return Err(Error::Invalid(format!(
                "Evaluation::add: {} probabilities for {} labels of {} classes",
                probs.len(),
                labels.len(),
                self.classes
            )));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= self.classes) {
            return Err(Error::Invalid(format!(
                "Evaluation::add: label {bad} is not one of the {} classes",
                self.classes
            )));
        }
        for (p, &label) in probs.chunks(self.classes).zip(labels) {
            let truth = label as usize;
            let r = rank(p, truth);
            // With NaN probabilities the prediction is "not the label" (rank past all).
            let predicted = if r == 0 {
                truth
            } else {
                top_k(p, 2)
                    .into_iter()
                    .map(|(c, _)| c)
                    .find(|&c| c != truth)
                    .unwrap_or(truth)
            };
            self.confusion[truth * self.classes + predicted] += 1;
            if r < 5 {
                self.top5 += 1;
            }
            // NaN stays NaN; a probability of 0 gives the loss of the smallest positive one.
            let q = p[truth];
            self.loss -= f64::from(if q.is_nan() {
                q
            } else {
                q.max(f32::MIN_POSITIVE)
            })
            .ln();
            self.images += 1;
        }
        Ok(())
    }

    /// Images scored.
    pub fn images(&self) -> u64 {
        self.images
    }

    /// Fraction of images whose most probable class is not the label.
    pub fn top1_error(&self) -> f64 {
        let right: u64 = (0..self.classes)
            .map(|c| self.confusion[c * self.classes + c])
            .sum();
        1.0 - right as f64 / self.images.max(1) as f64
    }

    /// Fraction of images whose label is not among the five most probable classes.
    pub fn top5_error(&self) -> f64 {
        1.0 - self.top5 as f64 / self.images.max(1) as f64
    }

    /// Mean cross-entropy, `-ln p(label)`.
    pub fn loss(&self) -> f64 {
        self.loss / self.images.max(1) as f64
    }

    /// How many images of class `truth` were predicted as `predicted`.
    pub fn confusion(&self, truth: usize, predicted: usize) -> u64 {
        self.confusion[truth * self.classes + predicted]
    }

    /// One line per class that has images: its count, its top-1 error, and the class its
    /// images were most often mistaken for. `names` names the first classes; others are
    /// shown as `#index`.
    pub fn summary(&self, names: &[String]) -> String {
        let name = |c: usize| names.get(c).cloned().unwrap_or_else(|| format!("#{c}"));
        let width = (0..self.classes)
            .map(|c| name(c).len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = format!(
            "{:<width$}  {:>7}  {:>11}  most often mistaken for\n",
            "class", "images", "top-1 error"
        );
        for t in 0..self.classes {
            let row = &self.confusion[t * self.classes..(t + 1) * self.classes];
            let n: u64 = row.iter().sum();
            if n == 0 {
                continue;
            }
            let error = 1.0 - row[t] as f64 / n as f64;
            let worst = (0..self.classes)
                .filter(|&p| p != t && row[p] > 0)
                .max_by(|&a, &b| row[a].cmp(&row[b]).then(b.cmp(&a)));
            let _ = writeln!(
                out,
                "{:<width$}  {n:>7}  {:>10.1}%  {}",
                name(t),
                100.0 * error,
                worst.map_or("-".to_string(), |p| format!(
                    "{} ({} of {n})",
                    name(p),
                    row[p]
                ))
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_top_k() {
        let p = [0.1, 0.4, 0.1, 0.3, 0.05, 0.05];
        assert_eq!(top_k(&p, 2), vec![(1, 0.4), (3, 0.3)]);
        // Ties: the lower index ranks first.
        assert_eq!(rank(&p, 0), 2);
        assert_eq!(rank(&p, 2), 3);
        assert_eq!(rank(&p, 5), 5);
    }

    #[test]
    fn scores_by_hand() {
        let mut e = Evaluation::new(6);
        let probs = [
            [0.1, 0.4, 0.1, 0.3, 0.05, 0.05], // label 1: right
            [0.1, 0.4, 0.1, 0.3, 0.05, 0.05], // label 3: top-5 only
            [0.1, 0.4, 0.1, 0.3, 0.05, 0.05], // label 5: rank 5, wrong in both
            [0.5, 0.1, 0.1, 0.1, 0.1, 0.1],   // label 3: mistaken for 0
        ];
        let flat: Vec<f32> = probs.iter().flatten().copied().collect();
        e.add(&flat, &[1, 3, 5, 3]).unwrap();
        assert_eq!(e.images(), 4);
        assert!((e.top1_error() - 0.75).abs() < 1e-12);
        assert!((e.top5_error() - 0.25).abs() < 1e-12);
        let want = -(0.4f64.ln() + 0.3f64.ln() + 0.05f64.ln() + 0.1f64.ln()) / 4.0;
        assert!((e.loss() - want).abs() < 1e-6);
        assert_eq!(e.confusion(3, 1), 1);
        assert_eq!(e.confusion(3, 0), 1);
        let names: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let s = e.summary(&names);
        assert!(s.contains("d            2       100.0%  a (1 of 2)"), "{s}");
        assert!(s.contains("#5           1       100.0%  b (1 of 1)"), "{s}");
        assert!(e.add(&flat[..6], &[6]).is_err());
        // NaN predictions are wrong in both scores and poison the loss.
        let mut n = Evaluation::new(6);
        n.add(&[f32::NAN; 6], &[0]).unwrap();
        assert_eq!((n.top1_error(), n.top5_error()), (1.0, 1.0));
        assert!(n.loss().is_nan());
        assert!(e.add(&flat, &[1]).is_err());
    }

    #[test]
    fn averages_crops() {
        let p = [0.2, 0.8, 0.6, 0.4, 1.0, 0.0, 0.0, 1.0];
        assert_eq!(average_crops(&p, 2, 2).unwrap(), vec![0.4, 0.6, 0.5, 0.5]);
        assert!(average_crops(&p, 3, 2).is_err());
    }
}
