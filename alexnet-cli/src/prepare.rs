//! `alexnet prepare`: an image folder decoded once into a prepared data set (shards of
//! raw 8-bit images, an index with the statistics training needs), which `train --data`
//! and `eval --data` then read instead of decoding every file every epoch.

use std::path::PathBuf;
use std::time::Instant;

use alexnet::runtime::data::prepared::{self, PrepareOptions, Prepared, Storage};
use clap::Args;

use crate::{progress, AnyError, Ctx, Interrupted};

#[derive(Args)]
pub struct PrepareArgs {
    /// The image folder: `DIR/<class>/<image>`, or `DIR/train/...` and `DIR/val/...`.
    #[arg(long, required_unless_present = "verify")]
    data: Option<PathBuf>,
    /// The folder to write the prepared set to (made if missing). Running the command
    /// again on it keeps the shards an interrupted run finished.
    #[arg(long, required_unless_present = "verify")]
    out: Option<PathBuf>,
    /// Images are rescaled so that the shorter side is this, and the centre square
    /// kept: 256 for AlexNet's 227x227 input (and for 224), 37 for the small net's 32x32.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=4096))]
    size: u64,
    /// How images are stored: `raw` (8-bit RGB: fastest to read, 192 KiB per image at
    /// 256x256) or `jpeg` (re-encoded at --quality: a few tens of KiB, decoded when read).
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    format: Format,
    /// The JPEG quality of `--format jpeg`.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    quality: u8,
    /// Source images per shard file.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    shard_images: u64,
    /// Only check the prepared set in this folder: every shard read whole against the
    /// index's checksums.
    #[arg(long, conflicts_with_all = ["data", "out"])]
    verify: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Raw,
    Jpeg,
}

pub fn prepare(ctx: &mut Ctx, a: PrepareArgs) -> Result<(), AnyError> {
    let (data, out) = match (a.verify, a.data, a.out) {
        (Some(dir), _, _) => return verify(ctx, &dir),
        (None, Some(data), Some(out)) => (data, out),
        // clap requires both without --verify.
        _ => return Err("prepare needs --data and --out (or --verify DIR)".into()),
    };
    let t0 = Instant::now();
    let files: u64 = count_files(&data)?;
    let bar = progress::bar(ctx, files, "prepare");
    let opts = PrepareOptions {
        side: a.size as usize,
        shard_images: a.shard_images as usize,
        storage: match a.format {
            Format::Raw => Storage::Raw,
            Format::Jpeg => Storage::Jpeg(a.quality),
        },
    };
    let stop = ctx.stop;
    let report = prepared::prepare(&data, &out, opts, &|done| bar.set_position(done), &|| {
        stop.load(std::sync::atomic::Ordering::SeqCst)
    })?;
    bar.finish_and_clear();
    if report.interrupted {
        return Err(Box::new(Interrupted(format!(
            "stopped: the finished shards are kept in {}; the same command finishes the set",
            out.display()
        ))));
    }
    let secs = t0.elapsed().as_secs_f64();
    for s in &report.splits {
        writeln!(
            ctx.out,
            "{}: {} images from {} files in {} shard(s) ({} written, {} kept from an earlier run)",
            s.name,
            s.images,
            s.files,
            s.written + s.reused,
            s.written,
            s.reused
        )?;
        if s.skipped.skipped > 0 {
            writeln!(ctx.out, "  {}", s.skipped)?;
        }
    }
    let images: usize = report.splits.iter().map(|s| s.files).sum();
    writeln!(
        ctx.out,
        "prepared {} at {}x{} ({}) in {}: {:.2} GB, {secs:.1} s, {:.0} files/s",
        data.display(),
        a.size,
        a.size,
        opts.storage.describe(),
        out.display(),
        report.bytes as f64 / 1e9,
        images as f64 / secs.max(1e-9)
    )?;
    Ok(())
}

/// `alexnet prepare --verify DIR`.
fn verify(ctx: &mut Ctx, dir: &std::path::Path) -> Result<(), AnyError> {
    let set = Prepared::open(dir)?;
    let bar = progress::spinner(ctx, "reading every shard");
    set.verify()?;
    bar.finish_and_clear();
    writeln!(
        ctx.out,
        "{}: {} training and {} validation images at {}x{}, every checksum holds",
        dir.display(),
        alexnet::runtime::data::loader::Images::len(&set.train),
        set.val
            .as_ref()
            .map_or(0, alexnet::runtime::data::loader::Images::len),
        set.side,
        set.side
    )?;
    Ok(())
}

/// The number of image files for the progress bar (what `ImageFolder` will list).
fn count_files(dir: &std::path::Path) -> Result<u64, AnyError> {
    use alexnet::runtime::data::folder::ImageFolder;
    let (train, val) = ImageFolder::open_split(dir)?;
    Ok((train.len() + val.map_or(0, |v| v.len())) as u64)
}
