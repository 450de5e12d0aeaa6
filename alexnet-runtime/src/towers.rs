//! The paper's two towers on the CPU: each tower holds half of every layer (its
//! [`Plan::tower`] plan and the matching rows of every weight), the two run side by side
//! on two worker threads (`rayon::join`), and they exchange activations, and in the
//! backward pass gradients, only before the layers that read both towers
//! ([`Plan::tower_input`]): for AlexNet conv3, fc6, fc7 and fc8, and the final softmax,
//! which runs once on the gathered logits. Weights stay in the one-process layout, so a
//! network trained split runs unsplit and the other way round.
//!
//! This is the reference for the GPU placement of issue 5; tests/towers.rs checks that
//! split and unsplit agree, forward and backward.

use rayon::prelude::*;

use crate::backend::Backend;
use crate::cpu::{loss, Cpu, StageGrads};
use crate::error::{Error, Result};
use crate::ir::{Op, Plan, TowerInput};
use crate::optim::Sgd;
use crate::philox::{self, DropoutMask};
use crate::tensor::Tensor;
use crate::weights::{self, NamedTensor};

/// One tower's backward of one stage: its input gradient (when wanted) and the
/// gradients of its part of the layer's tensors.
type TowerGrads = (Option<Vec<f32>>, Vec<Vec<f32>>);

/// A stage's outputs per tower, and the gathered input every tower read when the stage
/// follows an exchange.
type Tape = Vec<(Vec<Vec<f32>>, Option<Vec<f32>>)>;

/// A split network with its parameters divided between its towers.
#[derive(Debug)]
pub struct Towers {
    plan: Plan,
    towers: Vec<Plan>,
    /// `params[t][i]`: tower t's rows of the i-th tensor of [`Plan::params`].
    params: Vec<Vec<Vec<f32>>>,
    /// The same for the momentum of [`Towers::train_step`] (empty until the first step).
    velocity: Vec<Vec<Vec<f32>>>,
}

/// Concatenates per-image parts along channels: `parts[t]` holds `n` images of `len[t]`
/// values each.
fn gather(parts: &[&[f32]], lens: &[usize], n: usize) -> Vec<f32> {
    let total: usize = lens.iter().sum();
    let mut out = vec![0.0; n * total];
    out.par_chunks_mut(total).enumerate().for_each(|(i, img)| {
        let mut at = 0;
        for (p, &l) in parts.iter().zip(lens) {
            img[at..at + l].copy_from_slice(&p[i * l..(i + 1) * l]);
            at += l;
        }
    });
    out
}

/// Part `t` of `towers` equal channel parts of `n` images of `len` values each.
fn part(full: &[f32], n: usize, len: usize, towers: usize, t: usize) -> Vec<f32> {
    let l = len / towers;
    (0..n)
        .flat_map(|i| full[i * len + t * l..i * len + (t + 1) * l].iter().copied())
        .collect()
}

impl Towers {
    /// Divides `tensors` (the one-process layout, PyTorch names) between the towers of
    /// `plan`; an error for an unsplit plan or tensors that do not fit it.
    pub fn new(plan: Plan, tensors: Vec<NamedTensor>) -> Result<Self> {
        let towers: Vec<Plan> = (0..plan.split)
            .map(|t| plan.tower(t))
            .collect::<Option<_>>()
            .filter(|v: &Vec<Plan>| v.len() > 1)
            .ok_or_else(|| {
                Error::Invalid(format!("network `{}` is not split into towers", plan.name))
            })?;
        let ordered = weights::match_plan(&plan, tensors, None)?;
        let s = plan.split;
        let params = (0..s)
            .map(|t| {
                ordered
                    .iter()
                    .map(|w| {
                        let rows = w.shape[0] / s;
                        let per_row = w.data.len() / w.shape[0];
                        w.data[t * rows * per_row..(t + 1) * rows * per_row].to_vec()
                    })
                    .collect()
            })
            .collect();
        Ok(Towers {
            plan,
            towers,
            params,
            velocity: Vec::new(),
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Tower `t`'s parameters for layer `layer`.
    fn layer_params(&self, t: usize, layer: usize) -> &[Vec<f32>] {
        let first: usize = self.plan.layers[..layer]
            .iter()
            .map(|l| l.params().len())
            .sum();
        let n = self.plan.layers[layer].params().len();
        &self.params[t][first..first + n]
    }

    /// The input of each tower's first layer: the image, or its own channels of it.
    fn inputs(&self, x: &[f32], n: usize) -> Vec<Vec<f32>> {
        let full = self.plan.input.len();
        (0..self.towers.len())
            .map(|t| {
                if self.towers[t].input.len() == full {
                    x.to_vec()
                } else {
                    part(x, n, full, self.towers.len(), t)
                }
            })
            .collect()
    }

    fn batch_of(&self, x: &Tensor) -> Result<usize> {
        let s = self.plan.input;
        match *x.shape() {
            [n, c, h, w] if (c, h, w) == (s.c, s.h, s.w) => Ok(n),
            _ => Err(Error::Shape {
                what: format!("input of `{}`", self.plan.name),
                expected: vec![x.shape().first().copied().unwrap_or(1), s.c, s.h, s.w],
                found: x.shape().to_vec(),
            }),
        }
    }

    /// Runs both towers (two workers) through every stage. Returns, per stage, each
    /// tower's output and, for stages after an exchange, the gathered input every tower
    /// read (`None` where a tower read its own previous output); with `keep` false only
    /// the last stage's outputs. Dropout applies `mask` when given.
    fn run(
        &self,
        cpu: &Cpu,
        x: &[f32],
        n: usize,
        mask: Option<DropoutMask>,
        keep: bool,
    ) -> Result<(Vec<Vec<f32>>, Tape)> {
        let stages = self.towers[0].stages();
        let mut tape: Tape = Vec::new();
        let mut outs = self.inputs(x, n);
        for st in &stages {
            let exchanged = match self.plan.tower_input(st.layer) {
                Some(TowerInput::BothTowers) if st.layer > 0 => {
                    let lens: Vec<usize> = self
                        .towers
                        .iter()
                        .map(|p| p.layers[st.layer - 1].output.len())
                        .collect();
                    let parts: Vec<&[f32]> = outs.iter().map(|v| v.as_slice()).collect();
                    Some(gather(&parts, &lens, n))
                }
                _ => None,
            };
            let run_tower = |t: usize| -> Result<Vec<f32>> {
                let tp = &self.towers[t];
                let l = &tp.layers[st.layer];
                let xin: &Vec<f32> = exchanged.as_ref().unwrap_or(&outs[t]);
                let mut y = vec![0.0f32; n * l.output.len()];
                match (l.op, mask) {
                    (Op::Dropout { p }, Some(m)) => {
                        self.dropout(m, st.layer, t, p, xin, &mut y);
                    }
                    (Op::Dropout { .. }, None) => y.copy_from_slice(xin),
                    _ => {
                        let p: Vec<&Vec<f32>> = self.layer_params(t, st.layer).iter().collect();
                        cpu.forward_stage(tp, *st, n, xin, &p, &mut y)?;
                    }
                }
                Ok(y)
            };
            let (a, b) = rayon::join(|| run_tower(0), || run_tower(1));
            let new = vec![a?, b?];
            if keep {
                tape.push((new.clone(), exchanged));
            }
            outs = new;
        }
        if !keep {
            tape.clear();
        }
        Ok((outs, tape))
    }

    /// Training-time dropout of tower `t`'s part of layer `layer`, drawing each unit from
    /// its index in the unsplit layout, so the masks are the unsplit network's.
    fn dropout(&self, m: DropoutMask, layer: usize, t: usize, p: f32, x: &[f32], y: &mut [f32]) {
        let (thr, scale) = philox::dropout_threshold_scale(p);
        let full = self.plan.layers[layer].input.len();
        let len = self.towers[t].layers[layer].input.len();
        for (i, (o, &v)) in y.iter_mut().zip(x).enumerate() {
            let g = (i / len) * full + t * len + i % len;
            *o = if m.draw(layer as u32, g as u32) >= thr {
                v * scale
            } else {
                0.0
            };
        }
    }

    /// The last tower layer's outputs gathered into the unsplit layout.
    fn gathered(&self, outs: &[Vec<f32>], n: usize) -> Vec<f32> {
        let last = self.towers[0].layers.len() - 1;
        let lens: Vec<usize> = self
            .towers
            .iter()
            .map(|p| p.layers[last].output.len())
            .collect();
        let parts: Vec<&[f32]> = outs.iter().map(|v| v.as_slice()).collect();
        gather(&parts, &lens, n)
    }

    /// Inference, as [`crate::Model::forward`] computes it unsplit.
    pub fn forward(&self, cpu: &Cpu, x: &Tensor) -> Result<Tensor> {
        let n = self.batch_of(x)?;
        let (outs, _) = self.run(cpu, x.data(), n, None, false)?;
        let mut y = self.gathered(&outs, n);
        let out = self.plan.output();
        if let Some(st) = self.final_softmax() {
            let mut z = vec![0.0; y.len()];
            cpu.forward_stage(&self.plan, st, n, &y, &[], &mut z)?;
            y = z;
        }
        Tensor::new(vec![n, out.c, out.h, out.w], y)
    }

    fn final_softmax(&self) -> Option<crate::ir::Stage> {
        self.plan
            .stages()
            .last()
            .copied()
            .filter(|s| matches!(self.plan.layers[s.layer].op, Op::Softmax))
    }

    /// One training step's loss and parameter gradients (one-process layout, in
    /// [`Plan::params`] order), towers side by side: forward with dropout drawn from
    /// `mask`, softmax cross-entropy on the gathered logits, backward per tower with the
    /// gradients of exchanged activations summed over the towers that read them.
    pub fn gradients(
        &self,
        cpu: &Cpu,
        x: &Tensor,
        labels: &[u32],
        mask: DropoutMask,
    ) -> Result<(f64, Vec<NamedTensor>)> {
        let (loss, grads) = self.tower_gradients(cpu, x, labels, mask)?;
        Ok((loss, self.merge(&grads)))
    }

    /// Tower `t`'s rows of every tensor, joined back into the one-process layout.
    fn merge(&self, per_tower: &[Vec<Vec<f32>>]) -> Vec<NamedTensor> {
        self.plan
            .params()
            .into_iter()
            .enumerate()
            .map(|(i, spec)| NamedTensor {
                data: per_tower
                    .iter()
                    .flat_map(|t| t[i].iter().copied())
                    .collect(),
                name: spec.name,
                shape: spec.shape,
            })
            .collect()
    }

    /// The parameters in the one-process layout (PyTorch names), e.g. to save them or to
    /// run them unsplit.
    pub fn tensors(&self) -> Vec<NamedTensor> {
        self.merge(&self.params)
    }

    /// One SGD step (the paper's update, [`Sgd`]), split: each tower computes the
    /// gradients of its own rows and updates them with its own momentum, on its own
    /// worker. `step` numbers the dropout mask (with `seed`). Returns the batch's loss.
    #[allow(clippy::too_many_arguments)]
    pub fn train_step(
        &mut self,
        cpu: &Cpu,
        x: &Tensor,
        labels: &[u32],
        sgd: Sgd,
        seed: u64,
        step: u64,
    ) -> Result<f64> {
        let (loss, grads) = self.tower_gradients(cpu, x, labels, DropoutMask { seed, step })?;
        if self.velocity.is_empty() {
            self.velocity = self
                .params
                .iter()
                .map(|t| t.iter().map(|p| vec![0.0; p.len()]).collect())
                .collect();
        }
        self.params
            .par_iter_mut()
            .zip(self.velocity.par_iter_mut())
            .zip(grads.par_iter())
            .for_each(|((p, v), g)| {
                for ((w, v), g) in p.iter_mut().zip(v.iter_mut()).zip(g) {
                    sgd.step(w, v, g, 1.0);
                }
            });
        Ok(loss)
    }

    fn tower_gradients(
        &self,
        cpu: &Cpu,
        x: &Tensor,
        labels: &[u32],
        mask: DropoutMask,
    ) -> Result<(f64, Vec<Vec<Vec<f32>>>)> {
        let n = self.batch_of(x)?;
        if labels.len() != n {
            return Err(Error::Invalid(format!(
                "{} labels for {n} images",
                labels.len()
            )));
        }
        let (outs, tape) = self.run(cpu, x.data(), n, Some(mask), true)?;
        let inputs = self.inputs(x.data(), n);
        let logits = self.gathered(&outs, n);
        let classes = logits.len() / n.max(1);
        let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
        if let Some(l) = labels.iter().find(|&&l| l >= classes) {
            return Err(Error::Invalid(format!(
                "label {l} out of range for {classes} classes"
            )));
        }
        let out = loss::softmax_cross_entropy(&logits, &labels, classes);
        let s = self.towers.len();
        let mut dys: Vec<Vec<f32>> = (0..s)
            .map(|t| part(&out.dlogits, n, classes, s, t))
            .collect();
        let stages = self.towers[0].stages();
        let first = stages
            .iter()
            .position(|st| self.plan.layers[st.layer].op.is_learned())
            .ok_or_else(|| Error::Invalid("nothing to learn".into()))?;
        // Per tower, per layer: the gradients of its tensors.
        let mut grads: Vec<Vec<Vec<f32>>> = (0..s)
            .map(|t| self.params[t].iter().map(|p| vec![0.0; p.len()]).collect())
            .collect();
        let offsets: Vec<usize> = self
            .plan
            .layers
            .iter()
            .scan(0, |acc, l| {
                let o = *acc;
                *acc += l.params().len();
                Some(o)
            })
            .collect();
        for (i, st) in stages.iter().enumerate().skip(first).rev() {
            let layer = st.layer;
            let want_dx = i > first;
            let results: Vec<Result<TowerGrads>> = (0..s)
                .into_par_iter()
                .map(|t| {
                    let tp = &self.towers[t];
                    let l = &tp.layers[layer];
                    // The stage's input: the exchanged one, or the tower's previous output.
                    let x_in: &[f32] = match (&tape[i].1, i) {
                        (Some(all), _) => all,
                        (None, 0) => &inputs[t],
                        (None, _) => &tape[i - 1].0[t],
                    };
                    let (y_out, dy) = (&tape[i].0[t], &dys[t]);
                    let mut dx = want_dx.then(|| vec![0.0f32; n * l.input.len()]);
                    if let Op::Dropout { p } = l.op {
                        // Dropout's gradient is dropout of the gradient, same mask.
                        if let Some(d) = dx.as_mut() {
                            self.dropout(mask, layer, t, p, dy, d);
                        }
                        return Ok((dx, Vec::new()));
                    }
                    let p: Vec<&[f32]> = self
                        .layer_params(t, layer)
                        .iter()
                        .map(|v| v.as_slice())
                        .collect();
                    let mut dp: Vec<Vec<f32>> = p.iter().map(|v| vec![0.0; v.len()]).collect();
                    cpu.backward_slices(
                        tp,
                        *st,
                        n,
                        x_in,
                        y_out,
                        dy,
                        &p,
                        StageGrads {
                            dx: dx.as_deref_mut(),
                            dparams: dp.iter_mut().map(|v| v.as_mut_slice()).collect(),
                        },
                    )?;
                    Ok((dx, dp))
                })
                .collect();
            let mut dxs = Vec::with_capacity(s);
            for (t, r) in results.into_iter().enumerate() {
                let (dx, dp) = r?;
                for (j, g) in dp.into_iter().enumerate() {
                    grads[t][offsets[layer] + j] = g;
                }
                dxs.push(dx);
            }
            if !want_dx {
                break;
            }
            let dxs: Vec<Vec<f32>> = dxs.into_iter().map(|d| d.unwrap_or_default()).collect();
            dys = match self.plan.tower_input(layer) {
                // Every tower read all of the input: each tower's part of the gradient is
                // the sum of what the towers sent back (the backward exchange).
                Some(TowerInput::BothTowers) => {
                    let full = self.plan.layers[layer].input.len();
                    (0..s)
                        .map(|t| {
                            let mut acc = part(&dxs[0], n, full, s, t);
                            for d in &dxs[1..] {
                                for (a, b) in acc.iter_mut().zip(part(d, n, full, s, t)) {
                                    *a += b;
                                }
                            }
                            acc
                        })
                        .collect()
                }
                _ => dxs,
            };
        }
        Ok((out.loss, grads))
    }
}
