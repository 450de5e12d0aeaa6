//! `alexnet train`: SGD with momentum and weight decay on generated shapes or an image
//! folder, with the paper's augmentation; validation, a checkpoint and a plot of the
//! curves after every epoch.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use alexnet::runtime::data::loader;
use alexnet::runtime::data::patch::Draw;
use alexnet::runtime::data::pipeline::{Preprocess, DATA_FILE};
use alexnet::runtime::optim::Sgd;
use alexnet::runtime::prelude::*;
use alexnet::runtime::towers::SplitTrainer;
use alexnet::runtime::train::{epoch_order, BatchStats, Train};
use alexnet::runtime::{
    weights, Device, Error, Model, OnNonFinite, Schedule, TrainConfig, Trainer,
};
use clap::ValueEnum;

use crate::args::{DeviceArgs, Net};
use crate::data::{self, DataSpec};
use crate::pictures::{self, Epoch};
use crate::{progress, AnyError, Ctx, Interrupted};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The network to train.
    #[arg(long, value_enum, default_value_t = Net::Small)]
    net: Net,
    #[command(flatten)]
    device: DeviceArgs,
    /// Train a `split 2` network as the paper's two towers, one on each of these devices:
    /// `cuda:0,cuda:1` (two GPUs), `cuda:0,cuda:0` (two streams of one GPU) or `cpu,cpu`
    /// (two CPU workers); instead of --device. The state file is the unsplit one, so a
    /// run can resume split or not.
    #[arg(long, value_delimiter = ',')]
    towers: Option<Vec<String>>,
    /// Epochs to train (in all, counting those of a resumed run: resuming after 8 epochs
    /// with --epochs 12 trains 4 more).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    epochs: u64,
    /// Images per training step (and per validation batch).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=65536))]
    batch: u64,
    /// Initial learning rate [default: 0.02]. The options from here to --seed start a run;
    /// a resumed run keeps its own.
    #[arg(long)]
    lr: Option<f32>,
    /// SGD momentum [default: 0.9].
    #[arg(long)]
    momentum: Option<f32>,
    /// Weight decay (an L2 penalty on the weights) [default: 0.0005].
    #[arg(long)]
    weight_decay: Option<f32>,
    /// constant, plateau[:FACTOR[:PATIENCE[:FLOOR]]] (the paper's: multiply the learning
    /// rate by FACTOR when the validation error has not improved for PATIENCE epochs) or
    /// step:EPOCHS[:FACTOR[:FLOOR]] (every EPOCHS epochs). FLOOR is the lowest learning
    /// rate, as a fraction of the initial one; when the schedule is due to go below it the
    /// run stops. [default: plateau:0.1:3:0.001: divide by 10, at most three times as in
    /// the paper; a patience of 3, as one epoch without improvement is often chance on a
    /// small validation set].
    #[arg(long)]
    schedule: Option<Schedule>,
    /// Weight initialisation: he (learns in minutes) or paper (N(0, 0.01), as in the
    /// paper) [default: he].
    #[arg(long, value_enum)]
    init: Option<Init>,
    /// Seeds the initialisation, the generated images, the data order, the augmentation
    /// and dropout [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Train on an ImageNet-style folder (`DIR/<class>/*.jpg|png`, or `DIR/train/...` and
    /// `DIR/val/...`) instead of generated shapes.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Generated training images per epoch (not with --data).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1 << 26), conflicts_with = "data")]
    images: u64,
    /// Generated validation images, held out from training (not with --data).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=1 << 26), conflicts_with = "data")]
    val_images: u64,
    /// Classes of the generated set (at most 12, and at most the network's outputs; not
    /// with --data, whose classes are its subfolders).
    #[arg(long, default_value_t = 10, conflicts_with = "data")]
    classes: usize,
    /// Folder for `state.safetensors` (the whole training state, written atomically after
    /// every epoch), `data.safetensors` (the mean image, colour components and class
    /// names) and `curves.png`; default runs/<net>, or the resumed run's folder. A folder
    /// that holds another run already is refused: resume it, choose another folder, or
    /// --overwrite.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Start even if the --checkpoint folder holds a run already: the new run replaces its
    /// files from its first checkpoint on.
    #[arg(long)]
    overwrite: bool,
    /// Continue the run saved in this training state, or in this run's folder (its
    /// state.safetensors), with the same data options.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Print a line every this many steps.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    log_every: u64,
    /// What a step whose loss or gradients are not finite (NaN, infinity) does: `stop` the
    /// run (the step's update is not applied, so the last checkpoint holds the last good
    /// state) or `skip` its update, leaving the weights and momentum as they were, and go
    /// on.
    #[arg(long, value_enum, default_value_t = OnNan::Stop)]
    on_nan: OnNan,
    /// What a checkpoint that cannot be written (a full disk, a read-only folder) does:
    /// `stop` the run, or `warn` and go on training. The previous checkpoint stays intact
    /// either way (files are replaced atomically).
    #[arg(long, value_enum, default_value_t = CheckpointErrors::Stop)]
    checkpoint_errors: CheckpointErrors,
}

#[derive(Clone, Copy, ValueEnum)]
enum Init {
    He,
    Paper,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnNan {
    Stop,
    Skip,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CheckpointErrors {
    Stop,
    Warn,
}

/// Notes of a state saved mid-epoch (on a signal): the position in the epoch's order
/// where the run goes on, and the epoch's statistics so far (see [`stats_note`]).
const POSITION_NOTE: &str = "epoch_position";
const STATS_NOTE: &str = "epoch_stats";

/// A [`BatchStats`] as a note: `images,loss,top1,top5,skipped` (the loss exact).
fn stats_note(s: &BatchStats) -> String {
    format!(
        "{},{:?},{},{},{}",
        s.images, s.loss, s.top1_correct, s.top5_correct, s.skipped
    )
}

fn parse_stats_note(v: &str) -> Option<BatchStats> {
    let f: Vec<&str> = v.split(',').collect();
    match f[..] {
        [images, loss, top1, top5, skipped] => Some(BatchStats {
            images: images.parse().ok()?,
            loss: loss.parse().ok()?,
            top1_correct: top1.parse().ok()?,
            top5_correct: top5.parse().ok()?,
            skipped: skipped.parse().ok()?,
        }),
        _ => None,
    }
}

/// Where a run's checkpoints go, and what a failure to write one does.
struct Checkpoint<'p> {
    state: PathBuf,
    data: PathBuf,
    pre: &'p Preprocess,
    errors: CheckpointErrors,
}

impl Checkpoint<'_> {
    /// What a user reads about the last checkpoint when a run stops.
    fn last(&self) -> String {
        if self.state.exists() {
            format!(
                "the last checkpoint, {}, holds the last good state",
                self.state.display()
            )
        } else {
            "no checkpoint has been written yet".into()
        }
    }

    /// Writes the data file and the training state (each atomically). When that fails,
    /// `--checkpoint-errors` decides: an error (stop) or a warning on stderr (warn), and
    /// `Ok(false)`.
    fn write(&self, ctx: &mut Ctx, trainer: &dyn Train) -> Result<bool, AnyError> {
        let intact = self.state.exists();
        let written = self
            .pre
            .save(&self.data)
            .and_then(|()| trainer.save(&self.state));
        self.judge(ctx, written.map_err(Into::into), intact)
    }

    /// Any other file of a checkpoint (the curves): the same rule.
    fn judge(
        &self,
        ctx: &mut Ctx,
        written: Result<(), AnyError>,
        intact: bool,
    ) -> Result<bool, AnyError> {
        let Err(e) = written else { return Ok(true) };
        let previous = if intact {
            format!("the previous checkpoint {} is intact", self.state.display())
        } else {
            "there is no earlier checkpoint".into()
        };
        match self.errors {
            CheckpointErrors::Stop => Err(format!(
                "could not write the checkpoint: {e}; {previous} (--checkpoint-errors warn would go on training)"
            )
            .into()),
            CheckpointErrors::Warn => {
                writeln!(
                    ctx.err,
                    "warning: could not write the checkpoint: {e}; {previous}; training goes on"
                )?;
                Ok(false)
            }
        }
    }
}

pub fn train(ctx: &mut Ctx, mut a: TrainArgs) -> Result<(), AnyError> {
    let plan = a.net.plan().clone();
    // A run's folder resumes from its state file.
    if let Some(given) = &a.resume {
        a.resume = Some(data::run_files(given)?.0);
    }
    // A resumed run goes on in its own folder unless told otherwise.
    let dir = match (&a.checkpoint, &a.resume) {
        (Some(d), _) => d.clone(),
        (None, Some(state)) => state
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), PathBuf::from),
        (None, None) => PathBuf::from("runs").join(a.net.name()),
    };
    let state_path = dir.join("state.safetensors");
    // Another run's state is never overwritten unless asked.
    let resumed_here = a
        .resume
        .as_ref()
        .is_some_and(|r| data::same_file(r, &state_path));
    if state_path.exists() && !resumed_here && !a.overwrite {
        // Resuming another state into this folder: `--resume DIR` would name the other run.
        let go_on = match &a.resume {
            Some(_) => String::new(),
            None => format!("to go on with it: `--resume {}`; ", dir.display()),
        };
        return Err(format!(
            "{} already holds a run ({}); {go_on}to start another: `--checkpoint <another folder>`; to replace it: `--overwrite`",
            dir.display(),
            state_path.display(),
        )
        .into());
    }
    let mut trainer = start(ctx, &a)?;
    let done = trainer.state().epoch;
    if let (Some(state), false) = (&a.resume, trainer.state().finished) {
        if done >= a.epochs {
            return Err(format!(
                "nothing to train: {} has done {done} epoch(s), and --epochs {} counts every epoch of the run; give --epochs {} or more to train on",
                state.display(),
                a.epochs,
                done + 1
            )
            .into());
        }
    }
    if a.data.is_none() && a.classes > trainer.classes() {
        return Err(format!(
            "--classes {}: `{}` has {} outputs, so at most {} classes",
            a.classes,
            plan.name,
            trainer.classes(),
            trainer.classes()
        )
        .into());
    }
    let seed = trainer.config().seed;
    let spec = match &a.data {
        Some(dir) => DataSpec::from_dir(dir)?,
        None => DataSpec::Generated {
            classes: a.classes,
            seed,
            images: a.images,
            val_images: a.val_images,
        },
    };
    let batch_note = a.batch.to_string();
    match (&a.resume, trainer.note("data"), trainer.note("batch")) {
        (Some(path), Some(data), Some(batch))
            if data != spec.to_string() || batch != batch_note =>
        {
            return Err(format!(
                "{} was trained on {data} with batch {batch}; resume it with the same data options (given: {spec}, batch {batch_note})",
                path.display()
            )
            .into());
        }
        _ => {
            trainer.set_note("data", &spec.to_string());
            trainer.set_note("batch", &batch_note);
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let stale = weights::remove_stale_temps(&dir);
    if !stale.is_empty() {
        let names: Vec<String> = stale
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        writeln!(
            ctx.err,
            "removed {} temporary file(s) that an interrupted run left in {}: {}",
            stale.len(),
            dir.display(),
            names.join(", ")
        )?;
    }
    let (train_set, val_set) = spec.open()?;
    let classes = train_set.class_names();
    if classes.len() > trainer.classes() {
        return Err(format!(
            "{} has {} classes; `{}` has only {} outputs",
            spec.describe(),
            classes.len(),
            plan.name,
            trainer.classes()
        )
        .into());
    }
    let pre = match &a.resume {
        Some(state) => {
            let (_, saved) = data::checkpoint_files(state);
            let pre = Preprocess::load(&saved).map_err(|e| {
                format!("{e} (a run resumes with the data preprocessing it started with)")
            })?;
            // The data file beside a state may belong to a later run that stopped before
            // its first checkpoint: it must be the one this state was trained with.
            if pre.source != spec.to_string() || pre.classes != classes {
                return Err(format!(
                    "{} was prepared for {}, not for the run in {} ({spec})",
                    saved.display(),
                    pre.source,
                    state.display()
                )
                .into());
            }
            pre
        }
        None => {
            let bar = progress::spinner(ctx, "preparing the data (mean image, colour components)");
            let (pre, report) = spec.preprocess(&*train_set, plan.input)?;
            bar.finish_and_clear();
            if report.skipped > 0 {
                writeln!(ctx.out, "mean image: {report}")?;
            }
            pre
        }
    };
    pre.expect_input(plan.input)?;
    spec.expect_side(pre.side)?;
    // Written beside each checkpoint, never before the first one: a run that stops early
    // leaves the folder's earlier state and data file together.
    let data_path = dir.join(DATA_FILE);
    let unit = match spec {
        DataSpec::Folder(_) => "files",
        DataSpec::Prepared(_) | DataSpec::Generated { .. } => "images",
    };
    writeln!(
        ctx.out,
        "training {} on {}: {} {unit}, {} classes ({}){}; batch {}; checkpoints in {}",
        plan.name,
        spec.describe(),
        train_set.len(),
        classes.len(),
        classes.join(", "),
        val_set
            .as_ref()
            .map(|v| format!(", validation: {} {unit}", v.len()))
            .unwrap_or_else(|| ", no val/ folder: no validation".into()),
        a.batch,
        dir.display()
    )?;
    // Out of memory is an error now, with the figures, not halfway through a step.
    trainer.reserve(a.batch as usize, Some(pre.side))?;
    trainer.set_on_non_finite(match a.on_nan {
        OnNan::Stop => OnNonFinite::Stop,
        OnNan::Skip => OnNonFinite::Skip,
    });
    let checkpoint = Checkpoint {
        state: state_path.clone(),
        data: data_path,
        pre: &pre,
        errors: a.checkpoint_errors,
    };
    let mut history = trainer
        .note("history")
        .map(pictures::parse_history)
        .unwrap_or_default();
    let batch = a.batch as usize;
    // A run stopped by a signal goes on where it stopped in its epoch, with the epoch's
    // statistics so far.
    let mut resume_at = trainer
        .note(POSITION_NOTE)
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(0);
    let mut carried = trainer.note(STATS_NOTE).and_then(parse_stats_note);
    let first_epoch = trainer.state().epoch;
    while trainer.state().epoch < a.epochs && !trainer.state().finished {
        let epoch = trainer.state().epoch;
        let t0 = Instant::now();
        let order: Vec<usize> = epoch_order(seed, epoch, train_set.len() as u64)
            .into_iter()
            .map(|i| i as usize)
            .collect();
        let start = std::mem::take(&mut resume_at).min(order.len());
        // The images come as bytes, cut into patches by the trainer's backend (on a GPU,
        // by the generated augmentation kernel); the augmentation is drawn from the
        // position in the whole epoch's order.
        let mut batches = data::image_batches(
            train_set.clone(),
            order[start..].to_vec(),
            batch,
            &pre,
            (seed, epoch, start as u64),
        )?;
        let cut = pre.train_cut();
        let bar = progress::bar(
            ctx,
            train_set.len() as u64,
            &format!("epoch {}/{}", epoch + 1, a.epochs),
        );
        bar.inc(start as u64);
        let (mut window, mut total) = (None::<BatchStats>, carried.take());
        let mut since = Instant::now();
        // Time spent waiting for the loader's next batch, and in the steps themselves.
        let (mut waited, mut stepping, mut images) = (Duration::ZERO, Duration::ZERO, 0usize);
        // Each batch's bytes are sent to the trainer one step ahead, so that on a GPU they
        // cross (on a copy stream) while the step before them computes. `next`: the batch
        // sent and not stepped on, with its draws, labels and where it ends in the order.
        // The first batch is not timed: the loader starts with it, whatever its speed.
        let mut next = send_next(&mut batches, &mut *trainer)?;
        let mut first = true;
        // Where the batches stepped on end in the order (a stop resumes there).
        let mut done = 0;
        while !ctx.stopping() {
            let Some(Sent {
                draws,
                labels: y,
                end,
            }) = next.take()
            else {
                break;
            };
            let asked = Instant::now();
            next = send_next(&mut batches, &mut *trainer)?;
            let got = Instant::now();
            // The second batch is not timed either: no step came between it and the
            // first, so the loader had no head start.
            if !std::mem::take(&mut first) {
                waited += got - asked;
            }
            let result = trainer.step_sent(&cut, &draws, &y);
            stepping += got.elapsed();
            images += y.len();
            done = end;
            let result = result.map(|(st, x)| {
                batches.recycle(x);
                st
            });
            let st = match result {
                Ok(st) => st,
                Err(Error::NonFinite(nf)) => {
                    bar.abandon();
                    return Err(format!(
                        "{nf}: stopped, the update not applied; {} (a smaller --lr may help; --on-nan skip skips such steps)",
                        checkpoint.last()
                    )
                    .into());
                }
                Err(e) => return Err(e.into()),
            };
            let st = if st.skipped > 0 {
                if let Some(nf) = trainer.last_skip() {
                    bar.suspend(|| {
                        writeln!(
                            ctx.out,
                            "{nf}: update skipped (--on-nan skip), the weights and momentum left as they were"
                        )
                    })?;
                }
                // Its loss is not a number to average.
                BatchStats {
                    images: 0,
                    loss: 0.0,
                    top1_correct: 0,
                    top5_correct: 0,
                    skipped: st.skipped,
                }
            } else {
                st
            };
            merge(&mut window, &st);
            merge(&mut total, &st);
            bar.inc(y.len() as u64);
            bar.set_message(format!("loss {:.4}", st.loss));
            let step = trainer.state().step;
            if step % a.log_every == 0 {
                if let Some(w) = window.take() {
                    bar.suspend(|| {
                        writeln!(
                            ctx.out,
                            "epoch {} step {step:>6}: loss {:.4}, top-1 error {:5.1}%, {:7.1} images/s{}",
                            epoch + 1,
                            w.loss,
                            100.0 * w.top1_error(),
                            w.images as f64 / since.elapsed().as_secs_f64(),
                            match w.skipped {
                                0 => String::new(),
                                n => format!(" ({n} step(s) skipped)"),
                            }
                        )
                    })?;
                }
                since = Instant::now();
            }
        }
        if next.is_some() {
            // Stopped with a batch sent ahead: dropped (it is read again on resuming). A
            // failure of its copy must not keep the interrupted run from being saved.
            if let Err(e) = trainer.clear_sent() {
                writeln!(
                    ctx.out,
                    "the batch sent ahead could not be dropped cleanly: {e}"
                )?;
            }
        }
        let position = start + done;
        bar.finish_and_clear();
        let hint = match spec {
            DataSpec::Folder(_) => " (`alexnet prepare` makes a set that loads without decoding)",
            _ => "",
        };
        if let Some(note) = data_wait_note(waited, stepping, images, hint) {
            writeln!(ctx.out, "epoch {}: {note}", epoch + 1)?;
        }
        let report = batches.report();
        if report.skipped > 0 {
            writeln!(ctx.out, "epoch {}: {report}", epoch + 1)?;
        }
        if total.is_none() && !ctx.stopping() {
            return Err(format!(
                "{}: no training image could be read in epoch {}: {}",
                spec.describe(),
                epoch + 1,
                report.brief()
            )
            .into());
        }
        let mut val = None::<BatchStats>;
        if let (Some(v), false) = (&val_set, ctx.stopping()) {
            let bar = progress::bar(ctx, v.len() as u64, "validation");
            let order = (0..v.len()).collect();
            // Bytes, cut into centre patches by the trainer's backend.
            let mut batches =
                loader::byte_loader(v.clone(), order, batch, pre.side, data::workers(), 4)?;
            let (cut, centre) = (pre.eval_cut(), Draw::centre(pre.side, pre.crop));
            while let Some((x, y)) = batches.next() {
                if ctx.stopping() {
                    break;
                }
                let draws = vec![centre; y.len()];
                merge(&mut val, &trainer.evaluate_images(&cut, &x, &draws, &y)?);
                batches.recycle(x);
                bar.inc(y.len() as u64);
            }
            bar.finish_and_clear();
            let report = batches.report();
            if val.is_none() && !ctx.stopping() {
                return Err(format!(
                    "{}: no validation image could be read: {}",
                    spec.describe(),
                    report.brief()
                )
                .into());
            }
            if report.skipped > 0 {
                writeln!(ctx.out, "epoch {} validation: {report}", epoch + 1)?;
            }
        }
        if ctx.stopping() {
            // Interrupted: a checkpoint of this very step, from which --resume goes on
            // with the next batch of this epoch (or its validation).
            trainer.set_note(POSITION_NOTE, &position.to_string());
            match &total {
                Some(t) => trainer.set_note(STATS_NOTE, &stats_note(t)),
                None => trainer.set_note(STATS_NOTE, ""),
            }
            let saved = Checkpoint {
                errors: CheckpointErrors::Stop,
                ..checkpoint
            }
            .write(ctx, &*trainer)
            .map_err(|e| format!("interrupted; {e}"))?;
            debug_assert!(saved);
            return Err(Interrupted(format!(
                "interrupted at epoch {}, step {} ({position} of the epoch's {} images done): saved {}; go on with `train --resume {} --epochs {}` and the same data options",
                epoch + 1,
                trainer.state().step,
                order.len(),
                state_path.display(),
                state_path.display(),
                a.epochs
            ))
            .into());
        }
        let changed = trainer.end_epoch(val.as_ref().map(BatchStats::top1_error));
        history.push(Epoch::new(
            epoch + 1,
            total.as_ref(),
            val.as_ref(),
            trainer.state().lr,
        ));
        trainer.set_note("history", &pictures::format_history(&history));
        trainer.set_note(POSITION_NOTE, "0");
        trainer.set_note(STATS_NOTE, "");
        let intact = state_path.exists();
        let saved = checkpoint.write(ctx, &*trainer)?;
        let plot = dir.join("curves.png");
        let plotted = checkpoint.judge(
            ctx,
            pictures::curves(
                &history,
                &format!("{} on {}", plan.name, spec.describe()),
                &plot,
            ),
            intact,
        )?;
        let summary = match val {
            Some(v) => format!(
                "validation loss {:.4}, top-1 error {:.1}%, top-5 error {:.1}%",
                v.loss,
                100.0 * v.top1_error(),
                100.0 * v.top5_error()
            ),
            None => "no validation set".to_string(),
        };
        let files = match (saved, plotted) {
            (true, true) => format!("saved {} and {}", state_path.display(), plot.display()),
            (true, false) => format!("saved {}", state_path.display()),
            (false, _) => "NOT saved (see the warning)".into(),
        };
        writeln!(
            ctx.out,
            "epoch {} done in {:.1} s: {summary}{}; {files}",
            epoch + 1,
            t0.elapsed().as_secs_f64(),
            changed
                .map(|lr| format!("; learning rate now {}", fmt_lr(lr)))
                .unwrap_or_default(),
        )?;
    }
    if trainer.state().finished {
        let why = finished(&*trainer);
        if trainer.state().epoch == first_epoch {
            writeln!(
                ctx.out,
                "nothing to train: the run ended after epoch {first_epoch}, as {why}"
            )?;
        } else {
            writeln!(
                ctx.out,
                "stopping after epoch {}: {why}",
                trainer.state().epoch
            )?;
        }
    }
    Ok(())
}

/// A batch whose bytes were sent to the trainer ahead of its step.
struct Sent {
    draws: Vec<Draw>,
    labels: Vec<u32>,
    /// Where it ends in the epoch's order (skipped files included).
    end: usize,
}

/// Takes the loader's next batch and sends its bytes to `trainer` (`Train::send_images`),
/// keeping the rest; `None` at the end.
fn send_next(
    batches: &mut data::ImageBatches,
    trainer: &mut dyn Train,
) -> Result<Option<Sent>, AnyError> {
    let Some(b) = batches.next() else {
        return Ok(None);
    };
    trainer.send_images(b.images)?;
    Ok(Some(Sent {
        draws: b.draws,
        labels: b.labels,
        end: batches.next_position(),
    }))
}

/// Why a finished run stopped: its schedule bottomed out.
fn finished(trainer: &dyn Train) -> String {
    let lr = fmt_lr(trainer.state().lr);
    let schedule = trainer.config().schedule;
    match schedule {
        Schedule::Plateau { patience, .. } => format!(
            "the validation error has not improved for {patience} epoch(s) at the schedule's floor, learning rate {lr} ({schedule})"
        ),
        _ => format!("the schedule ({schedule}) is due to lower the learning rate below its floor, {lr}"),
    }
}

/// A learning rate as people write one, to 4 significant digits: `0.002`, `2e-5`.
fn fmt_lr(lr: f32) -> String {
    if lr == 0.0 || !lr.is_finite() {
        return lr.to_string();
    }
    let trim = |m: &str| -> String {
        if m.contains('.') {
            m.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            m.to_string()
        }
    };
    // The exponent after rounding: 0.00099999 is 1e-3.
    let sci = format!("{lr:.3e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-3..4).contains(&exp) {
        trim(&format!("{lr:.*}", (3 - exp) as usize))
    } else {
        format!("{}e{exp}", trim(mantissa))
    }
}

fn merge(acc: &mut Option<BatchStats>, st: &BatchStats) {
    match acc.as_mut() {
        Some(a) => a.merge(st),
        None => *acc = Some(*st),
    }
}

/// A new trainer from the options, or the resumed one; split into towers with --towers.
fn start(ctx: &mut Ctx, a: &TrainArgs) -> Result<Box<dyn Train>, AnyError> {
    let plan = a.net.plan().clone();
    let seed = a.seed.unwrap_or(0);
    let config = TrainConfig {
        sgd: Sgd {
            lr: a.lr.unwrap_or(0.02),
            momentum: a.momentum.unwrap_or(0.9),
            weight_decay: a.weight_decay.unwrap_or(0.0005),
        },
        schedule: a.schedule.unwrap_or_default(),
        seed,
    };
    // A new run's settings, checked before anything starts by the rule a resumed run is
    // checked with, naming the flag.
    if a.resume.is_none() {
        if let Some((name, value, rule)) = config.sgd.out_of_range() {
            return Err(format!("--{} {value} {rule}", name.replace('_', "-")).into());
        }
        config.validate()?;
    }
    let placement = match &a.towers {
        Some(devs) => {
            let backends = devs
                .iter()
                .map(|d| a.device.open_named(d, "--towers"))
                .collect::<Result<Vec<_>, _>>()?;
            let names: Vec<String> = backends.iter().map(|b| b.name()).collect();
            writeln!(ctx.out, "towers: {}", names.join("; "))?;
            Placement::Towers(backends)
        }
        None => {
            let b = a.device.open()?;
            writeln!(ctx.out, "device: {}", b.name())?;
            Placement::One(b)
        }
    };
    if let Some(path) = &a.resume {
        let given = [
            ("--lr", a.lr.is_some()),
            ("--momentum", a.momentum.is_some()),
            ("--weight-decay", a.weight_decay.is_some()),
            ("--schedule", a.schedule.is_some()),
            ("--init", a.init.is_some()),
            ("--seed", a.seed.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
            return Err(format!(
                "{flag} cannot change a resumed run (the state file keeps its own); drop it, or start a new run without --resume"
            )
            .into());
        }
        let t: Box<dyn Train> = match placement {
            Placement::One(b) => Box::new(Trainer::resume(b, plan, path)?),
            Placement::Towers(bs) => Box::new(SplitTrainer::resume(bs, plan, path)?),
        };
        writeln!(
            ctx.out,
            "resumed {} at epoch {}, step {}, learning rate {}",
            path.display(),
            t.state().epoch,
            t.state().step,
            fmt_lr(t.state().lr)
        )?;
        return Ok(t);
    }
    let init = match a.init.unwrap_or(Init::He) {
        Init::He => weights::kaiming_init(&plan, seed),
        Init::Paper => weights::paper_init(&plan, seed),
    };
    Ok(match placement {
        Placement::One(b) => Box::new(Trainer::new(Model::from_tensors(b, plan, init)?, config)?),
        Placement::Towers(bs) => Box::new(SplitTrainer::new(plan, init, bs, config)?),
    })
}

/// Where the network trains: whole on one device, or split into towers, one per device.
enum Placement {
    One(Device),
    Towers(Vec<Device>),
}

/// Above this share of an epoch spent waiting for batches, `train` says so.
const DATA_WAIT_NOTE: f64 = 0.1;

/// A line for an epoch whose steps waited for the data loader more than
/// [`DATA_WAIT_NOTE`] of the time: the steps' own rate beside the epoch's, with `hint`.
fn data_wait_note(
    waited: Duration,
    stepping: Duration,
    images: usize,
    hint: &str,
) -> Option<String> {
    let total = (waited + stepping).as_secs_f64();
    if images == 0 || total <= 0.0 || waited.as_secs_f64() <= DATA_WAIT_NOTE * total {
        return None;
    }
    Some(format!(
        "waited for data {:.0}% of the time: the steps ran at {:.1} images/s, the epoch at {:.1} images/s{hint}",
        100.0 * waited.as_secs_f64() / total,
        images as f64 / stepping.as_secs_f64().max(1e-9),
        images as f64 / total
    ))
}
#[cfg(test)]
mod tests {
    use super::{data_wait_note, fmt_lr};
    use std::time::Duration;

    #[test]
    fn an_epoch_held_back_by_its_data_says_so() {
        let ms = Duration::from_millis;
        assert_eq!(data_wait_note(ms(50), ms(950), 100, ""), None);
        assert_eq!(data_wait_note(ms(0), ms(0), 0, ""), None);
        let note = data_wait_note(ms(600), ms(400), 100, " (hint)").unwrap();
        assert_eq!(
            note,
            "waited for data 60% of the time: the steps ran at 250.0 images/s, the epoch at 100.0 images/s (hint)"
        );
    }

    #[test]
    fn learning_rates_print_readably() {
        for (lr, text) in [
            (0.02, "0.02"),
            (0.02 * 0.1, "0.002"),
            (0.02 * 0.1 * 0.1, "2e-4"),
            (0.02f32 * 0.1 * 0.1 * 0.1, "2e-5"),
            (0.00099999, "0.001"),
            (1e-9, "1e-9"),
            (1.5, "1.5"),
            (1234.6, "1235"),
            (12346.0, "1.235e4"),
            (0.0, "0"),
        ] {
            assert_eq!(fmt_lr(lr), text, "{lr:e}");
        }
    }
}
