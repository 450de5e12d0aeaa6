//! The paper's AlexNet split into its two towers against the unsplit network: a training
//! step and a forward pass, on the CPU (two CPU backends, batch 8; on a machine with a
//! GPU only when `ALEXNET_TOWERS_CPU` is set), and on the GPU when there is one (two streams of GPU 0, and GPUs 0 and 1 when there are two; batch 128).
//! After each split benchmark it prints the bytes exchanged per batch and the share of
//! the time spent exchanging.
//!
//! `cargo bench --bench towers`; results go to docs/benchmarks.md.

use alexnet::nets::AlexNet;
use alexnet::runtime::towers::Towers;
use alexnet::runtime::{weights, Backend, Cpu, Cuda, Model, Tensor, TrainConfig, Trainer};
use criterion::{criterion_group, criterion_main, Criterion};

fn input(n: usize) -> (Tensor, Vec<u32>) {
    let len = n * 3 * 227 * 227;
    let x = (0..len)
        .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
        .collect();
    let labels = (0..n as u32).map(|i| (i * 37) % 1000).collect();
    (Tensor::new(vec![n, 3, 227, 227], x).expect("input"), labels)
}

fn compare<B: Backend + Sync>(
    c: &mut Criterion,
    group: &str,
    batch: usize,
    whole: B,
    towers: Vec<(String, Vec<B>)>,
) {
    let plan = AlexNet::plan().clone();
    let w = weights::kaiming_init(&plan, 0);
    let (x, labels) = input(batch);
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    let model = Model::from_tensors(whole, plan.clone(), w.clone()).expect("model");
    g.bench_function("unsplit_forward", |b| {
        b.iter(|| model.forward(&x).expect("forward"))
    });
    let config = TrainConfig::default();
    let mut trainer = Trainer::new(model, config.clone()).expect("trainer");
    g.bench_function("unsplit_train_step", |b| {
        b.iter(|| trainer.step(&x, &labels).expect("step"))
    });
    drop(trainer);
    for (name, backends) in towers {
        let mut t = Towers::new(plan.clone(), w.clone(), backends).expect("towers");
        let bytes = t.exchange_bytes_per_image() * batch;
        t.take_exchange_time();
        let mut runs = 0u32;
        let t0 = std::time::Instant::now();
        g.bench_function(format!("split_{name}_forward"), |b| {
            b.iter(|| {
                runs += 1;
                t.forward(&x).expect("forward")
            })
        });
        let share = t.take_exchange_time().as_secs_f64() / t0.elapsed().as_secs_f64();
        println!(
            "  {name} forward: {:.1} MB exchanged per batch; {:.1}% of the time in exchanges ({runs} runs)",
            bytes as f64 / 1e6,
            100.0 * share
        );
        let mut step = 0;
        let mults = vec![1.0; plan.params().len()];
        let t0 = std::time::Instant::now();
        g.bench_function(format!("split_{name}_train_step"), |b| {
            b.iter(|| {
                step += 1;
                let mask = alexnet::runtime::philox::DropoutMask {
                    seed: config.seed,
                    step,
                };
                t.train_step(&x, &labels, config.sgd, &mults, mask)
                    .expect("step")
            })
        });
        let share = t.take_exchange_time().as_secs_f64() / t0.elapsed().as_secs_f64();
        println!(
            "  {name} train step: {:.1} MB exchanged per batch (both ways); {:.1}% of the time in exchanges",
            2.0 * bytes as f64 / 1e6,
            100.0 * share
        );
    }
    g.finish();
}

fn towers(c: &mut Criterion) {
    let gpus = Cuda::device_count();
    // The CPU comparison runs where there is no GPU, or when asked for.
    if gpus == 0 || std::env::var_os("ALEXNET_TOWERS_CPU").is_some() {
        compare(
            c,
            "alexnet_towers_cpu_b8",
            8,
            Cpu::new(),
            vec![("two_cpu".into(), vec![Cpu::new(), Cpu::new()])],
        );
    }
    match gpus {
        0 => println!("no CUDA GPU: the GPU placements are not measured"),
        n => {
            let gpu = |i| Cuda::new(i).expect("GPU");
            let mut placements = vec![("one_gpu_two_streams".to_string(), vec![gpu(0), gpu(0)])];
            if n >= 2 {
                placements.push(("two_gpus".to_string(), vec![gpu(0), gpu(1)]));
            }
            compare(c, "alexnet_towers_gpu_b128", 128, gpu(0), placements);
        }
    }
}

criterion_group!(benches, towers);
criterion_main!(benches);
