//! Where the command line's images come from: generated shapes, an image folder, or a
//! prepared set (`alexnet prepare`), all made into inputs by the library's [`Preprocess`]
//! and loaded in background threads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use alexnet::runtime::data::folder::ImageFolder;
use alexnet::runtime::data::loader::{self, Images, LoadReport, Loader};
use alexnet::runtime::data::patch::Draw;
use alexnet::runtime::data::pipeline::{Preprocess, SyntheticImages};
use alexnet::runtime::data::prepared::{self, Prepared};

use crate::AnyError;

/// A data set as the command line names it: a folder, or the generated shapes with their
/// settings. Its `Display` form is what a run records (and `parse` reads back).
#[derive(Clone, Debug, PartialEq)]
pub enum DataSpec {
    Folder(PathBuf),
    /// A prepared set's folder (`alexnet prepare`).
    Prepared(PathBuf),
    Generated {
        classes: usize,
        seed: u64,
        images: u64,
        val_images: u64,
    },
}

impl std::fmt::Display for DataSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataSpec::Folder(p) => write!(f, "folder:{}", p.display()),
            DataSpec::Prepared(p) => write!(f, "prepared:{}", p.display()),
            DataSpec::Generated {
                classes,
                seed,
                images,
                val_images,
            } => write!(
                f,
                "generated:classes={classes},seed={seed},images={images},val_images={val_images}"
            ),
        }
    }
}

impl DataSpec {
    /// Reads the `Display` form back.
    pub fn parse(s: &str) -> Option<Self> {
        if let Some(p) = s.strip_prefix("folder:") {
            return Some(DataSpec::Folder(PathBuf::from(p)));
        }
        if let Some(p) = s.strip_prefix("prepared:") {
            return Some(DataSpec::Prepared(PathBuf::from(p)));
        }
        let rest = s.strip_prefix("generated:")?;
        let mut kv = std::collections::HashMap::new();
        for part in rest.split(',') {
            let (k, v) = part.split_once('=')?;
            kv.insert(k, v.parse::<u64>().ok()?);
        }
        Some(DataSpec::Generated {
            classes: usize::try_from(*kv.get("classes")?).ok()?,
            seed: *kv.get("seed")?,
            images: *kv.get("images")?,
            val_images: *kv.get("val_images")?,
        })
    }

    /// `--data DIR`: a prepared set when `DIR` has its index, else an image folder; the
    /// full path (a run records it, and `eval` finds the data from anywhere).
    pub fn from_dir(dir: &Path) -> Result<Self, AnyError> {
        let full = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if prepared::is_prepared(&full) {
            return Ok(DataSpec::Prepared(full));
        }
        // Shards without an index: a `prepare` that has not finished; its error says so.
        let has_shards = std::fs::read_dir(&full).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".shard"))
        });
        if has_shards {
            Prepared::open(&full)?;
        }
        Ok(DataSpec::Folder(full))
    }

    /// For a prepared set, an error unless its images have the side `side` (that of the
    /// run's preprocessing), with the `prepare` command that makes them; nothing to check
    /// for the others, which are decoded at any side.
    pub fn expect_side(&self, side: usize) -> Result<(), AnyError> {
        if let DataSpec::Prepared(dir) = self {
            let set = Prepared::open(dir)?;
            if set.side != side {
                return Err(format!(
                    "{} was prepared at {}x{}; this network needs {side}x{side} images: `alexnet prepare --data {} --out DIR --size {side}` makes them",
                    dir.display(),
                    set.side,
                    set.side,
                    if set.source.is_empty() { "IMAGES" } else { &set.source }
                )
                .into());
            }
        }
        Ok(())
    }

    /// The training and validation images: the folder's `train/` and `val/` (or the whole
    /// folder and none), the prepared set's splits, or generated images `0..images` and
    /// `images..images+val_images`.
    pub fn open(&self) -> Result<(Set, Option<Set>), AnyError> {
        match self {
            DataSpec::Prepared(dir) => {
                let set = Prepared::open(dir)?;
                Ok((Arc::new(set.train), set.val.map(|v| Arc::new(v) as Set)))
            }
            DataSpec::Folder(dir) => {
                let (train, val) = ImageFolder::open_split(dir)?;
                Ok((Arc::new(train), val.map(|v| Arc::new(v) as Set)))
            }
            DataSpec::Generated {
                classes,
                seed,
                images,
                val_images,
            } => Ok((
                Arc::new(SyntheticImages::new(
                    *classes,
                    *seed,
                    0,
                    to_usize(*images)?,
                )?),
                Some(Arc::new(SyntheticImages::new(
                    *classes,
                    *seed,
                    *images,
                    to_usize(*val_images)?,
                )?)),
            )),
        }
    }

    /// The images to evaluate on: the validation images, or a folder without a `val/`
    /// split as a whole.
    pub fn evaluation(&self) -> Result<Arc<dyn Images>, AnyError> {
        let (train, val) = self.open()?;
        Ok(val.unwrap_or(train))
    }

    /// How images become inputs, for a new run of a network with input `input`: a
    /// prepared set's own statistics (an error if it was prepared at another size), or
    /// those fitted on the training images now (with the files that did not load).
    pub fn preprocess(
        &self,
        train: &dyn Images,
        input: alexnet::ir::Shape,
    ) -> Result<(Preprocess, LoadReport), AnyError> {
        match self {
            DataSpec::Prepared(dir) => Ok((
                Prepared::open(dir)?.preprocess(input, &self.to_string())?,
                LoadReport::default(),
            )),
            _ => Ok(Preprocess::fit(train, input, &self.to_string())?),
        }
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        match self {
            DataSpec::Folder(p) => p.display().to_string(),
            DataSpec::Prepared(p) => format!("{} (prepared)", p.display()),
            DataSpec::Generated { classes, .. } => format!("generated shapes ({classes} classes)"),
        }
    }
}

/// A shared set of images.
pub type Set = Arc<dyn Images>;

fn to_usize(n: u64) -> Result<usize, AnyError> {
    usize::try_from(n).map_err(|_| format!("{n} images are too many for this machine").into())
}

/// Background decoding threads: the machine's cores, at most 8.
pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(8))
}

/// `images` in `order` as bytes, in batches of `batch`, each image with its training
/// draw for epoch `epoch` of the run with seed `seed` (`first` is the position of
/// `order[0]` in the epoch's whole order): what `Train::step_images` takes, so that the
/// backend cuts the patches (a GPU receives the bytes: at 256 -> 227, about a third of the
/// patches' f32 bytes).
pub fn image_batches(
    images: Arc<dyn Images>,
    order: Vec<usize>,
    batch: usize,
    pre: &Preprocess,
    (seed, epoch, first): (u64, u64, u64),
) -> Result<ImageBatches, AnyError> {
    let loader = loader::byte_loader(images, order, batch, pre.side, workers(), 4)?;
    Ok(ImageBatches {
        loader,
        pre: pre.clone(),
        seed,
        epoch,
        first,
    })
}

/// A training batch of bytes: the images (HWC each), their draws and labels.
pub struct ImageBatch {
    pub images: Vec<u8>,
    pub draws: Vec<Draw>,
    pub labels: Vec<u32>,
}

/// Batches of [`image_batches`].
pub struct ImageBatches {
    loader: Loader<u8>,
    pre: Preprocess,
    seed: u64,
    epoch: u64,
    first: u64,
}

impl ImageBatches {
    /// The files skipped so far.
    pub fn report(&self) -> LoadReport {
        self.loader.report()
    }

    /// Where the next batch starts in the order (see `Loader::next_position`).
    pub fn next_position(&self) -> usize {
        self.loader.next_position()
    }

    /// Gives a batch's bytes back for a later batch to be read into (see
    /// `Loader::recycle`).
    pub fn recycle(&self, images: Vec<u8>) {
        self.loader.recycle(images);
    }
}

impl Iterator for ImageBatches {
    type Item = ImageBatch;

    fn next(&mut self) -> Option<ImageBatch> {
        let (images, labels) = self.loader.next()?;
        let draws = self
            .loader
            .last_positions()
            .iter()
            .map(|&p| self.pre.train_draw(self.seed, self.epoch, self.first + p))
            .collect();
        Some(ImageBatch {
            images,
            draws,
            labels,
        })
    }
}

/// The files next to a checkpoint: given a folder, its `state.safetensors` (the weights)
/// and `data.safetensors`; given a file, that file and the `data.safetensors` beside it.
pub fn checkpoint_files(path: &Path) -> (PathBuf, PathBuf) {
    use alexnet::runtime::data::pipeline::DATA_FILE;
    if path.is_dir() {
        (path.join("state.safetensors"), path.join(DATA_FILE))
    } else {
        let dir = path.parent().unwrap_or(Path::new("."));
        (path.to_path_buf(), dir.join(DATA_FILE))
    }
}

/// Whether `a` and `b` name one existing file (however spelled: compared canonicalised).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// [`checkpoint_files`] of a run that exists: an error for the user when the weights file
/// is not there (no run yet at that path), saying how to make one.
pub fn run_files(path: &Path) -> Result<(PathBuf, PathBuf), AnyError> {
    let (weights, data) = checkpoint_files(path);
    if weights.exists() {
        return Ok((weights, data));
    }
    let looks_like_a_file = path.extension().is_some_and(|e| e == "safetensors");
    Err(if looks_like_a_file && !path.is_dir() {
        format!(
            "{}: no such file; name a run's folder or a weights file (`alexnet train --checkpoint DIR` trains a run in DIR)",
            path.display()
        )
    } else {
        format!(
            "no run in {} yet (no {}): `alexnet train --checkpoint {}` trains one there",
            path.display(),
            path.join("state.safetensors").display(),
            path.display()
        )
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_specs_round_trip() {
        for spec in [
            DataSpec::Folder(PathBuf::from("/data/imagenet")),
            DataSpec::Prepared(PathBuf::from("/data/imagenet-256")),
            DataSpec::Generated {
                classes: 10,
                seed: 3,
                images: 4096,
                val_images: 512,
            },
        ] {
            assert_eq!(DataSpec::parse(&spec.to_string()), Some(spec));
        }
        assert_eq!(DataSpec::parse("generated:classes=10"), None);
        assert_eq!(DataSpec::parse("elsewhere"), None);
    }
}
