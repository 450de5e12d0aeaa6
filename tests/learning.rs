//! The CPU learns: the small net (every layer kind, two towers, dropout) trained from He
//! initialisation on the generated shapes (10 classes, chance is 10%) for a few
//! hundred steps reaches well above chance on images it never saw, and its loss falls.

use alexnet::nets::SmallNet;
use alexnet::runtime::optim::Sgd;
use alexnet::runtime::train::epoch_order;
use alexnet::runtime::{Cpu, Model, Schedule, Synthetic, TrainConfig, Trainer};

#[test]
fn small_net_learns_the_generated_shapes_on_the_cpu() {
    let data = Synthetic::new(10, 3, 32, 32, 1).unwrap();
    let plan = SmallNet::plan().clone();
    let init = alexnet::runtime::weights::kaiming_init(&plan, 3);
    let model = Model::from_tensors(Cpu::new(), plan, init).unwrap();
    let config = TrainConfig {
        sgd: Sgd {
            lr: 0.02,
            ..Sgd::default()
        },
        schedule: Schedule::Constant,
        seed: 3,
    };
    let mut trainer = Trainer::new(model, config).unwrap();
    let (train, batch, steps) = (4096u64, 32usize, 600u64);
    let started = std::time::Instant::now();
    let mut losses = Vec::new();
    let mut order = Vec::new();
    for step in 0..steps {
        let at = (step * batch as u64) % train;
        if at == 0 {
            order = epoch_order(3, step * batch as u64 / train, train);
        }
        let idx = &order[at as usize..at as usize + batch];
        let (x, y) = data.batch(idx);
        let s = trainer.step(&x, &y).unwrap();
        losses.push(s.loss);
        if step % 100 == 99 {
            let recent = &losses[losses.len() - 100..];
            println!(
                "step {:>4}: loss {:.3} (mean of 100), {:.1} s",
                step + 1,
                recent.iter().sum::<f64>() / 100.0,
                started.elapsed().as_secs_f64()
            );
        }
    }
    // Held-out images: indices the training never drew.
    let held: Vec<u64> = (train..train + 500).collect();
    let mut stats = None::<alexnet::runtime::train::BatchStats>;
    for chunk in held.chunks(100) {
        let (x, y) = data.batch(chunk);
        let s = trainer.evaluate(&x, &y).unwrap();
        match stats.as_mut() {
            Some(t) => t.merge(&s),
            None => stats = Some(s),
        }
    }
    let stats = stats.unwrap();
    let first: f64 = losses[..50].iter().sum::<f64>() / 50.0;
    let last: f64 = losses[losses.len() - 50..].iter().sum::<f64>() / 50.0;
    println!(
        "held-out top-1 error {:.1}%, top-5 error {:.1}%; loss {first:.3} -> {last:.3}; {:.1} s",
        100.0 * stats.top1_error(),
        100.0 * stats.top5_error(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        last < 0.6 * first,
        "the loss did not fall: {first:.3} -> {last:.3}"
    );
    assert!(
        stats.top1_error() < 0.5,
        "held-out top-1 error {:.1}% (chance 90%)",
        100.0 * stats.top1_error()
    );
}
