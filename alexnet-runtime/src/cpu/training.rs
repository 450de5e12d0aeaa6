//! Training on the CPU: the backward pass of a stage (each kind's [`CpuLayer::backward`](super::CpuLayer::backward)),
//! dropout with the Philox mask, the fused loss and the SGD update.

use rayon::prelude::*;

use super::{check_len, loss, Cpu, StageGrads};
use crate::backend::Training;
use crate::error::{Error, Result};
use crate::ir::{Op, Plan, Stage};
use crate::optim::Sgd;
use crate::philox::{self, DropoutMask};

impl Training for Cpu {
    fn backward_stage(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        x: &Vec<f32>,
        y: &Vec<f32>,
        dy: &mut Vec<f32>,
        params: &[&Vec<f32>],
        dx: Option<&mut Vec<f32>>,
        dparams: &mut [&mut Vec<f32>],
    ) -> Result<()> {
        let params: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
        // Overwritten by the layer: no pass to clear them (fc6's alone is 151 MB).
        let grads: Vec<&mut [f32]> = dparams.iter_mut().map(|d| d.as_mut_slice()).collect();
        self.backward_slices(
            plan,
            stage,
            batch,
            x,
            y,
            dy,
            &params,
            StageGrads {
                dx: dx.map(|d| d.as_mut_slice()),
                dparams: grads,
            },
        )
    }

    fn dropout(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        mask: DropoutMask,
        input: &Vec<f32>,
        output: &mut Vec<f32>,
    ) -> Result<()> {
        let layer = &plan.layers[stage.layer];
        let Op::Dropout(d) = layer.op else {
            return Err(Error::Invalid(format!(
                "cpu: {} is not dropout",
                layer.name
            )));
        };
        let p = d.p;
        let n = batch * layer.input.len();
        check_len(&format!("{} input", layer.name), input, n)?;
        check_len(&format!("{} output", layer.name), output, n)?;
        let towers = plan.tower.map_or(1, |t| t.of);
        let n32 = u32::try_from(n * towers).map_err(|_| {
            Error::Invalid(format!(
                "cpu: {}: {} values exceed dropout's 32-bit counter",
                layer.name,
                n * towers
            ))
        })?;
        let (threshold, scale) = philox::dropout_threshold_scale(p);
        let id = stage.layer as u32;
        const CHUNK: usize = 1 << 14;
        output[..n]
            .par_chunks_mut(CHUNK)
            .zip(input[..n].par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (out, inp))| {
                for (j, (o, &v)) in out.iter_mut().zip(inp).enumerate() {
                    let i = plan.dropout_counter(stage.layer, c * CHUNK + j) as u32;
                    debug_assert!(i < n32);
                    *o = if mask.draw(id, i) >= threshold {
                        v * scale
                    } else {
                        0.0
                    };
                }
            });
        Ok(())
    }

    fn softmax_cross_entropy(
        &self,
        _plan: &Plan,
        batch: usize,
        classes: usize,
        logits: &Vec<f32>,
        labels: &Vec<f32>,
        dlogits: &mut Vec<f32>,
        stats: &mut Vec<f32>,
    ) -> Result<()> {
        check_len("logits", logits, batch * classes)?;
        check_len("labels", labels, batch)?;
        check_len("logit gradient", dlogits, batch * classes)?;
        check_len("loss statistics", stats, 3)?;
        let labels: Vec<usize> = labels[..batch]
            .iter()
            .map(|&l| {
                if l >= 0.0 && (l as usize) < classes && l.fract() == 0.0 {
                    Ok(l as usize)
                } else {
                    Err(Error::Invalid(format!(
                        "cpu: label {l} is not a class index below {classes}"
                    )))
                }
            })
            .collect::<Result<_>>()?;
        let out = loss::softmax_cross_entropy(&logits[..batch * classes], &labels, classes);
        dlogits[..batch * classes].copy_from_slice(&out.dlogits);
        stats[..3].copy_from_slice(&[
            (out.loss * batch as f64) as f32,
            out.top1_correct as f32,
            out.top5_correct as f32,
        ]);
        Ok(())
    }

    fn non_finite(&self, plan: &Plan, grads: &[&Vec<f32>]) -> Result<Vec<bool>> {
        let specs = crate::backend::check_grads("cpu", plan, grads.len(), |i| grads[i].len())?;
        Ok(specs
            .iter()
            .zip(grads)
            .map(|(spec, g)| g[..spec.len()].par_chunks(1 << 16).any(any_non_finite))
            .collect())
    }

    fn sgd_step(
        &self,
        plan: &Plan,
        sgd: Sgd,
        lr_mults: &[f32],
        params: &mut [&mut Vec<f32>],
        velocity: &mut [&mut Vec<f32>],
        grads: &[&Vec<f32>],
    ) -> Result<()> {
        let counts = [params.len(), velocity.len(), grads.len(), lr_mults.len()];
        let specs = crate::backend::check_sgd_args("cpu", plan, counts, |i| {
            [params[i].len(), velocity[i].len(), grads[i].len()]
        })?;
        // Before the weights move: a step cut short leaves no pack trusted for them.
        self.weights_changed();
        for (i, spec) in specs.iter().enumerate() {
            let len = spec.len();
            const CHUNK: usize = 1 << 15;
            params[i][..len]
                .par_chunks_mut(CHUNK)
                .zip(velocity[i][..len].par_chunks_mut(CHUNK))
                .zip(grads[i][..len].par_chunks(CHUNK))
                .for_each(|((w, v), g)| sgd.step(w, v, g, lr_mults[i]));
        }
        Ok(())
    }
}

/// Whether `values` holds a NaN or an infinity: their exponent bits all set. An OR of
/// integers over the whole slice, without an early exit, so that it vectorises (the
/// check reads every gradient each step: 244 MB for AlexNet).
fn any_non_finite(values: &[f32]) -> bool {
    const EXPONENT: u32 = 0x7f80_0000;
    values.iter().fold(0u32, |acc, v| {
        acc | u32::from(v.to_bits() & EXPONENT == EXPONENT)
    }) != 0
}

#[cfg(test)]
mod tests {
    use super::any_non_finite;

    #[test]
    fn non_finite_values_are_found_wherever_they_are() {
        let mut v = vec![1.0f32; 1000];
        v[3] = f32::MAX;
        v[4] = f32::MIN_POSITIVE / 2.0; // subnormal: finite
        assert!(!any_non_finite(&v));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN] {
            for at in [0, 517, 999] {
                let mut w = v.clone();
                w[at] = bad;
                assert!(any_non_finite(&w), "{bad} at {at}");
            }
        }
        assert!(!any_non_finite(&[]));
    }
}
