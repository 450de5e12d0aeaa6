//! `alexnet eval` (top-1/top-5 error on the centre crop and with the paper's ten crops, a
//! confusion summary), `alexnet classify` (top 5 of image files) and `alexnet filters`
//! (the first layer's filters as a PNG).

use std::path::{Path, PathBuf};

use alexnet::ir::Op;
use alexnet::runtime::cpu::softmax;
use alexnet::runtime::data::loader;
use alexnet::runtime::data::patch::Draw;
use alexnet::runtime::data::pipeline::Preprocess;
use alexnet::runtime::eval::{average_crops, top_k, Evaluation};
use alexnet::runtime::prelude::*;
use alexnet::runtime::weights::read_metadata;
use alexnet::runtime::{Cpu, Device, Model, Tensor};

use crate::args::{DeviceArgs, Net};
use crate::data::{self, DataSpec};
use crate::{pictures, progress, AnyError, Ctx};

/// The network a checkpoint holds: `given`, or the one its metadata names.
fn network(given: Option<Net>, weights: &Path) -> Result<Net, AnyError> {
    if let Some(n) = given {
        return Ok(n);
    }
    let meta = read_metadata(weights)?;
    let name = meta.get("network").ok_or_else(|| {
        format!(
            "{} does not say which network it holds; name it with --net",
            weights.display()
        )
    })?;
    Net::all()
        .into_iter()
        .find(|n| *n.plan().name == **name)
        .ok_or_else(|| {
            format!(
                "{}: unknown network `{name}`; name it with --net",
                weights.display()
            )
            .into()
        })
}

/// A network ready to classify: its model, how images are prepared for it, and whether its
/// probabilities need a softmax on the host (a network that ends in a fully connected
/// layer, as torchvision's does, gives logits).
struct Classifier {
    model: Model<Device>,
    pre: Preprocess,
    weights: PathBuf,
    host_softmax: bool,
}

impl Classifier {
    /// Class probabilities of a batch, `[n, classes]` row by row.
    fn probabilities(&self, x: &Tensor) -> Result<Vec<f32>, AnyError> {
        self.softmax(self.model.forward(x)?)
    }

    /// Class probabilities of the patches the backend cuts from a batch of 8-bit images
    /// (`per_image` draws each, evaluation units), one row per draw.
    fn probabilities_of_images(
        &self,
        images: &[u8],
        draws: &[Draw],
        per_image: usize,
    ) -> Result<Vec<f32>, AnyError> {
        let cut = self.pre.eval_cut();
        self.softmax(self.model.forward_images(&cut, images, draws, per_image)?)
    }

    /// The network's output as probabilities.
    fn softmax(&self, y: Tensor) -> Result<Vec<f32>, AnyError> {
        if !self.host_softmax {
            return Ok(y.into_data());
        }
        let mut p = vec![0.0; y.data().len()];
        softmax(y.data(), &mut p, self.model.plan().output());
        Ok(p)
    }
}

/// A checkpoint's model (checked tensor by tensor against the network) and the
/// preprocessing saved beside it.
fn open(checkpoint: &Path, net: Option<Net>, device: &DeviceArgs) -> Result<Classifier, AnyError> {
    let (weights, data_file) = data::run_files(checkpoint)?;
    let net = network(net, &weights)?;
    let pre = Preprocess::load(&data_file).map_err(|e| {
        format!("{e} (`train` writes it beside the checkpoint; it holds the mean image and the class names)")
    })?;
    let plan = net.plan();
    pre.expect_input(plan.input)?;
    // A training state names its data; the data file beside it must be that run's (a
    // later run in the same folder may have stopped before its first checkpoint).
    if let Some(trained) = read_metadata(&weights)?.get("note.data") {
        if *trained != pre.source {
            return Err(format!(
                "{} was trained on {trained}, but {} was prepared for {}",
                weights.display(),
                data_file.display(),
                pre.source
            )
            .into());
        }
    }
    let model = Model::load(device.open()?, plan.clone(), &weights)?;
    Ok(Classifier {
        host_softmax: !plan.ends_in_softmax(),
        model,
        pre,
        weights,
    })
}

/// `--preprocess`: how images are prepared for weights trained elsewhere.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Preset {
    /// torchvision's for its ImageNet models: shorter side 256, centre 224, ImageNet's
    /// per-channel mean and std.
    Torchvision,
    /// The paper's as `train` does it: shorter side 256, centre crop, ImageNet's
    /// per-channel mean subtracted from 0..255, times 1/128.
    Paper,
}

/// A weights file trained elsewhere (converted from torchvision, say) with a preset's
/// preprocessing and ImageNet's class names.
fn open_weights(
    weights: &Path,
    net: Option<Net>,
    preset: Option<Preset>,
    device: &DeviceArgs,
) -> Result<Classifier, AnyError> {
    if !weights.is_file() {
        return Err(format!(
            "{}: no such weights file{}",
            weights.display(),
            if weights.is_dir() {
                " (it is a folder: a run's folder goes to --checkpoint)"
            } else {
                " (scripts/convert_torchvision.py makes one from torchvision's ImageNet weights)"
            }
        )
        .into());
    }
    let net = network(net, weights)?;
    let plan = net.plan();
    let preset = match (preset, net) {
        (Some(p), _) => p,
        (None, Net::Torchvision) => Preset::Torchvision,
        (None, Net::Alexnet) => Preset::Paper,
        (None, Net::Small) => {
            return Err(format!(
                "no preprocessing preset for `{}`: give --preprocess, or classify with --checkpoint a run that `train` made",
                plan.name
            )
            .into())
        }
    };
    let pre = match preset {
        Preset::Torchvision => Preprocess::torchvision(plan.input)?,
        Preset::Paper => Preprocess::paper(plan.input)?,
    };
    let outputs = plan.output().len();
    if outputs != pre.classes.len() {
        return Err(format!(
            "`{}` has {outputs} outputs; the preset names ImageNet's {} classes",
            plan.name,
            pre.classes.len()
        )
        .into());
    }
    let model = Model::load(device.open()?, plan.clone(), weights)?;
    Ok(Classifier {
        host_softmax: !plan.ends_in_softmax(),
        model,
        pre,
        weights: weights.to_path_buf(),
    })
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A run's folder (its state.safetensors and data.safetensors) or a weights file with
    /// data.safetensors beside it.
    #[arg(long, default_value = "runs/small")]
    checkpoint: PathBuf,
    /// The network; default: the one the checkpoint names.
    #[arg(long, value_enum)]
    net: Option<Net>,
    /// Evaluate on this image folder (its val/ split if it has one, otherwise all of it);
    /// default: the run's validation images.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Images per batch (ten-crop batches hold ten patches per image).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    batch: u64,
    /// Evaluate the centre crop only (no ten-crop averaging).
    #[arg(long)]
    centre_only: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn eval(ctx: &mut Ctx, a: EvalArgs) -> Result<(), AnyError> {
    let classifier = open(&a.checkpoint, a.net, &a.device)?;
    let (model, pre, weights) = (&classifier.model, &classifier.pre, &classifier.weights);
    let spec = match &a.data {
        Some(dir) => DataSpec::from_dir(dir)?,
        None => DataSpec::parse(&pre.source).ok_or_else(|| {
            format!(
                "unknown data source `{}`; name a folder with --data",
                pre.source
            )
        })?,
    };
    spec.expect_side(pre.side)?;
    let images = spec.evaluation()?;
    if images.class_names() != pre.classes {
        return Err(format!(
            "{} has classes {:?}, the network was trained on {:?}",
            spec.describe(),
            images.class_names(),
            pre.classes
        )
        .into());
    }
    let classes = model.plan().output().len();
    writeln!(
        ctx.out,
        "evaluating {} ({}) on {}: {} images, {} ({})",
        model.plan().name,
        weights.display(),
        spec.describe(),
        images.len(),
        if a.centre_only {
            "centre crop"
        } else {
            "centre crop and ten crops"
        },
        model.backend().name()
    )?;
    let mut centre = Evaluation::new(classes);
    let mut ten = Evaluation::new(classes);
    let batch = a.batch as usize;
    let bar = progress::bar(ctx, images.len() as u64, "evaluating");
    let order: Vec<usize> = (0..images.len()).collect();
    // The images go to the backend as bytes, which cuts their patches (the centre, or the
    // ten crops: a thirtieth of their f32 bytes).
    let per_image: Vec<Draw> = if a.centre_only {
        vec![Draw::centre(pre.side, pre.crop)]
    } else {
        Draw::ten_crops(pre.side, pre.crop).to_vec()
    };
    let crops = per_image.len();
    let mut batches =
        loader::byte_loader(images.clone(), order, batch, pre.side, data::workers(), 4)?;
    while let Some((x, labels)) = batches.next() {
        let draws: Vec<Draw> = labels.iter().flat_map(|_| per_image.clone()).collect();
        let probs = classifier.probabilities_of_images(&x, &draws, crops)?;
        batches.recycle(x);
        let probs = probs.as_slice();
        if crops == 1 {
            centre.add(probs, &labels)?;
        } else {
            // The centre patch is the fifth of each image's ten.
            let stride = 10 * classes;
            let centres: Vec<f32> = probs
                .chunks(stride)
                .flat_map(|p| &p[4 * classes..5 * classes])
                .copied()
                .collect();
            centre.add(&centres, &labels)?;
            ten.add(&average_crops(probs, 10, classes)?, &labels)?;
        }
        bar.inc(labels.len() as u64);
    }
    bar.finish_and_clear();
    let report = batches.report();
    if centre.images() == 0 {
        return Err(format!(
            "{}: no image could be read: {}",
            spec.describe(),
            report.brief()
        )
        .into());
    }
    if report.skipped > 0 {
        writeln!(ctx.out, "{report}")?;
    }
    let mut line = |name: &str, e: &Evaluation| {
        writeln!(
            ctx.out,
            "{name}: top-1 error {:.2}%, top-5 error {:.2}%, loss {:.4} ({} images)",
            100.0 * e.top1_error(),
            100.0 * e.top5_error(),
            e.loss(),
            e.images()
        )
    };
    line("centre crop", &centre)?;
    let best = if a.centre_only {
        &centre
    } else {
        line("ten crops  ", &ten)?;
        &ten
    };
    writeln!(
        ctx.out,
        "\nper class ({}):\n{}",
        if a.centre_only {
            "centre crop"
        } else {
            "ten crops"
        },
        best.summary(&pre.classes)
    )?;
    Ok(())
}

#[derive(clap::Args)]
pub struct ClassifyArgs {
    /// JPEG or PNG files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// A run's folder or a weights file with data.safetensors beside it.
    #[arg(long, default_value = "runs/small")]
    checkpoint: PathBuf,
    /// Weights trained elsewhere, e.g. torchvision's converted by
    /// scripts/convert_torchvision.py: prepared with a preset (--preprocess) and named with
    /// ImageNet's classes, instead of a run's checkpoint.
    #[arg(long, conflicts_with = "checkpoint")]
    weights: Option<PathBuf>,
    /// How images are prepared for --weights; default: torchvision's for --net torchvision,
    /// the paper's for --net alexnet.
    #[arg(long, value_enum, requires = "weights")]
    preprocess: Option<Preset>,
    /// The network; default: the one the checkpoint or weights file names.
    #[arg(long, value_enum)]
    net: Option<Net>,
    /// Average the softmax over the paper's ten patches instead of the centre patch.
    #[arg(long)]
    ten_crop: bool,
    /// How many classes to print per image (of those the network was trained on).
    #[arg(long, default_value_t = 5)]
    top: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn classify(ctx: &mut Ctx, a: ClassifyArgs) -> Result<(), AnyError> {
    let classifier = match &a.weights {
        Some(w) => open_weights(w, a.net, a.preprocess, &a.device)?,
        None => open(&a.checkpoint, a.net, &a.device)?,
    };
    let (model, pre) = (&classifier.model, &classifier.pre);
    let classes = model.plan().output().len();
    let s = model.plan().input;
    let (transform, crops) = if a.ten_crop {
        (pre.ten_crop_transform(), 10)
    } else {
        (pre.eval_transform(), 1)
    };
    let mut failed = 0;
    for path in &a.images {
        let x = match pre.load_file(path) {
            Ok(img) => transform(img, 0),
            Err(e) => {
                writeln!(ctx.err, "{}: skipped: {e}", path.display())?;
                failed += 1;
                continue;
            }
        };
        let probs = classifier.probabilities(&Tensor::new(vec![crops, s.c, s.h, s.w], x)?)?;
        let probs = average_crops(&probs, crops, classes)?;
        // Only the outputs of the classes the network was trained on (a network with more
        // outputs than classes leaves the rest untrained).
        let named = pre.classes.len().clamp(1, classes);
        writeln!(ctx.out, "{}:", path.display())?;
        for (rank, (c, p)) in top_k(&probs[..named], a.top).into_iter().enumerate() {
            let name = pre
                .classes
                .get(c)
                .cloned()
                .unwrap_or_else(|| format!("class {c}"));
            writeln!(ctx.out, "  {}. {name:<20} {:6.2}%", rank + 1, 100.0 * p)?;
        }
    }
    if failed > 0 {
        return Err(format!("{failed} of {} images could not be read", a.images.len()).into());
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct FiltersArgs {
    /// A run's folder (its state.safetensors) or a weights file.
    #[arg(long, default_value = "runs/small")]
    checkpoint: PathBuf,
    /// The network; default: the one the checkpoint names.
    #[arg(long, value_enum)]
    net: Option<Net>,
    /// The PNG to write; default: filters.png beside the checkpoint.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Pixels per filter weight (at most 64); default: the smallest zoom that makes the
    /// image at least 800 pixels wide (and each filter at least 40 pixels tall).
    #[arg(long)]
    zoom: Option<usize>,
}

pub fn filters(ctx: &mut Ctx, a: FiltersArgs) -> Result<(), AnyError> {
    let (weights, _) = data::run_files(&a.checkpoint)?;
    let net = network(a.net, &weights)?;
    let plan = net.plan();
    // Loading checks every tensor against the network, naming any that do not fit.
    let model = Model::load(Cpu::new(), plan.clone(), &weights)?;
    let first = plan
        .layers
        .iter()
        .find(|l| matches!(l.op, Op::Conv { .. }))
        .ok_or_else(|| format!("`{}` has no convolution", plan.name))?;
    let name = format!("{}.weight", first.name);
    let t = model
        .tensors()?
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| format!("{} has no `{name}`", weights.display()))?;
    let [k, c, kh, kw] = t.shape[..] else {
        return Err(format!("`{name}` is not a 4-d tensor").into());
    };
    if c != 3 && c != 1 {
        return Err(format!(
            "`{name}` has {c} input channels; only RGB or grey filters can be drawn"
        )
        .into());
    }
    let towers = if plan.split > 1 && k % plan.split == 0 {
        plan.split
    } else {
        1
    };
    let zoom = a
        .zoom
        .unwrap_or_else(|| pictures::filter_zoom([k, c, kh, kw], towers))
        .clamp(1, 64);
    let img = pictures::filter_grid(&t.data, [k, c, kh, kw], towers, zoom);
    let out = a.output.unwrap_or_else(|| {
        weights
            .parent()
            .unwrap_or(Path::new("."))
            .join("filters.png")
    });
    pictures::save_png(&img, &out)?;
    writeln!(
        ctx.out,
        "wrote {} ({k} filters of {c}x{kh}x{kw} from `{name}`{}, {}x{} pixels)",
        out.display(),
        if towers > 1 {
            ", one block of rows per tower"
        } else {
            ""
        },
        img.width(),
        img.height()
    )?;
    Ok(())
}
