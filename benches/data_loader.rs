//! Data pipeline throughput for the paper's AlexNet input: a JPEG of ImageNet's typical
//! size (500x375) decoded, rescaled to 256, mean-subtracted and augmented (random 227x227
//! crop, flip, PCA colour shift), on one thread; then the background loader over a folder
//! of such files with one worker per core.
//!
//! `cargo bench --bench data_loader`; results go to docs/benchmarks.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use alexnet::ir::Shape;
use alexnet::runtime::data::folder::{decode, ImageFolder};
use alexnet::runtime::data::loader::loader;
use alexnet::runtime::data::pipeline::Preprocess;
use alexnet::runtime::Synthetic;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const FILES_PER_CLASS: u64 = 32;

/// A folder of 2 x 32 JPEGs (quality 90) of generated shapes at 500x375.
fn folder() -> PathBuf {
    let root = std::env::temp_dir().join(format!("alexnet-loader-bench-{}", std::process::id()));
    let data = Synthetic::new(2, 3, 375, 500, 1).expect("generator");
    for i in 0..2 * FILES_PER_CLASS {
        let (x, label) = data.sample(i);
        let dir = root.join(["disk", "square"][label as usize]);
        std::fs::create_dir_all(&dir).expect("folder");
        let n = 375 * 500;
        let img = image::RgbImage::from_fn(500, 375, |cx, cy| {
            let p = cy as usize * 500 + cx as usize;
            let b = |v: f32| ((v + 1.0) * 127.5).clamp(0.0, 255.0) as u8;
            image::Rgb([b(x[p]), b(x[n + p]), b(x[2 * n + p])])
        });
        let file = std::fs::File::create(dir.join(format!("{i}.jpg"))).expect("file");
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(file, 90);
        enc.encode_image(&img).expect("jpeg");
    }
    root
}

fn pipeline(c: &mut Criterion) {
    let root = folder();
    let set = ImageFolder::open(&root).expect("open");
    let (pre, _) = Preprocess::fit(&set, Shape::new(3, 227, 227), "bench").expect("fit");
    let paths: Vec<&Path> = (0..set.len()).map(|i| set.path(i)).collect();

    let mut group = c.benchmark_group("data_pipeline");
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    let transform = pre.train_transform(0, 0);
    let mut i = 0usize;
    group.bench_function("decode_rescale_augment_1_thread", |b| {
        b.iter(|| {
            i = (i + 1) % paths.len();
            let img = decode(paths[i], pre.side).expect("decode");
            transform(img, i as u64)
        })
    });
    let mut i = 0usize;
    group.bench_function("decode_rescale_only_1_thread", |b| {
        b.iter(|| {
            i = (i + 1) % paths.len();
            decode(paths[i], pre.side).expect("decode")
        })
    });
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    group.throughput(Throughput::Elements(set.len() as u64));
    group.bench_with_input(
        BenchmarkId::new("loader_workers", cores),
        &cores,
        |b, &w| {
            let images = Arc::new(set.clone());
            b.iter(|| {
                let order = (0..set.len()).collect();
                let l = loader(
                    images.clone(),
                    order,
                    32,
                    pre.side,
                    w,
                    4,
                    pre.train_transform(0, 1),
                )
                .expect("loader");
                l.map(|(x, _)| x.len()).sum::<usize>()
            })
        },
    );
    group.finish();
    let _ = std::fs::remove_dir_all(&root);
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
