//! The paper's two towers (alexnet-runtime/src/towers.rs) on two CPU backends: split
//! execution, two workers with their own memory exchanging only before the layers that
//! read both towers, equals the unsplit network forward and backward (relative L2 <=
//! 1e-5), with weights in the one-process layout. tests/gpu_towers.rs runs the same
//! towers on GPUs.

mod common;

use alexnet::ir::Plan;
use alexnet::nets::{AlexNet, SmallNet};
use alexnet::runtime::philox::DropoutMask;
use alexnet::runtime::towers::{SplitTrainer, Towers};
use alexnet::runtime::train::Train;
use alexnet::runtime::weights::NamedTensor;
use alexnet::runtime::{Cpu, Model, Tensor, TrainConfig, Trainer};
use common::rel_l2;
use rand::{Rng, SeedableRng};

const TOL: f64 = 1e-5;

/// Two CPU backends: one per tower, each with its own memory.
fn two() -> Vec<Cpu> {
    vec![Cpu::new(), Cpu::new()]
}

fn setup(plan: &Plan, batch: usize, seed: u64) -> (Vec<NamedTensor>, Tensor, Vec<u32>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let w = common::hash_weights(plan, seed);
    let s = plan.input;
    let x = Tensor::new(
        vec![batch, s.c, s.h, s.w],
        common::random(&mut rng, batch * s.len()),
    )
    .unwrap();
    let classes = plan.output().len() as u32;
    let labels = (0..batch).map(|_| rng.random_range(0..classes)).collect();
    (w, x, labels)
}

fn forward_matches(plan: &Plan, batch: usize) {
    let (mut w, x, _) = setup(plan, batch, 1);
    // Smaller weights keep the final softmax away from saturation (one-hot outputs would
    // agree whatever the logits).
    for t in &mut w {
        t.data.iter_mut().for_each(|v| *v *= 0.3);
    }
    let cpu = Cpu::new();
    let towers = Towers::new(plan.clone(), w.clone(), two()).unwrap();
    let split = towers.forward(&x).unwrap();
    let whole = Model::from_tensors(cpu.clone(), plan.clone(), w)
        .unwrap()
        .forward(&x)
        .unwrap();
    assert_eq!(split.shape(), whole.shape());
    let top = whole.data().iter().copied().fold(0.0f32, f32::max);
    assert!(top < 0.99, "{}: saturated output ({top})", plan.name);
    let e = rel_l2(split.data(), whole.data());
    println!("{} forward: split vs unsplit {e:.2e}", plan.name);
    assert!(e <= TOL, "{} forward: relative L2 {e:.2e}", plan.name);
}

fn gradients_match(plan: &Plan, batch: usize) {
    let (w, x, labels) = setup(plan, batch, 2);
    let cpu = Cpu::new();
    let towers = Towers::new(plan.clone(), w.clone(), two()).unwrap();
    let mask = DropoutMask { seed: 9, step: 0 };
    let (loss, split) = towers.gradients(&x, &labels, mask).unwrap();
    let model = Model::from_tensors(cpu, plan.clone(), w).unwrap();
    let config = TrainConfig {
        seed: 9,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, config).unwrap();
    let stats = trainer.step(&x, &labels).unwrap();
    assert!(
        (loss - stats.loss).abs() <= 1e-5 * stats.loss.abs().max(1.0),
        "{}: loss {loss} split, {} unsplit",
        plan.name,
        stats.loss
    );
    let whole = trainer.gradients().unwrap();
    let mut worst: f64 = 0.0;
    for (s, u) in split.iter().zip(&whole) {
        assert_eq!((&s.name, &s.shape), (&u.name, &u.shape));
        let e = rel_l2(&s.data, &u.data);
        assert!(e <= TOL, "{}: {} relative L2 {e:.2e}", plan.name, s.name);
        worst = worst.max(e);
    }
    println!(
        "{} gradients: split vs unsplit, worst {worst:.2e}",
        plan.name
    );
}

#[test]
fn split_forward_equals_unsplit() {
    forward_matches(SmallNet::plan(), 3);
    forward_matches(AlexNet::plan(), 2);
    let grouped_first = alexnet::plan_from_str(
        "T<4, 10, 10> split 2 { conv(8, 3, groups = 2) relu lrn(3) conv(8, 3, pad = 1) relu fc(6) softmax }",
    )
    .unwrap();
    forward_matches(&grouped_first, 2);
}

#[test]
fn split_gradients_equal_unsplit() {
    gradients_match(SmallNet::plan(), 3);
    let grouped_first = alexnet::plan_from_str(
        "T<4, 10, 10> split 2 { conv(8, 3, groups = 2) relu lrn(3) avgpool(2) conv(8, 3, pad = 1) relu dropout(0.5) fc(6) softmax }",
    )
    .unwrap();
    gradients_match(&grouped_first, 2);
    gradients_match(AlexNet::plan(), 1);
}

#[test]
fn an_unsplit_network_has_no_towers() {
    let plan = alexnet::plan_from_str("T<3, 8, 8> { conv(4, 3) fc(2) }").unwrap();
    let w = common::hash_weights(&plan, 1);
    let err = Towers::new(plan, w, two()).unwrap_err().to_string();
    assert!(err.contains("is not split into two towers"), "{err}");
    let plan = SmallNet::plan();
    let w = common::hash_weights(plan, 1);
    let err = Towers::new(plan.clone(), w, vec![Cpu::new()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("has 2 towers; 1 backends were given"), "{err}");
}

#[test]
fn split_training_equals_unsplit_and_keeps_the_layout() {
    let plan = SmallNet::plan();
    let (w, _, _) = setup(plan, 1, 3);
    let cpu = Cpu::new();
    let config = TrainConfig {
        seed: 4,
        ..TrainConfig::default()
    };
    let mut split = SplitTrainer::new(plan.clone(), w.clone(), two(), config.clone()).unwrap();
    let model = Model::from_tensors(cpu.clone(), plan.clone(), w).unwrap();
    let mut whole = Trainer::new(model, config.clone()).unwrap();
    let batches: Vec<_> = (0..4).map(|i| setup(plan, 4, 10 + i)).collect();
    for (step, (_, x, labels)) in batches[..3].iter().enumerate() {
        let s = Train::step(&mut split, x, labels).unwrap();
        let u = whole.step(x, labels).unwrap();
        assert!(
            (s.loss - u.loss).abs() <= 1e-5 * u.loss.abs().max(1.0),
            "step {step}: {} vs {}",
            s.loss,
            u.loss
        );
        assert_eq!(
            (s.top1_correct, s.top5_correct),
            (u.top1_correct, u.top5_correct)
        );
    }
    // Each tower updated its own rows; joined, they are the unsplit network's weights.
    let joined = split.towers().tensors().unwrap();
    let unsplit = whole.model().tensors().unwrap();
    for (s, u) in joined.iter().zip(&unsplit) {
        assert_eq!(s.shape, u.shape);
        let e = rel_l2(&s.data, &u.data);
        assert!(e <= TOL, "{}: relative L2 {e:.2e} after 3 steps", s.name);
    }
    // The one-process layout runs unsplit as it is.
    Model::from_tensors(cpu.clone(), plan.clone(), joined).unwrap();

    // One state file for both: the split run's state resumes unsplit, the unsplit run's
    // resumes split, and each takes the step the other would have taken.
    let dir = std::env::temp_dir().join(format!("alexnet-towers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ps, pu) = (dir.join("split.safetensors"), dir.join("whole.safetensors"));
    Train::save(&split, &ps).unwrap();
    whole.save(&pu).unwrap();
    let mut split_then_whole = Trainer::resume(cpu.clone(), plan.clone(), &ps).unwrap();
    let mut whole_then_split = SplitTrainer::resume(two(), plan.clone(), &pu).unwrap();
    assert_eq!(split_then_whole.state().step, 3);
    assert_eq!(Train::state(&whole_then_split).step, 3);
    let (_, x, labels) = &batches[3];
    let a = split_then_whole.step(x, labels).unwrap();
    let b = Train::step(&mut whole_then_split, x, labels).unwrap();
    let c = whole.step(x, labels).unwrap();
    for (what, l) in [
        ("split, resumed whole", a.loss),
        ("whole, resumed split", b.loss),
    ] {
        assert!(
            (l - c.loss).abs() <= 1e-5 * c.loss.abs().max(1.0),
            "{what}: step 4 loss {l} vs {}",
            c.loss
        );
    }
    let after = whole.model().tensors().unwrap();
    for (s, u) in whole_then_split
        .towers()
        .tensors()
        .unwrap()
        .iter()
        .zip(&after)
    {
        let e = rel_l2(&s.data, &u.data);
        assert!(
            e <= TOL,
            "{}: relative L2 {e:.2e} after a resumed step",
            s.name
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The CPU backend's exchanges follow the unsplit layout (the GPU's kernels are checked
/// against the same definitions in tests/cuda_emulated.rs), and refuse a layer that reads
/// only its own tower and buffers too short for the batch.
#[test]
fn cpu_exchanges_rearrange_the_unsplit_layout() {
    use alexnet::runtime::prelude::*;
    let plan = SmallNet::plan();
    let cpu = Cpu::new();
    let batch = 3;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for t in 0..2 {
        let tower = plan.tower(t).unwrap();
        let layer = (0..tower.layers.len()).find(|&l| tower.gathers(l)).unwrap();
        let p = tower.layers[layer - 1].output.len();
        let part = |v: &[f32], k: usize| -> Vec<f32> {
            (0..batch)
                .flat_map(|i| v[i * 2 * p + k * p..i * 2 * p + (k + 1) * p].to_vec())
                .collect()
        };
        let whole = common::random(&mut rng, batch * 2 * p);
        let mut got = vec![f32::NAN; whole.len()];
        cpu.gather(
            &tower,
            layer,
            batch,
            &part(&whole, t),
            &part(&whole, 1 - t),
            &mut got,
        )
        .unwrap();
        assert_eq!(got, whole, "tower {t}: gather");
        let mut packed = vec![f32::NAN; batch * p];
        cpu.pack_gradient(&tower, layer, batch, &whole, &mut packed)
            .unwrap();
        assert_eq!(packed, part(&whole, 1 - t), "tower {t}: pack");
        let received = common::random(&mut rng, batch * p);
        let mut dy = vec![f32::NAN; batch * p];
        cpu.reduce_gradient(&tower, layer, batch, &whole, &received, &mut dy)
            .unwrap();
        let want: Vec<f32> = part(&whole, t)
            .iter()
            .zip(&received)
            .map(|(a, b)| a + b)
            .collect();
        assert_eq!(dy, want, "tower {t}: reduce");

        // A layer that reads its own tower has no exchange; a short buffer is refused.
        let own = (1..tower.layers.len())
            .find(|&l| !tower.gathers(l))
            .unwrap();
        let err = cpu
            .pack_gradient(&tower, own, batch, &whole, &mut packed)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a two-tower exchange"), "{err}");
        let err = cpu
            .pack_gradient(&tower, layer, batch + 1, &whole, &mut packed)
            .unwrap_err()
            .to_string();
        assert!(err.contains("dx holds"), "{err}");
    }
    let err = cpu
        .gather(plan, 1, 1, &vec![], &vec![], &mut vec![])
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a two-tower exchange"), "{err}");
}
