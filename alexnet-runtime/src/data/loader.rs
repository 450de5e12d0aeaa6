//! Loading a numbered set of labelled images in the background, whatever they come from:
//! an image folder of files (`folder::ImageFolder`), or generated images
//! (`pipeline::SyntheticImages`).
//!
//! [`loader`] decodes in background threads into a bounded queue of batches whose content
//! depends only on the order it is given, never on the number of workers (network inputs,
//! through a transform); [`byte_loader`] does the same with the images as bytes, for a
//! backend that cuts them itself (`backend::Augment`); [`mean_image`] averages the images
//! in parallel, exactly.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use image::RgbImage;
use rayon::prelude::*;

pub use super::decode::chw;
use super::decode::DecodeError;
use crate::error::{Error, Result};

/// How many skipped files a [`LoadReport`] names.
const REPORTED: usize = 5;

/// A numbered set of labelled images: image `i` has label `label(i)` and loads as an 8-bit
/// RGB image of `side` x `side` pixels (the paper's preparation: the shorter side rescaled
/// to `side`, the centre kept), or fails with a [`DecodeError`] that the loaders count
/// and skip.
pub trait Images: Send + Sync {
    /// How many images there are.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The class names, in label order.
    fn class_names(&self) -> Vec<String>;
    /// The label of image `i < len()`.
    fn label(&self, i: usize) -> u32;
    /// Where image `i` comes from, for reports: its path, or a name.
    fn describe(&self, i: usize) -> PathBuf;
    /// Image `i`, `side` x `side` (`side > 0`).
    fn load(&self, i: usize, side: usize) -> std::result::Result<RgbImage, DecodeError>;
    /// Image `i` as [`load`](Images::load) makes it, its bytes (HWC) written into `out`
    /// (`side * side * 3` bytes; any other length is a [`DecodeError::Corrupt`]). A set
    /// that can read its images in place (a prepared set) does so without allocating.
    fn load_into(
        &self,
        i: usize,
        side: usize,
        out: &mut [u8],
    ) -> std::result::Result<(), DecodeError> {
        let img = self.load(i, side)?;
        if img.as_raw().len() != out.len() {
            return Err(DecodeError::Corrupt(format!(
                "{} bytes loaded where {} were expected",
                img.as_raw().len(),
                out.len()
            )));
        }
        out.copy_from_slice(img.as_raw());
        Ok(())
    }
}

/// The mean of each pixel (3 x `side` x `side`, CHW, values 0..255) over up to `limit`
/// images spread evenly over the set, as [`Images::load`] prepares them, decoded in parallel.
/// Files that do not decode are skipped and counted in the report. All zeros when no
/// image decodes. The result does not depend on the number of threads.
pub fn mean_image(images: &dyn Images, side: usize, limit: usize) -> (Vec<f32>, LoadReport) {
    let size = 3 * side * side;
    let n = limit.min(images.len());
    let total = images.len();
    // Sums of 8-bit values in integers: exact, so independent of the reduction order.
    let (sum, count, skipped) = (0..n)
        .into_par_iter()
        .map(|k| k * total / n)
        .fold(
            || (vec![0u64; size], 0u64, Skipped::default()),
            |(mut sum, count, mut skipped), i| match images.load(i, side) {
                Ok(img) => {
                    for (s, v) in sum.iter_mut().zip(chw(&img)) {
                        *s += u64::from(v);
                    }
                    (sum, count + 1, skipped)
                }
                Err(e) => {
                    skipped.add(i, &images.describe(i), &e);
                    (sum, count, skipped)
                }
            },
        )
        .reduce(
            || (vec![0u64; size], 0u64, Skipped::default()),
            |(mut a, ca, sa), (b, cb, sb)| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                (a, ca + cb, sa.merge(sb))
            },
        );
    let mean = if count == 0 {
        vec![0.0; size]
    } else {
        sum.iter()
            .map(|&s| (s as f64 / count as f64) as f32)
            .collect()
    };
    (mean, skipped.into_report())
}

/// Starts loading the images `order[0], order[1], ...` in the background: `workers`
/// threads load them ([`Images::load`] at `side`), pass each through
/// `transform(image, position in order)` and a collector packs them into batches of
/// `batch` images (concatenated) with their labels, held in a queue of at most `queue`
/// batches. Batches come in `order`, each full: a file that does not decode is
/// skipped (see [`Loader::report`]) and the next image takes its place; the last
/// batch may be short. The batches depend only on `order`, not on `workers`.
///
/// Dropping the [`Loader`] early stops the threads. A panic in `transform` is raised
/// again by [`Loader::next`](Iterator::next).
///
/// An error if `batch` or `side` is 0 or an index in `order` is out of range.
pub fn loader(
    images: Arc<dyn Images>,
    order: Vec<usize>,
    batch: usize,
    side: usize,
    workers: usize,
    queue: usize,
    transform: Transform,
) -> Result<Loader> {
    let make: Make =
        Arc::new(move |img: RgbImage, p: u64| transform(chw(&img).map(f32::from).collect(), p));
    start(images, order, batch, side, workers, queue, make)
}

/// [`loader`] without a transform: each batch is its images as they load (HWC, `side *
/// side * 3` bytes each, an 8-bit RGB image's own layout), and
/// [`Loader::last_positions`] says where each came from in the order (to draw its
/// augmentation from). Skipped files, order and errors as [`loader`]'s.
///
/// Its `workers` threads (a thread pool of its own, apart from the backend's) read each
/// batch's images in parallel straight into the batch's buffer ([`Images::load_into`]),
/// so a prepared set's raw images are read once and never copied again on the host; the
/// next batches are read while the caller uses this one, up to `queue` ahead.
pub fn byte_loader(
    images: Arc<dyn Images>,
    order: Vec<usize>,
    batch: usize,
    side: usize,
    workers: usize,
    queue: usize,
) -> Result<Loader<u8>> {
    check(&*images, &order, batch, side)?;
    let workers = workers.clamp(1, order.len().max(1));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|k| format!("alexnet-loader-{k}"))
        .build()
        .map_err(|e| Error::Invalid(format!("image loader: no threads: {e}")))?;
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let spare = Arc::new(Spare::new(queue + 1));
    let (tx, rx) = sync_channel(queue);
    let (fill_report, fill_spare) = (Arc::clone(&report), Arc::clone(&spare));
    let thread = std::thread::spawn(move || {
        pool.install(|| {
            let out = Out {
                tx,
                report: &fill_report,
                spare: &fill_spare,
            };
            fill_batches(&*images, &order, batch, side, &out)
        })
    });
    Ok(Loader {
        rx: Some(rx),
        position: 0,
        positions: Vec::new(),
        threads: vec![thread],
        report,
        spare,
    })
}

/// [`byte_loader`]'s thread: fills each batch's buffer in place, its images read in
/// parallel on the current (the loader's own) thread pool, each straight into its slot
/// ([`Images::load_into`]: no copy after the read). A file that fails leaves a hole that
/// the next images close (moved down) and more positions fill. Returns as soon as the
/// loader is dropped (after the batch in hand).
fn fill_batches(set: &dyn Images, order: &[usize], batch: usize, side: usize, out: &Out<'_>) {
    let size = 3 * side * side;
    let mut p = 0;
    while p < order.len() {
        // A buffer given back is overwritten, not cleared: every slot kept is read into.
        let mut images = out.spare.take().unwrap_or_default();
        images.resize(batch * size, 0);
        let mut labels = Vec::with_capacity(batch);
        let mut positions = Vec::with_capacity(batch);
        while labels.len() < batch && p < order.len() {
            let filled = labels.len();
            let want = (batch - filled).min(order.len() - p);
            let results: Vec<_> = images[filled * size..(filled + want) * size]
                .par_chunks_mut(size)
                .enumerate()
                .map(|(k, slot)| set.load_into(order[p + k], side, slot))
                .collect();
            for (k, r) in results.into_iter().enumerate() {
                let i = order[p + k];
                match r {
                    Ok(()) => {
                        let (from, to) = (filled + k, labels.len());
                        if from != to {
                            images.copy_within(from * size..(from + 1) * size, to * size);
                        }
                        labels.push(set.label(i));
                        positions.push((p + k) as u64);
                    }
                    Err(e) => out
                        .report
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .add(&set.describe(i), &e),
                }
            }
            p += want;
        }
        if labels.is_empty() {
            break; // only skipped files were left
        }
        images.truncate(labels.len() * size);
        if out.tx.send((images, labels, positions, p)).is_err() {
            return; // the loader is gone
        }
    }
}

/// Where [`fill_batches`] puts what it makes.
struct Out<'a> {
    tx: SyncSender<Sent<u8>>,
    report: &'a Mutex<LoadReport>,
    spare: &'a Spare<u8>,
}

/// Batch buffers given back by [`Loader::recycle`], for the next batches (at most `keep`
/// kept).
struct Spare<E> {
    buffers: Mutex<Vec<Vec<E>>>,
    keep: usize,
}

impl<E> Spare<E> {
    fn new(keep: usize) -> Self {
        Spare {
            buffers: Mutex::new(Vec::new()),
            keep,
        }
    }

    fn take(&self) -> Option<Vec<E>> {
        self.buffers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn give(&self, buffer: Vec<E>) {
        let mut b = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        if b.len() < self.keep {
            b.push(buffer);
        }
    }
}

/// The arguments both loaders refuse.
fn check(images: &dyn Images, order: &[usize], batch: usize, side: usize) -> Result<()> {
    if batch == 0 || side == 0 {
        return Err(Error::Invalid(format!(
            "image loader: batch {batch} and side {side} must be positive"
        )));
    }
    if let Some(&bad) = order.iter().find(|&&i| i >= images.len()) {
        return Err(Error::Invalid(format!(
            "image loader: index {bad} is out of range ({} images)",
            images.len()
        )));
    }
    Ok(())
}

/// What a worker makes of image `order[p]`, given `p`.
type Make = Arc<dyn Fn(RgbImage, u64) -> Vec<f32> + Send + Sync>;

/// [`loader`]'s threads: workers that make each image into values with `make`, and a
/// collector that packs them into batches.
fn start(
    images: Arc<dyn Images>,
    order: Vec<usize>,
    batch: usize,
    side: usize,
    workers: usize,
    queue: usize,
    make: Make,
) -> Result<Loader> {
    check(&*images, &order, batch, side)?;
    let order: Arc<[usize]> = order.into();
    let n = order.len();
    let workers = workers.clamp(1, n.max(1));
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let (tx, rx) = sync_channel(queue);
    let mut threads = Vec::with_capacity(workers + 1);
    // Worker `w` decodes positions w, w + workers, ... into its own small channel;
    // the collector reads the channels round robin, so it sees every position in turn.
    let per_worker = batch.div_ceil(workers).max(1);
    let mut inputs = Vec::with_capacity(workers);
    for w in 0..workers {
        let (wtx, wrx) = sync_channel::<Decoded>(per_worker);
        inputs.push(wrx);
        let (images, order, make) = (Arc::clone(&images), Arc::clone(&order), Arc::clone(&make));
        threads.push(std::thread::spawn(move || {
            for p in (w..n).step_by(workers) {
                let r = images.load(order[p], side).map(|img| make(img, p as u64));
                if wtx.send(r).is_err() {
                    return; // the collector is gone
                }
            }
        }));
    }
    let collect_report = Arc::clone(&report);
    threads.push(std::thread::spawn(move || {
        collect(&*images, &order, batch, &inputs, &tx, &collect_report)
    }));
    Ok(Loader {
        rx: Some(rx),
        position: 0,
        positions: Vec::new(),
        threads,
        report,
        spare: Arc::new(Spare::new(0)),
    })
}

/// The transform a [`Loader`] applies to each decoded image (CHW, 0..255): it gets the
/// image and its position in the loader's order (to seed augmentation, say) and returns
/// the image to batch (mean subtracted, cropped, flipped, ...).
pub type Transform = Arc<dyn Fn(Vec<f32>, u64) -> Vec<f32> + Send + Sync>;

/// What one worker hands the collector for one position.
type Decoded = std::result::Result<Vec<f32>, DecodeError>;

/// A batch: the images concatenated, and their labels.
type BatchData<E> = (Vec<E>, Vec<u32>);

/// A batch as the collector sends it: with each image's position in the order, and the
/// position just past its last image (skipped files included).
type Sent<E> = (Vec<E>, Vec<u32>, Vec<u64>, usize);

/// The collector thread: takes positions 0, 1, ... from the workers in turn and sends
/// full batches on; returns as soon as the loader is dropped.
fn collect(
    set: &dyn Images,
    order: &[usize],
    batch: usize,
    inputs: &[Receiver<Decoded>],
    tx: &SyncSender<Sent<f32>>,
    report: &Mutex<LoadReport>,
) {
    let (mut images, mut labels) = (Vec::new(), Vec::with_capacity(batch));
    let mut positions = Vec::with_capacity(batch);
    for (p, &i) in order.iter().enumerate() {
        let Ok(decoded) = inputs[p % inputs.len()].recv() else {
            return; // the worker panicked: the loader raises it again
        };
        match decoded {
            Ok(img) => {
                if images.capacity() == 0 {
                    images.reserve(img.len() * batch);
                }
                images.extend_from_slice(&img);
                labels.push(set.label(i));
                positions.push(p as u64);
                if labels.len() == batch {
                    let cap = images.len();
                    let full = (
                        std::mem::replace(&mut images, Vec::with_capacity(cap)),
                        std::mem::replace(&mut labels, Vec::with_capacity(batch)),
                        std::mem::replace(&mut positions, Vec::with_capacity(batch)),
                        p + 1,
                    );
                    if tx.send(full).is_err() {
                        return; // the loader is gone
                    }
                }
            }
            Err(e) => report
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .add(&set.describe(i), &e),
        }
    }
    if !labels.is_empty() {
        let _ = tx.send((images, labels, positions, order.len()));
    }
}

/// Batches of images loaded in the background by [`loader`] (or [`byte_loader`], as
/// bytes): an iterator of `(images, labels)`, the images concatenated (each as the
/// transform returned it, or as the bytes of the loaded image).
pub struct Loader<E = f32> {
    rx: Option<Receiver<Sent<E>>>,
    /// Positions of the order covered by the batches returned so far.
    position: usize,
    /// The position in the order of each image of the last batch.
    positions: Vec<u64>,
    threads: Vec<JoinHandle<()>>,
    report: Arc<Mutex<LoadReport>>,
    /// Buffers given back, for loaders that reuse them ([`byte_loader`]'s).
    spare: Arc<Spare<E>>,
}

impl<E> Loader<E> {
    /// Gives a batch's buffer back when the caller is done with it, for a later batch to
    /// be read into: optional, it saves allocating and clearing a buffer per batch (25 MB
    /// for 128 images of 256x256). Only [`byte_loader`]'s loaders reuse them.
    pub fn recycle(&self, images: Vec<E>) {
        self.spare.give(images);
    }

    /// The position in the order of each image of the batch returned last (files that
    /// were skipped leave gaps).
    pub fn last_positions(&self) -> &[u64] {
        &self.positions
    }

    /// Where the next batch starts in the order: the positions the batches returned so far
    /// cover, skipped files included (a training run interrupted mid-epoch resumes there).
    pub fn next_position(&self) -> usize {
        self.position
    }

    /// The files skipped so far because they did not decode.
    pub fn report(&self) -> LoadReport {
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Closes the queue and waits for the threads, which stop at their next send.
    fn stop(&mut self) -> Option<Box<dyn std::any::Any + Send>> {
        self.rx = None;
        let mut panic = None;
        for t in self.threads.drain(..) {
            if let Err(p) = t.join() {
                panic.get_or_insert(p);
            }
        }
        panic
    }
}

impl<E> Iterator for Loader<E> {
    type Item = BatchData<E>;

    fn next(&mut self) -> Option<BatchData<E>> {
        match self.rx.as_ref()?.recv() {
            Ok((images, labels, positions, end)) => {
                self.position = end;
                self.positions = positions;
                Some((images, labels))
            }
            Err(_) => {
                if let Some(p) = self.stop() {
                    std::panic::resume_unwind(p);
                }
                None
            }
        }
    }
}

impl<E> Drop for Loader<E> {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

impl<E> fmt::Debug for Loader<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loader")
            .field("threads", &self.threads.len())
            .field("report", &self.report())
            .finish()
    }
}

/// The files that were skipped because they did not decode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// How many files were skipped.
    pub skipped: usize,
    /// The first few (up to 5) skipped files, in order, with the reason.
    pub first: Vec<(PathBuf, String)>,
}

impl LoadReport {
    /// The report in one line: `3 file(s) skipped (first: PATH: why)`.
    pub fn brief(&self) -> String {
        match self.first.first() {
            Some((p, why)) => format!(
                "{} file(s) skipped (first: {}: {why})",
                self.skipped,
                p.display()
            ),
            None => format!("{} file(s) skipped", self.skipped),
        }
    }

    fn add(&mut self, path: &Path, e: &DecodeError) {
        self.skipped += 1;
        if self.first.len() < REPORTED {
            self.first.push((path.to_path_buf(), e.to_string()));
        }
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} file(s) skipped", self.skipped)?;
        for (p, why) in &self.first {
            write!(f, "\n  - {}: {why}", p.display())?;
        }
        if self.skipped > self.first.len() {
            write!(f, "\n  - ...")?;
        }
        Ok(())
    }
}

/// Skipped files of a parallel pass, merged so that the first ones (by index) are kept.
#[derive(Default)]
struct Skipped {
    count: usize,
    first: Vec<(usize, PathBuf, String)>,
}

impl Skipped {
    fn add(&mut self, i: usize, path: &Path, e: &DecodeError) {
        self.count += 1;
        self.first.push((i, path.to_path_buf(), e.to_string()));
        self.keep_first();
    }

    fn merge(mut self, other: Skipped) -> Skipped {
        self.count += other.count;
        self.first.extend(other.first);
        self.keep_first();
        self
    }

    fn keep_first(&mut self) {
        if self.first.len() > REPORTED {
            self.first.sort_by_key(|s| s.0);
            self.first.truncate(REPORTED);
        }
    }

    fn into_report(mut self) -> LoadReport {
        self.first.sort_by_key(|s| s.0);
        LoadReport {
            skipped: self.count,
            first: self.first.into_iter().map(|(_, p, w)| (p, w)).collect(),
        }
    }
}
