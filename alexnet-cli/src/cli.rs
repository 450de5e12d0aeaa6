//! The command line (clap) and the inference commands: demo, summary, infer, bench and
//! kernels; [`execute`] runs any command.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use alexnet::nets::AlexNet;
use alexnet::runtime::footprint::{human, Footprint};
use alexnet::runtime::prelude::*;
use alexnet::runtime::weights::{check_finite, read_safetensors, write_safetensors, NamedTensor};
use alexnet::runtime::{Batch, Device, Model, Tensor};
use clap::{Parser, Subcommand};

use crate::args::{DeviceArgs, Net, PrecisionArg};
use crate::{evaluate, prepare, train, AnyError, Ctx};

#[derive(Parser)]
#[command(
    name = "alexnet",
    about = "AlexNet from a compile-time Rust DSL: summaries, inference, training, benchmarks",
    after_help = "Examples:\n  alexnet                       summary and a forward pass of the paper's AlexNet (on the GPU if any)\n  alexnet summary --net torchvision\n  alexnet infer --weights w.safetensors --input x.safetensors --output y.safetensors\n  alexnet train                 train the small net on generated shapes (checkpoints in runs/small)\n  alexnet eval                  its top-1/top-5 error, centre crop and ten crops\n  alexnet classify photo.jpg    its top 5 for an image\n  alexnet filters               its first layer's filters as runs/small/filters.png\n  alexnet train --net alexnet --device cuda --batch 128 --data ~/imagenet\n  alexnet train --resume runs/small --epochs 12   12 epochs in all, counting those done"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Builds the paper's AlexNet, prints its summary, classifies a generated image on
    /// --device (the GPU when there is one, by default).
    Demo {
        /// Weights (safetensors, PyTorch names); default: the paper's initialisation.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Seed of the initialisation when no weights are given.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Times the forward pass on --device: images/s at each batch size and per-stage times
    /// (a convolution with its ReLU fused is one stage, `conv1+relu`).
    Bench {
        /// The network to time.
        #[arg(long, value_enum, default_value_t = Net::Alexnet)]
        net: Net,
        /// Batch sizes to time.
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16])]
        batch: Vec<usize>,
        /// Timed runs per batch size (after one warm-up); the median is reported.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        runs: u64,
        #[command(flatten)]
        device: DeviceArgs,
        /// Also time the network split into its two towers on these two devices
        /// (`cuda:0,cuda:1` for two GPUs, `cuda:0,cuda:0` for two streams of one GPU,
        /// `cpu,cpu` for two CPU workers); the network must be declared `split 2`.
        #[arg(long, value_delimiter = ',')]
        towers: Option<Vec<String>>,
    },
    /// Compiles a network's generated CUDA with NVRTC (no GPU needed): per-kernel ptxas
    /// report, cold compile time, then the time to load everything from the CUBIN cache;
    /// with --report, where each kernel's time should go on an H200 (roofline model).
    #[command(
        after_help = "Examples:\n  alexnet kernels                                  AlexNet's forward kernels for sm_90\n  alexnet kernels --report --batch 128 --training  occupancy, FLOPs, bytes and roofline time per kernel"
    )]
    Kernels {
        /// The network whose kernels to compile.
        #[arg(long, value_enum, default_value_t = Net::Alexnet)]
        net: Net,
        /// GPU architecture, e.g. sm_80, sm_90.
        #[arg(long, default_value = "sm_90")]
        arch: String,
        /// Also write the network's CUDA source to this folder (the f32 forward and the
        /// training kernels, whatever --precision).
        #[arg(long)]
        dump: Option<PathBuf>,
        /// Also compile the training kernels (backward passes, dropout, loss, SGD).
        #[arg(long)]
        training: bool,
        /// The kernels of this precision (tf32, bf16, f16: the convolutions' and fc layers'
        /// forward passes, and with --training their gradients, on tensor cores).
        #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
        precision: PrecisionArg,
        /// Print per kernel its blocks per SM, FLOPs, bytes moved and roofline time on an
        /// H200 with its measured ceilings (a model: where time should go, not a timing).
        #[arg(long)]
        report: bool,
        /// The batch size of --report.
        #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=65536), requires = "report")]
        batch: u64,
    },
    /// Trains a network on generated shapes or an image folder (SGD with momentum, weight
    /// decay, dropout; random crops, flips and colour shifts), validating, checkpointing
    /// and plotting the curves after every epoch.
    #[command(
        after_help = "Examples:\n  alexnet train                                   the small net on generated shapes, runs/small\n  alexnet train --net alexnet --device cuda --batch 128 --data ~/imagenet\n  alexnet train --resume runs/small --epochs 12   12 epochs in all, counting those done"
    )]
    Train(train::TrainArgs),
    /// Top-1 and top-5 error of a checkpoint on the centre crop and with the paper's
    /// ten-crop averaging, and how each class fares.
    #[command(
        after_help = "Examples:\n  alexnet eval                                    the run in runs/small on its validation images\n  alexnet eval --checkpoint runs/alexnet --data ~/imagenet --device cuda"
    )]
    Eval(evaluate::EvalArgs),
    /// The most probable classes of image files (JPEG or PNG).
    #[command(
        after_help = "Examples:\n  alexnet classify cat.jpg dog.png\n  alexnet classify --checkpoint runs/alexnet --ten-crop photo.jpg"
    )]
    Classify(evaluate::ClassifyArgs),
    /// Draws the first layer's filters as a grid of colour patches (the paper's Figure 3).
    #[command(
        after_help = "Examples:\n  alexnet filters                                 runs/small/filters.png\n  alexnet filters --checkpoint runs/alexnet --output conv1.png"
    )]
    Filters(evaluate::FiltersArgs),
    /// Decodes an image folder once into a prepared data set (shards of 8-bit images at
    /// the training size, an index with labels, the mean and the colour components):
    /// `train --data` and `eval --data` read it much faster than they decode JPEGs.
    #[command(
        after_help = "Examples:\n  alexnet prepare --data ~/imagenet --out ~/imagenet-256\n  alexnet train --net alexnet --device cuda --batch 128 --data ~/imagenet-256\n  alexnet prepare --verify ~/imagenet-256        every shard against its checksum"
    )]
    Prepare(prepare::PrepareArgs),
    /// Times the candidate tiles of every conv and fc stage's forward GEMM on a GPU and
    /// writes the fastest into the tuning table of its architecture
    /// (`kernels_templates/tuning/<arch>.txt`), which code generation takes tiles from.
    Tune(crate::tune::TuneArgs),
    /// Prints a network's layer table.
    Summary {
        /// The network to describe.
        #[arg(long, value_enum, default_value_t = Net::Alexnet)]
        net: Net,
        /// Also print the device memory a batch of this many images needs, for inference
        /// and for training.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1 << 24))]
        batch: Option<u64>,
    },
    /// Runs a network on the tensor `input` ([N, C, H, W], f32) of a safetensors file and
    /// writes `logits` ([N, classes]) and, when the network ends in softmax,
    /// `probabilities`.
    Infer {
        /// The network's weights (safetensors, PyTorch names, e.g. a run's
        /// state.safetensors).
        #[arg(long)]
        weights: PathBuf,
        /// A safetensors file with the tensor `input`, [N, C, H, W] (f32, f16, bf16 or
        /// f64).
        #[arg(long)]
        input: PathBuf,
        /// The safetensors file to write (`logits`, and `probabilities`); an existing one
        /// is replaced, unless it is the input or the weights.
        #[arg(long)]
        output: PathBuf,
        /// The network the weights are for.
        #[arg(long, value_enum, default_value_t = Net::Alexnet)]
        net: Net,
        #[command(flatten)]
        device: DeviceArgs,
    },
}

/// Runs a parsed command line (no subcommand: the demo).
pub fn execute(cli: Cli, ctx: &mut Ctx) -> Result<(), AnyError> {
    let default = Command::Demo {
        weights: None,
        seed: 0,
        device: DeviceArgs::default(),
    };
    match cli.command.unwrap_or(default) {
        Command::Demo {
            weights,
            seed,
            device,
        } => demo(ctx, weights, seed, &device),
        Command::Summary { net, batch } => {
            write!(ctx.out, "{}", net.plan().summary())?;
            if let Some(batch) = batch {
                let f = Footprint::of(net.plan(), batch as usize);
                writeln!(
                    ctx.out,
                    "memory at batch {batch} (f32 device buffers): inference {} (weights {}, batch {}); training {} (weights {}, gradients and momentum {}, batch {})",
                    human(f.inference_total()),
                    human(f.params),
                    human(f.inference),
                    human(f.training_total()),
                    human(f.params),
                    human(f.optimizer),
                    human(f.training)
                )?;
            }
            Ok(())
        }
        Command::Infer {
            weights,
            input,
            output,
            net,
            device,
        } => infer(ctx, net, &weights, &input, &output, &device),
        Command::Bench {
            net,
            batch,
            runs,
            device,
            towers,
        } => bench(ctx, net, &batch, runs as usize, &device, towers.as_deref()),
        Command::Kernels {
            net,
            arch,
            dump,
            training,
            precision,
            report,
            batch,
        } => kernels(
            ctx,
            net,
            &arch,
            dump.as_deref(),
            &KernelsOptions {
                training,
                precision: precision.into(),
                report: report.then_some(batch as usize),
            },
        ),
        Command::Train(args) => train::train(ctx, args),
        Command::Eval(args) => evaluate::eval(ctx, args),
        Command::Classify(args) => evaluate::classify(ctx, args),
        Command::Filters(args) => evaluate::filters(ctx, args),
        Command::Prepare(args) => prepare::prepare(ctx, args),
        Command::Tune(args) => crate::tune::tune(ctx, args),
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

fn demo(
    ctx: &mut Ctx,
    weights: Option<PathBuf>,
    seed: u64,
    device: &DeviceArgs,
) -> Result<(), AnyError> {
    // The weights are loaded (and checked) before anything is printed.
    let backend = device.open()?;
    let name = backend.name();
    let net = match &weights {
        Some(path) => AlexNet::load(backend, path)?,
        None => AlexNet::new(backend, seed)?,
    };
    writeln!(ctx.out, "{}", AlexNet::summary())?;
    writeln!(ctx.out, "device: {name}")?;
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
        Some(p) => writeln!(ctx.out, "top 5 classes for a generated image (weights {}):", p.display())?,
        None => writeln!(ctx.out, "top 5 classes for a generated image (untrained weights, seed {seed}: the classes are arbitrary):")?,
    }
    for &c in &order[..5] {
        writeln!(ctx.out, "  class {c:>4}  p = {:.6}", probs[c])?;
    }
    writeln!(
        ctx.out,
        "forward pass, batch 1, {}: {:.1} ms per image (first run {:.1} ms)",
        net.model().backend().name(),
        per_image.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3
    )?;
    Ok(())
}

fn infer(
    ctx: &mut Ctx,
    net: Net,
    weights: &std::path::Path,
    input: &std::path::Path,
    output: &std::path::Path,
    device: &DeviceArgs,
) -> Result<(), AnyError> {
    // Writing the output must not destroy what it was computed from.
    for (what, path) in [("input", input), ("weights", weights)] {
        if crate::data::same_file(output, path) {
            return Err(format!(
                "--output {} is the {what} file {}: name another file",
                output.display(),
                path.display()
            )
            .into());
        }
    }
    let plan = net.plan();
    let model = Model::load(device.open()?, plan.clone(), weights)?;
    let tensors = read_safetensors(input)?;
    let Some(x) = tensors.into_iter().find(|t| t.name == "input") else {
        return Err(format!("{}: no tensor named `input`", input.display()).into());
    };
    let per_image = plan.input.to_array();
    if x.shape.len() != 4 || x.shape[1..] != per_image {
        let [c, h, w] = per_image;
        return Err(format!(
            "{}: tensor `input` has shape {:?}; `{}` takes [N, {c}, {h}, {w}] (N images)",
            input.display(),
            x.shape,
            plan.name
        )
        .into());
    }
    // A NaN in the input would come out as plausible probabilities (a max swallows it).
    check_finite(std::slice::from_ref(&x), Some(input))?;
    let x = Tensor::new(x.shape, x.data)?;
    let softmax_last = plan.ends_in_softmax();
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
    // Finite weights and inputs can still overflow.
    if let Some(t) = out.iter().find(|t| t.data.iter().any(|v| !v.is_finite())) {
        return Err(format!(
            "the network's {} for {} are not finite (the values overflow); nothing written",
            t.name,
            input.display()
        )
        .into());
    }
    write_safetensors(output, &out, None)?;
    writeln!(
        ctx.out,
        "wrote {} ({} images, {} classes)",
        output.display(),
        n,
        classes
    )?;
    Ok(())
}

/// Bytes a backend reads of a layer's parameters.
type ParamBytes = dyn Fn(&alexnet::ir::Layer) -> usize;

/// A stage's floating-point operations (a convolution's by the direct definition, whatever
/// algorithm runs it) and the bytes it must move at least for `batch` images: input and
/// output in f32, parameters as `param_bytes` says the backend reads them.
/// Steps of each accumulator per thread when `bench` measures the cores' peak (about 5
/// ms per try; the best of three, as a shorter run measured the core before its clock
/// rose: 418 GFLOP/s of bf16 dot products at 200,000 steps where the long run gives 871).
const PEAK_ITERS: usize = 1_000_000;

/// The CPU's ceilings for `bench`'s roofline, in GFLOP/s and GB/s.
#[derive(Clone, Copy)]
struct Ceilings {
    /// f32 FMAs (where the CPU has no AVX-512: the sgemm's rate).
    f32: f64,
    /// bf16 dot products, for the stages that run on them.
    dot: f64,
    read: f64,
}

/// Whether a layer's products run on bf16 dot products (`Cpu::dot_products`).
type OnDots = dyn Fn(&alexnet::ir::Layer) -> bool;

fn stage_work(
    plan: &alexnet::ir::Plan,
    stage: alexnet::ir::Stage,
    batch: usize,
    param_bytes: &ParamBytes,
) -> (f64, f64) {
    let layer = &plan.layers[stage.layer];
    let flops = 2.0 * layer.macs() as f64 * batch as f64;
    // What the stage reads and writes: a fused pooling's output, not the layer's.
    let output = plan.layers[stage.last()].output;
    let activations = batch * (layer.input.len() + output.len());
    (flops, (4 * activations + param_bytes(layer)) as f64)
}

fn bench(
    ctx: &mut Ctx,
    net: Net,
    batches: &[usize],
    runs: usize,
    device: &DeviceArgs,
    towers: Option<&[String]>,
) -> Result<(), AnyError> {
    let plan = net.plan();
    let split = match towers {
        Some(devs) => {
            let backends = devs
                .iter()
                .map(|d| device.open_named(d, "--towers"))
                .collect::<Result<Vec<_>, _>>()?;
            let w = alexnet::runtime::weights::paper_init(plan, 0);
            let t = alexnet::runtime::towers::Towers::new(plan.clone(), w, backends)?;
            writeln!(ctx.out, "towers: {}", t.links().join("; "))?;
            Some(t)
        }
        None => None,
    };
    let device = device.open()?;
    writeln!(ctx.out, "{} forward on {}", plan.name, device.name())?;
    // On the CPU, each stage is put against the machine's own ceilings: the cores'
    // arithmetic peak (f32 FMAs, or bf16 dot products where the stage runs on them; the
    // sgemm's rate where the CPU has no AVX-512) and the read bandwidth.
    let ceilings = match &device {
        Device::Cpu(cpu) => {
            use alexnet::runtime::cpu::probe::{self, peak_gflops, Peak};
            let threads = cpu.threads();
            let sgemm = probe::gemm_gflops();
            let best = |p| {
                (0..3)
                    .filter_map(|_| peak_gflops(p, threads, PEAK_ITERS))
                    .reduce(f64::max)
            };
            let fma = best(Peak::Fma);
            let dot = (cpu.precision() == alexnet::ir::Precision::Bf16)
                .then(|| best(Peak::Bf16Dot))
                .flatten();
            let read = probe::read_bandwidth();
            let peaks: String = [(Peak::Fma, fma), (Peak::Bf16Dot, dot)]
                .iter()
                .filter_map(|(p, r)| Some(format!("{} peak {:.0} GFLOP/s, ", p.name(), (*r)?)))
                .collect();
            writeln!(
                ctx.out,
                "ceilings: {peaks}sgemm 1024x1024x1024 {sgemm:.0} GFLOP/s, read {read:.1} GB/s (measured now)"
            )?;
            Some(Ceilings {
                f32: fma.unwrap_or(sgemm),
                dot: dot.unwrap_or(sgemm),
                read,
            })
        }
        _ => None,
    };
    // What the backend reads of each layer's parameters, whether it may run Winograd, and
    // which layers' products run on bf16 dot products.
    let (param_bytes, winograd, on_dots): (Box<ParamBytes>, bool, Box<OnDots>) = match &device {
        Device::Cpu(c) => {
            let (c, d) = (c.clone(), c.clone());
            let winograd = c.uses_winograd();
            (
                Box::new(move |l| c.param_bytes(l)),
                winograd,
                Box::new(move |l| d.dot_products(l)),
            )
        }
        _ => (
            Box::new(|l| 4 * l.param_count()),
            false,
            Box::new(|_| false),
        ),
    };
    let t0 = Instant::now();
    let model = Model::init(device, plan.clone(), 0)?;
    writeln!(
        ctx.out,
        "model ready (weights, kernels compiled or loaded from the cache) in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1e3
    )?;
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
        for _ in 0..runs {
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
        writeln!(
            ctx.out,
            "batch {n:>4}: {:8.2} ms per batch, {:8.1} images/s (median of {runs})",
            total * 1e3,
            n as f64 / total
        )?;
        let per_stage: Vec<String> = names
            .iter()
            .zip(stages.iter_mut())
            .map(|((name, _), v)| format!("{name} {:.2}", median(v) * 1e3))
            .collect();
        writeln!(ctx.out, "  stages (ms): {}", per_stage.join(", "))?;
        if let Some(Ceilings {
            f32,
            dot,
            read: gbs,
        }) = ceilings
        {
            // Timed stages by label (inference skips dropout).
            let by_label: std::collections::HashMap<String, alexnet::ir::Stage> = plan
                .inference_stages()
                .into_iter()
                .map(|st| (plan.stage_label(st), st))
                .collect();
            let roof: Vec<String> = names
                .iter()
                .zip(stages.iter_mut())
                .filter_map(|((label, _), v)| Some((label, by_label.get(label)?, v)))
                .map(|(label, &st, v)| {
                    let (flops, bytes) = stage_work(plan, st, n, &param_bytes);
                    let secs = median(v);
                    let gflops = if on_dots(&plan.layers[st.layer]) {
                        dot
                    } else {
                        f32
                    };
                    // Bound by memory when its arithmetic intensity is below the ridge.
                    if flops > 0.0 && flops / bytes >= gflops / gbs {
                        let r = flops / secs / 1e9;
                        format!(
                            "{label} {r:.0} GFLOP/s ({:.0}% of peak)",
                            100.0 * r / gflops
                        )
                    } else {
                        let r = bytes / secs / 1e9;
                        format!("{label} {r:.1} GB/s ({:.0}%)", 100.0 * r / gbs)
                    }
                })
                .collect();
            writeln!(ctx.out, "  against the ceilings: {}", roof.join(", "))?;
            if winograd {
                writeln!(
                    ctx.out,
                    "  (Winograd's convolutions counted at the direct definition's flops: they do fewer)"
                )?;
            }
        }
        if let Some(t) = &split {
            let unsplit = total;
            t.forward(&x)?;
            let mut totals = Vec::with_capacity(runs);
            let mut alone = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t0 = Instant::now();
                t.forward(&x)?;
                totals.push(t0.elapsed().as_secs_f64());
                alone.push(t.time_exchanges(n, false)?.as_secs_f64());
            }
            let total = median(&mut totals);
            let names: Vec<String> = t.backends().iter().map(|b| b.name()).collect();
            writeln!(
                ctx.out,
                "  split into towers on [{}]: {:8.2} ms per batch ({:+.1}% against unsplit); its exchanges ({:.1} MB) take {:.2} ms alone",
                names.join("; "),
                total * 1e3,
                100.0 * (total / unsplit - 1.0),
                (t.exchange_bytes_per_image() * n) as f64 / 1e6,
                median(&mut alone) * 1e3
            )?;
        }
    }
    Ok(())
}

/// What `kernels` compiles and reports besides the network's forward kernels.
struct KernelsOptions {
    /// Also the training kernels.
    training: bool,
    /// The kernels of this precision.
    precision: alexnet::ir::Precision,
    /// The roofline report at this batch size.
    report: Option<usize>,
}

fn kernels(
    ctx: &mut Ctx,
    net: Net,
    arch: &str,
    dump: Option<&std::path::Path>,
    options: &KernelsOptions,
) -> Result<(), AnyError> {
    let (training, precision, report) = (options.training, options.precision, options.report);
    use alexnet::codegen::cuda;
    use alexnet::runtime::cuda::{cache::Cache, nvrtc};
    use rayon::prelude::*;
    let plan = net.plan();
    if let Some(dir) = dump {
        writeln!(
            ctx.out,
            "wrote {}",
            alexnet::codegen::dump_cuda(plan, dir)?.display()
        )?;
    }
    let (major, minor) = nvrtc::version()?;
    let kernels = cuda::kernels_for(plan, arch);
    let forward = kernels.forward_in(precision);
    let training_only = |k: &alexnet::ir::KernelSpec| training_only(plan, k);
    let training_kernels = kernels.training_in(precision);
    let specs: Vec<&alexnet::ir::KernelSpec> = if training {
        forward.iter().chain(training_kernels.iter()).collect()
    } else {
        forward.iter().filter(|k| !training_only(k)).collect()
    };
    let units: Vec<(String, String)> = specs
        .iter()
        .map(|k| (cuda::source(k), format!("{}.cu", k.name())))
        .collect();
    let opts = vec!["--ptxas-options=-v".to_string()];
    writeln!(
        ctx.out,
        "{}: {} kernels, NVRTC {major}.{minor}, {arch}, {} in {precision}",
        plan.name,
        units.len(),
        if training {
            "forward and training"
        } else {
            "forward"
        }
    )?;
    // Where each conv and fc stage's tile comes from (issue 17's tuning tables).
    let tiles: Vec<String> = cuda::tile_sources(plan, precision, arch)
        .into_iter()
        .map(|(label, _, source)| format!("{label} {source}"))
        .collect();
    writeln!(ctx.out, "tiles: {}", tiles.join(", "))?;
    let t0 = Instant::now();
    let compiled: Vec<_> = units
        .par_iter()
        .map(|(src, name)| nvrtc::compile_cubin(src, name, arch, &opts))
        .collect::<Result<_, _>>()?;
    let cold = t0.elapsed();
    let resources: Vec<_> = compiled
        .iter()
        .flat_map(|c| nvrtc::ptxas_report(&c.log))
        .collect();
    {
        for r in &resources {
            writeln!(
                ctx.out,
                "  {:<40} {:>3} registers {:>6} B shared {:>3} B spilled {:>3} B stack",
                r.name,
                r.registers,
                r.shared_bytes,
                r.spill_store_bytes + r.spill_load_bytes,
                r.stack_frame_bytes
            )?;
        }
    }
    writeln!(
        ctx.out,
        "cold compile (parallel over {} threads, no cache): {:.0} ms",
        rayon::current_num_threads(),
        cold.as_secs_f64() * 1e3
    )?;
    // The runtime's path: through the CUBIN cache (a temporary one, passed as an argument:
    // fill it, then hit it). Its folder is this call's own, even with others running in
    // the same process.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "alexnet-kernels-{}-{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    let cache = Cache::at(&dir);
    let through_cache = || -> Result<std::time::Duration, AnyError> {
        let t = Instant::now();
        for (src, name) in &units {
            cache.cubin(src, name, arch, &opts)?;
        }
        Ok(t.elapsed())
    };
    let _fill = through_cache()?;
    let hit = through_cache()?;
    writeln!(
        ctx.out,
        "cache hit, all kernels: {:.1} ms",
        hit.as_secs_f64() * 1e3
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(batch) = report {
        roofline(ctx, plan, &specs, &resources, batch)?;
    }
    Ok(())
}

/// Whether only training runs `k`: the `Forward` kernel of an LRN, or of the pooling
/// after it, which inference fuses into one (`ForwardPooled`).
fn training_only(plan: &alexnet::ir::Plan, k: &alexnet::ir::KernelSpec) -> bool {
    k.role == alexnet::ir::Role::Forward
        && plan
            .inference_stages()
            .iter()
            .any(|st| st.fused_pool && (st.layer..=st.last()).contains(&k.layer()))
}

/// `kernels --report`: each kernel's occupancy, work and roofline time at `batch`.
fn roofline(
    ctx: &mut Ctx,
    plan: &alexnet::ir::Plan,
    specs: &[&alexnet::ir::KernelSpec],
    resources: &[alexnet::runtime::cuda::nvrtc::KernelResources],
    batch: usize,
) -> Result<(), AnyError> {
    use alexnet::codegen::cuda::roofline::{estimate, Bound, H200};
    let gpu = H200;
    writeln!(
        ctx.out,
        "\nroofline at batch {batch} on an {} ({} SMs; measured ceilings: f32 {:.0} TFLOP/s, tensor cores tf32 {:.0} and 16-bit {:.0} TFLOP/s, {:.1} TB/s):",
        gpu.name,
        gpu.sms,
        gpu.f32_flops / 1e12,
        gpu.tf32_flops / 1e12,
        gpu.f16_flops / 1e12,
        gpu.bandwidth / 1e12
    )?;
    writeln!(
        ctx.out,
        "  {:<40} {:>4} {:>6} {:>7} {:>7} {:>10} {:>9} {:>9}  bound",
        "kernel", "regs", "smem B", "blk/SM", "grid", "GFLOP", "MB", "model us"
    )?;
    let mut totals = [0.0f64; 2];
    for spec in specs {
        let Some(r) = resources.iter().find(|r| r.name == spec.name()) else {
            return Err(format!("ptxas reported nothing for `{}`", spec.name()).into());
        };
        let e = estimate(spec, plan, batch, &gpu, r.registers, r.shared_bytes);
        let forward = matches!(
            spec.role,
            alexnet::ir::Role::Forward
                | alexnet::ir::Role::ForwardReduce
                | alexnet::ir::Role::ForwardPooled
        ) && !training_only(plan, spec);
        let part = usize::from(!forward);
        totals[part] += e.seconds;
        writeln!(
            ctx.out,
            "  {:<40} {:>4} {:>6} {:>7} {:>7} {:>10.4} {:>9.2} {:>9.1}  {}",
            spec.name(),
            r.registers,
            r.shared_bytes,
            e.blocks_per_sm,
            e.blocks,
            e.flops as f64 / 1e9,
            e.bytes as f64 / 1e6,
            e.seconds * 1e6,
            match e.bound {
                Bound::Compute if e.fill < 1.0 =>
                    format!("compute, grid fills {:.0}% of the GPU", 100.0 * e.fill),
                Bound::Compute => "compute".to_string(),
                Bound::Memory => "memory".to_string(),
            }
        )?;
    }
    writeln!(
        ctx.out,
        "model total: forward {:.2} ms{}",
        totals[0] * 1e3,
        if totals[1] > 0.0 {
            format!(
                ", training kernels {:.2} ms (a step runs the forward kernels too, with LRN and pooling apart)",
                totals[1] * 1e3
            )
        } else {
            String::new()
        }
    )?;
    Ok(())
}
