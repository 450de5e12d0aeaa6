//! CPU forward pass of the paper's AlexNet at batch 1 and 16 (images/s), the time the
//! macro's front end (parse, check, plan, emit) takes for AlexNet, and its LRN with the
//! max pooling after it fused (inference's stage) beside the two apart (training's).
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

/// AlexNet's LRN and max pooling at batch 1 and 16: the one stage inference runs
/// (`lrn1+pool1`, `Plan::inference_stages`) beside the two stages training runs, on the
/// same input (conv1's and conv2's outputs, random).
fn lrn_and_pooling(c: &mut Criterion) {
    use alexnet::runtime::Inference;
    let plan = AlexNet::plan();
    let cpu = Cpu::new();
    let mut group = c.benchmark_group("alexnet_cpu_lrn_pool");
    group.sample_size(20);
    for fused in plan.inference_stages().into_iter().filter(|s| s.fused_pool) {
        let (lrn, pool) = (
            alexnet::ir::Stage::of(fused.layer),
            alexnet::ir::Stage::of(fused.last()),
        );
        let shape = plan.layers[fused.layer].input;
        for batch in [1usize, 16] {
            let x: Vec<f32> = (0..batch * shape.len())
                .map(|i| ((i * 7919) % 255) as f32 / 50.0 - 2.0)
                .collect();
            let mut mid = vec![0.0f32; x.len()];
            let mut y = vec![0.0f32; batch * plan.layers[fused.last()].output.len()];
            let label = plan.stage_label(fused);
            group.bench_function(BenchmarkId::new(format!("{label} fused"), batch), |b| {
                b.iter(|| {
                    cpu.forward_stage(plan, fused, batch, &x, &[], &mut y)
                        .unwrap()
                })
            });
            group.bench_function(BenchmarkId::new(format!("{label} apart"), batch), |b| {
                b.iter(|| {
                    cpu.forward_stage(plan, lrn, batch, &x, &[], &mut mid)
                        .unwrap();
                    cpu.forward_stage(plan, pool, batch, &mid, &[], &mut y)
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, forward, macro_front_end, lrn_and_pooling);
criterion_main!(benches);
