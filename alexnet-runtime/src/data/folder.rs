//! An ImageNet-style image folder: `root/<class>/<image>.{jpg,jpeg,png}`, decoded as the
//! paper prepares its images (section 2): rescaled so that the shorter side is 256, the
//! central 256x256 patch kept, and the mean over the training set of each pixel
//! subtracted ([`ImageFolder::mean_image`] computes it; the caller subtracts it in the
//! loader's transform).
//!
//! [`ImageFolder::loader`] decodes in background threads into a bounded queue of batches
//! whose content depends only on the order it is given, never on the number of workers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;

pub use super::decode::{decode, decode_rgb, DecodeError};
use super::loader::{self, Images};
pub use super::loader::{LoadReport, Loader, Transform};
use crate::error::{Error, Result};

/// An ImageNet-style folder of images: one sub-folder per class, sorted by name; the
/// label of an image is the index of its class folder.
///
/// Only the files directly inside a class folder whose extension is `jpg`, `jpeg` or
/// `png` (any case) are images; other files, and entries whose name starts with `.`,
/// are ignored. An image entry that cannot be read, a dangling link say, is listed and
/// then skipped and counted by the loaders as a file that does not decode.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    items: Arc<[(PathBuf, u32)]>,
}

impl ImageFolder {
    /// Lists the classes and images under `root`. Fails with a message naming the problem
    /// if `root` is missing or not a folder, has no class folders, or has a class folder
    /// with no images. Files are listed, not decoded: a broken image is found (and
    /// skipped) when it is loaded.
    pub fn open(root: &Path) -> Result<Self> {
        let meta = std::fs::metadata(root).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Invalid(format!("image folder {} does not exist", root.display()))
            } else {
                Error::io(root, e)
            }
        })?;
        if !meta.is_dir() {
            return Err(Error::Invalid(format!(
                "image folder {} is not a folder",
                root.display()
            )));
        }
        let mut classes = Vec::new();
        for (name, path) in entries(root)? {
            // A dangling link is not a class folder.
            let is_dir = match std::fs::metadata(&path) {
                Ok(m) => m.is_dir(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(Error::io(&path, e)),
            };
            if is_dir {
                let name = name.into_string().map_err(|n| {
                    Error::Invalid(format!(
                        "class folder {:?} in {} has a name that is not UTF-8",
                        n,
                        root.display()
                    ))
                })?;
                classes.push((name, path));
            }
        }
        if classes.is_empty() {
            return Err(Error::Invalid(format!(
                "image folder {} has no class folders (expected {}/<class>/<image>.jpg)",
                root.display(),
                root.display()
            )));
        }
        classes.sort();
        let mut items = Vec::new();
        for (label, (name, dir)) in classes.iter().enumerate() {
            let label = u32::try_from(label)
                .map_err(|_| Error::Invalid(format!("too many classes in {}", root.display())))?;
            let mut files = Vec::new();
            for (_, path) in entries(dir)? {
                // A file that cannot even be looked at (a dangling link, say) is listed:
                // the loaders skip and count it, as any file that does not decode.
                if has_image_extension(&path)
                    && std::fs::metadata(&path).map_or(true, |m| m.is_file())
                {
                    files.push(path);
                }
            }
            if files.is_empty() {
                return Err(Error::Invalid(format!(
                    "class `{name}` ({}) has no images (.jpg, .jpeg or .png)",
                    dir.display()
                )));
            }
            files.sort();
            items.extend(files.into_iter().map(|p| (p, label)));
        }
        Ok(ImageFolder {
            root: root.to_path_buf(),
            classes: classes.into_iter().map(|(n, _)| n).collect(),
            items: items.into(),
        })
    }

    /// Opens a data set with a training and a validation split: if `root/train` exists,
    /// returns it as the training set with `root/val` (when that exists) as the
    /// validation set, which must have the same classes; otherwise `root` itself is the
    /// training set and there is no validation set.
    pub fn open_split(root: &Path) -> Result<(ImageFolder, Option<ImageFolder>)> {
        let (train, val) = (root.join("train"), root.join("val"));
        if !train.is_dir() {
            if val.is_dir() {
                return Err(Error::Invalid(format!(
                    "{} has a val folder but no train folder",
                    root.display()
                )));
            }
            return Ok((ImageFolder::open(root)?, None));
        }
        let train = ImageFolder::open(&train)?;
        if !val.is_dir() {
            return Ok((train, None));
        }
        let val = ImageFolder::open(&val)?;
        if val.classes != train.classes {
            let missing: Vec<&str> = train
                .classes
                .iter()
                .filter(|c| !val.classes.contains(c))
                .map(String::as_str)
                .collect();
            let extra: Vec<&str> = val
                .classes
                .iter()
                .filter(|c| !train.classes.contains(c))
                .map(String::as_str)
                .collect();
            return Err(Error::Invalid(format!(
                "the classes of {} differ from those of {}: missing from val: [{}]; \
                 not in train: [{}]",
                val.root.display(),
                train.root.display(),
                missing.join(", "),
                extra.join(", ")
            )));
        }
        Ok((train, Some(val)))
    }

    /// The folder this set was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The class names, sorted; label `i` is `classes()[i]`.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The number of image files.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no image files (never true for a set [`open`](Self::open) returned).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The label (class index) of image `i`. Panics if `i >= len()`.
    pub fn label(&self, i: usize) -> u32 {
        self.items[i].1
    }

    /// The path of image `i`. Panics if `i >= len()`.
    pub fn path(&self, i: usize) -> &Path {
        &self.items[i].0
    }

    /// The mean of each pixel (3 x `side` x `side`, CHW, values 0..255) over up to `limit`
    /// images spread evenly over the set: [`loader::mean_image`].
    pub fn mean_image(&self, side: usize, limit: usize) -> (Vec<f32>, LoadReport) {
        loader::mean_image(self, side, limit)
    }

    /// Loads the images `order[0], order[1], ...` in the background: [`loader::loader`].
    pub fn loader(
        &self,
        order: Vec<usize>,
        batch: usize,
        side: usize,
        workers: usize,
        queue: usize,
        transform: Transform,
    ) -> Result<Loader> {
        loader::loader(
            Arc::new(self.clone()),
            order,
            batch,
            side,
            workers,
            queue,
            transform,
        )
    }
}

impl Images for ImageFolder {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn class_names(&self) -> Vec<String> {
        self.classes.clone()
    }

    fn label(&self, i: usize) -> u32 {
        self.items[i].1
    }

    fn describe(&self, i: usize) -> PathBuf {
        self.items[i].0.clone()
    }

    fn load(&self, i: usize, side: usize) -> std::result::Result<RgbImage, DecodeError> {
        decode_rgb(&self.items[i].0, side)
    }
}

/// The entries of a folder (name and path), skipping those whose name starts with `.`.
fn entries(dir: &Path) -> Result<Vec<(std::ffi::OsString, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        if !name.as_encoded_bytes().starts_with(b".") {
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}

/// Whether a path ends in `.jpg`, `.jpeg` or `.png`, in any case.
fn has_image_extension(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["jpg", "jpeg", "png"]
            .iter()
            .any(|x| e.eq_ignore_ascii_case(x))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayAlphaImage, GrayImage, ImageBuffer, Luma, Rgb, RgbImage, RgbaImage};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// A temporary folder, removed when dropped.
    struct Temp(PathBuf);

    impl Temp {
        fn new(tag: &str) -> Temp {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "alexnet-folder-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Temp(dir)
        }

        fn dir(&self, rel: &str) -> PathBuf {
            let d = self.0.join(rel);
            std::fs::create_dir_all(&d).unwrap();
            d
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn rgb(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 5) as u8, (y * 7) as u8, 100]))
    }

    fn identity() -> Transform {
        Arc::new(|v, _| v)
    }

    /// Three classes, created out of order: 7 good images and 3 broken ones.
    fn sample(t: &Temp) -> PathBuf {
        let root = t.dir("set");
        let cat = t.dir("set/cat");
        let ant = t.dir("set/ant");
        let bee = t.dir("set/bee");
        rgb(40, 30).save(ant.join("a0.png")).unwrap();
        rgb(40, 30).save(ant.join("a1.JPG")).unwrap();
        // A valid JPEG cut in half.
        rgb(64, 64).save(ant.join("trunc.jpg")).unwrap();
        let bytes = std::fs::read(ant.join("trunc.jpg")).unwrap();
        std::fs::write(ant.join("trunc.jpg"), &bytes[..bytes.len() / 2]).unwrap();
        GrayImage::from_fn(30, 50, |x, y| Luma([(x + y) as u8]))
            .save(bee.join("b0.png"))
            .unwrap();
        ImageBuffer::<Luma<u16>, Vec<u16>>::from_fn(20, 20, |x, _| Luma([x as u16 * 3000]))
            .save(bee.join("b1.png"))
            .unwrap();
        std::fs::write(bee.join("x.jpg"), "not an image\n").unwrap();
        RgbaImage::from_fn(33, 33, |x, _| image::Rgba([x as u8, 2, 3, 0]))
            .save(cat.join("c0.png"))
            .unwrap();
        GrayAlphaImage::from_fn(16, 48, |_, y| image::LumaA([y as u8, 9]))
            .save(cat.join("c1.png"))
            .unwrap();
        GrayImage::from_fn(48, 48, |x, _| Luma([x as u8]))
            .save(cat.join("c2.jpeg"))
            .unwrap();
        std::fs::write(cat.join("e.png"), "").unwrap();
        std::fs::write(cat.join("readme.txt"), "ignored").unwrap();
        std::fs::write(root.join("stray.png"), "ignored: not in a class").unwrap();
        root
    }

    const GOOD: [&str; 7] = [
        "a0.png", "a1.JPG", "b0.png", "b1.png", "c0.png", "c1.png", "c2.jpeg",
    ];
    const BROKEN: [&str; 3] = ["trunc.jpg", "x.jpg", "e.png"];

    fn name(p: &Path) -> &str {
        p.file_name().unwrap().to_str().unwrap()
    }

    #[test]
    fn lists_sorted_classes_and_labels() {
        let t = Temp::new("list");
        let set = ImageFolder::open(&sample(&t)).unwrap();
        assert_eq!(set.classes(), ["ant", "bee", "cat"]);
        assert_eq!(set.len(), 10);
        assert!(!set.is_empty());
        let listed: Vec<(&str, u32)> = (0..set.len())
            .map(|i| (name(set.path(i)), set.label(i)))
            .collect();
        assert_eq!(
            listed,
            [
                ("a0.png", 0),
                ("a1.JPG", 0),
                ("trunc.jpg", 0),
                ("b0.png", 1),
                ("b1.png", 1),
                ("x.jpg", 1),
                ("c0.png", 2),
                ("c1.png", 2),
                ("c2.jpeg", 2),
                ("e.png", 2),
            ]
        );
    }

    #[test]
    fn every_colour_type_decodes_and_broken_files_are_errors() {
        let t = Temp::new("decode");
        let set = ImageFolder::open(&sample(&t)).unwrap();
        for i in 0..set.len() {
            let r = decode(set.path(i), 32);
            let n = name(set.path(i));
            if GOOD.contains(&n) {
                let img = r.unwrap_or_else(|e| panic!("{n}: {e}"));
                assert_eq!(img.len(), 3 * 32 * 32, "{n}");
                assert!(img.iter().all(|v| (0.0..=255.0).contains(v)), "{n}");
            } else {
                let e = r.expect_err(n);
                let expected = match n {
                    "trunc.jpg" => "truncated",
                    "x.jpg" => "not a JPEG or PNG",
                    _ => "empty",
                };
                assert!(e.to_string().contains(expected), "{n}: {e}");
            }
        }
        // Grey: the three channels are equal; 16-bit: scaled to 8 bits.
        let grey = decode(&t.0.join("set/bee/b1.png"), 20).unwrap();
        assert_eq!(grey[..400], grey[400..800]);
        assert_eq!(grey[..400], grey[800..]);
        assert_eq!(grey[19], (19.0 * 3000.0 / 257.0f32).round());
        // RGBA: alpha dropped, colour kept.
        let rgba = decode(&t.0.join("set/cat/c0.png"), 33).unwrap();
        assert_eq!((rgba[5], rgba[33 * 33], rgba[2 * 33 * 33]), (5.0, 2.0, 3.0));
        assert!(matches!(
            decode(&t.0.join("set/none.png"), 8),
            Err(DecodeError::Unreadable(_))
        ));
    }

    /// A CMYK JPEG (scripts/make_cmyk_fixture.py): green left half, red right half.
    #[test]
    fn cmyk_jpegs_decode_to_rgb() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/cmyk.jpg");
        // 20x12: the centre 12x12 keeps columns 4..16, green up to column 9, then red.
        let img = decode(&path, 12).unwrap();
        let px = |x: usize, y: usize| [0, 1, 2].map(|c| img[(c * 12 + y) * 12 + x]);
        for (x, want) in [(1, [0.0, 255.0, 0.0]), (10, [255.0, 0.0, 0.0])] {
            let got = px(x, 6);
            let close = got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 40.0);
            assert!(close, "column {x}: {got:?}, expected about {want:?}");
        }
    }

    #[test]
    fn rescales_the_shorter_side_and_crops_the_centre() {
        let t = Temp::new("crop");
        // 128x64: red | black | white | blue quarters. Rescaled to 64x32, the centre
        // 32x32 is black on the left and white on the right (the edge columns blend
        // with their neighbours outside the crop).
        let wide = t.0.join("wide.png");
        RgbImage::from_fn(128, 64, |x, _| match x / 32 {
            0 => Rgb([255, 0, 0]),
            1 => Rgb([0, 0, 0]),
            2 => Rgb([255, 255, 255]),
            _ => Rgb([0, 0, 255]),
        })
        .save(&wide)
        .unwrap();
        let img = decode(&wide, 32).unwrap();
        assert_eq!(img.len(), 3 * 32 * 32);
        for c in 0..3 {
            for y in 0..32 {
                let row = &img[(c * 32 + y) * 32..][..32];
                assert!(row[1..15].iter().all(|&v| v == 0.0), "c {c} y {y}: {row:?}");
                assert!(
                    row[17..31].iter().all(|&v| v == 255.0),
                    "c {c} y {y}: {row:?}"
                );
            }
        }
        // Tall: 30x60 grey, row y of value 3y. Rescaled to 32x64, rows 16..48 are kept:
        // original rows 15..45 (row r of the result samples original row
        // (r + 16.5) * 60 / 64 - 0.5).
        let tall = t.0.join("tall.png");
        GrayImage::from_fn(30, 60, |_, y| Luma([(y * 3) as u8]))
            .save(&tall)
            .unwrap();
        let img = decode(&tall, 32).unwrap();
        for r in 1..31 {
            let expected = 3.0 * ((r as f32 + 16.5) * 60.0 / 64.0 - 0.5);
            assert!(
                (img[r * 32 + 5] - expected).abs() <= 1.0,
                "row {r}: {}",
                img[r * 32 + 5]
            );
        }
    }

    #[test]
    fn mean_image_averages_the_good_images() {
        let t = Temp::new("mean");
        let root = t.dir("m");
        let a = t.dir("m/a");
        t.dir("m/b");
        RgbImage::from_pixel(8, 8, Rgb([10, 20, 30]))
            .save(a.join("1.png"))
            .unwrap();
        RgbImage::from_pixel(8, 8, Rgb([30, 40, 50]))
            .save(a.join("2.png"))
            .unwrap();
        std::fs::write(a.join("3.png"), "junk").unwrap();
        RgbImage::from_pixel(16, 8, Rgb([50, 60, 70]))
            .save(root.join("b/4.png"))
            .unwrap();
        let set = ImageFolder::open(&root).unwrap();
        let (mean, report) = set.mean_image(8, 100);
        assert_eq!(mean.len(), 3 * 64);
        assert_eq!((mean[0], mean[64], mean[128]), (30.0, 40.0, 50.0));
        assert!(mean.iter().take(64).all(|&v| v == 30.0));
        assert_eq!(report.skipped, 1);
        assert_eq!(name(&report.first[0].0), "3.png");
        // A limit of 2 takes images 0 and 2 of 4 (1.png, 3.png): one decodes.
        let (mean, report) = set.mean_image(8, 2);
        assert_eq!((mean[0], report.skipped), (10.0, 1));
        let (mean, report) = set.mean_image(8, 0);
        assert_eq!((mean[0], report.skipped), (0.0, 0));
    }

    #[test]
    fn loader_delivers_good_images_in_order_and_skips_broken_ones() {
        let t = Temp::new("loader");
        let set = ImageFolder::open(&sample(&t)).unwrap();
        let side = 16;
        let size = 3 * side * side + 1;
        // Reversed order; the transform appends the position in the order.
        let order: Vec<usize> = (0..set.len()).rev().collect();
        let tag: Transform = Arc::new(|mut v: Vec<f32>, p| {
            v.push(p as f32);
            v
        });
        let run = |workers| {
            let mut loader = set
                .loader(order.clone(), 3, side, workers, 2, Arc::clone(&tag))
                .unwrap();
            let batches: Vec<_> = loader.by_ref().collect();
            (batches, loader.report())
        };
        let (batches, report) = run(1);
        assert_eq!(
            batches.iter().map(|b| b.1.len()).collect::<Vec<_>>(),
            [3, 3, 1]
        );
        let mut seen = Vec::new();
        for (images, labels) in &batches {
            assert_eq!(images.len(), labels.len() * size);
            for (img, &label) in images.chunks(size).zip(labels) {
                let p = img[size - 1] as usize;
                let i = order[p];
                assert_eq!(label, set.label(i));
                assert_eq!(img[..size - 1], decode(set.path(i), side).unwrap());
                seen.push(p);
            }
        }
        let expected: Vec<usize> = (0..order.len())
            .filter(|&p| GOOD.contains(&name(set.path(order[p]))))
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(report.skipped, 3);
        // Where each batch ends in the order: just past its last image, skipped files
        // included; the last batch ends the order.
        let mut loader = set
            .loader(order.clone(), 3, side, 2, 2, Arc::clone(&tag))
            .unwrap();
        let mut ends = Vec::new();
        while let Some((images, _)) = loader.next() {
            let last = images.chunks(size).last().unwrap()[size - 1] as usize;
            ends.push((last + 1, loader.next_position()));
        }
        let (last, full) = ends.split_last().unwrap();
        assert!(full.iter().all(|(past, pos)| past == pos), "{ends:?}");
        assert_eq!(last.1, order.len());
        let skipped: Vec<&str> = report.first.iter().map(|(p, _)| name(p)).collect();
        assert_eq!(skipped, ["e.png", "x.jpg", "trunc.jpg"]); // in (reversed) order
        assert!(BROKEN.iter().all(|b| skipped.contains(b)));
        assert!(report.to_string().starts_with("3 file(s) skipped"));
        // The same batches whatever the number of workers.
        let (batches3, report3) = run(3);
        assert_eq!(batches3, batches);
        assert_eq!(report3, report);
        let (batches16, _) = run(16);
        assert_eq!(batches16, batches);
        // As bytes: the same images (HWC, the decoder's layout), the same positions, the
        // batches read into buffers given back.
        let mut bytes =
            loader::byte_loader(Arc::new(set.clone()), order.clone(), 3, side, 2, 2).unwrap();
        let (mut positions, mut k) = (Vec::new(), 0);
        while let Some((images, labels)) = bytes.next() {
            let (f32s, want_labels) = &batches[k];
            k += 1;
            assert_eq!(&labels, want_labels);
            assert_eq!(images.len(), labels.len() * (size - 1));
            for (img, want) in images.chunks(size - 1).zip(f32s.chunks(size)) {
                let chw: Vec<f32> = (0..3)
                    .flat_map(|c| img.iter().skip(c).step_by(3).map(|&v| f32::from(v)))
                    .collect();
                assert_eq!(chw, want[..size - 1]);
            }
            positions.extend(bytes.last_positions().iter().map(|&p| p as usize));
            // Buffers given back are read into again, whatever they held.
            bytes.recycle(images);
        }
        assert_eq!((k, positions), (batches.len(), seen));
        assert_eq!(bytes.report(), report);
    }

    #[test]
    fn loader_handles_empty_orders_and_rendezvous_queues() {
        let t = Temp::new("edge");
        let set = ImageFolder::open(&sample(&t)).unwrap();
        assert_eq!(
            set.loader(vec![], 4, 8, 2, 1, identity()).unwrap().count(),
            0
        );
        // Bad arguments are errors, not panics.
        assert!(set.loader(vec![0], 0, 8, 2, 1, identity()).is_err());
        assert!(set.loader(vec![0], 2, 0, 2, 1, identity()).is_err());
        let err = set
            .loader(vec![0, set.len()], 2, 8, 2, 1, identity())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("out of range"), "{err}");
        let batches: Vec<_> = set
            .loader(vec![0, 0, 1], 2, 8, 2, 0, identity())
            .unwrap()
            .collect();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].1, [0, 0]);
    }

    #[test]
    fn dropping_a_loader_early_returns_promptly() {
        let t = Temp::new("drop");
        let set = ImageFolder::open(&sample(&t)).unwrap();
        let order: Vec<usize> = (0..400).map(|k| k % set.len()).collect();
        let started = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&started);
        let transform: Transform = Arc::new(move |v, _| {
            count.fetch_add(1, Ordering::Relaxed);
            v
        });
        let mut loader = set.loader(order, 2, 16, 3, 1, transform).unwrap();
        let first = loader.next().unwrap();
        assert_eq!(first.1.len(), 2);
        let t0 = Instant::now();
        drop(loader);
        assert!(t0.elapsed() < Duration::from_secs(2));
        // The queue bounded the work: far fewer than 400 images were decoded.
        assert!(started.load(Ordering::Relaxed) < 40);
    }

    #[test]
    #[should_panic(expected = "boom")]
    fn a_panicking_transform_is_raised_again() {
        let t = Temp::new("panic");
        let set = ImageFolder::open(&sample(&t)).unwrap();
        let transform: Transform = Arc::new(|v, p| if p == 3 { panic!("boom") } else { v });
        for _ in set
            .loader((0..set.len()).collect(), 2, 8, 2, 1, transform)
            .unwrap()
        {}
    }

    /// A dangling symbolic link is a file that cannot be read: listed, then skipped and
    /// counted by the loader; one among the class folders is not a class.
    #[cfg(unix)]
    #[test]
    fn dangling_links_are_skipped_and_counted() {
        let t = Temp::new("dangling");
        let root = t.dir("d");
        let a = t.dir("d/a");
        rgb(8, 8).save(a.join("1.png")).unwrap();
        rgb(8, 8).save(t.dir("d/b").join("2.png")).unwrap();
        std::os::unix::fs::symlink(t.0.join("gone.png"), a.join("0.png")).unwrap();
        std::os::unix::fs::symlink(t.0.join("gone"), root.join("c")).unwrap();
        let set = ImageFolder::open(&root).unwrap();
        assert_eq!(set.classes(), ["a", "b"]);
        assert_eq!(set.len(), 3);
        let mut loader = set.loader(vec![0, 1, 2], 4, 8, 2, 1, identity()).unwrap();
        let batches: Vec<_> = loader.by_ref().collect();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].1, [0, 1]);
        let report = loader.report();
        assert_eq!(report.skipped, 1);
        assert_eq!(name(&report.first[0].0), "0.png");
        let (_, report) = set.mean_image(8, 10);
        assert_eq!(report.skipped, 1);
    }

    #[test]
    fn clear_errors_for_bad_folders() {
        let t = Temp::new("errors");
        let missing = ImageFolder::open(&t.0.join("nope"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("does not exist"), "{missing}");
        let bare = t.dir("bare");
        std::fs::write(bare.join("a.png"), "").unwrap();
        let none = ImageFolder::open(&bare).unwrap_err().to_string();
        assert!(none.contains("no class folders"), "{none}");
        let root = t.dir("holes");
        rgb(4, 4).save(t.dir("holes/full").join("1.png")).unwrap();
        std::fs::write(t.dir("holes/hollow").join("notes.txt"), "").unwrap();
        let empty = ImageFolder::open(&root).unwrap_err().to_string();
        assert!(
            empty.contains("class `hollow`") && empty.contains("no images"),
            "{empty}"
        );
    }

    #[test]
    fn splits_into_train_and_val() {
        let t = Temp::new("split");
        for d in ["s/train/a", "s/train/b", "s/val/a", "s/val/b"] {
            rgb(4, 4).save(t.dir(d).join("1.png")).unwrap();
        }
        let (train, val) = ImageFolder::open_split(&t.0.join("s")).unwrap();
        let val = val.unwrap();
        assert_eq!(train.classes(), val.classes());
        assert!(train.root().ends_with("train") && val.root().ends_with("val"));
        // No split folders: the root is the training set.
        let (train, val) = ImageFolder::open_split(&t.0.join("s/train")).unwrap();
        assert_eq!((train.classes().len(), val.is_none()), (2, true));
        // Different classes are named.
        std::fs::remove_dir_all(t.0.join("s/val/b")).unwrap();
        rgb(4, 4).save(t.dir("s/val/c").join("1.png")).unwrap();
        let e = ImageFolder::open_split(&t.0.join("s"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing from val: [b]") && e.contains("not in train: [c]"),
            "{e}"
        );
    }
}
