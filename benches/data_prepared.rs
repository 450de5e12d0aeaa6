//! The prepared data path (issue 18): `prepare` against decoding, then reading a prepared
//! set into device-ready batches.
//!
//! - `prepare/decode_1_thread`: one JPEG of ImageNet's typical size (500x375) decoded
//!   and rescaled to 256x256, on one thread: the rate `prepare` should reach per core.
//! - `prepare/prepare_1_thread`: the same on one thread (a rayon pool of one), beside:
//! - `prepare/prepare_all_cores`: `prepared::prepare` of the whole folder (512 files, in
//!   4 shards) with rayon's default threads (one per core), from scratch each time.
//! - `read/raw_batch_1_thread`: a batch of 128 images in a random order read from the
//!   prepared shards (`PreparedSplit::read_batch`) into one buffer of bytes: what goes to
//!   the GPU, whose kernel augments it.
//! - `read/raw_batch_and_cpu_augment_1_thread`: the same batch, then the CPU's
//!   augmentation of it (`patch::Cut::batch_into`, random 227x227 crops, mirrors,
//!   colour shifts, mean and scale, into a reused buffer): the input batch, on the CPU.
//! - `read/byte_loader_all_cores`: the whole set 8 times in a shuffled order through
//!   `loader::byte_loader` with one thread per core, in batches of 128, each batch's
//!   buffer given back: what `train` reads (the backend then cuts the patches, on a GPU
//!   with the augmentation kernel).
//!
//! First, printed: decoding alone and `prepare`, on one thread and on every core,
//! interleaved in three rounds (the ratio `prepare` / decoding on as many threads is the
//! figure to read: `prepare` should reach the decode rate times the cores); skipped when
//! a filter that does not start with `prepare` is given.
//!
//! The prepared set (512 images, 100 MB) is larger than the last-level cache (36 MiB
//! here), so reads come from the page cache, as they would for a set that fits in memory.
//!
//! `cargo bench --bench data_prepared`; results go to docs/benchmarks.md.

use std::path::PathBuf;
use std::sync::Arc;

use alexnet::ir::Shape;
use alexnet::runtime::data::decode::decode_rgb;
use alexnet::runtime::data::folder::ImageFolder;
use alexnet::runtime::data::loader::{byte_loader, Images};
use alexnet::runtime::data::prepared::{prepare, PrepareOptions, Prepared, INDEX_FILE};
use alexnet::runtime::Synthetic;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

const FILES: u64 = 512;
const BATCH: usize = 128;

/// A folder of 512 JPEGs (quality 90) of generated shapes at 500x375, 2 classes.
fn folder(root: &std::path::Path) -> PathBuf {
    let src = root.join("src");
    let data = Synthetic::new(2, 3, 375, 500, 1).expect("generator");
    for i in 0..FILES {
        let (x, label) = data.sample(i);
        let dir = src.join(["disk", "square"][label as usize]);
        std::fs::create_dir_all(&dir).expect("folder");
        let n = 375 * 500;
        // Noise on the shapes, so that the JPEGs are as costly to decode as photographs.
        let img = image::RgbImage::from_fn(500, 375, |cx, cy| {
            let p = cy as usize * 500 + cx as usize;
            let noise = ((p as u32).wrapping_mul(2_654_435_761) >> 27) as f32 * 2.0;
            let b = |v: f32| ((v + 1.0) * 120.0 + noise).clamp(0.0, 255.0) as u8;
            image::Rgb([b(x[p]), b(x[n + p]), b(x[2 * n + p])])
        });
        let file = std::fs::File::create(dir.join(format!("{i}.jpg"))).expect("file");
        let mut file = std::io::BufWriter::new(file);
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut file, 90);
        enc.encode_image(&img).expect("jpeg");
        std::io::Write::flush(&mut file).expect("jpeg");
    }
    src
}

/// Decoding alone and `prepare`, each on one thread and on every core, interleaved in three
/// rounds (this machine's speed drifts from minute to minute: compare within a round).
fn scaling(src: &std::path::Path, files: &ImageFolder, opts: PrepareOptions) {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let out = std::env::temp_dir().join(format!("alexnet-prepared-scaling-{}", std::process::id()));
    println!(
        "decode alone vs prepare, files/s, {} files, 1 and {cores} threads:",
        files.len()
    );
    for round in 1..=3 {
        let mut row = format!("  round {round}:");
        for threads in [1, cores] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool");
            let t = std::time::Instant::now();
            pool.install(|| {
                (0..files.len()).into_par_iter().for_each(|i| {
                    decode_rgb(files.path(i), opts.side).expect("decode");
                })
            });
            let decode = files.len() as f64 / t.elapsed().as_secs_f64();
            let _ = std::fs::remove_dir_all(&out);
            let t = std::time::Instant::now();
            pool.install(|| prepare(src, &out, opts, &|_| {}, &|| false).expect("prepare"));
            let prep = files.len() as f64 / t.elapsed().as_secs_f64();
            row += &format!(
                "  {threads} thread(s): decode {decode:.1}, prepare {prep:.1} ({:.0}%)",
                100.0 * prep / decode
            );
        }
        println!("{row}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

fn prepared_path(c: &mut Criterion) {
    let root = std::env::temp_dir().join(format!("alexnet-prepared-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let src = folder(&root);
    let files = ImageFolder::open(&src).expect("open");
    // 4 shards of 128 images: shards are written while others decode, as for a large set
    // (ImageNet: 1,252 shards of the default 1,024).
    let opts = PrepareOptions {
        shard_images: 128,
        ..PrepareOptions::default()
    };

    // The printed comparison is slow: only with the `prepare` benchmarks (or no filter).
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter.is_none_or(|f| f.starts_with("prepare")) {
        scaling(&src, &files, opts);
    }
    let mut group = c.benchmark_group("prepare");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("decode_1_thread", |b| {
        b.iter(|| {
            i = (i + 1) % files.len();
            decode_rgb(files.path(i), opts.side).expect("decode")
        })
    });
    group.throughput(Throughput::Elements(FILES));
    let out = root.join("set");
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a thread pool");
    group.bench_function("prepare_1_thread", |b| {
        b.iter(|| {
            let _ = std::fs::remove_dir_all(&out);
            one.install(|| prepare(&src, &out, opts, &|_| {}, &|| false).expect("prepare"))
        })
    });
    group.bench_function("prepare_all_cores", |b| {
        b.iter(|| {
            let _ = std::fs::remove_dir_all(&out);
            prepare(&src, &out, opts, &|_| {}, &|| false).expect("prepare")
        })
    });
    group.finish();
    if !out.join(INDEX_FILE).exists() {
        // The prepare benchmark was filtered out.
        prepare(&src, &out, opts, &|_| {}, &|| false).expect("prepare");
    }

    let set = Prepared::open(&out).expect("open the prepared set");
    let pre = set
        .preprocess(Shape::new(3, 227, 227), "bench")
        .expect("preprocess");
    let split = &set.train;
    let mut order: Vec<usize> = (0..split.len()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut buf = vec![0u8; BATCH * split.image_bytes()];
    let mut start = 0;
    let mut next_batch = |rng: &mut rand::rngs::StdRng| {
        if start + BATCH > order.len() {
            order.shuffle(rng);
            start = 0;
        }
        start += BATCH;
        order[start - BATCH..start].to_vec()
    };
    group.bench_function("raw_batch_1_thread", |b| {
        b.iter(|| {
            let idx = next_batch(&mut rng);
            split.read_batch(&idx, &mut buf).expect("read");
        })
    });
    let mut step = 0u64;
    let mut patches = vec![0.0f32; BATCH * 3 * pre.crop.0 * pre.crop.1];
    group.bench_function("raw_batch_and_cpu_augment_1_thread", |b| {
        b.iter(|| {
            let idx = next_batch(&mut rng);
            split.read_batch(&idx, &mut buf).expect("read");
            let draws: Vec<_> = (0..BATCH as u64)
                .map(|k| pre.train_draw(0, 0, step * BATCH as u64 + k))
                .collect();
            step += 1;
            pre.train_cut()
                .batch_into(&buf, &draws, 1, &mut patches)
                .expect("augment")
        })
    });
    // What `train` runs: the loader's threads read the images as bytes (one per core, as
    // `train` starts them), batches of 128 in a shuffled order, the buffers given back as
    // `train` does; 8 passes over the set in one order, so that buffers are reused as in
    // an epoch of ImageNet's 10,000 batches.
    let passes = 8;
    group.throughput(Throughput::Elements((passes * split.len()) as u64));
    let images: Arc<dyn Images> = Arc::new(split.clone());
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
    group.sample_size(20);
    group.bench_function("byte_loader_all_cores", |b| {
        b.iter(|| {
            let order: Vec<usize> = (0..passes)
                .flat_map(|_| {
                    order.shuffle(&mut rng);
                    order.clone()
                })
                .collect();
            let mut loader =
                byte_loader(images.clone(), order, BATCH, split.side(), cores, 4).expect("loader");
            let mut n = 0;
            while let Some((images, labels)) = loader.next() {
                n += labels.len();
                loader.recycle(images);
            }
            assert_eq!(n, passes * split.len());
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&root);
}

criterion_group!(benches, prepared_path);
criterion_main!(benches);
