//! Softmax cross-entropy, fused and numerically stable, with top-1 and top-5 counts.

/// The loss of a batch and what training needs from it.
#[derive(Clone, Debug, PartialEq)]
pub struct LossOutput {
    /// Mean over the batch of `-log softmax(logits)[label]`.
    pub loss: f64,
    /// Gradient of the mean loss with respect to the logits: `(softmax - onehot) / batch`.
    pub dlogits: Vec<f32>,
    /// Images whose label is the largest logit.
    pub top1_correct: usize,
    /// Images whose label is among the five largest logits.
    pub top5_correct: usize,
}

/// `logits` is `[batch, classes]`; `labels` holds one class index per image.
///
/// # Panics
/// If a label is not below `classes` or the lengths disagree (the caller validates
/// labels when it reads them).
pub fn softmax_cross_entropy(logits: &[f32], labels: &[usize], classes: usize) -> LossOutput {
    let batch = labels.len();
    assert_eq!(logits.len(), batch * classes, "logits and labels disagree");
    let mut dlogits = vec![0.0f32; logits.len()];
    let (mut loss, mut top1, mut top5) = (0.0f64, 0, 0);
    for ((row, drow), &label) in logits
        .chunks(classes)
        .zip(dlogits.chunks_mut(classes))
        .zip(labels)
    {
        assert!(
            label < classes,
            "label {label} out of range for {classes} classes"
        );
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        let log_z = z.ln() + m;
        loss += log_z - row[label] as f64;
        for (d, &v) in drow.iter_mut().zip(row) {
            *d = (((v as f64 - log_z).exp()) / batch as f64) as f32;
        }
        drow[label] -= 1.0 / batch as f32;
        // Rank of the label: how many logits beat it (ties count against it).
        let beaten_by = row
            .iter()
            .enumerate()
            .filter(|&(i, &v)| v > row[label] || (v == row[label] && i < label))
            .count();
        top1 += usize::from(beaten_by == 0);
        top5 += usize::from(beaten_by < 5);
    }
    LossOutput {
        loss: loss / batch.max(1) as f64,
        dlogits,
        top1_correct: top1,
        top5_correct: top5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_definition_and_its_gradient() {
        let logits = [1.0f32, 2.0, 0.5, -1.0, 3.0, 0.0, 0.2, 0.1];
        let labels = [1, 0];
        let out = softmax_cross_entropy(&logits, &labels, 4);
        let ce = |row: &[f64], l: usize| -> f64 {
            row.iter().map(|v| v.exp()).sum::<f64>().ln() - row[l]
        };
        let f64s: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
        let want = (ce(&f64s[..4], 1) + ce(&f64s[4..], 0)) / 2.0;
        assert!((out.loss - want).abs() < 1e-12);
        // Central differences of the mean loss.
        for i in 0..8 {
            let mut up = f64s.clone();
            let mut down = f64s.clone();
            up[i] += 1e-6;
            down[i] -= 1e-6;
            let mean = |v: &[f64]| (ce(&v[..4], 1) + ce(&v[4..], 0)) / 2.0;
            let num = (mean(&up) - mean(&down)) / 2e-6;
            assert!(
                (out.dlogits[i] as f64 - num).abs() < 1e-6,
                "{i}: {} vs {num}",
                out.dlogits[i]
            );
        }
        assert_eq!((out.top1_correct, out.top5_correct), (2, 2));
    }

    #[test]
    fn stable_for_huge_logits() {
        let out = softmax_cross_entropy(&[1e30, -1e30, 0.0], &[0], 3);
        assert!(out.loss.abs() < 1e-12 && out.dlogits.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn top5_counts_rank() {
        let logits: Vec<f32> = (0..10).map(|i| i as f32).collect();
        assert_eq!(softmax_cross_entropy(&logits, &[5], 10).top5_correct, 1);
        assert_eq!(softmax_cross_entropy(&logits, &[4], 10).top5_correct, 0);
        assert_eq!(softmax_cross_entropy(&logits, &[9], 10).top1_correct, 1);
    }
}
