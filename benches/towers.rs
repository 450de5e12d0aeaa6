//! The paper's AlexNet split into its two towers against the unsplit network: a training
//! step and a forward pass, on the CPU (two CPU backends, batch 8; on a machine with a
//! GPU only when `ALEXNET_TOWERS_CPU` is set), and on the GPU when there is one (two streams of GPU 0, and GPUs 0 and 1 when there are two; batch 128).
//! After each placement it prints how the towers reach each other, the bytes exchanged per
//! batch, the exchanges' time alone, and how much of it the towers' compute hides (the
//! split run against the same run with the exchanges left out).
//!
//! `cargo bench --bench towers`; results go to docs/benchmarks.md.

use alexnet::nets::AlexNet;
use alexnet::runtime::prelude::*;
use alexnet::runtime::towers::Towers;
use alexnet::runtime::{weights, Cpu, Cuda, Model, Tensor, TrainConfig, Trainer};
use criterion::{criterion_group, criterion_main, Criterion};

fn input(n: usize) -> (Tensor, Vec<u32>) {
    let len = n * 3 * 227 * 227;
    let x = (0..len)
        .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
        .collect();
    let labels = (0..n as u32).map(|i| (i * 37) % 1000).collect();
    (Tensor::new(vec![n, 3, 227, 227], x).expect("input"), labels)
}

/// The median of `v` (milliseconds).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
        for link in t.links() {
            println!("  {name}: {link}");
        }
        let bytes = t.exchange_bytes_per_image() * batch;
        g.bench_function(format!("split_{name}_forward"), |b| {
            b.iter(|| t.forward(&x).expect("forward"))
        });
        let mut step = 0;
        let mults = vec![1.0; plan.params().len()];
        let mask = |step| alexnet::runtime::philox::DropoutMask {
            seed: config.seed,
            step,
        };
        g.bench_function(format!("split_{name}_train_step"), |b| {
            b.iter(|| {
                step += 1;
                t.train_step(&x, &labels, config.sgd, &mults, mask(step))
                    .expect("step")
            })
        });
        // How much of the exchanges the towers' compute hides: the exchanges alone, and
        // the split run with and without them. Runs with and without alternate, and
        // medians are compared, so that a drift of the machine's speed hits both alike.
        // The momentum is reset and the learning rate is 0, so the weights stay put
        // while the exchanges are skipped.
        let mut zeros = t.velocity_tensors().expect("momentum");
        zeros.iter_mut().for_each(|v| v.data.fill(0.0));
        t.set_velocity(zeros).expect("momentum");
        let frozen = vec![0.0; plan.params().len()];
        let mut times = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
        for i in 0..22 {
            let skip = i % 2 == 1;
            t.skip_exchanges_for_timing(skip);
            let t0 = std::time::Instant::now();
            t.forward(&x).expect("forward");
            let t1 = std::time::Instant::now();
            t.train_step(&x, &labels, config.sgd, &frozen, mask(0))
                .expect("step");
            if i >= 2 {
                times[0][usize::from(skip)].push((t1 - t0).as_secs_f64() * 1e3);
                times[1][usize::from(skip)].push(t1.elapsed().as_secs_f64() * 1e3);
            }
        }
        // The exchanges alone: their time less that of the same calls skipped (which
        // still allocate the exchanges' output buffers, as the skipped runs above do).
        let mut alone = |backward| {
            let mut run = |skip| {
                t.skip_exchanges_for_timing(skip);
                let runs = (0..11).map(|_| t.time_exchanges(batch, backward).expect("exchanges"));
                median(runs.skip(1).map(|d| d.as_secs_f64() * 1e3).collect())
            };
            let (full, skipped) = (run(false), run(true));
            t.skip_exchanges_for_timing(false);
            (full - skipped).max(0.0)
        };
        let (alone_f, alone_s) = (alone(false), alone(true));
        let [[with_f, without_f], [with_s, without_s]] = times.map(|p| p.map(median));
        for (what, mb, with, without, alone) in [
            ("forward", bytes, with_f, without_f, alone_f),
            ("train step", 2 * bytes, with_s, without_s, alone_s),
        ] {
            let exposed = with - without;
            let hidden = if alone <= 0.0 {
                "the exchanges were too fast to time".to_string()
            } else if exposed < 0.0 {
                "the split was not slower with them: their cost is below this machine's noise"
                    .to_string()
            } else {
                let share = 100.0 * (1.0 - exposed / alone).clamp(0.0, 1.0);
                format!("{exposed:.2} ms exposed, {share:.0}% hidden")
            };
            println!(
                "  {name} {what}: {:.1} MB exchanged per batch; exchanges alone {alone:.2} ms; \
                 split {with:.2} ms, without exchanges {without:.2} ms (medians of 10): {hidden}",
                mb as f64 / 1e6,
            );
        }
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
