//! One training step of the paper's AlexNet on the GPU (`cargo bench --bench gpu_train`,
//! or packed by scripts/gpu-check.sh); without a GPU it says why and exits 0.
//!
//! f32 (no TF32), batch 128 (and 32), SGD with momentum 0.9 and weight decay 5e-4,
//! dropout on: the median of 20 steps after 3 warm-up steps, the batch already on the
//! device (as in PyTorch's reference loop, ../shared/gpu/README.md), then the same with
//! the batch copied from the host every step, then one timed step phase by phase (the
//! stream synchronised around each phase, so the phases add up to a little more).

use std::time::Instant;

use alexnet::nets::AlexNet;
use alexnet::runtime::{Cuda, Model, Tensor, TrainConfig, Trainer};
use rand::{Rng, SeedableRng};

type AnyError = Box<dyn std::error::Error>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), AnyError> {
    if let Some(why) = Cuda::unavailable_reason() {
        println!("gpu_train: skipped, {why}");
        return Ok(());
    }
    let cuda = Cuda::new(0)?;
    println!(
        "training step of AlexNet on {}",
        alexnet::runtime::Memory::name(&cuda)
    );
    let plan = AlexNet::plan().clone();
    let t0 = Instant::now();
    let model = Model::init(cuda, plan.clone(), 1)?;
    let mut trainer = Trainer::new(model, TrainConfig::default())?;
    println!(
        "ready in {:.0} ms (weights, forward and training kernels compiled or loaded)",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let s = plan.input;
    for batch in [128usize, 32] {
        let x = Tensor::new(
            vec![batch, s.c, s.h, s.w],
            (0..batch * s.len())
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect(),
        )?;
        let labels: Vec<u32> = (0..batch).map(|_| rng.random_range(0..1000)).collect();
        trainer.load_batch(&x, &labels)?;
        for _ in 0..3 {
            trainer.step_loaded()?;
        }
        let mut on_device = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            trainer.step_loaded()?; // ends by reading the loss back: synchronised
            on_device.push(t.elapsed().as_secs_f64());
        }
        let mut with_copy = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            trainer.step(&x, &labels)?;
            with_copy.push(t.elapsed().as_secs_f64());
        }
        let (a, b) = (median(on_device), median(with_copy));
        println!(
            "batch {batch:>3}: {:8.2} ms per step ({:7.0} images/s), batch on the device; {:8.2} ms with the batch copied from the host",
            a * 1e3,
            batch as f64 / a,
            b * 1e3
        );
        if batch == 128 {
            trainer.set_timing(true);
            trainer.step_loaded()?;
            let phases = trainer.timings().to_vec();
            trainer.set_timing(false);
            let total: f64 = phases.iter().map(|(_, t)| t).sum();
            println!(
                "phases at batch 128 (ms, synchronised; total {:.2}):",
                total * 1e3
            );
            for (name, t) in phases {
                println!("  {name:<20} {:7.3}", t * 1e3);
            }
        }
    }
    Ok(())
}
