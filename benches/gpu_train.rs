//! One training step of the paper's AlexNet on the GPU (`cargo bench --bench gpu_train`,
//! or packed by scripts/gpu-check.sh); without a GPU it says why and exits 0.
//!
//! f32 (no TF32), batch 128 (and 32), SGD with momentum 0.9 and weight decay 5e-4,
//! dropout on: the median of 20 steps after 3 warm-up steps, the batch already on the
//! device (as in PyTorch's reference loop, ../shared/gpu/README.md), then the same with
//! the batch copied from the host every step, then one timed step phase by phase (the
//! stream synchronised around each phase, so the phases add up to a little more).
//!
//! Then the data path of `train` on a prepared set (issue 18): batches of 256x256 bytes
//! (a quarter of the f32 patches' bytes, before the crop) cut on the GPU by the
//! augmentation kernel, (a) each copied from pageable memory on the compute stream
//! before its step (`Trainer::step_images`), (b) each sent one step ahead
//! (`Trainer::send_images`, then `step_sent`: staged in pinned memory and copied on a
//! copy stream by the trainer's upload thread while the step before computes), and (c)
//! the patches already on the device (`step_loaded`: no copy, no cut; the rate (b)
//! should come close to when the copy overlaps).
//!
//! Last, the step at batch 128 in tf32 and in bf16 (tensor cores for the forward products
//! and the gradients), with its phases.

use std::time::Instant;

use alexnet::nets::AlexNet;
use alexnet::runtime::data::patch::Draw;
use alexnet::runtime::data::pipeline::{Preprocess, PIXEL_SCALE};
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
    for batch in [128usize, 32] {
        let (x, labels) = random_batch(&plan, batch, &mut rng)?;
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
        bytes_path(&mut trainer, batch, &mut rng)?;
    }
    precisions(&plan, &mut rng)
}

/// `batch` images of values in [-1, 1) and labels of 1000 classes.
fn random_batch(
    plan: &alexnet::ir::Plan,
    batch: usize,
    rng: &mut rand::rngs::StdRng,
) -> Result<(Tensor, Vec<u32>), AnyError> {
    let s = plan.input;
    let x = Tensor::new(
        vec![batch, s.c, s.h, s.w],
        (0..batch * s.len())
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect(),
    )?;
    let labels = (0..batch).map(|_| rng.random_range(0..1000)).collect();
    Ok((x, labels))
}

/// The step at batch 128 in tf32 and bf16 (the products of the forward pass and of the
/// gradients on tensor cores), the batch on the device, with its phases.
fn precisions(plan: &alexnet::ir::Plan, rng: &mut rand::rngs::StdRng) -> Result<(), AnyError> {
    use alexnet::ir::Precision;
    let batch = 128;
    let (x, labels) = random_batch(plan, batch, rng)?;
    for precision in [Precision::Tf32, Precision::Bf16] {
        let cuda = Cuda::new(0)?.with_precision(precision)?;
        let model = Model::init(cuda, plan.clone(), 1)?;
        let mut trainer = Trainer::new(model, TrainConfig::default())?;
        trainer.load_batch(&x, &labels)?;
        for _ in 0..3 {
            trainer.step_loaded()?;
        }
        let mut times = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            trainer.step_loaded()?;
            times.push(t.elapsed().as_secs_f64());
        }
        let a = median(times);
        println!(
            "batch {batch}, {precision}: {:8.2} ms per step ({:7.0} images/s), batch on the device",
            a * 1e3,
            batch as f64 / a
        );
        trainer.set_timing(true);
        trainer.step_loaded()?;
        let phases = trainer.timings().to_vec();
        trainer.set_timing(false);
        for (name, t) in phases {
            println!("  {precision} {name:<20} {:7.3}", t * 1e3);
        }
    }
    Ok(())
}

/// The three ways a batch of bytes reaches a step (see the module documentation), 10
/// steps each after 2 warm-up steps, medians per step.
fn bytes_path(
    trainer: &mut Trainer<Cuda>,
    batch: usize,
    rng: &mut rand::rngs::StdRng,
) -> Result<(), AnyError> {
    let side = 256;
    let pre = Preprocess {
        side,
        crop: (227, 227),
        mean: (0..3 * side * side)
            .map(|_| rng.random_range(60.0..190.0))
            .collect(),
        scale: PIXEL_SCALE,
        std: [1.0; 3],
        pca: None,
        classes: Vec::new(),
        source: "bench".into(),
    };
    let cut = pre.train_cut();
    // Two batches in turn, so that a copy never finds its bytes already there.
    let images: Vec<Vec<u8>> = (0..2)
        .map(|_| (0..batch * side * side * 3).map(|_| rng.random()).collect())
        .collect();
    let draws: Vec<Draw> = (0..batch as u64).map(|i| pre.train_draw(1, 0, i)).collect();
    let labels: Vec<u32> = (0..batch).map(|_| rng.random_range(0..1000)).collect();
    let (warm, runs) = (2, 10);
    // (a) copied before each step.
    let mut copied = Vec::new();
    for k in 0..warm + runs {
        let t = Instant::now();
        trainer.step_images(&cut, &images[k % 2], &draws, &labels)?;
        if k >= warm {
            copied.push(t.elapsed().as_secs_f64());
        }
    }
    // (b) sent one step ahead: the time per step over the loop. The two batches' buffers
    // go round (each comes back from its step and is sent again), so the training
    // thread copies nothing itself, as in `train`, where the loader's threads fill them.
    let mut ahead = Vec::new();
    let mut spare = images.clone();
    trainer.send_images(spare.pop().ok_or("no batch")?)?;
    for k in 0..warm + runs {
        let t = Instant::now();
        trainer.send_images(spare.pop().ok_or("no batch")?)?;
        spare.push(trainer.step_sent(&cut, &draws, &labels)?.1);
        if k >= warm {
            ahead.push(t.elapsed().as_secs_f64());
        }
    }
    trainer.clear_sent()?;
    // (c) the patches on the device.
    trainer.load_images(&cut, &images[0], &draws, &labels)?;
    let mut on_device = Vec::new();
    for k in 0..warm + runs {
        let t = Instant::now();
        trainer.step_loaded()?;
        if k >= warm {
            on_device.push(t.elapsed().as_secs_f64());
        }
    }
    let (a, b, c) = (median(copied), median(ahead), median(on_device));
    println!(
        "batch {batch:>3}, 256x256 bytes cut on the GPU: {:8.2} ms per step copied before each step, {:8.2} ms sent one step ahead ({:7.0} images/s, {:.0}% of the rate with the patches on the device), {:8.2} ms with the patches on the device",
        a * 1e3,
        b * 1e3,
        batch as f64 / b,
        100.0 * c / b,
        c * 1e3
    );
    Ok(())
}
