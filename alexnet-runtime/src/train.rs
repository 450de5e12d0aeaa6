//! Training: the paper's recipe on any backend. A [`Trainer`] owns a [`Model`], the
//! momentum of every parameter, their gradients and the activations of a batch; one
//! [`Trainer::step`] runs the forward pass (dropout on, the final softmax folded into the
//! loss), the fused softmax cross-entropy, the backward pass stage by stage in reverse
//! (no input gradient for the first learned layer) and one SGD update of all parameters,
//! all on the backend. The learning rate follows a [`Schedule`] (the paper's: divide by 10
//! when the validation error stops improving).
//!
//! Everything random is a pure function of the run's seed and position (dropout: Philox
//! on (seed, layer, step, unit); data order: [`epoch_order`]), so the whole state of a
//! run is its parameters, their momentum and a few numbers, which
//! [`Trainer::save`] writes to one safetensors file, atomically. [`Trainer::resume`]
//! continues bit for bit on the CPU.

use std::collections::HashMap;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ir::{Op, Plan, Stage};
use crate::model::Model;
use crate::optim::Sgd;
use crate::philox::DropoutMask;
use crate::tensor::Tensor;
use crate::weights::{self, NamedTensor};

/// The `format` metadata of a training-state file.
pub const STATE_FORMAT: &str = "alexnet-rs-training-state/1";
/// Prefix of the momentum tensors in a training-state file (`momentum.conv1.weight`).
pub const MOMENTUM_PREFIX: &str = "momentum.";

/// How the learning rate changes between epochs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// Never.
    Constant,
    /// The paper's: multiply by `factor` when the validation error has not improved for
    /// `patience` epochs.
    Plateau { factor: f32, patience: u32 },
    /// Multiply by `factor` every `every` epochs.
    Step { every: u64, factor: f32 },
}

impl Default for Schedule {
    /// The paper's: divide by 10 after one epoch without improvement.
    fn default() -> Self {
        Schedule::Plateau {
            factor: 0.1,
            patience: 1,
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Constant => write!(f, "constant"),
            Schedule::Plateau { factor, patience } => write!(f, "plateau:{factor:?}:{patience}"),
            Schedule::Step { every, factor } => write!(f, "step:{every}:{factor:?}"),
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = Error;

    /// `constant`, `plateau[:FACTOR[:PATIENCE]]` or `step:EVERY[:FACTOR]`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "learning-rate schedule `{s}`: expected `constant`, `plateau[:FACTOR[:PATIENCE]]` or `step:EPOCHS[:FACTOR]`"
            ))
        };
        let parts: Vec<&str> = s.split(':').collect();
        let factor = |i: usize| -> Result<f32> {
            match parts.get(i) {
                None => Ok(0.1),
                Some(v) => v
                    .parse::<f32>()
                    .ok()
                    .filter(|f| *f > 0.0 && *f <= 1.0)
                    .ok_or_else(bad),
            }
        };
        match parts[0] {
            "constant" if parts.len() == 1 => Ok(Schedule::Constant),
            "plateau" if parts.len() <= 3 => Ok(Schedule::Plateau {
                factor: factor(1)?,
                patience: match parts.get(2) {
                    None => 1,
                    Some(v) => v.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?,
                },
            }),
            "step" if (2..=3).contains(&parts.len()) => Ok(Schedule::Step {
                every: parts[1].parse().ok().filter(|e| *e > 0).ok_or_else(bad)?,
                factor: factor(2)?,
            }),
            _ => Err(bad()),
        }
    }
}

/// The hyper-parameters of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Initial learning rate, momentum and weight decay.
    pub sgd: Sgd,
    pub schedule: Schedule,
    /// Seeds dropout and the data order.
    pub seed: u64,
}

impl Default for TrainConfig {
    /// The paper's: learning rate 0.01, momentum 0.9, weight decay 0.0005, divided by 10
    /// on a plateau.
    fn default() -> Self {
        TrainConfig {
            sgd: Sgd::default(),
            schedule: Schedule::default(),
            seed: 0,
        }
    }
}

/// Where a run is.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    /// SGD steps taken.
    pub step: u64,
    /// Epochs completed (calls of [`Trainer::end_epoch`]).
    pub epoch: u64,
    /// The current learning rate.
    pub lr: f32,
    /// Best validation error so far, and epochs since it improved (plateau schedule).
    pub best_error: f64,
    pub bad_epochs: u32,
}

/// What one step or one evaluation saw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchStats {
    pub images: usize,
    /// Mean cross-entropy.
    pub loss: f64,
    pub top1_correct: usize,
    pub top5_correct: usize,
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
        let n = self.images + o.images;
        if n > 0 {
            self.loss = (self.loss * self.images as f64 + o.loss * o.images as f64) / n as f64;
        }
        self.images = n;
        self.top1_correct += o.top1_correct;
        self.top5_correct += o.top5_correct;
    }
}

/// The order in which epoch `epoch` visits `n` examples: a permutation drawn from the
/// run's seed and the epoch alone, so a resumed run sees the same batches.
pub fn epoch_order(seed: u64, epoch: u64, n: u64) -> Vec<u64> {
    let mut order: Vec<u64> = (0..n).collect();
    let mix = seed ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = rand::rngs::StdRng::seed_from_u64(mix);
    order.shuffle(&mut rng);
    order
}

/// Buffers of one batch size.
struct Workspace<B: Backend> {
    batch: usize,
    /// `acts[i]` is the input of run stage `i`; `acts[i + 1]` its output.
    acts: Vec<B::Buffer>,
    /// Output and input gradients, in turn.
    grads: [B::Buffer; 2],
    labels: B::Buffer,
    stats: B::Buffer,
    /// A batch has been copied in.
    loaded: bool,
}

/// Wall-clock laps with the backend synchronised (for [`Trainer::set_timing`]).
struct Clock(std::time::Instant);

impl Clock {
    fn start<B: Backend>(backend: &B, on: bool) -> Result<Option<Clock>> {
        if !on {
            return Ok(None);
        }
        backend.synchronize()?;
        Ok(Some(Clock(std::time::Instant::now())))
    }

    fn lap<B: Backend>(&mut self, backend: &B) -> Result<f64> {
        backend.synchronize()?;
        let now = std::time::Instant::now();
        let dt = now.duration_since(self.0).as_secs_f64();
        self.0 = now;
        Ok(dt)
    }
}

/// What a training loop needs from a trainer, whole ([`Trainer`]) or split into towers
/// ([`crate::towers::SplitTrainer`]); both write the same state file, so a run can move
/// from one to the other.
pub trait Train {
    /// One SGD step on a batch; its loss and top-1/top-5 counts (before the update).
    fn step(&mut self, input: &Tensor, labels: &[u32]) -> Result<BatchStats>;
    /// Loss and top-1/top-5 counts at inference (dropout off).
    fn evaluate(&self, input: &Tensor, labels: &[u32]) -> Result<BatchStats>;
    /// Ends an epoch, applying the schedule; the new learning rate when it changed.
    fn end_epoch(&mut self, val_error: Option<f64>) -> Option<f32>;
    /// Writes the whole training state, atomically.
    fn save(&self, path: &Path) -> Result<()>;
    fn state(&self) -> &TrainState;
    fn config(&self) -> &TrainConfig;
    /// A fact recorded with [`Train::set_note`], in this run or the saved one.
    fn note(&self, key: &str) -> Option<&str>;
    fn set_note(&mut self, key: &str, value: &str);
    /// Logits per image.
    fn classes(&self) -> usize;
}

impl<B: Backend> Train for Trainer<B> {
    fn step(&mut self, input: &Tensor, labels: &[u32]) -> Result<BatchStats> {
        Trainer::step(self, input, labels)
    }
    fn evaluate(&self, input: &Tensor, labels: &[u32]) -> Result<BatchStats> {
        Trainer::evaluate(self, input, labels)
    }
    fn end_epoch(&mut self, val_error: Option<f64>) -> Option<f32> {
        Trainer::end_epoch(self, val_error)
    }
    fn save(&self, path: &Path) -> Result<()> {
        Trainer::save(self, path)
    }
    fn state(&self) -> &TrainState {
        Trainer::state(self)
    }
    fn config(&self) -> &TrainConfig {
        Trainer::config(self)
    }
    fn note(&self, key: &str) -> Option<&str> {
        Trainer::note(self, key)
    }
    fn set_note(&mut self, key: &str, value: &str) {
        Trainer::set_note(self, key, value)
    }
    fn classes(&self) -> usize {
        Trainer::classes(self)
    }
}

/// A model being trained; see the module documentation.
pub struct Trainer<B: Backend> {
    model: Model<B>,
    run: Run,
    /// Per tensor of [`Plan::params`]: momentum and gradient.
    velocity: Vec<B::Buffer>,
    grads: Vec<B::Buffer>,
    /// The stages a training step runs (a final softmax is folded into the loss).
    stages: Vec<Stage>,
    /// Index in `stages` of the first stage with parameters: the backward pass stops there
    /// and computes no input gradient for it.
    first_learned: usize,
    classes: usize,
    ws: Option<Workspace<B>>,
    /// Per-phase times of the last step, when timing is on.
    timings: Option<Vec<(String, f64)>>,
}

impl<B: Backend> std::fmt::Debug for Trainer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("model", &self.model)
            .field("config", &self.run.config)
            .field("state", &self.run.state)
            .finish()
    }
}

impl<B: Backend> Trainer<B> {
    /// Starts training `model` from step 0 with zero momentum.
    pub fn new(model: Model<B>, config: TrainConfig) -> Result<Self> {
        let velocity = model
            .plan()
            .params()
            .iter()
            .map(|p| model.backend().upload(&vec![0.0; p.len()]))
            .collect::<Result<Vec<_>>>()?;
        let run = Run::start(config, velocity.len())?;
        Self::with_run(model, run, velocity)
    }

    fn with_run(model: Model<B>, run: Run, velocity: Vec<B::Buffer>) -> Result<Self> {
        let plan = model.plan().clone();
        let mut stages = plan.stages();
        if stages
            .last()
            .is_some_and(|s| matches!(plan.layers[s.layer].op, Op::Softmax))
        {
            stages.pop();
        }
        let first_learned = stages
            .iter()
            .position(|s| plan.layers[s.layer].op.is_learned())
            .ok_or_else(|| {
                Error::Invalid(format!("network `{}` has nothing to learn", plan.name))
            })?;
        let classes = alexnet_codegen::cuda_train::logits_of(&plan)
            .map(|(_, c)| c)
            .unwrap_or(0);
        model.backend().prepare_training(&plan)?;
        let grads = plan
            .params()
            .iter()
            .map(|p| model.backend().alloc(p.len()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Trainer {
            model,
            run,
            velocity,
            grads,
            stages,
            first_learned,
            classes,
            ws: None,
            timings: None,
        })
    }

    /// Sets the learning-rate multiplier of every tensor of layer `layer` (the paper used
    /// 1 everywhere).
    pub fn set_lr_mult(&mut self, layer: &str, mult: f32) -> Result<()> {
        self.run.set_lr_mult(self.model.plan(), layer, mult)
    }

    pub fn model(&self) -> &Model<B> {
        &self.model
    }

    /// Records a fact about the run (the data set's size, the batch size, ...) that
    /// [`Trainer::save`] writes into the state and [`Trainer::resume`] brings back, so a
    /// caller can refuse to resume with different settings.
    pub fn set_note(&mut self, key: &str, value: &str) {
        self.run.notes.insert(key.to_string(), value.to_string());
    }

    /// A fact recorded by [`Trainer::set_note`] (in this run or the saved one).
    pub fn note(&self, key: &str) -> Option<&str> {
        self.run.notes.get(key).map(String::as_str)
    }

    pub fn into_model(self) -> Model<B> {
        self.model
    }

    pub fn state(&self) -> &TrainState {
        &self.run.state
    }

    pub fn config(&self) -> &TrainConfig {
        &self.run.config
    }

    /// Number of classes the loss sees (the logits per image).
    pub fn classes(&self) -> usize {
        self.classes
    }

    fn workspace(&mut self, batch: usize) -> Result<()> {
        if self.ws.as_ref().is_some_and(|w| w.batch == batch) {
            return Ok(());
        }
        self.ws = None;
        let plan = self.model.plan();
        let backend = self.model.backend();
        let mut acts = vec![backend.alloc(batch * plan.input.len())?];
        let mut widest = plan.input.len();
        for s in &self.stages {
            let l = &plan.layers[s.layer];
            acts.push(backend.alloc(batch * l.output.len())?);
            widest = widest.max(l.output.len()).max(l.input.len());
        }
        self.ws = Some(Workspace {
            batch,
            acts,
            grads: [
                backend.alloc(batch * widest)?,
                backend.alloc(batch * widest)?,
            ],
            labels: backend.alloc(batch)?,
            stats: backend.alloc(3)?,
            loaded: false,
        });
        Ok(())
    }

    /// Checks a batch against the network and returns its size.
    fn check_batch(&self, input: &Tensor, labels: &[u32]) -> Result<usize> {
        let plan = self.model.plan();
        let s = plan.input;
        let batch = match *input.shape() {
            [n, c, h, w] if (c, h, w) == (s.c, s.h, s.w) && n > 0 => n,
            _ => {
                return Err(Error::Shape {
                    what: format!("training batch of `{}`", plan.name),
                    expected: vec![labels.len().max(1), s.c, s.h, s.w],
                    found: input.shape().to_vec(),
                })
            }
        };
        if labels.len() != batch {
            return Err(Error::Invalid(format!(
                "{} labels for a batch of {batch} images",
                labels.len()
            )));
        }
        if let Some(l) = labels.iter().find(|&&l| l as usize >= self.classes) {
            return Err(Error::Invalid(format!(
                "label {l} out of range: `{}` has {} classes",
                plan.name, self.classes
            )));
        }
        Ok(batch)
    }

    /// One SGD step on a batch (`[N, C, H, W]` and N labels): forward with dropout, loss,
    /// backward, update. Returns the batch's loss and top-1/top-5 counts (before the
    /// update).
    pub fn step(&mut self, input: &Tensor, labels: &[u32]) -> Result<BatchStats> {
        self.load_batch(input, labels)?;
        self.step_loaded()
    }

    /// Copies a batch to the backend for [`Trainer::step_loaded`].
    pub fn load_batch(&mut self, input: &Tensor, labels: &[u32]) -> Result<()> {
        let batch = self.check_batch(input, labels)?;
        self.workspace(batch)?;
        let backend = self.model.backend();
        let ws = self
            .ws
            .as_mut()
            .ok_or_else(|| Error::Backend("training workspace missing".into()))?;
        backend.write(&mut ws.acts[0], input.data())?;
        let l: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
        backend.write(&mut ws.labels, &l)?;
        ws.loaded = true;
        Ok(())
    }

    /// Times every phase of the following steps (synchronising the backend around each):
    /// see [`Trainer::timings`].
    pub fn set_timing(&mut self, on: bool) {
        self.timings = on.then(Vec::new);
    }

    /// `(phase, seconds)` of the last step when timing is on: `forward <stage>`, `loss`,
    /// `backward <stage>`, `sgd`.
    pub fn timings(&self) -> &[(String, f64)] {
        self.timings.as_deref().unwrap_or(&[])
    }

    /// One SGD step on the batch last given to [`Trainer::load_batch`] (a benchmark can
    /// repeat it without copying the batch again).
    pub fn step_loaded(&mut self) -> Result<BatchStats> {
        let ws = self
            .ws
            .as_mut()
            .filter(|w| w.loaded)
            .ok_or_else(|| Error::Invalid("no batch loaded".into()))?;
        let batch = ws.batch;
        let mask = DropoutMask {
            seed: self.run.config.seed,
            step: self.run.state.step,
        };
        let (backend, plan, params) = self.model.parts_mut();
        let mut timings = self.timings.take();
        if let Some(t) = timings.as_mut() {
            t.clear();
        }
        let mut clock = Clock::start(backend, timings.is_some())?;
        macro_rules! timed {
            ($what:expr) => {
                if let (Some(t), Some(c)) = (timings.as_mut(), clock.as_mut()) {
                    t.push(($what, c.lap(backend)?));
                }
            };
        }

        // Forward, keeping every stage's output.
        for (i, stage) in self.stages.iter().enumerate() {
            let (before, after) = ws.acts.split_at_mut(i + 1);
            let (x, y) = (&before[i], &mut after[0]);
            if matches!(plan.layers[stage.layer].op, Op::Dropout { .. }) {
                backend.dropout(plan, *stage, batch, mask, x, y)?;
            } else {
                let p: Vec<&B::Buffer> = params[stage.layer].iter().map(|(_, b)| b).collect();
                backend.forward_stage(plan, *stage, batch, x, &p, y)?;
            }
            timed!(format!("forward {}", plan.stage_output_name(*stage)));
        }

        // Loss: the gradient of the logits goes to grads[0].
        let n = self.stages.len();
        {
            let [g0, _] = &mut ws.grads;
            backend.softmax_cross_entropy(
                plan,
                batch,
                self.classes,
                &ws.acts[n],
                &ws.labels,
                g0,
                &mut ws.stats,
            )?;
        }
        timed!("loss".to_string());

        // Backward, from the last stage to the first learned one.
        let mut offsets = Vec::with_capacity(params.len());
        let mut t = 0;
        for layer in params.iter() {
            offsets.push(t);
            t += layer.len();
        }
        let mut cur = 0;
        for i in (self.first_learned..n).rev() {
            let stage = self.stages[i];
            let [g0, g1] = &mut ws.grads;
            let (dy, dx) = if cur == 0 { (g0, g1) } else { (g1, g0) };
            let dx = (i > self.first_learned).then_some(dx);
            let (x, y) = (&ws.acts[i], &ws.acts[i + 1]);
            if matches!(plan.layers[stage.layer].op, Op::Dropout { .. }) {
                let dx =
                    dx.ok_or_else(|| Error::Backend("dropout before any learned layer".into()))?;
                backend.dropout(plan, stage, batch, mask, dy, dx)?;
            } else {
                let p: Vec<&B::Buffer> = params[stage.layer].iter().map(|(_, b)| b).collect();
                let o = offsets[stage.layer];
                let mut dp: Vec<&mut B::Buffer> = self.grads[o..o + p.len()].iter_mut().collect();
                backend.backward_stage(plan, stage, batch, x, y, dy, &p, dx, &mut dp)?;
            }
            timed!(format!("backward {}", plan.layers[stage.layer].name));
            cur = 1 - cur;
        }

        // Update.
        let sgd = self.run.sgd();
        let mut ps: Vec<&mut B::Buffer> = params.iter_mut().flatten().map(|(_, b)| b).collect();
        let mut vs: Vec<&mut B::Buffer> = self.velocity.iter_mut().collect();
        let gs: Vec<&B::Buffer> = self.grads.iter().collect();
        backend.sgd_step(plan, sgd, &self.run.lr_mults, &mut ps, &mut vs, &gs)?;
        timed!("sgd".to_string());
        self.timings = timings;
        self.run.state.step += 1;

        let s = backend.download_prefix(&ws.stats, 3)?;
        Ok(BatchStats {
            images: batch,
            loss: f64::from(s[0]) / batch as f64,
            top1_correct: s[1] as usize,
            top5_correct: s[2] as usize,
        })
    }

    /// The gradients of the last step, per tensor of [`Plan::params`] (for tests).
    pub fn gradients(&self) -> Result<Vec<NamedTensor>> {
        self.download_named(&self.grads)
    }

    /// One buffer per tensor of [`Plan::params`], downloaded under the tensors' names.
    fn download_named(&self, bufs: &[B::Buffer]) -> Result<Vec<NamedTensor>> {
        self.model
            .plan()
            .params()
            .into_iter()
            .zip(bufs)
            .map(|(spec, b)| {
                Ok(NamedTensor {
                    data: self.model.backend().download_prefix(b, spec.len())?,
                    name: spec.name,
                    shape: spec.shape,
                })
            })
            .collect()
    }

    /// Loss and top-1/top-5 counts of the model at inference (dropout off) on a batch.
    pub fn evaluate(&self, input: &Tensor, labels: &[u32]) -> Result<BatchStats> {
        let batch = self.check_batch(input, labels)?;
        evaluate_output(&self.model, input, labels, batch)
    }

    /// Ends an epoch: applies the schedule given this epoch's validation error (the plateau
    /// schedule needs one; without it the learning rate is kept). Returns the new learning
    /// rate when it changed.
    pub fn end_epoch(&mut self, val_error: Option<f64>) -> Option<f32> {
        self.run.end_epoch(val_error)
    }

    /// Writes the whole training state (weights, momentum, step, epoch, learning rate,
    /// seed, schedule and its progress, multipliers) to one safetensors file, atomically.
    /// The weights keep their PyTorch names, so the file also loads as plain weights.
    pub fn save(&self, path: &Path) -> Result<()> {
        let momentum = self.download_named(&self.velocity)?;
        self.run
            .write(path, self.model.plan(), self.model.tensors()?, momentum)
    }

    /// Continues a run saved by [`Trainer::save`] (or by a split run,
    /// [`crate::towers::SplitTrainer::save`]: the file is the same): the same parameters,
    /// momentum, step, learning rate, schedule and seed, so the next step is the one the
    /// saved run would have taken.
    pub fn resume(backend: B, plan: Plan, path: &Path) -> Result<Self> {
        let (run, params, momentum) = Run::read(path, &plan)?;
        let velocity = momentum
            .iter()
            .map(|t| backend.upload(&t.data))
            .collect::<Result<Vec<_>>>()?;
        let model = Model::from_tensors(backend, plan, params)?;
        Self::with_run(model, run, velocity)
    }
}

/// What a run keeps besides its tensors: the hyper-parameters, where it is, the
/// learning-rate multipliers and the caller's notes. Shared by [`Trainer`] and the split
/// trainer, which save the same file.
#[derive(Clone, Debug)]
pub(crate) struct Run {
    pub(crate) config: TrainConfig,
    pub(crate) state: TrainState,
    /// One per tensor of [`Plan::params`].
    pub(crate) lr_mults: Vec<f32>,
    /// The caller's own facts about the run, saved with the state (`note.<key>`).
    pub(crate) notes: std::collections::BTreeMap<String, String>,
}

impl Run {
    /// A run at step 0 for `tensors` parameter tensors.
    pub(crate) fn start(config: TrainConfig, tensors: usize) -> Result<Self> {
        if !(config.sgd.lr.is_finite() && config.sgd.lr > 0.0) {
            return Err(Error::Invalid(format!(
                "learning rate {} must be positive",
                config.sgd.lr
            )));
        }
        Ok(Run {
            state: TrainState {
                step: 0,
                epoch: 0,
                lr: config.sgd.lr,
                best_error: f64::INFINITY,
                bad_epochs: 0,
            },
            config,
            lr_mults: vec![1.0; tensors],
            notes: Default::default(),
        })
    }

    pub(crate) fn set_lr_mult(&mut self, plan: &Plan, layer: &str, mult: f32) -> Result<()> {
        if !(mult.is_finite() && mult >= 0.0) {
            return Err(Error::Invalid(format!(
                "learning-rate multiplier {mult} of `{layer}` must be finite and not negative"
            )));
        }
        let mut found = false;
        for (spec, m) in plan.params().iter().zip(&mut self.lr_mults) {
            if spec.name.rsplit_once('.').is_some_and(|(l, _)| l == layer) {
                *m = mult;
                found = true;
            }
        }
        if !found {
            return Err(Error::Invalid(format!(
                "network `{}` has no learned layer `{layer}`",
                plan.name
            )));
        }
        Ok(())
    }

    /// The SGD settings of the next step: the current learning rate.
    pub(crate) fn sgd(&self) -> Sgd {
        Sgd {
            lr: self.state.lr,
            ..self.config.sgd
        }
    }

    pub(crate) fn end_epoch(&mut self, val_error: Option<f64>) -> Option<f32> {
        self.state.epoch = self.state.epoch.saturating_add(1);
        let before = self.state.lr;
        match self.config.schedule {
            Schedule::Constant => {}
            Schedule::Step { every, factor } => {
                if self.state.epoch.is_multiple_of(every) {
                    self.state.lr *= factor;
                }
            }
            Schedule::Plateau { factor, patience } => {
                if let Some(e) = val_error {
                    if e < self.state.best_error {
                        self.state.best_error = e;
                        self.state.bad_epochs = 0;
                    } else {
                        self.state.bad_epochs = self.state.bad_epochs.saturating_add(1);
                        if self.state.bad_epochs >= patience {
                            self.state.lr *= factor;
                            self.state.bad_epochs = 0;
                        }
                    }
                }
            }
        }
        (self.state.lr != before).then_some(self.state.lr)
    }

    /// Writes the state file: `params` (PyTorch names), `momentum` (the same, prefixed
    /// `momentum.`) and this run as metadata, atomically.
    pub(crate) fn write(
        &self,
        path: &Path,
        plan: &Plan,
        mut params: Vec<NamedTensor>,
        momentum: Vec<NamedTensor>,
    ) -> Result<()> {
        for mut m in momentum {
            m.name = format!("{MOMENTUM_PREFIX}{}", m.name);
            params.push(m);
        }
        let s = &self.state;
        let c = &self.config;
        let mults: Vec<String> = self.lr_mults.iter().map(|m| format!("{m:?}")).collect();
        let mut meta = HashMap::from(
            [
                ("format", STATE_FORMAT.to_string()),
                ("network", plan.name.to_string()),
                ("step", s.step.to_string()),
                ("epoch", s.epoch.to_string()),
                ("lr", format!("{:?}", s.lr)),
                ("best_error", format!("{:?}", s.best_error)),
                ("bad_epochs", s.bad_epochs.to_string()),
                ("base_lr", format!("{:?}", c.sgd.lr)),
                ("momentum", format!("{:?}", c.sgd.momentum)),
                ("weight_decay", format!("{:?}", c.sgd.weight_decay)),
                ("schedule", c.schedule.to_string()),
                ("seed", c.seed.to_string()),
                ("lr_mults", mults.join(",")),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        for (k, v) in &self.notes {
            meta.insert(format!("note.{k}"), v.clone());
        }
        weights::write_safetensors(path, &params, Some(meta))
    }

    /// Reads a state file written by [`Run::write`] for `plan`: the run, the parameters and
    /// their momentum (one-process layout, in [`Plan::params`] order), every entry checked.
    pub(crate) fn read(
        path: &Path,
        plan: &Plan,
    ) -> Result<(Run, Vec<NamedTensor>, Vec<NamedTensor>)> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |message: String| Error::Format {
            path: Some(path.to_path_buf()),
            message,
        };
        let meta = weights::parse_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        if meta.get("format").map(String::as_str) != Some(STATE_FORMAT) {
            return Err(bad(format!(
                "not a training state (metadata `format` should be `{STATE_FORMAT}`); plain weights load with --weights"
            )));
        }
        if meta.get("network").map(String::as_str) != Some(&*plan.name) {
            return Err(bad(format!(
                "training state of network `{}`, not `{}`",
                meta.get("network").map_or("?", String::as_str),
                plan.name
            )));
        }
        let get = |k: &str| -> Result<&String> {
            meta.get(k)
                .ok_or_else(|| bad(format!("training state lacks `{k}`")))
        };
        fn num<T: std::str::FromStr>(v: &str, k: &str, bad: &dyn Fn(String) -> Error) -> Result<T> {
            v.parse()
                .map_err(|_| bad(format!("training state: `{k}` = `{v}` is not a number")))
        }
        let state = TrainState {
            step: num(get("step")?, "step", &bad)?,
            epoch: num(get("epoch")?, "epoch", &bad)?,
            lr: num(get("lr")?, "lr", &bad)?,
            best_error: num(get("best_error")?, "best_error", &bad)?,
            bad_epochs: num(get("bad_epochs")?, "bad_epochs", &bad)?,
        };
        let config = TrainConfig {
            sgd: Sgd {
                lr: num(get("base_lr")?, "base_lr", &bad)?,
                momentum: num(get("momentum")?, "momentum", &bad)?,
                weight_decay: num(get("weight_decay")?, "weight_decay", &bad)?,
            },
            schedule: get("schedule")?.parse()?,
            seed: num(get("seed")?, "seed", &bad)?,
        };
        let lr_mults: Vec<f32> = get("lr_mults")?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|m| num(m, "lr_mults", &bad))
            .collect::<Result<_>>()?;
        let all = weights::parse_safetensors(&bytes).map_err(|e| match e {
            Error::Format { message, .. } => bad(message),
            Error::Weights { problems, .. } => Error::Weights {
                path: Some(path.to_path_buf()),
                problems,
            },
            other => other,
        })?;
        let (momentum, params): (Vec<NamedTensor>, Vec<NamedTensor>) = all
            .into_iter()
            .partition(|t| t.name.starts_with(MOMENTUM_PREFIX));
        let momentum: Vec<NamedTensor> = momentum
            .into_iter()
            .map(|mut t| {
                t.name = t.name[MOMENTUM_PREFIX.len()..].to_string();
                t
            })
            .collect();
        let params = weights::match_plan(plan, params, Some(path))?;
        let momentum = weights::match_plan(plan, momentum, Some(path)).map_err(|e| match e {
            Error::Weights { path, problems } => Error::Weights {
                path,
                problems: problems
                    .into_iter()
                    .map(|p| format!("momentum: {p}"))
                    .collect(),
            },
            other => other,
        })?;
        if lr_mults.len() != params.len() {
            return Err(bad(format!(
                "training state has {} learning-rate multipliers for {} tensors",
                lr_mults.len(),
                params.len()
            )));
        }
        let finite_pos = |v: f32| v.is_finite() && v > 0.0;
        let c = &config.sgd;
        if !(finite_pos(state.lr)
            && c.momentum.is_finite()
            && (0.0..1.0).contains(&c.momentum)
            && c.weight_decay.is_finite()
            && c.weight_decay >= 0.0
            && lr_mults.iter().all(|m| m.is_finite() && *m >= 0.0))
        {
            return Err(bad(format!(
                "training state has out-of-range hyper-parameters: lr {}, momentum {}, weight decay {}, multipliers {:?}",
                state.lr, c.momentum, c.weight_decay, lr_mults
            )));
        }
        let notes = meta
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("note.")?.to_string(), v.clone())))
            .collect();
        Ok((
            Run {
                config,
                state,
                lr_mults,
                notes,
            },
            params,
            momentum,
        ))
    }
}

/// Loss and top-k counts of `model`'s inference output (probabilities after a final
/// softmax, otherwise logits) on a checked batch.
fn evaluate_output<B: Backend>(
    model: &Model<B>,
    input: &Tensor,
    labels: &[u32],
    batch: usize,
) -> Result<BatchStats> {
    let out = model.forward(input)?;
    Ok(output_stats(model.plan(), &out, labels, batch))
}

/// Loss and top-k counts of `plan`'s inference output `out` on a checked batch.
pub(crate) fn output_stats(plan: &Plan, out: &Tensor, labels: &[u32], batch: usize) -> BatchStats {
    let classes = out.len() / batch.max(1);
    let probabilities = plan
        .layers
        .last()
        .is_some_and(|l| matches!(l.op, Op::Softmax));
    let mut stats = BatchStats {
        images: batch,
        loss: 0.0,
        top1_correct: 0,
        top5_correct: 0,
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
            let beaten = crate::eval::rank(row, label);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_and_print() {
        for s in ["constant", "plateau:0.1:1", "step:30:0.1", "plateau:0.5:3"] {
            let p: Schedule = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        assert_eq!("plateau".parse::<Schedule>().unwrap(), Schedule::default());
        assert!("step".parse::<Schedule>().is_err());
        assert!("plateau:2".parse::<Schedule>().is_err());
        assert!("weekly".parse::<Schedule>().is_err());
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(1, 0, 100);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(1, 0, 100));
        assert_ne!(a, epoch_order(1, 1, 100));
        assert_ne!(a, epoch_order(2, 0, 100));
    }
}
