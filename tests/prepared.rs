//! Prepared data sets (`alexnet::runtime::data::prepared`): the shards hold exactly what
//! decoding the folder gives, an interrupted `prepare` is finished by running it again,
//! and every damaged or mismatched set is a clear error.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use alexnet::ir::Shape;
use alexnet::runtime::data::decode::decode_rgb;
use alexnet::runtime::data::folder::ImageFolder;
use alexnet::runtime::data::loader::{mean_image, Images};
use alexnet::runtime::data::prepared::{self, PrepareOptions, Prepared, Storage, INDEX_FILE};

/// A fresh folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("alexnet-prepared-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `n` images per class (3 classes) of varied sizes and content under `dir/<class>/`,
/// PNG and JPEG, and one file that is not an image.
fn image_folder(dir: &Path, n: u32, seed: u32) {
    for (c, class) in ["ant", "bee", "cat"].iter().enumerate() {
        let d = dir.join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            let (w, h) = (40 + (i * 7 + c as u32 * 3) % 30, 36 + (i * 5) % 25);
            let k = seed.wrapping_mul(31).wrapping_add(i * 3 + c as u32);
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([
                    ((x * 5 + k * 17) % 256) as u8,
                    ((y * 3 + k * 29 + c as u32 * 80) % 256) as u8,
                    (((x ^ y) + k) % 256) as u8,
                ])
            });
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            img.save(d.join(format!("{i:03}.{ext}"))).unwrap();
        }
    }
    std::fs::write(dir.join("bee").join("broken.jpg"), b"not a jpeg").unwrap();
}

fn opts(side: usize, shard_images: usize) -> PrepareOptions {
    PrepareOptions {
        side,
        shard_images,
        storage: Storage::Raw,
    }
}

fn prepare(src: &Path, out: &Path, o: PrepareOptions) -> prepared::PrepareReport {
    prepared::prepare(src, out, o, &|_| {}, &|| false).unwrap()
}

#[test]
fn prepared_images_are_the_folder_s_decoded_images() {
    let root = scratch("same");
    image_folder(&root.join("src/train"), 9, 1);
    image_folder(&root.join("src/val"), 3, 2);
    let out = root.join("set");
    let calls = AtomicU64::new(0);
    let report = prepared::prepare(
        &root.join("src"),
        &out,
        opts(37, 5),
        &|n| {
            calls.fetch_max(n, Ordering::Relaxed);
        },
        &|| false,
    )
    .unwrap();
    assert!(!report.interrupted);
    assert_eq!(calls.load(Ordering::Relaxed), 28 + 10, "every file counted");
    let train = &report.splits[0];
    assert_eq!(
        (train.name.as_str(), train.files, train.images),
        ("train", 28, 27)
    );
    assert_eq!((train.written, train.reused), (6, 0));
    assert_eq!(train.skipped.skipped, 1);
    assert!(train.skipped.first[0].0.ends_with("bee/broken.jpg"));
    assert_eq!(report.splits[1].images, 9);

    let set = Prepared::open(&out).unwrap();
    set.verify().unwrap();
    assert_eq!(set.side, 37);
    assert_eq!(set.classes, ["ant", "bee", "cat"]);
    let folder = ImageFolder::open(&root.join("src/train")).unwrap();
    let good: Vec<usize> = (0..folder.len())
        .filter(|&i| !folder.path(i).ends_with("broken.jpg"))
        .collect();
    assert_eq!(set.train.len(), good.len());
    for (j, &i) in good.iter().enumerate() {
        assert_eq!(set.train.label(j), folder.label(i));
        let want = decode_rgb(folder.path(i), 37).unwrap();
        assert_eq!(set.train.load(j, 37).unwrap(), want, "image {j}");
    }
    // The mean is over every image, exactly as the loaders' mean_image takes it.
    let (mean, report) = mean_image(&folder, 37, folder.len());
    assert_eq!(report.skipped, 1);
    assert_eq!(set.mean, mean);
    assert!(set.pca.is_some());

    // Raw batches, in any order, straight from the shards.
    let order = [26, 0, 13, 5, 5];
    let size = set.train.image_bytes();
    let mut batch = vec![0u8; order.len() * size];
    set.train.read_batch(&order, &mut batch).unwrap();
    for (k, &i) in order.iter().enumerate() {
        let want = set.train.load(i, 37).unwrap();
        assert_eq!(&batch[k * size..(k + 1) * size], want.as_raw().as_slice());
    }
    assert!(set.train.read_batch(&[27], &mut batch[..size]).is_err());
    assert!(set.train.read_batch(&[0], &mut batch).is_err());

    // A network input the set was not prepared for.
    let err = set
        .preprocess(Shape::new(3, 227, 227), "prepared:x")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("prepared at 37x37") && err.contains("--size 256"),
        "{err}"
    );
    let pre = set.preprocess(Shape::new(3, 32, 32), "prepared:x").unwrap();
    assert_eq!((pre.side, pre.crop), (37, (32, 32)));
    // And the same folder prepared again changes nothing.
    let again = prepare(&root.join("src"), &out, opts(37, 5));
    assert_eq!((again.splits[0].written, again.splits[0].reused), (0, 6));
    // A source without a validation split leaves none of the earlier one.
    prepare(&root.join("src").join("train"), &out, opts(37, 5));
    assert!(Prepared::open(&out).unwrap().val.is_none());
    let val_shards = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("val-")
        })
        .count();
    assert_eq!(val_shards, 0);
}

/// Every file of a folder, by name.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn an_interrupted_prepare_is_finished_by_running_it_again() {
    let root = scratch("resume");
    image_folder(&root.join("src"), 8, 3);
    let fresh = root.join("fresh");
    prepare(&root.join("src"), &fresh, opts(37, 4));

    // Stopped once the first shard is done: no index, so not a prepared set yet.
    let out = root.join("set");
    let done = AtomicU64::new(0);
    let report = prepared::prepare(
        &root.join("src"),
        &out,
        opts(37, 4),
        &|n| done.store(n, Ordering::SeqCst),
        &|| done.load(Ordering::SeqCst) > 0,
    )
    .unwrap();
    assert!(report.interrupted);
    assert!(!out.join(INDEX_FILE).exists());
    let err = Prepared::open(&out).unwrap_err().to_string();
    assert!(
        err.contains("not a prepared data set") && err.contains("alexnet prepare"),
        "{err}"
    );
    let finished = std::fs::read_dir(&out).unwrap().count();
    assert!((1..7).contains(&finished), "{finished} shards");

    // One finished shard damaged, and a temporary file left over: the run again remakes
    // the damaged shard, keeps the others and ends with what one uninterrupted run makes.
    let first = out.join("train-00000.shard");
    let mut bytes = std::fs::read(&first).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&first, bytes).unwrap();
    std::fs::write(out.join("train-00005.shard.tmp"), b"half").unwrap();
    let report = prepare(&root.join("src"), &out, opts(37, 4));
    let s = &report.splits[0];
    assert_eq!(s.written + s.reused, 7);
    assert_eq!(s.reused, finished - 1, "kept all but the damaged one");
    assert_eq!(files(&out), files(&fresh));

    // Fewer images per shard: every shard made again, none of the old ones left.
    let report = prepare(&root.join("src"), &out, opts(37, 8));
    assert_eq!((report.splits[0].written, report.splits[0].reused), (4, 0));
    assert!(!out.join("train-00004.shard").exists());
    Prepared::open(&out).unwrap().verify().unwrap();
}

#[test]
fn damaged_and_mismatched_sets_are_errors_that_say_what_is_wrong() {
    let root = scratch("damaged");
    image_folder(&root.join("src"), 6, 4);
    let a = root.join("a");
    prepare(&root.join("src"), &a, opts(37, 5));
    let shard = a.join("train-00001.shard");
    let good = std::fs::read(&shard).unwrap();

    // Truncated.
    std::fs::write(&shard, &good[..good.len() - 100]).unwrap();
    let err = Prepared::open(&a).unwrap_err().to_string();
    assert!(
        err.contains("train-00001.shard") && err.contains("truncated shard"),
        "{err}"
    );
    std::fs::write(&shard, &good[..20]).unwrap();
    let err = Prepared::open(&a).unwrap_err().to_string();
    assert!(err.contains("truncated shard"), "{err}");

    // Missing.
    std::fs::remove_file(&shard).unwrap();
    let err = Prepared::open(&a).unwrap_err().to_string();
    assert!(
        err.contains("train-00001.shard") && err.contains("missing"),
        "{err}"
    );

    // Another run's shard under the same name (other sources: the count or the
    // checksum differs from the index's).
    let b = root.join("b");
    image_folder(&root.join("src2"), 6, 5);
    prepare(&root.join("src2"), &b, opts(37, 5));
    std::fs::copy(b.join("train-00001.shard"), &shard).unwrap();
    let err = Prepared::open(&a).unwrap_err().to_string();
    assert!(err.contains("not the one the index lists"), "{err}");

    // Another size.
    let c = root.join("c");
    prepare(&root.join("src"), &c, opts(40, 5));
    std::fs::copy(c.join("train-00001.shard"), &shard).unwrap();
    let err = Prepared::open(&a).unwrap_err().to_string();
    assert!(err.contains("40x40") && err.contains("37x37"), "{err}");

    // Damaged inside: opens (headers and sizes hold), fails verification.
    let mut bytes = good.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&shard, &bytes).unwrap();
    let set = Prepared::open(&a).unwrap();
    let err = set.verify().unwrap_err().to_string();
    assert!(
        err.contains("train-00001.shard") && err.contains("checksum mismatch"),
        "{err}"
    );

    // Hostile header fields (every size computed from them saturates, so no allocation
    // or panic follows from them): a huge count, a huge JPEG data length.
    for (at, value) in [(12usize, u32::MAX as u64), (40, u64::MAX - 1000)] {
        let mut bytes = good.clone();
        if at == 12 {
            bytes[at..at + 4].copy_from_slice(&(value as u32).to_le_bytes());
        } else {
            bytes[32..36].copy_from_slice(&195u32.to_le_bytes()); // JPEG storage
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        std::fs::write(&shard, &bytes).unwrap();
        let err = Prepared::open(&a).unwrap_err().to_string();
        assert!(err.contains("train-00001.shard"), "{err}");
    }
    std::fs::write(&shard, &good).unwrap();

    // The index: not JSON, another format.
    std::fs::write(&shard, &good).unwrap();
    let index = a.join(INDEX_FILE);
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(&index, &text[..text.len() / 2]).unwrap();
    let err = Prepared::open(&a).unwrap_err().to_string();
    assert!(err.contains("not a valid prepared-set index"), "{err}");
    std::fs::write(
        &index,
        text.replace("alexnet-rs-prepared/1", "alexnet-rs-prepared/9"),
    )
    .unwrap();
    let err = Prepared::open(&a).unwrap_err().to_string();
    assert!(err.contains("alexnet-rs-prepared/9"), "{err}");
    // A shard named outside the folder, a label beyond the classes.
    std::fs::write(
        &index,
        text.replace("\"train-00001.shard\"", "\"../b/train-00001.shard\""),
    )
    .unwrap();
    let err = Prepared::open(&a).unwrap_err().to_string();
    assert!(err.contains("the shards of train"), "{err}");
    std::fs::write(
        &index,
        text.replace(
            "\"classes\": [\n    \"ant\",\n    \"bee\",\n    \"cat\"\n  ]",
            "\"classes\": [\n    \"ant\"\n  ]",
        ),
    )
    .unwrap();
    let err = Prepared::open(&a).unwrap_err().to_string();
    assert!(err.contains("label") && err.contains("1 classes"), "{err}");
    std::fs::write(&index, &text).unwrap();
    Prepared::open(&a).unwrap().verify().unwrap();
}

#[test]
fn an_output_folder_inside_the_image_folder_is_refused() {
    let root = scratch("inside");
    image_folder(&root.join("src"), 2, 7);
    let err = prepared::prepare(
        &root.join("src"),
        &root.join("src").join("set").join("deeper"),
        opts(37, 4),
        &|_| {},
        &|| false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("inside the image folder"), "{err}");
    assert!(!root.join("src").join("set").exists());
}

#[test]
fn a_folder_with_nothing_that_decodes_is_an_error() {
    let root = scratch("nothing");
    let class = root.join("src").join("x");
    std::fs::create_dir_all(&class).unwrap();
    std::fs::write(class.join("a.jpg"), b"no").unwrap();
    std::fs::write(class.join("b.png"), b"").unwrap();
    let err = prepared::prepare(
        &root.join("src"),
        &root.join("set"),
        opts(37, 4),
        &|_| {},
        &|| false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no image could be read") && err.contains("2 file(s) skipped"),
        "{err}"
    );
    assert!(!root.join("set").join(INDEX_FILE).exists());
}

/// JPEG storage: each image re-encoded after rescaling, decoded when read; close to the
/// raw image, a fraction of its size; switching the storage remakes every shard.
#[test]
fn jpeg_storage_reads_back_close_to_the_raw_images_in_less_space() {
    let root = scratch("jpeg");
    image_folder(&root.join("src"), 8, 6);
    let raw = root.join("raw");
    prepare(&root.join("src"), &raw, opts(64, 5));
    let jpeg = root.join("jpeg");
    let o = PrepareOptions {
        storage: Storage::Jpeg(95),
        ..opts(64, 5)
    };
    let report = prepare(&root.join("src"), &jpeg, o);
    assert_eq!(report.splits[0].images, 24);
    let (a, b) = (
        Prepared::open(&raw).unwrap(),
        Prepared::open(&jpeg).unwrap(),
    );
    b.verify().unwrap();
    assert_eq!(b.train.storage(), Storage::Jpeg(95));
    assert_eq!(a.train.labels(), b.train.labels());
    let size = |d: &Path| -> u64 {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".shard"))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    assert!(
        size(&jpeg) * 3 < size(&raw),
        "shards: {} vs {} bytes",
        size(&jpeg),
        size(&raw)
    );
    let n = a.train.image_bytes();
    let (mut x, mut y) = (vec![0u8; 24 * n], vec![0u8; 24 * n]);
    let order: Vec<usize> = (0..24).rev().collect();
    a.train.read_batch(&order, &mut x).unwrap();
    b.train.read_batch(&order, &mut y).unwrap();
    let mean_abs = x
        .iter()
        .zip(&y)
        .map(|(&p, &q)| (f64::from(p) - f64::from(q)).abs())
        .sum::<f64>()
        / x.len() as f64;
    assert!(
        mean_abs < 3.0,
        "JPEG 95 differs by {mean_abs} levels on average"
    );
    assert_eq!(
        b.train.load(3, 64).unwrap().as_raw().as_slice(),
        &y[20 * n..21 * n]
    );
    // The same folder again as JPEG keeps every shard; as raw, remakes every one.
    let again = prepare(&root.join("src"), &jpeg, o);
    assert_eq!((again.splits[0].written, again.splits[0].reused), (0, 5));
    let switched = prepare(&root.join("src"), &jpeg, opts(64, 5));
    assert_eq!(
        (switched.splits[0].written, switched.splits[0].reused),
        (5, 0)
    );
    assert_eq!(files(&jpeg), files(&raw));
    // A JPEG shard whose offsets are damaged is an error that says so.
    prepare(&root.join("src"), &jpeg, o);
    let shard = jpeg.join("train-00002.shard");
    let mut bytes = std::fs::read(&shard).unwrap();
    let table = 48 + 4 * 5; // header, five labels, no skipped files in this shard
    bytes[table + 8..table + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&shard, bytes).unwrap();
    let err = Prepared::open(&jpeg).unwrap_err().to_string();
    assert!(
        err.contains("train-00002.shard") && err.contains("damaged JPEG offsets"),
        "{err}"
    );
}

/// A set of more shards than are kept open (one image each: 120 shards) reads back through
/// the byte loader as through `read_image`, image for image, and keeps few files open
/// (ImageNet has 1,300 shards; a process may often open only 1,024 files).
#[test]
fn a_set_of_many_shards_reads_back_with_few_files_open() {
    use alexnet::runtime::data::loader::byte_loader;
    use std::sync::Arc;
    let root = scratch("many");
    image_folder(&root.join("src"), 40, 5);
    let out = root.join("set");
    prepare(&root.join("src"), &out, opts(24, 1));
    let set = Prepared::open(&out).unwrap();
    let split = set.train.clone();
    assert!(split.len() >= 100, "{} images", split.len());
    #[cfg(target_os = "linux")]
    let open_files = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    #[cfg(target_os = "linux")]
    let before = open_files();
    let order: Vec<usize> = (0..split.len()).rev().collect();
    let mut loader = byte_loader(Arc::new(split.clone()), order.clone(), 7, 24, 3, 2).unwrap();
    let mut k = 0;
    while let Some((images, labels)) = loader.next() {
        for (img, &label) in images.chunks(24 * 24 * 3).zip(&labels) {
            let mut want = vec![0u8; 24 * 24 * 3];
            split.read_image(order[k], &mut want).unwrap();
            assert!(img == want.as_slice(), "image {}", order[k]);
            assert_eq!(label, split.labels()[order[k]]);
            k += 1;
        }
        loader.recycle(images);
    }
    assert_eq!(k, split.len());
    assert_eq!(loader.report().skipped, 0);
    // The split's clones share at most 64 open shard files (other tests of this process
    // open files too: a margin).
    #[cfg(target_os = "linux")]
    assert!(
        open_files() < before + 64 + 16,
        "{} files open, {before} before",
        open_files()
    );
    let _ = std::fs::remove_dir_all(&root);
}
