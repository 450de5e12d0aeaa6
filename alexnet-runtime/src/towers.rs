//! The paper's two towers: each tower holds half of every layer (its [`Plan::tower`] plan
//! and the matching rows of every weight) on a backend of its own, the towers run side by
//! side on two host threads, and they exchange activations, and in the backward pass
//! gradients, only before the layers that read both towers ([`Plan::tower_input`];
//! [`Plan::gathers`] in a tower's plan): for AlexNet conv3, fc6, fc7 and fc8. The final
//! softmax and the loss run once, on the host, on the gathered logits. Weights stay in the one-process layout, so a network trained
//! split runs unsplit and the other way round.
//!
//! Placement is the caller's choice of backends, one per tower: two [`Cpu`] backends (two
//! workers), two GPUs (`Device::parse("cuda:0")`, `Device::parse("cuda:1")`), or two
//! [`crate::Cuda`] backends on the same GPU, each with its own stream, modules and memory,
//! so the same code path runs on a machine with one GPU. The host thread of each tower
//! only enqueues work: at an exchange each tower gathers the other tower's output into its
//! own memory ([`Exchange::gather`]; the backward pass packs and sums the gradients with
//! [`Exchange::pack_gradient`] and [`Exchange::reduce_gradient`]). On two GPUs that is a peer
//! copy on the receiving tower's stream that waits for an event of the sending tower's
//! stream; on one GPU the receiving tower's kernel reads the other tower's buffer
//! directly, after waiting for the event of the kernel that wrote it. Neither device is
//! synchronised until the logits are read back, so each tower's compute goes on while
//! the other's exchange runs. Buffers a tower read from the other are kept until both
//! towers have finished the pass.
//!
//! tests/towers.rs checks that split and unsplit agree, forward and backward.

use std::time::{Duration, Instant};

use rayon::prelude::*;

use std::path::Path;

use crate::backend::{Exchange, Inference, Memory, Training, F32};
use crate::cpu::{loss, Cpu};
use crate::data::patch::{Cut, Draw};
use crate::error::{Error, Result};
use crate::eval::{output_stats, BatchStats};
use crate::ir::{Plan, Stage};
use crate::optim::Sgd;
use crate::philox::DropoutMask;
use crate::run::{NonFinite, OnNonFinite, Run, Train, TrainConfig, TrainState};
use crate::tensor::Tensor;
use crate::weights::{self, NamedTensor};

/// A split network with its parameters divided between its towers, each on its backend.
pub struct Towers<B: Memory> {
    plan: Plan,
    towers: Vec<Plan>,
    backends: Vec<B>,
    /// `params[t][i]`: tower t's rows of the i-th tensor of [`Plan::params`].
    params: Vec<Vec<F32<B>>>,
    /// The same for the momentum of [`Towers::train_step`] (empty until the first step).
    velocity: Vec<Vec<F32<B>>>,
    /// The host, for the final softmax over the gathered logits.
    host: Cpu,
    /// How each tower reads the other's buffers ([`Exchange::connect`]).
    links: Vec<String>,
    /// See [`Towers::skip_exchanges_for_timing`].
    skip_exchanges: bool,
}

impl<B: Memory> std::fmt::Debug for Towers<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Towers")
            .field("plan", &self.plan.name)
            .field(
                "backends",
                &self.backends.iter().map(B::name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Concatenates per-image parts along channels: `parts[t]` holds `n` images of `len[t]`
/// values each.
fn gather(parts: &[Vec<f32>], lens: &[usize], n: usize) -> Vec<f32> {
    let total: usize = lens.iter().sum();
    let mut out = vec![0.0; n * total];
    out.par_chunks_mut(total.max(1))
        .enumerate()
        .for_each(|(i, img)| {
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

impl<B: Inference + Exchange + Sync> Towers<B> {
    /// Divides `tensors` (the one-process layout, PyTorch names) between the towers of
    /// `plan`, tower `t` on `backends[t]`. An error for an unsplit plan, a number of
    /// backends other than the plan's towers, or tensors that do not fit the plan.
    pub fn new(plan: Plan, tensors: Vec<NamedTensor>, backends: Vec<B>) -> Result<Self> {
        let towers: Vec<Plan> = (0..plan.split)
            .map(|t| plan.tower(t))
            .collect::<Option<_>>()
            .filter(|v: &Vec<Plan>| v.len() == 2)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "network `{}` is not split into two towers (`split 2`)",
                    plan.name
                ))
            })?;
        if backends.len() != towers.len() {
            return Err(Error::Invalid(format!(
                "network `{}` has {} towers; {} backends were given",
                plan.name,
                towers.len(),
                backends.len()
            )));
        }
        let ordered = weights::match_plan(&plan, tensors, None)?;
        let links = (0..2)
            .map(|t| {
                let how = backends[t].connect(&backends[1 - t])?;
                Ok(format!("tower {t} on {}: {how}", backends[t].name()))
            })
            .collect::<Result<Vec<_>>>()?;
        towers
            .par_iter()
            .zip(&backends)
            .map(|(tp, b)| b.prepare(tp))
            .collect::<Result<Vec<()>>>()?;
        let mut t = Towers {
            plan,
            towers,
            backends,
            params: Vec::new(),
            velocity: Vec::new(),
            host: Cpu::new(),
            links,
            skip_exchanges: false,
        };
        t.params = t.split_rows(&ordered)?;
        Ok(t)
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Bytes the towers exchange per image: forward only for inference; training sends as
    /// much again backward. See [`Plan::exchange_bytes_total`].
    pub fn exchange_bytes_per_image(&self) -> usize {
        self.plan.exchange_bytes_total()
    }

    /// Where each tower runs and how it reads the other's buffers, in tower order (e.g.
    /// `tower 0 on cpu (...): exchanges through host memory`, `tower 1 on cuda:0 (...):
    /// one context with the other tower: direct reads`; see [`Exchange::connect`]).
    pub fn links(&self) -> &[String] {
        &self.links
    }

    /// The towers' backends, in tower order.
    pub fn backends(&self) -> &[B] {
        &self.backends
    }

    /// Runs `f(t)` for every tower, each on its own host thread, and collects the results
    /// in tower order.
    fn each<R: Send>(&self, f: impl Fn(usize) -> Result<R> + Sync + Send) -> Result<Vec<R>> {
        (0..self.towers.len()).into_par_iter().map(f).collect()
    }

    /// Tower `t`'s parameters for layer `layer`.
    fn layer_params(&self, t: usize, layer: usize) -> Vec<&F32<B>> {
        let first: usize = self.plan.layers[..layer]
            .iter()
            .map(|l| l.params().len())
            .sum();
        let n = self.plan.layers[layer].params().len();
        self.params[t][first..first + n].iter().collect()
    }

    /// The input of each tower's first layer, on its backend: the image, or its own
    /// channels of it.
    fn inputs(&self, x: &[f32], n: usize) -> Result<Vec<F32<B>>> {
        let full = self.plan.input.len();
        self.each(|t| {
            let b = &self.backends[t];
            if self.towers[t].input.len() == full {
                b.upload(x)
            } else {
                b.upload(&part(x, n, full, self.towers.len(), t))
            }
        })
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

    /// The forward exchange before `layer`: each tower gathers its own output of the
    /// previous layer and the other tower's into the layer's whole input, on its backend
    /// ([`Exchange::gather`]: on GPUs a peer copy ordered by an event, or a direct read on
    /// the same GPU). The other tower's output must outlive this tower's work (the tape
    /// keeps it until the pass has finished, see [`Towers::settle`]).
    fn exchange(&self, layer: usize, outs: &[F32<B>], n: usize) -> Result<Vec<F32<B>>> {
        self.each(|t| {
            let (b, tp) = (&self.backends[t], &self.towers[t]);
            let mut whole = b.alloc(n * tp.layers[layer].input.len())?;
            if !self.skip_exchanges {
                b.gather(tp, layer, n, &outs[t], &outs[1 - t], &mut whole)?;
            }
            Ok(whole)
        })
    }

    /// For benchmarks only: with `skip`, exchanges are left out (their output buffers are
    /// allocated but not written, so results are wrong), which gives the towers' compute
    /// time; the difference to a normal run is the exchanges' cost that compute did not
    /// hide.
    #[doc(hidden)]
    pub fn skip_exchanges_for_timing(&mut self, skip: bool) {
        self.skip_exchanges = skip;
    }

    /// For benchmarks: the exchanges of one forward pass (and with `backward` those of
    /// the backward pass too) on `batch` images, run alone on zero buffers, until both
    /// towers have finished.
    pub fn time_exchanges(&self, batch: usize, backward: bool) -> Result<Duration> {
        let layers: Vec<usize> = (0..self.towers[0].layers.len())
            .filter(|&l| self.towers[0].gathers(l))
            .collect();
        let zeros = |len: usize| self.each(|t| self.backends[t].upload(&vec![0.0; len]));
        let bufs = layers
            .iter()
            .map(|&l| {
                let part = batch * self.towers[0].layers[l - 1].output.len();
                Ok((zeros(part)?, zeros(2 * part)?))
            })
            .collect::<Result<Vec<_>>>()?;
        self.settle()?;
        let t0 = Instant::now();
        let mut sent = Vec::new();
        let mut kept = Vec::new();
        let _settle = self.settle_on_drop();
        for (&l, (parts, wholes)) in layers.iter().zip(&bufs) {
            kept.push(self.exchange(l, parts, batch)?);
            if backward {
                kept.push(self.exchange_back(l, wholes, batch, &mut sent)?);
            }
        }
        self.settle()?;
        Ok(t0.elapsed())
    }

    /// The backward exchange after `layer`: from each tower's gradient of the layer's
    /// whole input, each tower's gradient of its own output of the previous layer (its
    /// part of its own gradient plus the part the other tower packed for it). The packed
    /// parts are kept in `sent` until the pass has finished.
    fn exchange_back(
        &self,
        layer: usize,
        dxs: &[F32<B>],
        n: usize,
        sent: &mut Vec<F32<B>>,
    ) -> Result<Vec<F32<B>>> {
        let part = |t: usize| n * self.towers[t].layers[layer - 1].output.len();
        let packed = self.each(|t| {
            let (b, tp) = (&self.backends[t], &self.towers[t]);
            let mut p = b.alloc(part(t))?;
            if !self.skip_exchanges {
                b.pack_gradient(tp, layer, n, &dxs[t], &mut p)?;
            }
            Ok(p)
        })?;
        // Kept before the other tower reads them, even if that fails.
        let at = sent.len();
        sent.extend(packed);
        let packed = &sent[at..];
        self.each(|t| {
            let (b, tp) = (&self.backends[t], &self.towers[t]);
            let mut dy = b.alloc(part(t))?;
            if !self.skip_exchanges {
                b.reduce_gradient(tp, layer, n, &dxs[t], &packed[1 - t], &mut dy)?;
            }
            Ok(dy)
        })
    }

    /// Waits for every tower's work, so that the buffers a tower read from the other
    /// tower may be freed (a backend orders a buffer's release after its own work, not
    /// after the other tower's reads).
    fn settle(&self) -> Result<()> {
        self.each(|t| self.backends[t].synchronize()).map(|_| ())
    }

    /// A guard that settles the towers when dropped: declared after the buffers a pass
    /// exchanges, it is dropped before them, on success and on every error path.
    fn settle_on_drop(&self) -> Settle<'_, B> {
        Settle(Some(self))
    }

    /// Runs the towers through every stage, stage `st` of tower `t` by `stage(t, st, x,
    /// y)`. In training, every stage runs (dropout too) and every stage's outputs are
    /// kept, one entry per stage; at inference dropout is skipped (the identity) and only
    /// the last outputs are kept.
    fn run(
        &self,
        x: &[f32],
        n: usize,
        training: bool,
        stage: &StageFn<'_, B>,
    ) -> Result<Tape<F32<B>>> {
        let mut tape = Tape {
            inputs: self.inputs(x, n)?,
            outputs: Vec::new(),
            exchanged: Vec::new(),
            read_by_other: Vec::new(),
        };
        // On an error below, the tape is freed only once the towers are done with it (on
        // success the caller's guard does that).
        let mut settle = self.settle_on_drop();
        // Inference fuses a pooling into the LRN before it (Plan::inference_stages); a
        // pooling reads its own tower, so a fused stage never waits on an exchange.
        let stages = if training {
            self.towers[0].stages()
        } else {
            self.towers[0].inference_stages()
        };
        for st in &stages {
            let identity = self.plan.layers[st.layer].op.kind().identity_at_inference();
            if identity && !training {
                continue;
            }
            let prev = tape.outputs.last().unwrap_or(&tape.inputs);
            let exchanged = if self.towers[0].gathers(st.layer) {
                Some(self.exchange(st.layer, prev, n)?)
            } else {
                None
            };
            let new = self.each(|t| {
                let (b, tp) = (&self.backends[t], &self.towers[t]);
                let xin = exchanged.as_ref().map_or(&prev[t], |e| &e[t]);
                let mut y = b.alloc(n * tp.layers[st.last()].output.len())?;
                stage(t, *st, xin, &mut y)?;
                Ok(y)
            })?;
            if !training {
                // Inference keeps only the last outputs, and those the other tower read.
                let old = std::mem::take(&mut tape.outputs);
                if exchanged.is_some() {
                    tape.read_by_other.extend(old.into_iter().flatten());
                }
                tape.exchanged.clear();
            }
            tape.outputs.push(new);
            tape.exchanged.push(exchanged);
        }
        settle.disarm();
        Ok(tape)
    }

    /// The forward pass of stage `st` of tower `t` on `n` images.
    fn forward_stage(
        &self,
        t: usize,
        st: Stage,
        n: usize,
        x: &F32<B>,
        y: &mut F32<B>,
    ) -> Result<()> {
        let p = self.layer_params(t, st.layer);
        self.backends[t].forward_stage(&self.towers[t], st, n, x, &p, y)
    }

    /// The last layer's outputs, downloaded and gathered into the unsplit layout.
    fn logits(&self, tape: &Tape<F32<B>>, n: usize) -> Result<Vec<f32>> {
        let last = self.towers[0].layers.len() - 1;
        let lens: Vec<usize> = self
            .towers
            .iter()
            .map(|p| p.layers[last].output.len())
            .collect();
        let outs = tape.outputs.last().unwrap_or(&tape.inputs);
        let parts = self.each(|t| self.backends[t].download_prefix(&outs[t], n * lens[t]))?;
        Ok(gather(&parts, &lens, n))
    }

    /// Inference, as [`crate::Model::forward`] computes it unsplit.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = self.batch_of(x)?;
        let tape = self.run(x.data(), n, false, &|t, st, x, y| {
            self.forward_stage(t, st, n, x, y)
        })?;
        let _settle = self.settle_on_drop();
        let mut y = self.logits(&tape, n)?;
        if let Some(st) = self.final_softmax() {
            let mut z = vec![0.0; y.len()];
            self.host
                .forward_stage(&self.plan, st, n, &y, &[], &mut z)?;
            y = z;
        }
        let out = self.plan.output();
        Tensor::new(vec![n, out.c, out.h, out.w], y)
    }

    fn final_softmax(&self) -> Option<Stage> {
        self.plan
            .stages()
            .last()
            .copied()
            .filter(|s| self.plan.layers[s.layer].op.kind().must_be_last())
    }

    /// Per-tower buffers of every tensor (tower t's rows), downloaded and joined into the
    /// one-process layout.
    fn joined(&self, per_tower: &[Vec<F32<B>>]) -> Result<Vec<NamedTensor>> {
        let host = self.each(|t| {
            per_tower[t]
                .iter()
                .zip(self.towers[t].params())
                .map(|(b, spec)| self.backends[t].download_prefix(b, spec.len()))
                .collect::<Result<Vec<_>>>()
        })?;
        Ok(self
            .plan
            .params()
            .into_iter()
            .enumerate()
            .map(|(i, spec)| NamedTensor {
                data: host.iter().flat_map(|t| t[i].iter().copied()).collect(),
                name: spec.name,
                shape: spec.shape,
            })
            .collect())
    }

    /// The parameters in the one-process layout (PyTorch names), e.g. to save them or to
    /// run them unsplit.
    pub fn tensors(&self) -> Result<Vec<NamedTensor>> {
        self.joined(&self.params)
    }

    /// Zero buffers for every tower's tensors.
    fn zeros(&self) -> Result<Vec<Vec<F32<B>>>> {
        self.each(|t| {
            self.towers[t]
                .params()
                .iter()
                .map(|s| self.backends[t].upload(&vec![0.0; s.len()]))
                .collect()
        })
    }

    /// Tower t's rows of each tensor (one-process layout, [`Plan::params`] order),
    /// uploaded to its backend.
    fn split_rows(&self, ordered: &[NamedTensor]) -> Result<Vec<Vec<F32<B>>>> {
        let s = self.towers.len();
        self.each(|t| {
            ordered
                .iter()
                .map(|w| {
                    let rows = w.shape[0] / s;
                    let per_row = w.data.len() / w.shape[0];
                    self.backends[t].upload(&w.data[t * rows * per_row..(t + 1) * rows * per_row])
                })
                .collect()
        })
    }

    /// Loss and top-1/top-5 counts at inference (dropout off) on a batch.
    pub fn evaluate(&self, x: &Tensor, labels: &[u32]) -> Result<BatchStats> {
        let n = self.batch_of(x)?;
        self.check_labels(labels, n)?;
        let out = self.forward(x)?;
        Ok(output_stats(&self.plan, &out, labels, n))
    }

    fn check_labels(&self, labels: &[u32], n: usize) -> Result<()> {
        if labels.len() != n {
            return Err(Error::Invalid(format!(
                "{} labels for {n} images",
                labels.len()
            )));
        }
        let classes = self.plan.output().len();
        if let Some(l) = labels.iter().find(|&&l| l as usize >= classes) {
            return Err(Error::Invalid(format!(
                "label {l} out of range: `{}` has {classes} classes",
                self.plan.name
            )));
        }
        Ok(())
    }
}

/// Training split into towers: each tower computes the gradients of its own rows and
/// updates them on its own backend.
impl<B: Training + Exchange + Sync> Towers<B> {
    /// One training step's loss and parameter gradients (one-process layout, in
    /// [`Plan::params`] order), towers side by side: forward with dropout drawn from
    /// `mask`, softmax cross-entropy on the gathered logits, backward per tower with the
    /// gradients of exchanged activations summed over the towers that read them.
    pub fn gradients(
        &self,
        x: &Tensor,
        labels: &[u32],
        mask: DropoutMask,
    ) -> Result<(f64, Vec<NamedTensor>)> {
        let (stats, grads) = self.tower_gradients(x, labels, mask)?;
        Ok((stats.loss, self.joined(&grads)?))
    }

    /// One SGD step (the paper's update, [`Sgd`], with one learning-rate multiplier per
    /// tensor of [`Plan::params`]), split: each tower computes the gradients of its own
    /// rows and updates them with its own momentum, on its own backend. Dropout draws
    /// from `mask`. Returns the batch's loss and top-1/top-5 counts (before the update).
    pub fn train_step(
        &mut self,
        x: &Tensor,
        labels: &[u32],
        sgd: Sgd,
        lr_mults: &[f32],
        mask: DropoutMask,
    ) -> Result<BatchStats> {
        self.train_step_checked(x, labels, sgd, lr_mults, mask, |_, _| Ok(true))
    }

    /// [`Towers::train_step`], asking `admit(loss, first tensor whose gradient is not
    /// finite)` before the update, which is applied only when it answers `Ok(true)` (the
    /// trainers' guard against steps that are not finite; its error is returned as is).
    pub fn train_step_checked(
        &mut self,
        x: &Tensor,
        labels: &[u32],
        sgd: Sgd,
        lr_mults: &[f32],
        mask: DropoutMask,
        admit: impl FnOnce(f64, Option<String>) -> Result<bool>,
    ) -> Result<BatchStats> {
        if lr_mults.len() != self.plan.params().len() {
            return Err(Error::Invalid(format!(
                "{} learning-rate multipliers for {} tensors",
                lr_mults.len(),
                self.plan.params().len()
            )));
        }
        let (mut stats, grads) = self.tower_gradients(x, labels, mask)?;
        // Each tower checks its own rows; a tensor is bad when either tower's part is.
        let (towers, backends) = (&self.towers, &self.backends);
        let flags = self.each(|t| {
            let g: Vec<&F32<B>> = grads[t].iter().collect();
            backends[t].non_finite(&towers[t], &g)
        })?;
        let bad = (0..self.plan.params().len())
            .find(|&i| flags.iter().any(|f| f.get(i).copied().unwrap_or(false)))
            .map(|i| self.plan.params()[i].name.clone());
        if !admit(stats.loss, bad)? {
            stats.skipped = 1;
            return Ok(stats);
        }
        if self.velocity.is_empty() {
            self.velocity = self.zeros()?;
        }
        let (towers, backends) = (&self.towers, &self.backends);
        self.params
            .par_iter_mut()
            .zip(self.velocity.par_iter_mut())
            .zip(grads.par_iter())
            .enumerate()
            .map(|(t, ((p, v), g))| {
                let mut p: Vec<&mut F32<B>> = p.iter_mut().collect();
                let mut v: Vec<&mut F32<B>> = v.iter_mut().collect();
                let g: Vec<&F32<B>> = g.iter().collect();
                backends[t].sgd_step(&towers[t], sgd, lr_mults, &mut p, &mut v, &g)
            })
            .collect::<Result<Vec<()>>>()?;
        Ok(stats)
    }

    /// The momentum of every parameter in the one-process layout (zeros before the first
    /// step).
    pub fn velocity_tensors(&self) -> Result<Vec<NamedTensor>> {
        if self.velocity.is_empty() {
            return Ok(self
                .plan
                .params()
                .into_iter()
                .map(|spec| NamedTensor {
                    data: vec![0.0; spec.len()],
                    name: spec.name,
                    shape: spec.shape,
                })
                .collect());
        }
        self.joined(&self.velocity)
    }

    /// Sets the momentum from tensors in the one-process layout (as
    /// [`Towers::velocity_tensors`] gives them), each tower taking its rows.
    pub fn set_velocity(&mut self, tensors: Vec<NamedTensor>) -> Result<()> {
        let ordered = weights::match_plan(&self.plan, tensors, None)?;
        self.velocity = self.split_rows(&ordered)?;
        Ok(())
    }

    /// The loss and, per tower, the gradients of its parameters (on its backend).
    fn tower_gradients(
        &self,
        x: &Tensor,
        labels: &[u32],
        mask: DropoutMask,
    ) -> Result<(BatchStats, Vec<Vec<F32<B>>>)> {
        let n = self.batch_of(x)?;
        self.check_labels(labels, n)?;
        let tape = self.run(x.data(), n, true, &|t, st, x, y| {
            if self.plan.layers[st.layer].op.kind().identity_at_inference() {
                self.backends[t].dropout(&self.towers[t], st, n, mask, x, y)
            } else {
                self.forward_stage(t, st, n, x, y)
            }
        })?;
        let logits = self.logits(&tape, n)?;
        let classes = logits.len() / n.max(1);
        let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
        let out = loss::softmax_cross_entropy(&logits, &labels, classes);
        let stats = BatchStats {
            images: n,
            loss: out.loss,
            top1_correct: out.top1_correct,
            top5_correct: out.top5_correct,
            skipped: 0,
        };
        let s = self.towers.len();
        let mut dys: Vec<F32<B>> =
            self.each(|t| self.backends[t].upload(&part(&out.dlogits, n, classes, s, t)))?;
        let stages = self.towers[0].stages();
        let first = stages
            .iter()
            .position(|st| self.plan.layers[st.layer].op.is_learned())
            .ok_or_else(|| Error::Invalid("nothing to learn".into()))?;
        // Per tower, per tensor: the gradients.
        let mut grads: Vec<Vec<Option<F32<B>>>> = (0..s)
            .map(|t| self.params[t].iter().map(|_| None).collect())
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
        let mut sent = Vec::new();
        let _settle = self.settle_on_drop();
        for (i, st) in stages.iter().enumerate().skip(first).rev() {
            let layer = st.layer;
            let want_dx = i > first;
            let results = dys
                .into_par_iter()
                .enumerate()
                .map(|(t, mut dy)| {
                    let (b, tp) = (&self.backends[t], &self.towers[t]);
                    let l = &tp.layers[layer];
                    // The stage's input: the exchanged one, or the tower's previous output.
                    let x_in = match (&tape.exchanged[i], i) {
                        (Some(all), _) => &all[t],
                        (None, 0) => &tape.inputs[t],
                        (None, _) => &tape.outputs[i - 1][t],
                    };
                    let mut dx = if want_dx {
                        Some(b.alloc(n * l.input.len())?)
                    } else {
                        None
                    };
                    if l.op.kind().identity_at_inference() {
                        // Dropout's gradient is dropout of the gradient, same mask.
                        if let Some(d) = dx.as_mut() {
                            b.dropout(tp, *st, n, mask, &dy, d)?;
                        }
                        return Ok((dx, Vec::new()));
                    }
                    let p = self.layer_params(t, layer);
                    let mut dp: Vec<F32<B>> = l
                        .params()
                        .iter()
                        .map(|spec| b.alloc(spec.len()))
                        .collect::<Result<_>>()?;
                    let mut dpr: Vec<&mut F32<B>> = dp.iter_mut().collect();
                    b.backward_stage(
                        tp,
                        *st,
                        n,
                        x_in,
                        &tape.outputs[i][t],
                        &mut dy,
                        &p,
                        dx.as_mut(),
                        &mut dpr,
                    )?;
                    Ok((dx, dp))
                })
                .collect::<Result<Vec<(Option<F32<B>>, Vec<F32<B>>)>>>()?;
            let mut dxs = Vec::with_capacity(s);
            for (t, (dx, dp)) in results.into_iter().enumerate() {
                for (j, g) in dp.into_iter().enumerate() {
                    grads[t][offsets[layer] + j] = Some(g);
                }
                dxs.push(dx);
            }
            if !want_dx {
                break;
            }
            let dxs: Vec<F32<B>> = dxs
                .into_iter()
                .map(|d| d.ok_or_else(|| Error::Internal("missing input gradient".into())))
                .collect::<Result<_>>()?;
            // Where every tower read all of the input, each tower's part of the gradient is
            // the sum of what the towers send back (the backward exchange).
            dys = if self.towers[0].gathers(layer) {
                self.exchange_back(layer, &dxs, n, &mut sent)?
            } else {
                dxs
            };
        }
        // The packed gradients and the tape's exchanged outputs may be freed once both
        // towers are done with them (the guard waits on error paths too).
        self.settle()?;
        let grads = grads
            .into_iter()
            .enumerate()
            .map(|(t, g)| {
                g.into_iter()
                    .zip(&self.towers[t].params())
                    .map(|(g, spec)| match g {
                        Some(g) => Ok(g),
                        None => self.backends[t].upload(&vec![0.0; spec.len()]),
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        Ok((stats, grads))
    }
}

/// Settles the towers ([`Towers::settle`]) when dropped, unless disarmed.
struct Settle<'a, B: Inference + Exchange + Sync>(Option<&'a Towers<B>>);

impl<B: Inference + Exchange + Sync> Settle<'_, B> {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl<B: Inference + Exchange + Sync> Drop for Settle<'_, B> {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // An error here was, or will be, reported by the operation that failed.
            let _ = t.settle();
        }
    }
}

/// Runs one stage of one tower (see `Towers::run`): tower, stage, input, output.
type StageFn<'a, B> = dyn Fn(usize, Stage, &F32<B>, &mut F32<B>) -> Result<()> + Sync + 'a;

/// The forward pass's record, per tower: the first stage's input, every stage's output,
/// and the gathered input of the stages that follow an exchange.
struct Tape<Buf> {
    inputs: Vec<Buf>,
    outputs: Vec<Vec<Buf>>,
    exchanged: Vec<Option<Vec<Buf>>>,
    /// At inference: earlier outputs that a tower read from the other, kept until the
    /// pass has finished.
    read_by_other: Vec<Buf>,
}

/// Training split into towers: [`Towers`] with the run's schedule, learning rate, notes and
/// state file (the whole `Trainer`'s, so a split run resumes unsplit and the other
/// way round).
pub struct SplitTrainer<B: Memory> {
    towers: Towers<B>,
    run: Run,
    /// The batches of [`Train::send_images`] not yet stepped on, in order.
    sent: std::collections::VecDeque<Vec<u8>>,
}

impl<B: Training + Exchange + Sync> SplitTrainer<B> {
    /// Starts training `tensors` (one-process layout) split over `backends`, one per
    /// tower, from step 0 with zero momentum.
    pub fn new(
        plan: Plan,
        tensors: Vec<NamedTensor>,
        backends: Vec<B>,
        config: TrainConfig,
    ) -> Result<Self> {
        let run = Run::start(config, plan.params().len())?;
        Self::with_run(plan, tensors, backends, run)
    }

    fn with_run(plan: Plan, tensors: Vec<NamedTensor>, backends: Vec<B>, run: Run) -> Result<Self> {
        let towers = Towers::new(plan, tensors, backends)?;
        for (t, b) in towers.backends.iter().enumerate() {
            crate::backend::check_trains(b.precision())?;
            b.prepare_training(&towers.towers[t])?;
        }
        Ok(SplitTrainer {
            towers,
            run,
            sent: Default::default(),
        })
    }

    /// Continues a run saved by [`SplitTrainer::save`] or [`crate::Trainer::save`].
    pub fn resume(backends: Vec<B>, plan: Plan, path: &Path) -> Result<Self> {
        let (run, params, momentum) = Run::read(path, &plan)?;
        let mut t = Self::with_run(plan, params, backends, run)?;
        t.towers.set_velocity(momentum)?;
        Ok(t)
    }

    pub fn towers(&self) -> &Towers<B> {
        &self.towers
    }

    /// See [`crate::Trainer::set_lr_mult`].
    pub fn set_lr_mult(&mut self, layer: &str, mult: f32) -> Result<()> {
        self.run.set_lr_mult(&self.towers.plan, layer, mult)
    }
}

impl<B: Training + Exchange + Sync> Train for SplitTrainer<B> {
    fn send_images(&mut self, images: Vec<u8>) -> Result<()> {
        self.sent.push_back(images);
        Ok(())
    }
    fn step_sent(
        &mut self,
        cut: &Cut<'_>,
        draws: &[Draw],
        labels: &[u32],
    ) -> Result<(BatchStats, Vec<u8>)> {
        let images = self.sent.pop_front().ok_or_else(|| {
            Error::Invalid("a step on a batch sent ahead, but none was sent".into())
        })?;
        let stats = self.step_images(cut, &images, draws, labels)?;
        Ok((stats, images))
    }
    fn clear_sent(&mut self) -> Result<()> {
        self.sent.clear();
        Ok(())
    }
    fn step(&mut self, input: &Tensor, labels: &[u32]) -> Result<BatchStats> {
        let mask = DropoutMask {
            seed: self.run.config.seed,
            step: self.run.state.step,
        };
        let (sgd, run) = (self.run.sgd(), &mut self.run);
        let stats = self.towers.train_step_checked(
            input,
            labels,
            sgd,
            &run.lr_mults.clone(),
            mask,
            |loss, bad| run.admit(loss, bad),
        )?;
        self.run.state.step += 1;
        Ok(stats)
    }

    fn evaluate(&self, input: &Tensor, labels: &[u32]) -> Result<BatchStats> {
        self.towers.evaluate(input, labels)
    }

    fn end_epoch(&mut self, val_error: Option<f64>) -> Option<f32> {
        self.run.end_epoch(val_error)
    }

    fn save(&self, path: &Path) -> Result<()> {
        self.run.write(
            path,
            &self.towers.plan,
            self.towers.tensors()?,
            self.towers.velocity_tensors()?,
        )
    }

    fn state(&self) -> &TrainState {
        &self.run.state
    }

    fn config(&self) -> &TrainConfig {
        &self.run.config
    }

    fn note(&self, key: &str) -> Option<&str> {
        self.run.notes.get(key).map(String::as_str)
    }

    fn set_note(&mut self, key: &str, value: &str) {
        self.run.notes.insert(key.to_string(), value.to_string());
    }

    fn classes(&self) -> usize {
        self.towers.plan.output().len()
    }

    fn reserve(&mut self, batch: usize, _image_side: Option<usize>) -> Result<()> {
        // Each tower allocates its half of the batch's buffers at each step: check that
        // they fit now. The images stay on the host (cut there before each step).
        for (t, b) in self.towers.backends.iter().enumerate() {
            crate::footprint::check_fits(b, &self.towers.towers[t], batch, None)?;
        }
        Ok(())
    }

    fn set_on_non_finite(&mut self, mode: OnNonFinite) {
        self.run.on_non_finite = mode;
    }

    fn last_skip(&self) -> Option<&NonFinite> {
        self.run.last_skip.as_ref()
    }
}
