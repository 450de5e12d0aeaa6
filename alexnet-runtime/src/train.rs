//! Training a whole network on one backend: a [`Trainer`] owns a [`Model`], the momentum
//! of every parameter, their gradients and the activations of a batch; one
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

use std::path::Path;

pub use crate::eval::BatchStats;
pub use crate::run::{
    epoch_order, NonFinite, OnNonFinite, Schedule, Train, TrainConfig, TrainState,
};
pub use crate::weights::{MOMENTUM_PREFIX, STATE_FORMAT};

use crate::ahead::Ahead;
use crate::backend::{Augment, Training, Upload, F32};
use crate::data::patch::{Cut, Draw};
use crate::error::{Error, Result};
use crate::eval::output_stats;
use crate::footprint::{check_fits, training_stages, TrainingBuffers};
use crate::ir::{Plan, Stage};
use crate::model::Model;
use crate::philox::DropoutMask;
use crate::run::Run;
use crate::tensor::Tensor;
use crate::weights::NamedTensor;

/// Buffers of one batch size.
struct Workspace<B: Training> {
    batch: usize,
    /// `acts[i]` is the input of run stage `i`; `acts[i + 1]` its output.
    acts: Vec<F32<B>>,
    /// Output and input gradients, in turn.
    grads: [F32<B>; 2],
    labels: F32<B>,
    stats: F32<B>,
    /// The 8-bit images of [`Trainer::load_images`] and how many bytes the buffer holds
    /// (allocated by its first call, again when a batch of another size comes).
    images: Option<(B::Buffer<u8>, usize)>,
    /// A batch has been copied in.
    loaded: bool,
}

/// Wall-clock laps with the backend synchronised (for [`Trainer::set_timing`]).
struct Clock(std::time::Instant);

impl Clock {
    fn start<B: Training>(backend: &B, on: bool) -> Result<Option<Clock>> {
        if !on {
            return Ok(None);
        }
        backend.synchronize()?;
        Ok(Some(Clock(std::time::Instant::now())))
    }

    fn lap<B: Training>(&mut self, backend: &B) -> Result<f64> {
        backend.synchronize()?;
        let now = std::time::Instant::now();
        let dt = now.duration_since(self.0).as_secs_f64();
        self.0 = now;
        Ok(dt)
    }
}

impl<B: Training + Augment + Upload> Train for Trainer<B> {
    fn step(&mut self, input: &Tensor, labels: &[u32]) -> Result<BatchStats> {
        Trainer::step(self, input, labels)
    }
    fn send_images(&mut self, images: Vec<u8>) -> Result<()> {
        Trainer::send_images(self, images)
    }
    fn step_sent(
        &mut self,
        cut: &Cut<'_>,
        draws: &[Draw],
        labels: &[u32],
    ) -> Result<(BatchStats, Vec<u8>)> {
        Trainer::step_sent(self, cut, draws, labels)
    }
    fn clear_sent(&mut self) -> Result<()> {
        Trainer::clear_sent(self)
    }
    fn step_images(
        &mut self,
        cut: &Cut<'_>,
        images: &[u8],
        draws: &[Draw],
        labels: &[u32],
    ) -> Result<BatchStats> {
        Trainer::step_images(self, cut, images, draws, labels)
    }
    fn evaluate(&self, input: &Tensor, labels: &[u32]) -> Result<BatchStats> {
        Trainer::evaluate(self, input, labels)
    }
    fn evaluate_images(
        &self,
        cut: &Cut<'_>,
        images: &[u8],
        draws: &[Draw],
        labels: &[u32],
    ) -> Result<BatchStats> {
        Trainer::evaluate_images(self, cut, images, draws, labels)
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
    fn reserve(&mut self, batch: usize, image_side: Option<usize>) -> Result<()> {
        Trainer::reserve(self, batch, image_side)
    }
    fn set_on_non_finite(&mut self, mode: OnNonFinite) {
        self.run.on_non_finite = mode;
    }
    fn last_skip(&self) -> Option<&NonFinite> {
        self.run.last_skip.as_ref()
    }
}

/// A model being trained; see the module documentation.
pub struct Trainer<B: Training> {
    model: Model<B>,
    run: Run,
    /// Per tensor of [`Plan::params`]: momentum and gradient.
    velocity: Vec<F32<B>>,
    grads: Vec<F32<B>>,
    /// The stages a training step runs (a final softmax is folded into the loss).
    stages: Vec<Stage>,
    /// Index in `stages` of the first stage with parameters: the backward pass stops there
    /// and computes no input gradient for it.
    first_learned: usize,
    classes: usize,
    ws: Option<Workspace<B>>,
    /// Per-phase times of the last step, when timing is on.
    timings: Option<Vec<(String, f64)>>,
    /// The thread that uploads the batches of [`Trainer::send_images`] (started by the
    /// first).
    ahead: Option<Ahead<B>>,
}

impl<B: Training> std::fmt::Debug for Trainer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("model", &self.model)
            .field("config", &self.run.config)
            .field("state", &self.run.state)
            .finish()
    }
}

impl<B: Training> Trainer<B> {
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

    fn with_run(model: Model<B>, run: Run, velocity: Vec<F32<B>>) -> Result<Self> {
        crate::backend::check_trains(model.backend().precision())?;
        let plan = model.plan().clone();
        let stages = training_stages(&plan);
        let first_learned = stages
            .iter()
            .position(|s| plan.layers[s.layer].op.is_learned())
            .ok_or_else(|| {
                Error::Invalid(format!("network `{}` has nothing to learn", plan.name))
            })?;
        let classes = alexnet_core::cuda::logits_of(&plan)
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
            ahead: None,
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
        let b = TrainingBuffers::of(plan, &self.stages, batch);
        self.ws = Some(Workspace {
            batch,
            acts: b
                .acts
                .iter()
                .map(|&n| backend.alloc(n))
                .collect::<Result<_>>()?,
            grads: [backend.alloc(b.grad)?, backend.alloc(b.grad)?],
            labels: backend.alloc(b.labels)?,
            stats: backend.alloc(b.stats)?,
            images: None,
            loaded: false,
        });
        Ok(())
    }

    /// Allocates the buffers of batches of `batch` images now, before the first step,
    /// after checking that they fit: on a GPU, an [`Error::OutOfMemory`] with the batch,
    /// the bytes training needs ([`crate::footprint::Footprint`]), the GPU's free memory
    /// and the largest batch that would fit. (A step allocates them itself otherwise.)
    /// With `image_side`, the batches will come as 8-bit images of that side (sent
    /// ahead, cut on the backend), and two batches of them must fit too.
    pub fn reserve(&mut self, batch: usize, image_side: Option<usize>) -> Result<()> {
        if self.ws.as_ref().is_some_and(|w| w.batch == batch) {
            return Ok(());
        }
        self.ws = None;
        check_fits(self.model.backend(), self.model.plan(), batch, image_side)?;
        self.workspace(batch)
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
        self.check_labels(batch, labels)?;
        Ok(batch)
    }

    /// Checks that there are `batch` labels, each a class of the network.
    fn check_labels(&self, batch: usize, labels: &[u32]) -> Result<()> {
        if labels.len() != batch {
            return Err(Error::Invalid(format!(
                "{} labels for a batch of {batch} images",
                labels.len()
            )));
        }
        if let Some(l) = labels.iter().find(|&&l| l as usize >= self.classes) {
            return Err(Error::Invalid(format!(
                "label {l} out of range: `{}` has {} classes",
                self.model.plan().name,
                self.classes
            )));
        }
        Ok(())
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
            .ok_or_else(|| Error::Internal("training workspace missing".into()))?;
        backend.write(&mut ws.acts[0], input.data())?;
        self.write_labels(labels)
    }

    /// Marks the loaded batch as given (its labels copied): see [`Trainer::load_batch`].
    fn write_labels(&mut self, labels: &[u32]) -> Result<()> {
        let backend = self.model.backend();
        let ws = self
            .ws
            .as_mut()
            .ok_or_else(|| Error::Internal("training workspace missing".into()))?;
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
            if plan.layers[stage.layer].op.kind().identity_at_inference() {
                backend.dropout(plan, *stage, batch, mask, x, y)?;
            } else {
                let p: Vec<&F32<B>> = params[stage.layer].iter().map(|(_, b)| b).collect();
                backend.forward_stage(plan, *stage, batch, x, &p, y)?;
            }
            timed!(format!("forward {}", plan.stage_label(*stage)));
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
            if plan.layers[stage.layer].op.kind().identity_at_inference() {
                let dx =
                    dx.ok_or_else(|| Error::Internal("dropout before any learned layer".into()))?;
                backend.dropout(plan, stage, batch, mask, dy, dx)?;
            } else {
                let p: Vec<&F32<B>> = params[stage.layer].iter().map(|(_, b)| b).collect();
                let o = offsets[stage.layer];
                let mut dp: Vec<&mut F32<B>> = self.grads[o..o + p.len()].iter_mut().collect();
                backend.backward_stage(plan, stage, batch, x, y, dy, &p, dx, &mut dp)?;
            }
            timed!(format!("backward {}", plan.layers[stage.layer].name));
            cur = 1 - cur;
        }

        // The guard: a loss or a gradient that is not finite stops the run or skips the
        // update (Run::admit), before the weights and the momentum are touched.
        let s = backend.download_prefix(&ws.stats, 3)?;
        let loss = f64::from(s[0]) / batch as f64;
        let gs: Vec<&F32<B>> = self.grads.iter().collect();
        let flags = backend.non_finite(plan, &gs)?;
        let bad = flags
            .iter()
            .position(|&b| b)
            .and_then(|i| plan.params().get(i).map(|p| p.name.clone()));
        timed!("check".to_string());
        let apply = self.run.admit(loss, bad)?;

        // Update.
        if apply {
            let sgd = self.run.sgd();
            let mut ps: Vec<&mut F32<B>> = params.iter_mut().flatten().map(|(_, b)| b).collect();
            let mut vs: Vec<&mut F32<B>> = self.velocity.iter_mut().collect();
            backend.sgd_step(plan, sgd, &self.run.lr_mults, &mut ps, &mut vs, &gs)?;
            timed!("sgd".to_string());
        }
        self.timings = timings;
        self.run.state.step += 1;

        Ok(BatchStats {
            images: batch,
            loss,
            top1_correct: s[1] as usize,
            top5_correct: s[2] as usize,
            skipped: usize::from(!apply),
        })
    }

    /// The gradients of the last step, per tensor of [`Plan::params`] (for tests).
    pub fn gradients(&self) -> Result<Vec<NamedTensor>> {
        self.download_named(&self.grads)
    }

    /// One buffer per tensor of [`Plan::params`], downloaded under the tensors' names.
    fn download_named(&self, bufs: &[F32<B>]) -> Result<Vec<NamedTensor>> {
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
    /// rate when it changed; sets [`TrainState::finished`] when the schedule is due to
    /// lower the rate below its floor (the run is over).
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
    /// `towers::SplitTrainer::save`: the file is the same): the same parameters,
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

impl<B: Training + Augment + Upload> Trainer<B> {
    /// Hands over the bytes of a batch (as [`Trainer::step_images`] takes them) for a
    /// later [`Trainer::step_sent`]: a thread of the trainer's own (started by the first
    /// call) copies them to the backend ([`Upload`]: on a GPU from pinned memory on a copy
    /// stream), so that a batch sent before the step of the batch before it crosses while
    /// that step computes. Each batch sent and not yet stepped on holds a buffer of its
    /// bytes on the backend.
    pub fn send_images(&mut self, images: Vec<u8>) -> Result<()> {
        if self.ahead.is_none() {
            self.ahead = Some(Ahead::start(self.model.backend().uploader()?)?);
        }
        self.ahead
            .as_mut()
            .ok_or_else(|| Error::Internal("upload thread missing".into()))?
            .send(images)
    }

    /// [`Trainer::step_images`] on the oldest batch of [`Trainer::send_images`] (batches
    /// are stepped on in the order sent), with its draws and labels; bit for bit the same
    /// step. Gives the batch's bytes back, for the caller to reuse. An error when no batch
    /// was sent; a batch whose checks fail is dropped.
    pub fn step_sent(
        &mut self,
        cut: &Cut<'_>,
        draws: &[Draw],
        labels: &[u32],
    ) -> Result<(BatchStats, Vec<u8>)> {
        let sent = match self.ahead.as_mut() {
            Some(a) => a.receive()?,
            None => None,
        };
        let sent = sent.ok_or_else(|| {
            Error::Invalid("a step on a batch sent ahead, but none was sent".into())
        })?;
        let stats = self.step_uploaded(cut, &sent.buf, sent.len, draws, labels);
        if let Some(a) = self.ahead.as_mut() {
            a.give_back(sent.buf, sent.len);
        }
        Ok((stats?, sent.host))
    }

    /// Drops the batches sent and not stepped on (a loop that stops early).
    pub fn clear_sent(&mut self) -> Result<()> {
        match self.ahead.as_mut() {
            Some(a) => a.clear(),
            None => Ok(()),
        }
    }

    /// A step on `len` bytes of images already on the backend in `bytes`.
    fn step_uploaded(
        &mut self,
        cut: &Cut<'_>,
        bytes: &B::Buffer<u8>,
        len: usize,
        draws: &[Draw],
        labels: &[u32],
    ) -> Result<BatchStats> {
        self.ready_images(cut, len, draws, labels)?;
        self.cut_loaded(cut, bytes, draws, labels)?;
        self.step_loaded()
    }

    /// Checks a batch of `len` bytes of images with its draws and labels
    /// ([`Model::check_images`]) and makes the workspace of its size.
    fn ready_images(
        &mut self,
        cut: &Cut<'_>,
        len: usize,
        draws: &[Draw],
        labels: &[u32],
    ) -> Result<()> {
        let batch = self.model.check_images(cut, len, draws, 1)?;
        self.check_labels(batch, labels)?;
        self.workspace(batch)
    }

    /// Cuts the checked batch in `bytes` into the network's input and writes its labels:
    /// the batch is loaded for [`Trainer::step_loaded`].
    fn cut_loaded(
        &mut self,
        cut: &Cut<'_>,
        bytes: &B::Buffer<u8>,
        draws: &[Draw],
        labels: &[u32],
    ) -> Result<()> {
        let ws = self
            .ws
            .as_mut()
            .ok_or_else(|| Error::Internal("training workspace missing".into()))?;
        ws.loaded = false;
        self.model.cut_into(cut, bytes, draws, 1, &mut ws.acts[0])?;
        self.write_labels(labels)
    }

    /// One SGD step on a batch of 8-bit images, each cut into the network's input by its
    /// draw on the backend: [`Trainer::load_images`], then [`Trainer::step_loaded`]. The
    /// same step, bit for bit, as [`Trainer::step`] on [`Cut::batch`] of the images.
    pub fn step_images(
        &mut self,
        cut: &Cut<'_>,
        images: &[u8],
        draws: &[Draw],
        labels: &[u32],
    ) -> Result<BatchStats> {
        self.load_images(cut, images, draws, labels)?;
        self.step_loaded()
    }

    /// Copies a batch of 8-bit images (HWC, `cut.side * cut.side * 3` bytes each, as a
    /// prepared set stores them) to the backend, with one draw and one label per image,
    /// and cuts them into the network's input there ([`Augment::cut_batch`]), for
    /// [`Trainer::step_loaded`]. The cut's mean is uploaded by the first call and again
    /// only when a later cut's differs. Errors, before anything is copied, when the patches
    /// are not the network's input, a draw leaves its image, or the lengths disagree.
    pub fn load_images(
        &mut self,
        cut: &Cut<'_>,
        images: &[u8],
        draws: &[Draw],
        labels: &[u32],
    ) -> Result<()> {
        self.ready_images(cut, images.len(), draws, labels)?;
        let ws = self
            .ws
            .as_mut()
            .ok_or_else(|| Error::Internal("training workspace missing".into()))?;
        // Exactly the batch's bytes: the cut counts the images from the buffer's length.
        let kept = ws.images.take().filter(|(_, len)| *len == images.len());
        let backend = self.model.backend();
        let (mut bytes, len) = match kept {
            Some(b) => b,
            None => (backend.alloc(images.len())?, images.len()),
        };
        backend.write(&mut bytes, images)?;
        let cut_result = self.cut_loaded(cut, &bytes, draws, labels);
        if let Some(ws) = self.ws.as_mut() {
            ws.images = Some((bytes, len));
        }
        cut_result
    }

    /// [`Trainer::evaluate`] on the patches the backend cuts from 8-bit images, one draw
    /// and one label each ([`Model::forward_images`]).
    pub fn evaluate_images(
        &self,
        cut: &Cut<'_>,
        images: &[u8],
        draws: &[Draw],
        labels: &[u32],
    ) -> Result<BatchStats> {
        self.check_labels(draws.len(), labels)?;
        let out = self.model.forward_images(cut, images, draws, 1)?;
        Ok(output_stats(self.model.plan(), &out, labels, draws.len()))
    }
}

/// Loss and top-k counts of `model`'s inference output (probabilities after a final
/// softmax, otherwise logits) on a checked batch.
fn evaluate_output<B: Training>(
    model: &Model<B>,
    input: &Tensor,
    labels: &[u32],
    batch: usize,
) -> Result<BatchStats> {
    let out = model.forward(input)?;
    Ok(output_stats(model.plan(), &out, labels, batch))
}
