//! A training step of the paper's AlexNet on the CPU backend: batch 8 (or the batch sizes
//! given), He-initialised weights, SGD with momentum and weight decay, median of 10 steps
//! after 2 warm-up steps, with the forward pass alone beside it, then one step phase by
//! phase.
//! `cargo bench --bench cpu_train [-- BATCH...]`; results go to docs/benchmarks.md.

use std::time::Instant;

use alexnet::nets::AlexNet;
use alexnet::runtime::{weights, Cpu, Model, Tensor, TrainConfig, Trainer};

const STEPS: usize = 10;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let batches: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let batches = if batches.is_empty() { vec![8] } else { batches };
    let plan = AlexNet::plan().clone();
    let w = weights::kaiming_init(&plan, 0);
    let cpu = Cpu::new();
    println!(
        "AlexNet training step on {}",
        alexnet::runtime::prelude::Memory::name(&cpu)
    );
    for batch in batches {
        let len = batch * plan.input.len();
        let x = (0..len)
            .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
            .collect();
        let x = Tensor::new(vec![batch, 3, 227, 227], x).expect("input");
        let labels: Vec<u32> = (0..batch as u32).map(|i| (i * 37) % 1000).collect();
        let model = Model::from_tensors(cpu.clone(), plan.clone(), w.clone()).expect("model");
        let forward = median(
            (0..STEPS + 1)
                .map(|_| {
                    let t = Instant::now();
                    model.forward(&x).expect("forward");
                    t.elapsed().as_secs_f64() * 1e3
                })
                .skip(1)
                .collect(),
        );
        let mut trainer = Trainer::new(model, TrainConfig::default()).expect("trainer");
        let step = median(
            (0..STEPS + 2)
                .map(|_| {
                    let t = Instant::now();
                    trainer.step(&x, &labels).expect("step");
                    t.elapsed().as_secs_f64() * 1e3
                })
                .skip(2)
                .collect(),
        );
        println!(
            "batch {batch:>3}: training step {step:8.1} ms ({:.1} images/s), forward alone {forward:7.1} ms (median of {STEPS})",
            batch as f64 / step * 1e3
        );
        // One more step, phase by phase: where the time goes.
        trainer.set_timing(true);
        trainer.step(&x, &labels).expect("step");
        let phases = trainer.timings().to_vec();
        trainer.set_timing(false);
        let total: f64 = phases.iter().map(|(_, t)| t).sum();
        println!("  one step by phase (ms; total {:.1}):", total * 1e3);
        for (name, t) in phases {
            println!("    {name:<22} {:8.2}  {:4.1}%", t * 1e3, 100.0 * t / total);
        }
    }
}
