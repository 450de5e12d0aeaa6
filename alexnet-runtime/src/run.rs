//! A training run apart from its tensors: the hyper-parameters ([`TrainConfig`], the
//! learning-rate [`Schedule`]), where it is ([`TrainState`]), the data order of each epoch
//! ([`epoch_order`]), the [`Train`] trait that whole and split trainers share, and the
//! state file they both write (weights, momentum and the run as metadata, atomically),
//! so a run can stop and resume, split or not.

use std::collections::HashMap;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::patch::{Cut, Draw};
pub use crate::error::NonFinite;
use crate::error::{Error, Result};
use crate::eval::BatchStats;
use crate::ir::Plan;
use crate::optim::Sgd;
use crate::tensor::Tensor;
use crate::weights::{self, NamedTensor, MOMENTUM_PREFIX, STATE_FORMAT};

/// How the learning rate changes between epochs.
///
/// A schedule that lowers the learning rate has a floor, a fraction of the initial
/// learning rate: it lowers the rate down to the floor and no further, and when it would
/// lower it again the run is over ([`TrainState::finished`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// Never.
    Constant,
    /// The paper's: multiply by `factor` when the validation error has not improved for
    /// `patience` epochs, down to `floor` times the initial learning rate; the run ends
    /// when the error stops improving at the floor.
    Plateau {
        factor: f32,
        patience: u32,
        floor: f32,
    },
    /// Multiply by `factor` every `every` epochs, down to `floor` times the initial
    /// learning rate; the run ends when the rate is due to drop below it.
    Step { every: u64, factor: f32, floor: f32 },
}

impl Schedule {
    /// The factor when none is given: divide by 10, as the paper does.
    pub const FACTOR: f32 = 0.1;
    /// The plateau schedule's patience when none is given: three epochs without a better
    /// validation error. (The paper divides when the error stops improving; on a small
    /// validation set one epoch without improvement is often chance, and a patience of 1
    /// divides almost every epoch.)
    pub const PATIENCE: u32 = 3;
    /// The floor when none is given: a thousandth of the initial learning rate, three
    /// divisions by 10 as in the paper.
    pub const FLOOR: f32 = 0.001;

    /// Checks the ranges [`Schedule::from_str`](std::str::FromStr) parses: a factor and a
    /// floor above 0 and at most 1, a patience and a period of at least one epoch.
    pub fn validate(&self) -> Result<()> {
        let (factor, count, floor) = match *self {
            Schedule::Constant => return Ok(()),
            Schedule::Plateau {
                factor,
                patience,
                floor,
            } => (factor, u64::from(patience), floor),
            Schedule::Step {
                every,
                factor,
                floor,
            } => (factor, every, floor),
        };
        let fraction = |v: f32| v > 0.0 && v <= 1.0;
        if !(fraction(factor) && fraction(floor)) || count == 0 {
            return Err(Error::Invalid(format!(
                "learning-rate schedule `{self}` is out of range: the factor and the floor must be above 0 and at most 1, the epochs at least 1"
            )));
        }
        Ok(())
    }
}

impl Default for Schedule {
    /// The paper's, with [`Schedule::PATIENCE`]: divide by 10 after three epochs without
    /// improvement, at most three times.
    fn default() -> Self {
        Schedule::Plateau {
            factor: Self::FACTOR,
            patience: Self::PATIENCE,
            floor: Self::FLOOR,
        }
    }
}

impl std::fmt::Display for Schedule {
    /// The form [`Schedule::from_str`](std::str::FromStr) reads, every field written:
    /// `plateau:0.1:3:0.001`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Constant => write!(f, "constant"),
            Schedule::Plateau {
                factor,
                patience,
                floor,
            } => write!(f, "plateau:{factor:?}:{patience}:{floor:?}"),
            Schedule::Step {
                every,
                factor,
                floor,
            } => write!(f, "step:{every}:{factor:?}:{floor:?}"),
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = Error;

    /// `constant`, `plateau[:FACTOR[:PATIENCE[:FLOOR]]]` or `step:EVERY[:FACTOR[:FLOOR]]`;
    /// what is left out is [`Schedule::FACTOR`], [`Schedule::PATIENCE`] and
    /// [`Schedule::FLOOR`]. (State files written before the floor existed say
    /// `plateau:0.1:1`: the default floor.)
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "learning-rate schedule `{s}`: expected `constant`, `plateau[:FACTOR[:PATIENCE[:FLOOR]]]` or `step:EPOCHS[:FACTOR[:FLOOR]]`"
            ))
        };
        let parts: Vec<&str> = s.split(':').collect();
        // A factor or a floor: above 0, at most 1.
        let fraction = |i: usize, default: f32| -> Result<f32> {
            match parts.get(i) {
                None => Ok(default),
                Some(v) => v
                    .parse::<f32>()
                    .ok()
                    .filter(|f| *f > 0.0 && *f <= 1.0)
                    .ok_or_else(bad),
            }
        };
        match parts[0] {
            "constant" if parts.len() == 1 => Ok(Schedule::Constant),
            "plateau" if parts.len() <= 4 => Ok(Schedule::Plateau {
                factor: fraction(1, Self::FACTOR)?,
                patience: match parts.get(2) {
                    None => Self::PATIENCE,
                    Some(v) => v.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?,
                },
                floor: fraction(3, Self::FLOOR)?,
            }),
            "step" if (2..=4).contains(&parts.len()) => Ok(Schedule::Step {
                every: parts[1].parse().ok().filter(|e| *e > 0).ok_or_else(bad)?,
                factor: fraction(2, Self::FACTOR)?,
                floor: fraction(3, Self::FLOOR)?,
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

impl TrainConfig {
    /// Checks every hyper-parameter: [`Sgd::validate`] and [`Schedule`]'s ranges. A run
    /// checks its settings with this when it starts and when it resumes.
    pub fn validate(&self) -> Result<()> {
        self.sgd.validate()?;
        self.schedule.validate()
    }
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

/// What a trainer does with a step whose loss or gradients are not finite (NaN or an
/// infinity): they are checked after the backward pass, before the update.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnNonFinite {
    /// Refuse the step with [`Error::NonFinite`], its update not applied: the weights and
    /// momentum stay those of the step before, so the last checkpoint stays the latest
    /// good state.
    #[default]
    Stop,
    /// Skip the update (weights and momentum untouched) and go on: the step still counts
    /// (its batch is consumed), its [`BatchStats::skipped`] is 1 and
    /// [`Train::last_skip`] says why.
    Skip,
}

/// Where a run is.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    /// SGD steps taken.
    pub step: u64,
    /// Epochs completed (calls of [`Train::end_epoch`]).
    pub epoch: u64,
    /// The current learning rate.
    pub lr: f32,
    /// Best validation error so far, and epochs since it improved (plateau schedule).
    pub best_error: f64,
    pub bad_epochs: u32,
    /// The schedule has bottomed out: it was due to lower the learning rate, which is at
    /// its floor. The run is over.
    pub finished: bool,
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

/// What a training loop needs from a trainer, whole (`Trainer`) or split into towers
/// (`towers::SplitTrainer`); both write the same state file, so a run can move from one
/// to the other.
pub trait Train {
    /// One SGD step on a batch; its loss and top-1/top-5 counts (before the update).
    fn step(&mut self, input: &Tensor, labels: &[u32]) -> Result<BatchStats>;
    /// One SGD step on a batch of 8-bit images (HWC, `cut.side * cut.side * 3` bytes
    /// each, as a prepared set stores them), each cut into one patch by its draw:
    /// [`Train::step`] on [`Cut::batch`] of them, bit for bit. The default cuts on the
    /// host, image by image in parallel; a `Trainer` copies the bytes to its backend and
    /// cuts there ([`crate::backend::Augment`]), so a GPU receives bytes (at 256 -> 227,
    /// about a third of the patches' f32 bytes).
    fn step_images(
        &mut self,
        cut: &Cut<'_>,
        images: &[u8],
        draws: &[Draw],
        labels: &[u32],
    ) -> Result<BatchStats> {
        self.step(&host_patches(cut, images, draws)?, labels)
    }
    /// Hands over the bytes of a batch (as [`Train::step_images`] takes them) for a later
    /// [`Train::step_sent`]; batches are stepped on in the order sent. A `Trainer`
    /// copies them to its backend on a thread of its own (on a GPU from pinned memory on
    /// a copy stream), so that a batch sent before the step of the batch before it
    /// crosses while that step computes; the split trainer keeps them for
    /// [`Train::step_images`].
    fn send_images(&mut self, images: Vec<u8>) -> Result<()>;
    /// [`Train::step_images`] on the oldest batch sent, with its draws and labels (the same
    /// step, bit for bit); gives its bytes back for reuse. An error when none was sent.
    fn step_sent(
        &mut self,
        cut: &Cut<'_>,
        draws: &[Draw],
        labels: &[u32],
    ) -> Result<(BatchStats, Vec<u8>)>;
    /// Drops the batches sent and not stepped on (a loop that stops early).
    fn clear_sent(&mut self) -> Result<()>;
    /// Loss and top-1/top-5 counts at inference (dropout off).
    fn evaluate(&self, input: &Tensor, labels: &[u32]) -> Result<BatchStats>;
    /// [`Train::evaluate`] on the patches of 8-bit images, one draw each, as
    /// [`Train::step_images`] takes them (cut on the host by default, on the backend by
    /// a `Trainer`).
    fn evaluate_images(
        &self,
        cut: &Cut<'_>,
        images: &[u8],
        draws: &[Draw],
        labels: &[u32],
    ) -> Result<BatchStats> {
        self.evaluate(&host_patches(cut, images, draws)?, labels)
    }
    /// Ends an epoch, applying the schedule; the new learning rate when it changed. When
    /// the schedule has bottomed out, [`TrainState::finished`] is set: the run is over.
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
    /// Allocates the buffers of batches of `batch` images before the first step, after
    /// checking that they fit in the device's free memory (an [`Error::OutOfMemory`]
    /// with the figures when not). With `image_side`, the batches will come as 8-bit
    /// images of that side ([`Train::send_images`]), and a trainer that holds them on its
    /// backend counts two batches of them.
    fn reserve(&mut self, batch: usize, image_side: Option<usize>) -> Result<()>;
    /// What a step whose loss or gradients are not finite does (default
    /// [`OnNonFinite::Stop`]).
    fn set_on_non_finite(&mut self, mode: OnNonFinite);
    /// The last step skipped under [`OnNonFinite::Skip`], and why.
    fn last_skip(&self) -> Option<&NonFinite>;
}

/// The batch of patches, one per draw, that `cut` makes of `images` on the host (every
/// core): the default input of [`Train::step_images`] and [`Train::evaluate_images`].
fn host_patches(cut: &Cut<'_>, images: &[u8], draws: &[Draw]) -> Result<Tensor> {
    let mut patches = vec![0.0f32; draws.len() * cut.patch_len()];
    cut.batch_into_parallel(images, draws, 1, &mut patches)?;
    Tensor::new(vec![draws.len(), 3, cut.crop.0, cut.crop.1], patches)
}

/// What a run keeps besides its tensors: the hyper-parameters, where it is, the
/// learning-rate multipliers and the caller's notes. Shared by the whole and the split
/// trainer, which save the same file.
#[derive(Clone, Debug)]
pub(crate) struct Run {
    pub(crate) config: TrainConfig,
    pub(crate) state: TrainState,
    /// One per tensor of [`Plan::params`].
    pub(crate) lr_mults: Vec<f32>,
    /// The caller's own facts about the run, saved with the state (`note.<key>`).
    pub(crate) notes: std::collections::BTreeMap<String, String>,
    /// What a step that is not finite does (not saved: an option of this process).
    pub(crate) on_non_finite: OnNonFinite,
    /// The last step skipped under [`OnNonFinite::Skip`].
    pub(crate) last_skip: Option<NonFinite>,
}

impl Run {
    /// A run at step 0 for `tensors` parameter tensors.
    pub(crate) fn start(config: TrainConfig, tensors: usize) -> Result<Self> {
        config.validate()?;
        Ok(Run {
            state: TrainState {
                step: 0,
                epoch: 0,
                lr: config.sgd.lr,
                best_error: f64::INFINITY,
                bad_epochs: 0,
                finished: false,
            },
            config,
            lr_mults: vec![1.0; tensors],
            notes: Default::default(),
            on_non_finite: OnNonFinite::Stop,
            last_skip: None,
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

    /// Decides whether the step about to be applied may be: `loss` is its batch's mean
    /// loss and `bad` the first tensor whose gradient is not finite, if any. `Ok(true)`:
    /// apply the update; `Ok(false)`: skip it ([`OnNonFinite::Skip`], recorded in
    /// `last_skip`); an [`Error::NonFinite`] under [`OnNonFinite::Stop`].
    pub(crate) fn admit(&mut self, loss: f64, bad: Option<String>) -> Result<bool> {
        if loss.is_finite() && bad.is_none() {
            return Ok(true);
        }
        let nf = NonFinite {
            step: self.state.step,
            loss,
            tensor: bad,
        };
        match self.on_non_finite {
            OnNonFinite::Stop => Err(Error::NonFinite(nf)),
            OnNonFinite::Skip => {
                self.last_skip = Some(nf);
                Ok(false)
            }
        }
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
        // The factor and the floor when the schedule is due to lower the learning rate.
        let due = match self.config.schedule {
            Schedule::Constant => None,
            Schedule::Step {
                every,
                factor,
                floor,
            } => self
                .state
                .epoch
                .is_multiple_of(every)
                .then_some((factor, floor)),
            Schedule::Plateau {
                factor,
                patience,
                floor,
            } => match val_error {
                Some(e) if e < self.state.best_error => {
                    self.state.best_error = e;
                    self.state.bad_epochs = 0;
                    None
                }
                Some(_) => {
                    self.state.bad_epochs = self.state.bad_epochs.saturating_add(1);
                    (self.state.bad_epochs >= patience).then(|| {
                        self.state.bad_epochs = 0;
                        (factor, floor)
                    })
                }
                None => None,
            },
        };
        if let Some((factor, floor)) = due {
            let lowest = self.config.sgd.lr * floor;
            // At the floor (within rounding: 0.02 x 0.1 x 0.1 x 0.1 is not 0.02 x 0.001 in
            // floats), or below it (a state written before there was a floor): done.
            if self.state.lr <= lowest * (1.0 + 1e-4) {
                self.state.finished = true;
            } else {
                self.state.lr = (self.state.lr * factor).max(lowest);
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
                ("finished", s.finished.to_string()),
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
        // A valid safetensors file that is not a usable state of this network.
        let bad = |message: String| Error::Content {
            path: Some(path.to_path_buf()),
            message,
        };
        let meta = weights::parse_metadata(&bytes).map_err(|e| e.in_file(path))?;
        if meta.get("format").map(String::as_str) != Some(STATE_FORMAT) {
            return Err(bad(format!(
                "not a training state (metadata `format` should be `{STATE_FORMAT}`); plain weights load with --weights"
            )));
        }
        match meta.get("network") {
            None => return Err(bad("training state lacks `network`".into())),
            Some(n) if *n != *plan.name => {
                return Err(bad(format!(
                    "training state of network `{n}`, not `{}`",
                    plan.name
                )))
            }
            Some(_) => {}
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
            // Absent from states written before schedules had a floor.
            finished: match meta.get("finished").map(String::as_str) {
                None | Some("false") => false,
                Some("true") => true,
                Some(v) => {
                    return Err(bad(format!(
                        "training state: `finished` = `{v}` is not `true` or `false`"
                    )))
                }
            },
        };
        let config = TrainConfig {
            sgd: Sgd {
                lr: num(get("base_lr")?, "base_lr", &bad)?,
                momentum: num(get("momentum")?, "momentum", &bad)?,
                weight_decay: num(get("weight_decay")?, "weight_decay", &bad)?,
            },
            schedule: get("schedule")?
                .parse()
                .map_err(|e: Error| bad(format!("training state: {e}")))?,
            seed: num(get("seed")?, "seed", &bad)?,
        };
        let lr_mults: Vec<f32> = get("lr_mults")?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|m| num(m, "lr_mults", &bad))
            .collect::<Result<_>>()?;
        let all = weights::parse_safetensors(&bytes).map_err(|e| e.in_file(path))?;
        // Weights and momentum (named `momentum.<weight>` here).
        weights::check_finite(&all, Some(path))?;
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
        // The rules a run starts with, for the initial and the current learning rate.
        let current = Sgd {
            lr: state.lr,
            ..config.sgd
        };
        if let Err(e) = config.validate().and_then(|()| current.validate()) {
            return Err(bad(format!(
                "training state has out-of-range hyper-parameters: {e}"
            )));
        }
        if !lr_mults.iter().all(|m| m.is_finite() && *m >= 0.0) {
            return Err(bad(format!(
                "training state has out-of-range learning-rate multipliers: {lr_mults:?}"
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
                on_non_finite: OnNonFinite::Stop,
                last_skip: None,
            },
            params,
            momentum,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_and_print() {
        for s in [
            "constant",
            "plateau:0.1:1:0.001",
            "step:30:0.1:0.001",
            "plateau:0.5:3:0.25",
            "step:2:1.0:1.0",
        ] {
            let p: Schedule = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
            p.validate().unwrap();
        }
        let default = Schedule::default();
        assert_eq!(default.to_string(), "plateau:0.1:3:0.001");
        assert_eq!("plateau".parse::<Schedule>().unwrap(), default);
        // What state files stored before there was a floor: the default floor.
        let old: Schedule = "plateau:0.1:1".parse().unwrap();
        assert_eq!(old.to_string(), "plateau:0.1:1:0.001");
        assert_eq!(
            "step:30".parse::<Schedule>().unwrap().to_string(),
            "step:30:0.1:0.001"
        );
        for bad in [
            "step",
            "plateau:2",
            "weekly",
            "plateau:0.1:0",
            "plateau:0.1:1:0",
            "plateau:0.1:1:2",
            "plateau:0.1:1:0.1:9",
            "step:3:0.1:nan",
        ] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad}");
        }
        let zero = Schedule::Plateau {
            factor: 0.1,
            patience: 1,
            floor: 0.0,
        };
        assert!(zero.validate().is_err());
        assert!(Run::start(
            TrainConfig {
                schedule: zero,
                ..TrainConfig::default()
            },
            1
        )
        .is_err());
    }

    /// The learning rates a run goes through: epoch by epoch, and whether it finished.
    fn rates(schedule: Schedule, errors: &[f64]) -> Vec<(f32, bool)> {
        let config = TrainConfig {
            sgd: Sgd {
                lr: 0.02,
                ..Sgd::default()
            },
            schedule,
            seed: 0,
        };
        let mut run = Run::start(config, 1).unwrap();
        errors
            .iter()
            .map(|&e| {
                run.end_epoch(Some(e));
                (run.state.lr, run.state.finished)
            })
            .collect()
    }

    fn close(a: f32, b: f32) -> bool {
        (a / b - 1.0).abs() < 1e-5
    }

    /// The plateau schedule divides down to its floor and no further: once the error
    /// stops improving at the floor the run is finished, never at a learning rate of 0.
    #[test]
    fn schedules_stop_at_their_floor() {
        let stuck = [0.5; 60];
        let got = rates("plateau:0.1:1".parse().unwrap(), &stuck);
        let lrs: Vec<f32> = got.iter().map(|g| g.0).collect();
        // Epoch 1 sets the best error; every later one divides, three times.
        for (i, want) in [0.02, 0.002, 0.0002, 0.00002].iter().enumerate() {
            assert!(close(lrs[i], *want), "epoch {}: {}", i + 1, lrs[i]);
        }
        assert_eq!(lrs[4], lrs[3]);
        assert_eq!(lrs[3], 0.02 * 0.001);
        let finished: Vec<bool> = got.iter().map(|g| g.1).collect();
        assert_eq!(finished[..5], [false, false, false, false, true]);
        assert!(lrs.iter().all(|&lr| lr >= 0.02 * 0.001));
        // The default patience: three epochs without a better error.
        let got = rates(Schedule::default(), &[0.5, 0.6, 0.4, 0.5, 0.5, 0.5, 0.5]);
        let lrs: Vec<f32> = got.iter().map(|g| g.0).collect();
        assert_eq!(lrs[..5], [0.02; 5]);
        assert!(close(lrs[5], 0.002), "{lrs:?}");
        // A factor that does not land on the floor stops at it: 0.02 x 0.3^k, then 0.002.
        let got = rates("plateau:0.3:1:0.1".parse().unwrap(), &stuck);
        let lrs: Vec<f32> = got.iter().map(|g| g.0).collect();
        assert!(close(lrs[1], 0.006) && close(lrs[2], 0.002), "{lrs:?}");
        assert_eq!(lrs[2], 0.02f32 * 0.1);
        assert!(!got[2].1 && got[3].1, "{got:?}");
        // The step schedule: every 2 epochs, down to a hundredth.
        let got = rates("step:2:0.1:0.01".parse().unwrap(), &stuck);
        let lrs: Vec<f32> = got.iter().map(|g| g.0).collect();
        assert!(close(lrs[1], 0.002) && close(lrs[3], 0.0002), "{lrs:?}");
        assert_eq!(got.iter().position(|g| g.1), Some(5));
        // A constant schedule never finishes.
        assert!(rates(Schedule::Constant, &stuck).iter().all(|g| !g.1));
    }

    /// Every hyper-parameter is checked when a run starts, by the rule a resumed run is
    /// checked with: what `Run::start` takes, `Run::read` takes, and the other way round.
    #[test]
    fn out_of_range_hyper_parameters_are_refused_at_start() {
        let sgd = |lr: f32, momentum: f32, weight_decay: f32| Sgd {
            lr,
            momentum,
            weight_decay,
        };
        for (bad, name) in [
            (sgd(0.01, 2.0, 0.0005), "momentum 2"),
            (sgd(0.01, -1.0, 0.0005), "momentum -1"),
            (sgd(0.01, 1.0, 0.0005), "momentum 1"),
            (sgd(0.01, f32::NAN, 0.0005), "momentum NaN"),
            (sgd(0.01, 0.9, -1.0), "weight_decay -1"),
            (sgd(0.01, 0.9, f32::NAN), "weight_decay NaN"),
            (sgd(0.01, 0.9, f32::INFINITY), "weight_decay inf"),
            (sgd(0.0, 0.9, 0.0005), "lr 0"),
            (sgd(-1.0, 0.9, 0.0005), "lr -1"),
            (sgd(f32::NAN, 0.9, 0.0005), "lr NaN"),
            // Weight decay alone makes the weights oscillate and grow: lr x decay = 4 is
            // not below 2 x (1 + momentum) = 3.8.
            (sgd(0.02, 0.9, 200.0), "weight_decay 200"),
        ] {
            let config = TrainConfig {
                sgd: bad,
                ..TrainConfig::default()
            };
            let err = Run::start(config.clone(), 1)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.starts_with(name), "{bad:?}: `{err}`");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert_eq!(config.validate().err().map(|e| e.to_string()), Some(err));
        }
        for good in [
            sgd(0.01, 0.0, 0.0),
            sgd(0.5, 0.99, 0.0005),
            sgd(0.02, 0.9, 100.0),
        ] {
            let config = TrainConfig {
                sgd: good,
                ..TrainConfig::default()
            };
            config.validate().unwrap();
            Run::start(config, 1).unwrap();
        }
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
