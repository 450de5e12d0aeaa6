//! The command line of alexnet-rs.
//!
//! ```text
//! cargo run --release --example alexnet                 # summary + a CPU forward pass
//! cargo run --release --example alexnet -- summary --net torchvision
//! cargo run --release --example alexnet -- infer --weights w.safetensors --input x.safetensors --output y.safetensors
//! cargo run --release --example alexnet -- train        # the small net on generated shapes
//! cargo run --release --example alexnet -- train --resume runs/small/state.safetensors --epochs 6
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use alexnet::ir::{Op, Plan};
use alexnet::nets::{AlexNet, SmallNet, TorchvisionAlexNet};
use alexnet::runtime::weights::{read_safetensors, write_safetensors, NamedTensor};
use alexnet::runtime::{Backend, Batch, Device, Model, Tensor};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "alexnet",
    about = "AlexNet from a compile-time Rust DSL: summaries, inference, training, benchmarks",
    after_help = "Examples:\n  alexnet                       summary and a forward pass of the paper's AlexNet on CPU\n  alexnet summary --net torchvision\n  alexnet infer --weights w.safetensors --input x.safetensors --output y.safetensors\n  alexnet train                 train the small net on generated shapes (checkpoints in runs/small)\n  alexnet train --net alexnet --device cuda --batch 128\n  alexnet train --resume runs/small/state.safetensors --epochs 6"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Builds the paper's AlexNet, prints its summary, classifies a generated image on CPU.
    Demo {
        /// Weights (safetensors, PyTorch names); default: the paper's initialisation.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Seed of the initialisation when no weights are given.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// cpu, cuda, cuda:N or auto (the GPU when there is one).
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Times the forward pass on CPU: images/s at each batch size and per-stage times.
    Bench {
        #[arg(long, value_enum, default_value_t = Net::Alexnet)]
        net: Net,
        /// Batch sizes to time.
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16])]
        batch: Vec<usize>,
        /// Timed runs per batch size (after one warm-up); the median is reported.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Compiles a network's generated CUDA with NVRTC (no GPU needed): per-kernel ptxas
    /// report, cold compile time, then the time to load everything from the CUBIN cache.
    Kernels {
        #[arg(long, value_enum, default_value_t = Net::Alexnet)]
        net: Net,
        /// GPU architecture, e.g. sm_80, sm_90.
        #[arg(long, default_value = "sm_90")]
        arch: String,
        /// Also write the network's CUDA source to this folder.
        #[arg(long)]
        dump: Option<PathBuf>,
    },
    /// Trains a network on generated shapes (SGD with momentum, weight decay, dropout),
    /// validating and checkpointing after every epoch.
    Train(TrainArgs),
    /// Prints a network's layer table.
    Summary {
        #[arg(long, value_enum, default_value_t = Net::Alexnet)]
        net: Net,
    },
    /// Runs a network on the tensor `input` ([N, C, H, W], f32) of a safetensors file and
    /// writes `logits` ([N, classes]) and, when the network ends in softmax,
    /// `probabilities`.
    Infer {
        #[arg(long)]
        weights: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value_t = Net::Alexnet)]
        net: Net,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

#[derive(clap::Args)]
struct TrainArgs {
    /// The network to train (its input size sets the generated images' size).
    #[arg(long, value_enum, default_value_t = Net::Small)]
    net: Net,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Epochs to train (in all, counting those of a resumed run).
    #[arg(long, default_value_t = 8)]
    epochs: u64,
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=65536))]
    batch: u64,
    /// Initial learning rate [default: 0.02]. The options from here to --seed start a run;
    /// a resumed run keeps its own.
    #[arg(long)]
    lr: Option<f32>,
    /// [default: 0.9]
    #[arg(long)]
    momentum: Option<f32>,
    /// [default: 0.0005]
    #[arg(long)]
    weight_decay: Option<f32>,
    /// constant, plateau[:FACTOR[:PATIENCE]] (the paper's: divide by 10 when the
    /// validation error stops improving) or step:EPOCHS[:FACTOR] [default: plateau:0.1:1].
    #[arg(long)]
    schedule: Option<String>,
    /// Weight initialisation: he (learns in minutes) or paper (N(0, 0.01), as in the
    /// paper) [default: he].
    #[arg(long, value_enum)]
    init: Option<Init>,
    /// Seeds the initialisation, the data, the data order and dropout [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Train on an ImageNet-style folder (`DIR/<class>/*.jpg|png`, or `DIR/train/...` and
    /// `DIR/val/...`) instead of generated images: shorter side rescaled, per-pixel mean
    /// subtracted, random crops, flips and PCA colour augmentation as in the paper.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Generated training images per epoch, and held-out validation images.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1 << 26))]
    images: u64,
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=1 << 26))]
    val_images: u64,
    /// Classes of the generated set (at most 12, and at most the network's outputs).
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Folder for `state.safetensors` (the whole training state, written atomically after
    /// every epoch); default runs/<net>.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Continue the run saved in this training state (with the same --images, --batch,
    /// --classes and --val-images).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Print a line every this many steps.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    log_every: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Init {
    He,
    Paper,
}

#[derive(Clone, Copy, ValueEnum)]
enum Net {
    /// The paper's AlexNet (3x227x227, grouped convs, LRN).
    Alexnet,
    /// torchvision's variant (3x224x224).
    Torchvision,
    /// A small test net (3x32x32).
    Small,
}

impl Net {
    fn name(self) -> &'static str {
        match self {
            Net::Alexnet => "alexnet",
            Net::Torchvision => "torchvision",
            Net::Small => "small",
        }
    }

    fn plan(self) -> &'static Plan {
        match self {
            Net::Alexnet => AlexNet::plan(),
            Net::Torchvision => TorchvisionAlexNet::plan(),
            Net::Small => SmallNet::plan(),
        }
    }
}

type AnyError = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = Command::Demo {
        weights: None,
        seed: 0,
        device: "auto".into(),
    };
    let result = match cli.command.unwrap_or(default) {
        Command::Demo {
            weights,
            seed,
            device,
        } => demo(weights, seed, &device),
        Command::Summary { net } => {
            print!("{}", net.plan().summary());
            Ok(())
        }
        Command::Infer {
            weights,
            input,
            output,
            net,
            device,
        } => infer(net, &weights, &input, &output, &device),
        Command::Bench {
            net,
            batch,
            runs,
            device,
        } => bench(net, &batch, runs, &device),
        Command::Kernels { net, arch, dump } => kernels(net, &arch, dump.as_deref()),
        Command::Train(args) => train(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A deterministic test picture: a red disc on a blue-green gradient, mean-free.
fn generated_image() -> Batch<3, 227, 227> {
    let mut x = Batch::<3, 227, 227>::zeros(1);
    let img = x.image_mut(0);
    let n = 227 * 227;
    for y in 0..227 {
        for xx in 0..227 {
            let (fy, fx) = (y as f32 / 226.0, xx as f32 / 226.0);
            let disc = ((fx - 0.55).powi(2) + (fy - 0.45).powi(2)) < 0.06;
            let (r, g, b) = if disc {
                (0.9, 0.1, 0.1)
            } else {
                (0.1, 0.3 + 0.5 * fy, 0.8 - 0.5 * fx)
            };
            let i = y * 227 + xx;
            img[i] = r - 0.5;
            img[n + i] = g - 0.5;
            img[2 * n + i] = b - 0.5;
        }
    }
    x
}

fn demo(weights: Option<PathBuf>, seed: u64, device: &str) -> Result<(), AnyError> {
    println!("{}", AlexNet::summary());
    let backend = Device::parse(device)?;
    println!("device: {}", backend.name());
    let net = match &weights {
        Some(path) => AlexNet::load(backend, path)?,
        None => AlexNet::new(backend, seed)?,
    };
    let x = generated_image();
    let t0 = Instant::now();
    let y: Batch<1000, 1, 1> = net.forward(&x)?;
    let first = t0.elapsed();
    let runs = 5;
    let t1 = Instant::now();
    for _ in 0..runs {
        net.forward(&x)?;
    }
    let per_image = t1.elapsed() / runs;
    let probs = y.image(0);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    match &weights {
        Some(p) => println!("top 5 classes for a generated image (weights {}):", p.display()),
        None => println!("top 5 classes for a generated image (untrained weights, seed {seed}: the classes are arbitrary):"),
    }
    for &c in &order[..5] {
        println!("  class {c:>4}  p = {:.6}", probs[c]);
    }
    println!(
        "forward pass, batch 1, {}: {:.1} ms per image (first run {:.1} ms)",
        net.model().backend().name(),
        per_image.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3
    );
    Ok(())
}

fn infer(
    net: Net,
    weights: &std::path::Path,
    input: &std::path::Path,
    output: &std::path::Path,
    device: &str,
) -> Result<(), AnyError> {
    let plan = net.plan();
    let model = Model::load(Device::parse(device)?, plan.clone(), weights)?;
    let tensors = read_safetensors(input)?;
    let Some(x) = tensors.into_iter().find(|t| t.name == "input") else {
        return Err(format!("{}: no tensor named `input`", input.display()).into());
    };
    let x = Tensor::new(x.shape, x.data)?;
    let softmax_last = matches!(plan.layers.last().map(|l| l.op), Some(Op::Softmax));
    let mut logits = None;
    let before_softmax = softmax_last.then(|| plan.layers[plan.layers.len() - 2].name.to_string());
    let y = model.forward_inspect(&x, |name, values| {
        if Some(name) == before_softmax.as_deref() {
            logits = Some(values.to_vec());
        }
    })?;
    let n = y.shape()[0];
    let classes = plan.output().len();
    let mut out = vec![NamedTensor {
        name: "logits".into(),
        shape: vec![n, classes],
        data: logits.unwrap_or_else(|| y.data().to_vec()),
    }];
    if softmax_last {
        out.push(NamedTensor {
            name: "probabilities".into(),
            shape: vec![n, classes],
            data: y.into_data(),
        });
    }
    write_safetensors(output, &out, None)?;
    println!(
        "wrote {} ({} images, {} classes)",
        output.display(),
        n,
        classes
    );
    Ok(())
}

fn bench(net: Net, batches: &[usize], runs: usize, device: &str) -> Result<(), AnyError> {
    let plan = net.plan();
    let device = Device::parse(device)?;
    println!("{} forward on {}", plan.name, device.name());
    let t0 = Instant::now();
    let model = Model::init(device, plan.clone(), 0)?;
    println!(
        "model ready (weights, kernels compiled or loaded from the cache) in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let s = plan.input;
    for &n in batches {
        let x = Tensor::new(
            vec![n, s.c, s.h, s.w],
            (0..n * s.len())
                .map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5)
                .collect(),
        )?;
        model.forward(&x)?;
        let mut totals = Vec::with_capacity(runs);
        let mut stages: Vec<Vec<f64>> = Vec::new();
        for _ in 0..runs.max(1) {
            let t0 = Instant::now();
            let (_, times) = model.forward_timed(&x)?;
            totals.push(t0.elapsed().as_secs_f64());
            if stages.is_empty() {
                stages = vec![Vec::new(); times.len()];
            }
            for (acc, (_, t)) in stages.iter_mut().zip(&times) {
                acc.push(*t);
            }
        }
        let (_, names) = model.forward_timed(&x)?;
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let total = median(&mut totals);
        println!(
            "batch {n:>4}: {:8.2} ms per batch, {:8.1} images/s (median of {runs})",
            total * 1e3,
            n as f64 / total
        );
        let per_stage: Vec<String> = names
            .iter()
            .zip(stages.iter_mut())
            .map(|((name, _), v)| format!("{name} {:.2}", median(v) * 1e3))
            .collect();
        println!("  stages (ms): {}", per_stage.join(", "));
    }
    Ok(())
}

fn kernels(net: Net, arch: &str, dump: Option<&std::path::Path>) -> Result<(), AnyError> {
    use alexnet::runtime::cuda::{cache, nvrtc};
    use rayon::prelude::*;
    let plan = net.plan();
    if let Some(dir) = dump {
        println!("wrote {}", alexnet_codegen::dump_cuda(plan, dir)?.display());
    }
    let (major, minor) = nvrtc::version()?;
    let cuda = alexnet_codegen::cuda::render(plan);
    let opts = vec!["--ptxas-options=-v".to_string()];
    println!(
        "{}: {} kernels, NVRTC {major}.{minor}, {arch}",
        plan.name,
        cuda.kernels.len()
    );
    let t0 = Instant::now();
    let compiled: Vec<_> = cuda
        .kernel_sources
        .par_iter()
        .zip(&cuda.kernels)
        .map(|(src, k)| nvrtc::compile_cubin(src, &format!("{}.cu", k.name), arch, &opts))
        .collect::<Result<_, _>>()?;
    let cold = t0.elapsed();
    for c in &compiled {
        for r in nvrtc::ptxas_report(&c.log) {
            println!(
                "  {:<40} {:>3} registers {:>6} B shared {:>3} B spilled {:>3} B stack",
                r.name,
                r.registers,
                r.shared_bytes,
                r.spill_store_bytes + r.spill_load_bytes,
                r.stack_frame_bytes
            );
        }
    }
    println!(
        "cold compile (parallel over {} threads, no cache): {:.0} ms",
        rayon::current_num_threads(),
        cold.as_secs_f64() * 1e3
    );
    // The runtime's path: through the CUBIN cache (a temporary one: fill it, then hit it).
    let dir = std::env::temp_dir().join(format!("alexnet-kernels-{}", std::process::id()));
    std::env::set_var("ALEXNET_CACHE_DIR", &dir);
    let through_cache = || -> Result<std::time::Duration, AnyError> {
        let t = Instant::now();
        for (src, k) in cuda.kernel_sources.iter().zip(&cuda.kernels) {
            cache::cubin(src, &format!("{}.cu", k.name), arch, &opts)?;
        }
        Ok(t.elapsed())
    };
    let _fill = through_cache()?;
    let hit = through_cache()?;
    println!("cache hit, all kernels: {:.1} ms", hit.as_secs_f64() * 1e3);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn train(a: TrainArgs) -> Result<(), AnyError> {
    use alexnet::runtime::optim::Sgd;
    use alexnet::runtime::train::{epoch_order, BatchStats};
    use alexnet::runtime::{weights, Synthetic, TrainConfig, Trainer};

    let plan = a.net.plan().clone();
    let s = plan.input;
    let backend = Device::parse(&a.device)?;
    println!("device: {}", backend.name());
    let data_note = match &a.data {
        Some(dir) => format!("data={} batch={}", dir.display(), a.batch),
        None => format!(
            "images={} batch={} classes={} val_images={}",
            a.images, a.batch, a.classes, a.val_images
        ),
    };
    let mut trainer = match &a.resume {
        Some(path) => {
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
            let t = Trainer::resume(backend, plan.clone(), path)?;
            if let Some(saved) = t.note("data") {
                if saved != data_note {
                    return Err(format!(
                        "{} was trained with {saved}; resume it with the same settings (given: {data_note})",
                        path.display()
                    )
                    .into());
                }
            }
            println!(
                "resumed {} at epoch {}, step {}, learning rate {}",
                path.display(),
                t.state().epoch,
                t.state().step,
                t.state().lr
            );
            t
        }
        None => {
            let seed = a.seed.unwrap_or(0);
            let init = match a.init.unwrap_or(Init::He) {
                Init::He => weights::kaiming_init(&plan, seed),
                Init::Paper => weights::paper_init(&plan, seed),
            };
            let model = Model::from_tensors(backend, plan.clone(), init)?;
            let config = TrainConfig {
                sgd: Sgd {
                    lr: a.lr.unwrap_or(0.02),
                    momentum: a.momentum.unwrap_or(0.9),
                    weight_decay: a.weight_decay.unwrap_or(0.0005),
                },
                schedule: a.schedule.as_deref().unwrap_or("plateau:0.1:1").parse()?,
                seed,
            };
            let mut t = Trainer::new(model, config)?;
            t.set_note("data", &data_note);
            t
        }
    };
    if a.images < a.batch {
        return Err(format!("--batch {} must be at most --images {}", a.batch, a.images).into());
    }
    let classes = a.classes.min(trainer.classes());
    // The data's seed is the run's, so a resumed run sees the same images.
    let seed = trainer.config().seed;
    let data = Synthetic::new(classes, s.c, s.h, s.w, seed)?;
    let dir = a
        .checkpoint
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(a.net.name()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let state_path = dir.join("state.safetensors");
    let batch = a.batch as usize;
    let steps_per_epoch = a.images / a.batch;
    if a.data.is_none() {
        println!(
            "training {} on {} generated images of {classes} classes ({}), batch {}, {steps_per_epoch} steps per epoch; checkpoints in {}",
            plan.name,
            a.images,
            data.class_names().join(", "),
            a.batch,
            dir.display()
        );
    }
    let mut source = match &a.data {
        Some(dir) => Source::folder(dir, &plan, trainer.classes(), seed)?,
        None => Source::Synthetic {
            data,
            steps_per_epoch,
        },
    };
    if let Source::Folder { train, val, .. } = &source {
        println!(
            "training {} on {}: {} files, {} classes ({}){}; batch {batch}; checkpoints in {}",
            plan.name,
            dir_name(&a.data),
            train.len(),
            train.classes().len(),
            train.classes().join(", "),
            val.as_ref()
                .map(|v| format!(", validation: {} files", v.len()))
                .unwrap_or_else(|| ", no val/ folder: no validation".into()),
            dir.display()
        );
    }
    while trainer.state().epoch < a.epochs {
        let epoch = trainer.state().epoch;
        let t0 = Instant::now();
        let mut window = None::<BatchStats>;
        let mut since = Instant::now();
        // The state is saved at the end of an epoch, so a resumed run starts the next one.
        if matches!(source, Source::Synthetic { .. })
            && epoch.checked_mul(steps_per_epoch) != Some(trainer.state().step)
        {
            return Err(format!(
                "the state is at step {} of epoch {epoch}, not at an epoch's start with {steps_per_epoch} steps per epoch",
                trainer.state().step
            )
            .into());
        }
        let order = epoch_order(seed, epoch, source.len(a.images));
        for (x, y) in source.epoch(epoch, order, batch)? {
            let st = trainer.step(&x, &y)?;
            if !st.loss.is_finite() {
                return Err(format!(
                    "the loss diverged at step {} (learning rate {}); try a smaller --lr",
                    trainer.state().step,
                    trainer.state().lr
                )
                .into());
            }
            match window.as_mut() {
                Some(w) => w.merge(&st),
                None => window = Some(st),
            }
            let step = trainer.state().step;
            if step % a.log_every == 0 {
                if let Some(w) = window.take() {
                    println!(
                        "epoch {} step {step:>6}: loss {:.4}, top-1 error {:5.1}%, {:7.1} images/s",
                        epoch + 1,
                        w.loss,
                        100.0 * w.top1_error(),
                        w.images as f64 / since.elapsed().as_secs_f64()
                    );
                }
                since = Instant::now();
            }
        }
        if let Some(report) = source.report() {
            if report.skipped > 0 {
                println!("epoch {}: {report}", epoch + 1);
            }
        }
        let mut val = None::<BatchStats>;
        for (x, y) in source.validation(a.images, a.val_images, batch)? {
            let st = trainer.evaluate(&x, &y)?;
            match val.as_mut() {
                Some(v) => v.merge(&st),
                None => val = Some(st),
            }
        }
        let changed = trainer.end_epoch(val.map(|v| v.top1_error()));
        trainer.save(&state_path)?;
        let summary = match val {
            Some(v) => format!(
                "validation loss {:.4}, top-1 error {:.1}%, top-5 error {:.1}%",
                v.loss,
                100.0 * v.top1_error(),
                100.0 * v.top5_error()
            ),
            None => "no validation set".to_string(),
        };
        println!(
            "epoch {} done in {:.1} s: {summary}{}; saved {}",
            epoch + 1,
            t0.elapsed().as_secs_f64(),
            changed
                .map(|lr| format!("; learning rate now {lr:.3e}"))
                .unwrap_or_default(),
            state_path.display()
        );
    }
    Ok(())
}

fn dir_name(d: &Option<PathBuf>) -> String {
    d.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Where training batches come from: generated shapes, or an image folder read in the
/// background with the paper's augmentation.
enum Source {
    Synthetic {
        data: alexnet::runtime::Synthetic,
        steps_per_epoch: u64,
    },
    Folder {
        train: alexnet::runtime::data::folder::ImageFolder,
        val: Option<alexnet::runtime::data::folder::ImageFolder>,
        /// Rescaled side, per-pixel mean, augmentation, the run's seed.
        side: usize,
        mean: std::sync::Arc<Vec<f32>>,
        augment: std::sync::Arc<alexnet::runtime::data::augment::Augment>,
        seed: u64,
        /// The report of the last epoch's loader, filled when its batches run out.
        report: ReportSlot,
    },
}

type Batches = Box<dyn Iterator<Item = (Tensor, Vec<u32>)>>;
type ReportSlot =
    std::sync::Arc<std::sync::Mutex<Option<alexnet::runtime::data::folder::LoadReport>>>;

impl Source {
    /// An image folder prepared for `plan`: the shorter side rescaled in the paper's
    /// proportion (256 for a 227 input), the per-pixel mean of up to 1,000 training images,
    /// PCA colour augmentation from up to 256 of them.
    fn folder(
        dir: &std::path::Path,
        plan: &Plan,
        outputs: usize,
        seed: u64,
    ) -> Result<Self, AnyError> {
        use alexnet::runtime::data::augment::{Augment, PcaColour};
        use alexnet::runtime::data::folder::{decode, ImageFolder};
        let (train, val) = ImageFolder::open_split(dir)?;
        if train.classes().len() > outputs {
            return Err(format!(
                "{} has {} classes; `{}` has only {outputs} outputs",
                dir.display(),
                train.classes().len(),
                plan.name
            )
            .into());
        }
        let s = plan.input;
        if s.c != 3 || s.h != s.w {
            return Err(
                format!("image folders need a network with square RGB input, not {s}").into(),
            );
        }
        let side = (s.h * 256).div_ceil(227).max(s.h);
        let (mean, report) = train.mean_image(side, 1000);
        if report.skipped > 0 {
            println!("mean image: {report}");
        }
        let shape = alexnet::ir::Shape::new(3, side, side);
        let step = (train.len() / 256).max(1);
        let sample: Vec<Vec<f32>> = (0..train.len())
            .step_by(step)
            .filter_map(|i| decode(train.path(i), side).ok())
            .map(|img| img.iter().zip(mean.iter()).map(|(a, b)| a - b).collect())
            .collect();
        let refs: Vec<&[f32]> = sample.iter().map(|v| v.as_slice()).collect();
        let pca = PcaColour::from_images(&refs, shape).ok();
        Ok(Source::Folder {
            train,
            val,
            side,
            mean: std::sync::Arc::new(mean),
            augment: std::sync::Arc::new(Augment::paper((s.h, s.w), pca)),
            seed,
            report: Default::default(),
        })
    }

    fn len(&self, images: u64) -> u64 {
        match self {
            Source::Synthetic { .. } => images,
            Source::Folder { train, .. } => train.len() as u64,
        }
    }

    /// Epoch `epoch`'s batches in `order`; an image's augmentation is drawn from (seed,
    /// epoch, its position), so a run is reproducible whatever the number of workers.
    fn epoch(&mut self, epoch: u64, order: Vec<u64>, batch: usize) -> Result<Batches, AnyError> {
        match self {
            Source::Synthetic {
                data,
                steps_per_epoch,
            } => {
                let data = data.clone();
                let steps = *steps_per_epoch as usize;
                Ok(Box::new((0..steps).map(move |i| {
                    data.batch(&order[i * batch..(i + 1) * batch])
                })))
            }
            Source::Folder {
                train,
                side,
                mean,
                augment,
                seed,
                report,
                ..
            } => {
                let shape = alexnet::ir::Shape::new(3, *side, *side);
                let (mean, augment, seed) = (mean.clone(), augment.clone(), *seed);
                let epoch_seed = seed ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let crop = augment.out_shape(shape);
                let transform: alexnet::runtime::data::folder::Transform =
                    std::sync::Arc::new(move |img: Vec<f32>, pos: u64| {
                        use rand::SeedableRng;
                        let x: Vec<f32> = img.iter().zip(mean.iter()).map(|(a, b)| a - b).collect();
                        let mut rng = rand::rngs::StdRng::seed_from_u64(
                            epoch_seed ^ pos.wrapping_mul(0xD1B5_4A32_D192_ED03),
                        );
                        // Cannot fail: the rescaled side is at least the crop.
                        let mut y = augment
                            .train(&x, shape, &mut rng)
                            .unwrap_or_else(|_| vec![0.0; crop.len()]);
                        y.iter_mut().for_each(|v| *v *= PIXEL_SCALE);
                        y
                    });
                let order: Vec<usize> = order.into_iter().map(|i| i as usize).collect();
                let loader = train.loader(order, batch, *side, workers(), 4, transform)?;
                if let Ok(mut r) = report.lock() {
                    *r = None;
                }
                Ok(Box::new(LoaderBatches {
                    loader,
                    crop,
                    report: Some(report.clone()),
                }))
            }
        }
    }

    /// Skips of the last epoch's loader (image folders only).
    fn report(&self) -> Option<alexnet::runtime::data::folder::LoadReport> {
        match self {
            Source::Folder { report, .. } => report.lock().ok().and_then(|r| r.clone()),
            Source::Synthetic { .. } => None,
        }
    }

    /// The validation batches: held-out generated images, or the val/ folder centre-cropped.
    fn validation(&self, images: u64, val_images: u64, batch: usize) -> Result<Batches, AnyError> {
        match self {
            Source::Synthetic { data, .. } => {
                let data = data.clone();
                let held: Vec<u64> = (images..images + val_images).collect();
                Ok(Box::new(
                    held.chunks(batch)
                        .map(|c| c.to_vec())
                        .collect::<Vec<_>>()
                        .into_iter()
                        .map(move |c| data.batch(&c)),
                ))
            }
            Source::Folder {
                val: Some(val),
                side,
                mean,
                augment,
                ..
            } => {
                let shape = alexnet::ir::Shape::new(3, *side, *side);
                let (mean, augment) = (mean.clone(), augment.clone());
                let crop = augment.out_shape(shape);
                let transform: alexnet::runtime::data::folder::Transform =
                    std::sync::Arc::new(move |img: Vec<f32>, _| {
                        let x: Vec<f32> = img.iter().zip(mean.iter()).map(|(a, b)| a - b).collect();
                        augment
                            .eval(&x, shape)
                            .unwrap_or_else(|_| vec![0.0; crop.len()])
                    });
                let loader = val.loader(
                    (0..val.len()).collect(),
                    batch,
                    *side,
                    workers(),
                    4,
                    transform,
                )?;
                Ok(Box::new(LoaderBatches {
                    loader,
                    crop,
                    report: None,
                }))
            }
            Source::Folder { val: None, .. } => Ok(Box::new(std::iter::empty())),
        }
    }
}

/// Pixels (0..255, the mean subtracted, PCA-shifted) are divided by 128, so that the
/// inputs lie in about [-1, 1] as He initialisation expects (the paper's N(0, 0.01) took
/// raw values).
const PIXEL_SCALE: f32 = 1.0 / 128.0;

/// Background decoding threads for the image folders: the machine's cores, at most 8.
fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(8))
}

/// A loader's batches as tensors of the network's input shape.
struct LoaderBatches {
    loader: alexnet::runtime::data::folder::Loader,
    crop: alexnet::ir::Shape,
    /// Where to leave the loader's report when the batches run out.
    report: Option<ReportSlot>,
}

impl Iterator for LoaderBatches {
    type Item = (Tensor, Vec<u32>);

    fn next(&mut self) -> Option<Self::Item> {
        let Some((data, labels)) = self.loader.next() else {
            if let Some(slot) = &self.report {
                if let Ok(mut r) = slot.lock() {
                    *r = Some(self.loader.report());
                }
            }
            return None;
        };
        let c = self.crop;
        let t = Tensor::new(vec![labels.len(), c.c, c.h, c.w], data).ok()?;
        Some((t, labels))
    }
}
