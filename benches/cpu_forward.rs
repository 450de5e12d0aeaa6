//! CPU forward pass of the paper's AlexNet at batch 1 and 16 (images/s), and the time the
//! macro's front end (parse, check, plan, emit) takes for AlexNet.
//!
//! `cargo bench --bench cpu_forward`; results go to docs/benchmarks.md.

use alexnet::nets::AlexNet;
use alexnet::runtime::{Batch, Cpu};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const ALEXNET_SRC: &str = "pub AlexNet<3, 227, 227> split 2 {
    conv(96, 11, stride = 4) relu lrn(5, alpha = 1e-4, beta = 0.75, k = 2.0) maxpool(3, stride = 2)
    conv(256, 5, pad = 2, groups = 2) relu lrn(5, alpha = 1e-4, beta = 0.75, k = 2.0) maxpool(3, stride = 2)
    conv(384, 3, pad = 1) relu conv(384, 3, pad = 1, groups = 2) relu conv(256, 3, pad = 1, groups = 2) relu maxpool(3, stride = 2)
    dropout(0.5) fc(4096) relu dropout(0.5) fc(4096) relu fc(1000) softmax
}";

fn forward(c: &mut Criterion) {
    let net = AlexNet::new(Cpu::new(), 0).expect("init");
    let mut group = c.benchmark_group("alexnet_cpu_forward");
    group.sample_size(10);
    for batch in [1usize, 16] {
        let x = Batch::<3, 227, 227>::from_vec(
            batch,
            (0..batch * 3 * 227 * 227)
                .map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5)
                .collect(),
        )
        .expect("input");
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &x, |b, x| {
            b.iter(|| net.forward(x).expect("forward"))
        });
    }
    group.finish();
}

fn macro_front_end(c: &mut Criterion) {
    let tokens: proc_macro2::TokenStream = ALEXNET_SRC.parse().expect("tokens");
    c.bench_function("network_macro_expand_alexnet", |b| {
        b.iter(|| alexnet_codegen::expand(tokens.clone()))
    });
}

criterion_group!(benches, forward, macro_front_end);
criterion_main!(benches);
