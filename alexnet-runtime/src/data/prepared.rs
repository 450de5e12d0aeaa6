//! A prepared data set: an image folder decoded once ([`prepare`]) into a few large shard
//! files of 8-bit RGB images at the training size, with an index, so that training reads
//! images instead of decoding them (a 256x256 image reads in tens of microseconds; a
//! typical ImageNet JPEG takes ~5 ms to decode and rescale).
//!
//! A prepared set is a folder:
//!
//! - `index.json` ([`PREPARED_FORMAT`]): the image side, the class names, the folder it
//!   was made from, the per-pixel mean of the training split over all its images (as
//!   stored: for JPEG storage, their decoded JPEGs), the
//!   principal components of its RGB colours, and per split its shards with their image
//!   counts, sizes and CRC-32 checksums. It is written last, atomically: a folder without
//!   one is not (yet) a prepared set.
//! - `train-00000.shard`, `train-00001.shard`, ... (and `val-*.shard` when the source has
//!   a `val/` split): each holds up to `shard_images` consecutive source images (in the
//!   folder's order: classes sorted, files sorted), those that decoded. Layout, all
//!   little-endian: a 48-byte header (magic `ANRSHRD1`, side u32, count u32, length of
//!   the skipped-files text u32, CRC-32 of everything after the header u32, the key of
//!   its source files u64, the storage u32 (0 raw, 100 + quality for JPEG), 4 zero bytes,
//!   bytes of image data u64), `count` labels (u32), the skipped-files text (one
//!   `path\treason` line each), for JPEG storage `count + 1` offsets (u64) of the images
//!   in the data, then the data: `count` images of `side` x `side` x 3 bytes (HWC, as an
//!   `RgbImage` holds them), or `count` JPEG files ([`Storage`]).
//!
//! Every shard is written to a temporary file and renamed when complete, so a shard that
//! exists is whole. An interrupted [`prepare`] run again keeps the shards whose key (the
//! source files' paths, sizes, modification times and labels, the side and the storage)
//! and checksum match, and no file of which was skipped as unreadable (an I/O error may
//! pass), and makes the others again; the index it then writes covers exactly the shards
//! of this run. Shards are made one after another, each shard's images decoded in
//! parallel while the shard before is written, so memory holds at most three shards. Two
//! `prepare` runs into one folder at once are not guarded against.
//!
//! [`Prepared::open`] reads the index and every shard's header and checks them against
//! each other and against the files' sizes (a truncated shard, an index that does not
//! match its shards are errors that say so); [`Prepared::verify`] also checks the
//! checksums. A split ([`PreparedSplit`]) is an [`Images`] set, so training, evaluation and
//! the loaders take it as they take an image folder, and it reads batches of raw bytes
//! for augmentation on the device ([`PreparedSplit::read_batch`]). Shards are read with
//! positioned reads (`pread`), not memory-mapped: a shard truncated while it is read is
//! an I/O error, not a `SIGBUS`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use image::RgbImage;
use rayon::prelude::*;
use serde_json::{json, Value};

use super::augment::PcaColour;
use super::decode::{decode_rgb, DecodeError};
use super::folder::ImageFolder;
use super::loader::{Images, LoadReport};
use super::pipeline::{Preprocess, PIXEL_SCALE};
use crate::error::{Error, Result};
use crate::ir::Shape;
use crate::weights::write_atomic;

/// The `format` field of a prepared set's `index.json`.
pub const PREPARED_FORMAT: &str = "alexnet-rs-prepared/1";

/// The index file of a prepared set.
pub const INDEX_FILE: &str = "index.json";

const MAGIC: &[u8; 8] = b"ANRSHRD1";

/// The largest image side a prepared set may have.
pub const MAX_SIDE: usize = 65_535;
const HEADER: usize = 48;

/// How many skipped files a split's report names.
const REPORTED: usize = 5;

/// How [`prepare`] makes a prepared set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrepareOptions {
    /// Images are rescaled so that the shorter side is `side`, and the central `side` x
    /// `side` patch kept (256 for the paper's AlexNet: [`super::pipeline::Preprocess::side_for`]).
    pub side: usize,
    /// At most this many source images per shard (1,024 by default: 192 MiB at 256x256
    /// raw).
    pub shard_images: usize,
    /// How the images are stored.
    pub storage: Storage,
}

/// How a prepared set stores its images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// 8-bit RGB, as decoded: the fastest to read (a copy), `side * side * 3` bytes each
    /// (192 KiB at 256x256: 250 GB for ImageNet's 1.28 million training images).
    Raw,
    /// Re-encoded as JPEG of this quality (1 to 100) after rescaling: a few tens of KiB each
    /// at 256x256, decoded when read (~1 ms), so lossy and slower.
    Jpeg(u8),
}

impl Storage {
    /// The header's code: 0 raw, 100 + quality for JPEG.
    fn code(self) -> u32 {
        match self {
            Storage::Raw => 0,
            Storage::Jpeg(q) => 100 + u32::from(q),
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Storage::Raw),
            101..=200 => Some(Storage::Jpeg((code - 100) as u8)),
            _ => None,
        }
    }

    /// `raw` or `jpeg quality Q`.
    pub fn describe(self) -> String {
        match self {
            Storage::Raw => "raw".into(),
            Storage::Jpeg(q) => format!("jpeg quality {q}"),
        }
    }
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            side: 256,
            shard_images: 1024,
            storage: Storage::Raw,
        }
    }
}

/// What [`prepare`] did for one split.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SplitReport {
    /// `train` or `val`.
    pub name: String,
    /// Source image files.
    pub files: usize,
    /// Images in the split's shards (the files that decoded).
    pub images: usize,
    /// Shards written by this run.
    pub written: usize,
    /// Shards kept from an earlier, interrupted run (key and checksum matched).
    pub reused: usize,
    /// The files that did not decode.
    pub skipped: LoadReport,
}

/// What [`prepare`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrepareReport {
    /// Per split, `train` first.
    pub splits: Vec<SplitReport>,
    /// Bytes of the shards.
    pub bytes: u64,
    /// Whether it stopped when asked, before the end: then there is no index yet, and
    /// [`prepare`] run again finishes the set.
    pub interrupted: bool,
}

/// Prepares the image folder `src` (`src/train` and `src/val` when it has them, else
/// `src` as the training split, as [`ImageFolder::open_split`] reads it) into the folder
/// `out`: every image decoded once, in parallel, into shards, then the index (see the
/// module documentation). `progress` is called with the number of source files handled
/// so far, from any thread. Once `stop` returns true, no shard is begun; those finished
/// are kept (a later run keeps them), no index is written and the report says
/// [`PrepareReport::interrupted`].
///
/// Files that do not decode are skipped, counted (in the report and the index) and named
/// (in the report; each shard keeps the names of its own). Shards of an earlier interrupted run with the same sources and side are kept
/// when their checksums hold. Errors when `src` is not an image folder, when no image of
/// the training split decodes, when `out` lies inside `src` (it would become a class), and
/// when a file cannot be written (a full disk: the error names the file; no shard or
/// index that looks complete is left).
pub fn prepare(
    src: &Path,
    out: &Path,
    opts: PrepareOptions,
    progress: &(dyn Fn(u64) + Sync),
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<PrepareReport> {
    if let Storage::Jpeg(q) = opts.storage {
        if !(1..=100).contains(&q) {
            return Err(Error::Invalid(format!(
                "prepare: JPEG quality {q} is not in 1..=100"
            )));
        }
    }
    if !(1..=MAX_SIDE).contains(&opts.side) || opts.shard_images == 0 {
        return Err(Error::Invalid(format!(
            "prepare: side {} must be in 1..={MAX_SIDE} and images per shard {} positive",
            opts.side, opts.shard_images
        )));
    }
    if let (Ok(from), Some(to)) = (std::fs::canonicalize(src), absolute(out)) {
        if to.starts_with(&from) {
            return Err(Error::Invalid(format!(
                "prepare: the output folder {} is inside the image folder {}, where it would be read as a class; choose another --out",
                out.display(),
                src.display()
            )));
        }
    }
    let (train, val) = ImageFolder::open_split(src)?;
    let classes = train.class_names();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // The old index goes first: from here until the new one is written, the folder is
    // not a prepared set, whatever happens to the shards.
    let index_path = out.join(INDEX_FILE);
    match std::fs::remove_file(&index_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&index_path, e)),
    }
    remove_temporaries(out);
    let done = AtomicU64::new(0);
    let tick = |n: usize| progress(done.fetch_add(n as u64, Ordering::Relaxed) + n as u64);
    let mut splits = vec![("train", train)];
    splits.extend(val.map(|v| ("val", v)));
    let mut reports = Vec::new();
    let mut index_splits = serde_json::Map::new();
    let mut bytes = 0;
    // The training split's pixel sums (CHW), added shard by shard as they are decoded: in
    // integers, so the order does not matter, and the mean needs no second pass over the
    // data.
    let sums = Mutex::new(vec![0u64; 3 * opts.side * opts.side]);
    for (name, folder) in &splits {
        let sums = (*name == "train").then_some(&sums);
        let Some((report, shards)) = prepare_split(name, folder, out, opts, &tick, stop, sums)?
        else {
            return Ok(PrepareReport {
                splits: reports,
                bytes,
                interrupted: true,
            });
        };
        bytes += shards.iter().map(|s| s.bytes).sum::<u64>();
        remove_other_shards(out, name, shards.len())?;
        index_splits.insert(
            name.to_string(),
            json!({
                "files": report.files,
                "images": report.images,
                "skipped": report.skipped.skipped,
                "shards": shards.iter().map(ShardEntry::to_json).collect::<Vec<_>>(),
            }),
        );
        reports.push(report);
    }
    if splits.len() == 1 {
        // No validation split this time: none of an earlier run's either.
        remove_other_shards(out, "val", 0)?;
    }
    if reports[0].images == 0 {
        return Err(Error::Invalid(format!(
            "{}: no image could be read: {}",
            src.display(),
            reports[0].skipped.brief()
        )));
    }
    // The statistics training needs, over the training split as written: the mean over
    // every image, the colour components over a sample.
    let count = reports[0].images as f64;
    let mean: Vec<f32> = sums
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|&s| (s as f64 / count) as f32)
        .collect();
    let train_split = PreparedSplit::open_shards(out, "train", opts.side, classes.clone())?;
    let pca = super::pipeline::colour_components(&train_split, opts.side, &mean);
    let source = std::fs::canonicalize(src).unwrap_or_else(|_| src.to_path_buf());
    let index = json!({
        "format": PREPARED_FORMAT,
        "side": opts.side,
        "shard_images": opts.shard_images,
        "storage": opts.storage.describe(),
        "source": source.display().to_string(),
        "classes": classes,
        "splits": index_splits,
        "mean": mean,
        "pca": pca.map(|p| json!({"eigenvalues": p.eigenvalues, "eigenvectors": p.eigenvectors})),
    });
    let text = serde_json::to_vec_pretty(&index)
        .map_err(|e| Error::Invalid(format!("prepare: the index: {e}")))?;
    write_atomic(&index_path, &text)?;
    Ok(PrepareReport {
        splits: reports,
        bytes,
        interrupted: false,
    })
}

/// One shard as the index lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ShardEntry {
    file: String,
    images: usize,
    bytes: u64,
    crc32: u32,
}

impl ShardEntry {
    fn to_json(&self) -> Value {
        json!({"file": self.file, "images": self.images, "bytes": self.bytes, "crc32": self.crc32})
    }

    fn from_json(v: &Value) -> Option<Self> {
        Some(ShardEntry {
            file: v.get("file")?.as_str()?.to_string(),
            images: usize::try_from(v.get("images")?.as_u64()?).ok()?,
            bytes: v.get("bytes")?.as_u64()?,
            crc32: u32::try_from(v.get("crc32")?.as_u64()?).ok()?,
        })
    }
}

fn shard_name(split: &str, k: usize) -> String {
    format!("{split}-{k:05}.shard")
}

/// Whether `file` is a shard's name of split `split` (`split-NNNNN.shard`): an index names
/// nothing outside its folder.
fn is_shard_name(file: &str, split: &str) -> bool {
    file.strip_prefix(split)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(".shard"))
        .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
}

/// `path` made absolute with its symbolic links resolved, as far as it exists (the rest
/// appended as written); `None` when not even the current folder resolves.
fn absolute(path: &Path) -> Option<PathBuf> {
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        if let Ok(real) = std::fs::canonicalize(if at.as_os_str().is_empty() {
            Path::new(".")
        } else {
            at
        }) {
            return Some(rest.iter().rev().fold(real, |p, part| p.join(part)));
        }
        rest.push(at.file_name()?.to_owned());
        at = at.parent()?;
    }
}

/// FNV-1a, 64-bit: the key of a shard's sources (stable across Rust versions, unlike std's
/// hasher).
fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// The key of the shard made from `files` (paths, sizes, modification times and labels)
/// at `side`, stored as `storage`.
fn shard_key(
    folder: &ImageFolder,
    range: std::ops::Range<usize>,
    side: usize,
    storage: Storage,
) -> u64 {
    let mut h = fnv1a(0xCBF2_9CE4_8422_2325, PREPARED_FORMAT.as_bytes());
    h = fnv1a(h, &(side as u64).to_le_bytes());
    h = fnv1a(h, &storage.code().to_le_bytes());
    for i in range {
        let path = folder.path(i);
        h = fnv1a(h, path.to_string_lossy().as_bytes());
        let meta = std::fs::metadata(path).ok();
        let len = meta.as_ref().map_or(u64::MAX, |m| m.len());
        // A file replaced by another of the same size changes its modification time.
        let modified = meta
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(u128::MAX, |d| d.as_nanos());
        h = fnv1a(h, &len.to_le_bytes());
        h = fnv1a(h, &modified.to_le_bytes());
        h = fnv1a(h, &folder.label(i).to_le_bytes());
    }
    h
}

/// A shard's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    side: u32,
    count: u32,
    skipped_bytes: u32,
    crc32: u32,
    key: u64,
    storage: Storage,
    /// Bytes of the images (raw or encoded).
    data_bytes: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&self.side.to_le_bytes());
        b[12..16].copy_from_slice(&self.count.to_le_bytes());
        b[16..20].copy_from_slice(&self.skipped_bytes.to_le_bytes());
        b[20..24].copy_from_slice(&self.crc32.to_le_bytes());
        b[24..32].copy_from_slice(&self.key.to_le_bytes());
        b[32..36].copy_from_slice(&self.storage.code().to_le_bytes());
        b[40..48].copy_from_slice(&self.data_bytes.to_le_bytes());
        b
    }

    fn decode(b: &[u8; HEADER]) -> Option<Self> {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | u64::from(u32_at(i + 4)) << 32;
        if &b[..8] != MAGIC {
            return None;
        }
        Some(Header {
            side: u32_at(8),
            count: u32_at(12),
            skipped_bytes: u32_at(16),
            crc32: u32_at(20),
            key: u64_at(24),
            storage: Storage::from_code(u32_at(32))?,
            data_bytes: u64_at(40),
        })
    }

    // The sizes below saturate instead of overflowing: a hostile header's fields give a
    // size no file has, which `read_header` refuses.

    fn image_bytes(&self) -> u64 {
        (3 * u64::from(self.side)).saturating_mul(u64::from(self.side))
    }

    /// Where the JPEG offsets start (and the images, for raw storage).
    fn table_at(&self) -> u64 {
        HEADER as u64 + 4 * u64::from(self.count) + u64::from(self.skipped_bytes)
    }

    /// Bytes of the JPEG offsets: `count + 1` u64, none for raw storage.
    fn table_bytes(&self) -> u64 {
        match self.storage {
            Storage::Raw => 0,
            Storage::Jpeg(_) => 8 * (u64::from(self.count) + 1),
        }
    }

    /// Where the images start.
    fn data_at(&self) -> u64 {
        self.table_at() + self.table_bytes()
    }

    /// The file's size.
    fn file_bytes(&self) -> u64 {
        self.data_at().saturating_add(self.data_bytes)
    }

    /// Whether the header holds together: raw images fill the data exactly.
    fn consistent(&self) -> bool {
        match self.storage {
            Storage::Raw => {
                self.data_bytes == u64::from(self.count).saturating_mul(self.image_bytes())
            }
            Storage::Jpeg(_) => true,
        }
    }
}

/// Prepares one split: its shards one after another, each kept from an earlier run or
/// decoded (its images in parallel), while a second thread writes the shard decoded
/// before: at most three shards are in memory, and a failed write stops the decoding.
/// `None` when `stop` said to stop before every shard was made.
fn prepare_split(
    name: &str,
    folder: &ImageFolder,
    out: &Path,
    opts: PrepareOptions,
    tick: &(dyn Fn(usize) + Sync),
    stop: &(dyn Fn() -> bool + Sync),
    sums: Option<&Mutex<Vec<u64>>>,
) -> Result<Option<(SplitReport, Vec<ShardEntry>)>> {
    let n = folder.len();
    let shards = n.div_ceil(opts.shard_images);
    let mut made: Vec<Option<MadeShard>> = (0..shards).map(|_| None).collect();
    let mut stopped = false;
    let written = std::thread::scope(|scope| -> Result<Vec<(usize, MadeShard)>> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Decoded)>(1);
        let writer = scope.spawn(move || -> Result<Vec<(usize, MadeShard)>> {
            rx.into_iter().map(|(k, d)| Ok((k, d.write()?))).collect()
        });
        for (k, slot) in made.iter_mut().enumerate() {
            if stop() {
                stopped = true;
                break;
            }
            let range = k * opts.shard_images..((k + 1) * opts.shard_images).min(n);
            let len = range.len();
            let file = shard_name(name, k);
            let job = ShardJob {
                path: out.join(&file),
                file,
                key: shard_key(folder, range.clone(), opts.side, opts.storage),
                range,
            };
            match kept_shard(&job, opts, sums)? {
                Some(m) => *slot = Some(m),
                None => {
                    let d = decode_shard(job, folder, opts, sums)?;
                    if tx.send((k, d)).is_err() {
                        // The writer hung up: it failed, and says why below.
                        break;
                    }
                }
            }
            tick(len);
        }
        drop(tx);
        writer
            .join()
            .map_err(|_| Error::Internal("prepare: the shard writer panicked".into()))?
    })?;
    for (k, m) in written {
        made[k] = Some(m);
    }
    if stopped {
        return Ok(None);
    }
    let mut report = SplitReport {
        name: name.to_string(),
        files: n,
        ..SplitReport::default()
    };
    let mut entries = Vec::with_capacity(shards);
    for m in made {
        let Some((entry, reused, skipped)) = m else {
            return Err(Error::Internal(format!(
                "prepare: a shard of {name} was not made"
            )));
        };
        report.images += entry.images;
        if reused {
            report.reused += 1;
        } else {
            report.written += 1;
        }
        report.skipped.skipped += skipped.len();
        let room = REPORTED.saturating_sub(report.skipped.first.len());
        report.skipped.first.extend(skipped.into_iter().take(room));
        entries.push(entry);
    }
    Ok(Some((report, entries)))
}

/// A shard's entry, whether it was kept from an earlier run, and its skipped files.
type MadeShard = (ShardEntry, bool, Vec<(PathBuf, String)>);

/// The shard of `job` as an earlier run left it, when it is complete, made from
/// the same sources (its key) and its checksum holds: its entry (with its pixels added
/// to `sums`); `None` when it must be made again. A shard with a file skipped because it
/// could not be read (an I/O error, perhaps passing) is made again too.
fn kept_shard(
    job: &ShardJob,
    opts: PrepareOptions,
    sums: Option<&Mutex<Vec<u64>>>,
) -> Result<Option<MadeShard>> {
    let (side, path) = (opts.side, &job.path);
    let Some((header, offsets, skipped)) = existing_shard(path, job.key, side) else {
        return Ok(None);
    };
    if skipped.iter().any(|(_, why)| why.starts_with("unreadable")) {
        return Ok(None);
    }
    if let Some(sums) = sums {
        let shard = Shard {
            path: path.clone(),
            header,
            first: 0,
            offsets,
        };
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut part = vec![0u64; 3 * side * side];
        let mut img = vec![0u8; 3 * side * side];
        for k in 0..header.count as usize {
            shard
                .read(&f, k, &mut img)
                .map_err(|e| Error::io(path, e))?;
            add_pixels(&mut part, &img);
        }
        add_sums(sums, &part);
    }
    let entry = ShardEntry {
        file: job.file.clone(),
        images: header.count as usize,
        bytes: header.file_bytes(),
        crc32: header.crc32,
    };
    Ok(Some((entry, true, skipped)))
}

/// One shard to make: its file name and path, the key of its sources, and which source
/// images it holds.
struct ShardJob {
    file: String,
    path: PathBuf,
    key: u64,
    range: std::ops::Range<usize>,
}

/// A shard decoded and encoded, not yet written.
struct Decoded {
    path: PathBuf,
    file: String,
    header: Header,
    labels: Vec<u8>,
    skipped_text: String,
    table: Vec<u8>,
    /// The stored images, in order.
    images: Vec<Vec<u8>>,
    skipped: Vec<(PathBuf, String)>,
}

impl Decoded {
    /// Writes the shard (a temporary file renamed when whole) and returns its entry.
    fn write(self) -> Result<MadeShard> {
        let header = self.header.encode();
        let mut parts: Vec<&[u8]> = vec![
            &header,
            &self.labels,
            self.skipped_text.as_bytes(),
            &self.table,
        ];
        parts.extend(self.images.iter().map(Vec::as_slice));
        write_whole(&self.path, &parts)?;
        let entry = ShardEntry {
            file: self.file,
            images: self.header.count as usize,
            bytes: self.header.file_bytes(),
            crc32: self.header.crc32,
        };
        Ok((entry, false, self.skipped))
    }
}

/// Decodes the source images of `job` in parallel (and re-encodes them for JPEG storage),
/// adding the pixels of those stored, as stored, to `sums`.
fn decode_shard(
    job: ShardJob,
    folder: &ImageFolder,
    opts: PrepareOptions,
    sums: Option<&Mutex<Vec<u64>>>,
) -> Result<Decoded> {
    let (side, storage) = (opts.side, opts.storage);
    let ShardJob {
        file,
        path,
        key,
        range,
    } = job;
    let part = Mutex::new(vec![0u64; if sums.is_some() { 3 * side * side } else { 0 }]);
    let decoded: Vec<(usize, std::result::Result<Vec<u8>, String>)> = range
        .into_par_iter()
        .map(|i| {
            let stored = decode_rgb(folder.path(i), side)
                .map_err(|e| e.to_string())
                .and_then(|img| {
                    // The mean is of the images as stored: a JPEG's decoded pixels.
                    let (bytes, pixels) = match storage {
                        Storage::Raw => (img.into_raw(), None),
                        Storage::Jpeg(q) => {
                            let bytes = encode_jpeg(&img, q)?;
                            let back = image::load_from_memory_with_format(
                                &bytes,
                                image::ImageFormat::Jpeg,
                            )
                            .map_err(|e| format!("could not read back its JPEG: {e}"))?
                            .into_rgb8()
                            .into_raw();
                            (bytes, Some(back))
                        }
                    };
                    if sums.is_some() {
                        add_pixels(
                            &mut part.lock().unwrap_or_else(PoisonError::into_inner),
                            pixels.as_deref().unwrap_or(&bytes),
                        );
                    }
                    Ok(bytes)
                });
            (i, stored)
        })
        .collect();
    let mut labels = Vec::new();
    let mut skipped = Vec::new();
    let mut images = Vec::new();
    let mut offsets = vec![0u64];
    for (i, r) in decoded {
        match r {
            Ok(bytes) => {
                labels.extend_from_slice(&folder.label(i).to_le_bytes());
                offsets.push(offsets[offsets.len() - 1] + bytes.len() as u64);
                images.push(bytes);
            }
            Err(e) => skipped.push((folder.path(i).to_path_buf(), e)),
        }
    }
    let table: Vec<u8> = match storage {
        Storage::Raw => Vec::new(),
        Storage::Jpeg(_) => offsets.iter().flat_map(|o| o.to_le_bytes()).collect(),
    };
    let skipped_text: String = skipped
        .iter()
        .map(|(p, why)| format!("{}\t{}\n", p.display(), why.replace(['\n', '\t'], " ")))
        .collect();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&labels);
    crc.update(skipped_text.as_bytes());
    crc.update(&table);
    images.iter().for_each(|img| crc.update(img));
    let bad = |what: &str| Error::Invalid(format!("{}: {what}", path.display()));
    let header = Header {
        side: u32::try_from(side).map_err(|_| bad("the image side does not fit in 32 bits"))?,
        count: u32::try_from(images.len()).map_err(|_| bad("too many images for one shard"))?,
        skipped_bytes: u32::try_from(skipped_text.len())
            .map_err(|_| bad("the list of skipped files exceeds 4 GiB"))?,
        crc32: crc.finalize(),
        key,
        storage,
        data_bytes: offsets[offsets.len() - 1],
    };
    if let Some(sums) = sums {
        add_sums(
            sums,
            &part.into_inner().unwrap_or_else(PoisonError::into_inner),
        );
    }
    Ok(Decoded {
        path,
        file,
        header,
        labels,
        skipped_text,
        table,
        images,
        skipped,
    })
}

/// Adds an image's pixels (HWC) to per-pixel sums (CHW).
fn add_pixels(sums: &mut [u64], hwc: &[u8]) {
    let plane = hwc.len() / 3;
    for (p, px) in hwc.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            sums[c * plane + p] += u64::from(v);
        }
    }
}

/// Adds a shard's sums to the split's.
fn add_sums(sums: &Mutex<Vec<u64>>, part: &[u64]) {
    let mut total = sums.lock().unwrap_or_else(PoisonError::into_inner);
    for (t, &p) in total.iter_mut().zip(part) {
        *t += p;
    }
}

/// `img` as a JPEG of quality `q`.
fn encode_jpeg(img: &RgbImage, q: u8) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, q)
        .encode_image(img)
        .map_err(|e| format!("could not re-encode as JPEG: {e}"))?;
    Ok(out)
}

/// The header and skipped files of the complete shard at `path` made from the sources
/// `key` at `side`, if it is there and its checksum holds.
fn existing_shard(path: &Path, key: u64, side: usize) -> Option<ExistingShard> {
    let mut f = File::open(path).ok()?;
    let mut h = [0u8; HEADER];
    f.read_exact(&mut h).ok()?;
    let header = Header::decode(&h)?;
    if header.key != key || header.side as usize != side || !header.consistent() {
        return None;
    }
    if f.metadata().ok()?.len() != header.file_bytes() {
        return None;
    }
    let (crc, skipped) = checksum(&mut f, &header).ok()?;
    if crc != header.crc32 {
        return None;
    }
    let (_, _, offsets) = read_header(path, side).ok()?;
    Some((header, offsets, skipped))
}

/// A complete shard of an earlier run: its header, JPEG offsets and skipped files.
type ExistingShard = (Header, Vec<u64>, Vec<(PathBuf, String)>);

/// The CRC-32 of a shard's contents after its header (read from `f`, positioned just
/// after the header), and its skipped files.
fn checksum(f: &mut File, header: &Header) -> std::io::Result<(u32, Vec<(PathBuf, String)>)> {
    let mut crc = crc32fast::Hasher::new();
    let mut head = vec![0u8; 4 * header.count as usize + header.skipped_bytes as usize];
    f.read_exact(&mut head)?;
    crc.update(&head);
    let text = String::from_utf8_lossy(&head[4 * header.count as usize..]);
    let skipped = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(p, why)| (PathBuf::from(p), why.to_string()))
        .collect();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = header.table_bytes() + header.data_bytes;
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        f.read_exact(&mut buf[..n])?;
        crc.update(&buf[..n]);
        left -= n as u64;
    }
    Ok((crc.finalize(), skipped))
}

/// Writes `parts` to `path` through a temporary file renamed when complete and synced;
/// on any error the temporary file is removed and the error names `path`.
fn write_whole(path: &Path, parts: &[&[u8]]) -> Result<()> {
    let tmp = temporary(path);
    let bytes: u64 = parts.iter().map(|p| p.len() as u64).sum();
    let result = (|| {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        for p in parts {
            f.write_all(p)?;
        }
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        Error::Write {
            path: path.to_path_buf(),
            bytes,
            source,
        }
    })
}

fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Removes the temporary shards an interrupted run left (`*.shard.tmp`).
fn remove_temporaries(out: &Path) {
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().ends_with(".shard.tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Removes the shards of split `name` numbered `count` and up (an earlier run's, from
/// more source files).
fn remove_other_shards(out: &Path, name: &str, count: usize) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Ok(());
    };
    let prefix = format!("{name}-");
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let k = file
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".shard"))
            .and_then(|k| k.parse::<usize>().ok());
        if k.is_some_and(|k| k >= count) {
            std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
        }
    }
    Ok(())
}

/// A prepared data set, opened: its index read and every shard's header checked.
#[derive(Debug)]
pub struct Prepared {
    dir: PathBuf,
    /// The side of its images.
    pub side: usize,
    /// The class names, in label order.
    pub classes: Vec<String>,
    /// The image folder it was made from.
    pub source: String,
    /// The per-pixel mean of the training split, CHW, 0..255.
    pub mean: Vec<f32>,
    /// The principal components of the training split's colours (values in [0, 1]).
    pub pca: Option<PcaColour>,
    /// The training split.
    pub train: PreparedSplit,
    /// The validation split, when the source had one.
    pub val: Option<PreparedSplit>,
}

/// Whether `dir` is a prepared set (has an index file).
pub fn is_prepared(dir: &Path) -> bool {
    dir.join(INDEX_FILE).is_file()
}

impl Prepared {
    /// Opens the prepared set in `dir`: reads its index and checks every shard's header
    /// and size against it. Errors name the file and what is wrong: no index (with how to
    /// make one), an index of another format, a shard missing, truncated, or not the one
    /// the index lists.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        let text = std::fs::read(&index_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Invalid(format!(
                    "{} is not a prepared data set (no {INDEX_FILE}; `alexnet prepare --data IMAGES --out {}` makes one, and an interrupted one is finished by running it again)",
                    dir.display(),
                    dir.display()
                ))
            } else {
                Error::io(&index_path, e)
            }
        })?;
        let bad = |what: &str| Error::Content {
            path: Some(index_path.clone()),
            message: format!("not a valid prepared-set index: {what}"),
        };
        let v: Value = serde_json::from_slice(&text).map_err(|e| bad(&e.to_string()))?;
        match v.get("format").and_then(Value::as_str) {
            Some(PREPARED_FORMAT) => {}
            Some(other) => {
                return Err(bad(&format!(
                    "format {other:?}; this version reads {PREPARED_FORMAT:?}"
                )))
            }
            None => return Err(bad("no format")),
        }
        let side = v
            .get("side")
            .and_then(Value::as_u64)
            .and_then(|s| usize::try_from(s).ok())
            .filter(|&s| (1..=MAX_SIDE).contains(&s))
            .ok_or_else(|| bad(&format!("no side in 1..={MAX_SIDE}")))?;
        let strings = |key: &str| -> Option<Vec<String>> {
            v.get(key)?
                .as_array()?
                .iter()
                .map(|s| s.as_str().map(String::from))
                .collect()
        };
        let classes = strings("classes")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| bad("no classes"))?;
        let source = v
            .get("source")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mean: Vec<f32> = v
            .get("mean")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect())
            .filter(|m: &Vec<f32>| m.len() == 3 * side * side)
            .ok_or_else(|| bad(&format!("no mean of 3 x {side} x {side} values")))?;
        let pca = match v.get("pca") {
            None | Some(Value::Null) => None,
            Some(p) => Some(parse_pca(p).ok_or_else(|| bad("pca"))?),
        };
        let split = |name: &str| -> Result<Option<PreparedSplit>> {
            let Some(s) = v.get("splits").and_then(|s| s.get(name)) else {
                return Ok(None);
            };
            let entries: Vec<ShardEntry> = s
                .get("shards")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(ShardEntry::from_json).collect())
                .filter(|e: &Vec<ShardEntry>| e.iter().all(|e| is_shard_name(&e.file, name)))
                .ok_or_else(|| bad(&format!("the shards of {name}")))?;
            let images = s.get("images").and_then(Value::as_u64);
            let split = PreparedSplit::open_entries(dir, name, side, classes.clone(), &entries)?;
            if images != Some(split.len() as u64) {
                return Err(Error::Content {
                    path: Some(index_path.clone()),
                    message: format!(
                        "the index says split {name} has {} images, its shards hold {}",
                        images.map_or("no count of".into(), |n| n.to_string()),
                        split.len()
                    ),
                });
            }
            if let Some(&label) = split.labels.iter().find(|&&l| l as usize >= classes.len()) {
                return Err(Error::Content {
                    path: Some(index_path.clone()),
                    message: format!(
                        "split {name} has label {label}, the index names {} classes",
                        classes.len()
                    ),
                });
            }
            Ok(Some(split))
        };
        let train = split("train")?
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("no training images"))?;
        let val = split("val")?;
        Ok(Prepared {
            dir: dir.to_path_buf(),
            side,
            classes,
            source,
            mean,
            pca,
            train,
            val,
        })
    }

    /// The folder it lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How this set's images become inputs of a network with input `input`: its mean,
    /// colour components and classes, the network's crop, the paper's scale. An error
    /// when the network needs images of another side than the set's (with the
    /// `prepare` command that makes the right ones).
    pub fn preprocess(&self, input: Shape, source: &str) -> Result<Preprocess> {
        let side = Preprocess::side_for(input)?;
        if side != self.side {
            return Err(Error::Invalid(format!(
                "{} was prepared at {}x{}; a network with input {input} trains on {side}x{side} images: `alexnet prepare --data {} --out DIR --size {side}` makes them",
                self.dir.display(),
                self.side,
                self.side,
                if self.source.is_empty() { "IMAGES" } else { &self.source },
            )));
        }
        Ok(Preprocess {
            side,
            crop: (input.h, input.w),
            mean: self.mean.clone(),
            scale: PIXEL_SCALE,
            std: [1.0; 3],
            pca: self.pca,
            classes: self.classes.clone(),
            source: source.to_string(),
        })
    }

    /// Reads every shard whole and checks its CRC-32 against the index. An error names
    /// the first shard that fails.
    pub fn verify(&self) -> Result<()> {
        let splits = std::iter::once(&self.train).chain(self.val.as_ref());
        for split in splits {
            split.shards.par_iter().try_for_each(|s| {
                let mut f = File::open(&s.path).map_err(|e| Error::io(&s.path, e))?;
                let mut h = [0u8; HEADER];
                f.read_exact(&mut h).map_err(|e| Error::io(&s.path, e))?;
                let (crc, _) = checksum(&mut f, &s.header).map_err(|e| Error::io(&s.path, e))?;
                if crc != s.header.crc32 {
                    return Err(Error::Content {
                        path: Some(s.path.clone()),
                        message: format!(
                            "checksum mismatch (CRC-32 {crc:08x}, the index says {:08x}): the shard is damaged; `alexnet prepare` again remakes it",
                            s.header.crc32
                        ),
                    });
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

fn parse_pca(p: &Value) -> Option<PcaColour> {
    let vals: Vec<f32> = p
        .get("eigenvalues")?
        .as_array()?
        .iter()
        .map(|x| x.as_f64().map(|x| x as f32))
        .collect::<Option<_>>()?;
    let vecs: Vec<Vec<f32>> = p
        .get("eigenvectors")?
        .as_array()?
        .iter()
        .map(|r| {
            r.as_array()?
                .iter()
                .map(|x| x.as_f64().map(|x| x as f32))
                .collect()
        })
        .collect::<Option<_>>()?;
    let eigenvalues: [f32; 3] = vals.try_into().ok()?;
    let rows: Vec<[f32; 3]> = vecs
        .into_iter()
        .map(|r| r.try_into().ok())
        .collect::<Option<_>>()?;
    Some(PcaColour {
        eigenvalues,
        eigenvectors: rows.try_into().ok()?,
    })
}

/// One shard of a split, its header checked.
#[derive(Debug, Clone)]
struct Shard {
    path: PathBuf,
    header: Header,
    /// Index of its first image in the split.
    first: usize,
    /// JPEG storage: where each image's bytes start in the data, and where the data
    /// ends (`count + 1` offsets); empty for raw storage.
    offsets: Vec<u64>,
}

impl Shard {
    /// Where its image `k` lies in the file, and its length.
    fn span(&self, k: usize) -> (u64, u64) {
        let h = &self.header;
        match h.storage {
            Storage::Raw => (h.data_at() + k as u64 * h.image_bytes(), h.image_bytes()),
            Storage::Jpeg(_) => (
                h.data_at() + self.offsets[k],
                self.offsets[k + 1] - self.offsets[k],
            ),
        }
    }

    /// Reads its image `k` (HWC, `side * side * 3` bytes) from `f` (this shard's file)
    /// into `out`: a copy, or a JPEG decoded.
    fn read(&self, f: &File, k: usize, out: &mut [u8]) -> std::io::Result<()> {
        let (at, len) = self.span(k);
        match self.header.storage {
            Storage::Raw => read_at(f, out, at),
            Storage::Jpeg(_) => {
                let len = usize::try_from(len).map_err(std::io::Error::other)?;
                let mut bytes = vec![0u8; len];
                read_at(f, &mut bytes, at)?;
                let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
                    .map_err(|e| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
                    })?
                    .into_rgb8();
                let side = self.header.side;
                if img.dimensions() != (side, side) || img.as_raw().len() != out.len() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("a stored JPEG of {:?}, not {side}x{side}", img.dimensions()),
                    ));
                }
                out.copy_from_slice(img.as_raw());
                Ok(())
            }
        }
    }
}

/// One split of a prepared set: its images in shard order, each `side` x `side` RGB.
#[derive(Debug, Clone)]
pub struct PreparedSplit {
    name: String,
    side: usize,
    classes: Vec<String>,
    shards: Vec<Shard>,
    labels: Vec<u32>,
    /// Shard files kept open for [`PreparedSplit::load_into`], shared by the split's
    /// clones.
    open: Arc<OpenFiles>,
}

/// The shard files read last, kept open (at most [`OpenFiles::KEPT`]: ImageNet has
/// 1,300 shards, a process often may open only 1,024 files), the one read last first.
#[derive(Debug, Default)]
struct OpenFiles {
    files: Mutex<std::collections::VecDeque<(usize, Arc<File>)>>,
}

impl OpenFiles {
    const KEPT: usize = 64;

    /// Shard `k`'s file at `path`: the one kept open, or opened now (the least recently
    /// read closed when `KEPT` are open). On Unix reads are positioned and threads
    /// share a file; elsewhere a read moves the file's cursor, so each read opens its own.
    fn get(&self, k: usize, path: &Path) -> std::io::Result<Arc<File>> {
        if !cfg!(unix) {
            return File::open(path).map(Arc::new);
        }
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = files.iter().position(|(s, _)| *s == k) {
            let hit = files
                .remove(i)
                .ok_or_else(|| std::io::Error::other("open files"))?;
            let f = Arc::clone(&hit.1);
            files.push_front(hit);
            return Ok(f);
        }
        drop(files); // opening is a system call: not under the lock
        let f = Arc::new(File::open(path)?);
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        files.push_front((k, Arc::clone(&f)));
        files.truncate(Self::KEPT);
        Ok(f)
    }
}

impl PreparedSplit {
    /// The split as the index lists it, every shard's header checked against its entry
    /// and its file's size.
    fn open_entries(
        dir: &Path,
        name: &str,
        side: usize,
        classes: Vec<String>,
        entries: &[ShardEntry],
    ) -> Result<Self> {
        let mut split = PreparedSplit {
            name: name.to_string(),
            side,
            classes,
            shards: Vec::with_capacity(entries.len()),
            labels: Vec::new(),
            open: Arc::default(),
        };
        for e in entries {
            let path = dir.join(&e.file);
            let (header, labels, offsets) = read_header(&path, side)?;
            if header.count as usize != e.images || header.crc32 != e.crc32 {
                return Err(Error::Content {
                    path: Some(path),
                    message: format!(
                        "this shard ({} images, CRC-32 {:08x}) is not the one the index lists ({} images, CRC-32 {:08x}): the folder mixes two runs of `alexnet prepare`; run it again",
                        header.count, header.crc32, e.images, e.crc32
                    ),
                });
            }
            split.push(path, header, labels, offsets);
        }
        Ok(split)
    }

    /// The shards `name-00000.shard`, ... in `dir` as they are, while [`prepare`] makes
    /// the index.
    fn open_shards(dir: &Path, name: &str, side: usize, classes: Vec<String>) -> Result<Self> {
        let mut split = PreparedSplit {
            name: name.to_string(),
            side,
            classes,
            shards: Vec::new(),
            labels: Vec::new(),
            open: Arc::default(),
        };
        for k in 0.. {
            let path = dir.join(shard_name(name, k));
            if !path.exists() {
                break;
            }
            let (header, labels, offsets) = read_header(&path, side)?;
            split.push(path, header, labels, offsets);
        }
        Ok(split)
    }

    fn push(&mut self, path: PathBuf, header: Header, labels: Vec<u32>, offsets: Vec<u64>) {
        self.shards.push(Shard {
            path,
            header,
            first: self.labels.len(),
            offsets,
        });
        self.labels.extend(labels);
    }

    /// `train` or `val`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The side of its images.
    pub fn side(&self) -> usize {
        self.side
    }

    /// The labels, in image order.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Bytes of one image: `side * side * 3`.
    pub fn image_bytes(&self) -> usize {
        3 * self.side * self.side
    }

    /// How its images are stored (that of its first shard; `prepare` stores a set's
    /// shards alike).
    pub fn storage(&self) -> Storage {
        self.shards
            .first()
            .map_or(Storage::Raw, |s| s.header.storage)
    }

    /// The shard holding image `i < len()`, and the image's number in it.
    fn locate(&self, i: usize) -> (&Shard, usize) {
        let k = self.shards.partition_point(|s| s.first <= i) - 1;
        let s = &self.shards[k];
        (s, i - s.first)
    }

    /// Reads image `i < len()` (HWC, `side * side * 3` bytes) into `out`, through the
    /// shard's file kept open (the last 64 read stay open).
    pub fn read_image(&self, i: usize, out: &mut [u8]) -> std::io::Result<()> {
        if i >= self.len() || out.len() != self.image_bytes() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "image {i} of {} into {} bytes (one is {})",
                    self.len(),
                    out.len(),
                    self.image_bytes()
                ),
            ));
        }
        let (shard, k) = self.locate(i);
        let f = self.open.get(shard.first, &shard.path)?;
        shard.read(&f, k, out)
    }

    /// Reads the images `indices` (each `< len()`) one after another into `out` (HWC
    /// each, `indices.len() * image_bytes()` bytes): a batch as it goes to the device
    /// for augmentation there.
    pub fn read_batch(&self, indices: &[usize], out: &mut [u8]) -> Result<()> {
        let size = self.image_bytes();
        if out.len() != indices.len() * size {
            return Err(Error::BufferTooSmall {
                what: format!("prepared split {}: batch", self.name),
                len: out.len(),
                needed: indices.len() * size,
            });
        }
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::Invalid(format!(
                "prepared split {}: image {bad} of {}",
                self.name,
                self.len()
            )));
        }
        for (&i, dst) in indices.iter().zip(out.chunks_exact_mut(size)) {
            let (shard, _) = self.locate(i);
            self.read_image(i, dst)
                .map_err(|e| Error::io(&shard.path, e))?;
        }
        Ok(())
    }
}

/// Reads `buf.len()` bytes of `f` at `offset`.
#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    f.read_exact_at(buf, offset)
}

#[cfg(not(unix))]
fn read_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut f = f;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

/// A shard's header, labels and JPEG offsets (none for raw storage), checked: its magic,
/// its side against `side`, its size against what the header says, the offsets against
/// the data.
fn read_header(path: &Path, side: usize) -> Result<(Header, Vec<u32>, Vec<u64>)> {
    let mut f = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Content {
                path: Some(path.to_path_buf()),
                message: "a shard the index lists is missing; `alexnet prepare` again remakes it"
                    .into(),
            }
        } else {
            Error::io(path, e)
        }
    })?;
    let bad = |message: String| Error::Content {
        path: Some(path.to_path_buf()),
        message,
    };
    let size = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut h = [0u8; HEADER];
    f.read_exact(&mut h)
        .map_err(|_| bad(format!("truncated shard: {size} bytes, not even a header")))?;
    let header = Header::decode(&h).ok_or_else(|| bad("not a shard of a prepared set".into()))?;
    if header.side as usize != side {
        return Err(bad(format!(
            "a shard of {}x{} images in a set the index says is {side}x{side}",
            header.side, header.side
        )));
    }
    if !header.consistent() {
        return Err(bad(format!(
            "a header that does not hold together ({} images, {} bytes of images)",
            header.count, header.data_bytes
        )));
    }
    if size != header.file_bytes() {
        let what = if size < header.file_bytes() {
            "truncated shard"
        } else {
            "a shard of the wrong size"
        };
        return Err(bad(format!(
            "{what}: {size} bytes, its header says {} images, {} bytes; `alexnet prepare` again remakes it",
            header.count,
            header.file_bytes()
        )));
    }
    let mut labels = vec![0u8; 4 * header.count as usize];
    f.read_exact(&mut labels).map_err(|e| Error::io(path, e))?;
    let labels = labels
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut table = vec![0u8; header.table_bytes() as usize];
    read_at(&f, &mut table, header.table_at()).map_err(|e| Error::io(path, e))?;
    let offsets: Vec<u64> = table
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        .collect();
    let ordered = offsets.windows(2).all(|w| w[0] <= w[1]);
    if !offsets.is_empty()
        && (offsets[0] != 0 || !ordered || offsets.last() != Some(&header.data_bytes))
    {
        return Err(bad(
            "damaged JPEG offsets; `alexnet prepare` again remakes the shard".into(),
        ));
    }
    Ok((header, labels, offsets))
}

impl Images for PreparedSplit {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn class_names(&self) -> Vec<String> {
        self.classes.clone()
    }

    fn label(&self, i: usize) -> u32 {
        self.labels[i]
    }

    fn describe(&self, i: usize) -> PathBuf {
        let (shard, k) = self.locate(i);
        PathBuf::from(format!("{} (image {k})", shard.path.display()))
    }

    /// Image `i` as prepared; `side` must be the set's (the callers check
    /// [`Prepared::side`] against the network first), else a [`DecodeError::Corrupt`]
    /// that says so.
    fn load(&self, i: usize, side: usize) -> std::result::Result<RgbImage, DecodeError> {
        let mut buf = vec![0u8; 3 * side * side];
        self.load_into(i, side, &mut buf)?;
        let s = self.side as u32;
        RgbImage::from_raw(s, s, buf)
            .ok_or_else(|| DecodeError::Corrupt("an image of the wrong size".into()))
    }

    /// Image `i` read straight into `out` ([`PreparedSplit::read_image`]): no allocation
    /// for raw storage (what [`byte_loader`](super::loader::byte_loader) reads batches
    /// with).
    fn load_into(
        &self,
        i: usize,
        side: usize,
        out: &mut [u8],
    ) -> std::result::Result<(), DecodeError> {
        if side != self.side {
            return Err(DecodeError::Corrupt(format!(
                "the set was prepared at {}x{}, {side}x{side} was asked for",
                self.side, self.side
            )));
        }
        self.read_image(i, out).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                DecodeError::Corrupt(e.to_string())
            }
            _ => DecodeError::Unreadable(e),
        })
    }
}
