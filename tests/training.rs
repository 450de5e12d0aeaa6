//! Training on the CPU: a whole network's gradients (every layer kind, dropout with its
//! Philox mask, the fused loss) against central differences of a naive f64 forward pass;
//! resuming is exact to the bit; bad input is refused with a clear error. The learning
//! test (the CPU learns the synthetic set) is in tests/learning.rs.

mod common;

use alexnet::ir::{Dropout, Op, Plan};
use alexnet::runtime::optim::Sgd;
use alexnet::runtime::philox::{self, DropoutMask};
use alexnet::runtime::weights::NamedTensor;
use alexnet::runtime::{ConvAlgorithm, Cpu, Model, Schedule, Tensor, TrainConfig, Trainer};
use common::rel_l2;
use rand::SeedableRng;

const NET: &str = "T<3, 12, 12> split 2 {
    conv(8, 3, pad = 1) relu lrn(3, alpha = 0.5) maxpool(2, stride = 2)
    conv(8, 3, pad = 1, groups = 2) relu avgpool(2, stride = 2)
    fc(12) relu dropout(0.5) fc(6) softmax
}";

fn setup(batch: usize, seed: u64) -> (Plan, Vec<NamedTensor>, Tensor, Vec<u32>) {
    let plan = alexnet::plan_from_str(NET).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut params = common::random_params(&plan, &mut rng);
    for p in &mut params {
        p.data.iter_mut().for_each(|v| *v *= 0.5);
    }
    let s = plan.input;
    let x = Tensor::new(
        vec![batch, s.c, s.h, s.w],
        common::random(&mut rng, batch * s.len()),
    )
    .unwrap();
    let labels = (0..batch as u32).map(|i| (i * 3 + 1) % 6).collect();
    (plan, params, x, labels)
}

/// Mean cross-entropy of the naive f64 network, dropout applied with the step's mask.
fn naive_loss(
    plan: &Plan,
    params: &[Vec<f64>],
    x: &[f64],
    labels: &[u32],
    mask: DropoutMask,
) -> f64 {
    let batch = labels.len();
    let mut a = x.to_vec();
    let mut t = 0;
    for (li, l) in plan.layers.iter().enumerate() {
        match l.op {
            Op::Softmax(_) if li + 1 == plan.layers.len() => break,
            Op::Dropout(Dropout { p }) => {
                let (threshold, _) = philox::dropout_threshold_scale(p);
                let scale = 1.0 / (1.0 - p as f64);
                for (i, v) in a.iter_mut().enumerate() {
                    *v = if mask.draw(li as u32, i as u32) >= threshold {
                        *v * scale
                    } else {
                        0.0
                    };
                }
            }
            _ => {
                let (w, b): (&[f64], &[f64]) = if l.op.is_learned() {
                    t += 2;
                    (&params[t - 2], &params[t - 1])
                } else {
                    (&[], &[])
                };
                a = common::naive::forward(l, batch, &a, w, b);
            }
        }
    }
    let classes = a.len() / batch;
    let mut loss = 0.0;
    for (row, &label) in a.chunks(classes).zip(labels) {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row.iter().map(|v| (v - m).exp()).sum();
        loss += z.ln() + m - row[label as usize];
    }
    loss / batch as f64
}

#[test]
fn network_gradients_match_finite_differences() {
    let batch = 3;
    let (plan, params, x, labels) = setup(batch, 11);
    let model = Model::from_tensors(Cpu::new(), plan.clone(), params.clone()).unwrap();
    let config = TrainConfig {
        seed: 5,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, config).unwrap();
    let stats = trainer.step(&x, &labels).unwrap();
    let grads = trainer.gradients().unwrap();

    let mask = DropoutMask { seed: 5, step: 0 };
    let mut p64: Vec<Vec<f64>> = params
        .iter()
        .map(|t| t.data.iter().map(|&v| v as f64).collect())
        .collect();
    let x64: Vec<f64> = x.data().iter().map(|&v| v as f64).collect();
    let l0 = naive_loss(&plan, &p64, &x64, &labels, mask);
    assert!(
        (stats.loss - l0).abs() <= 1e-5 * l0.abs().max(1.0),
        "loss {} vs naive {l0}",
        stats.loss
    );
    // See tests/gradients.rs for the tolerance; kinks are as rare here.
    const EPS: f64 = 1e-4;
    for (ti, g) in grads.iter().enumerate() {
        let n = g.data.len();
        let idx: Vec<usize> = (0..25.min(n)).map(|i| i * n / 25.min(n)).collect();
        let mut want = Vec::new();
        for &i in &idx {
            let v = p64[ti][i];
            p64[ti][i] = v + EPS;
            let up = naive_loss(&plan, &p64, &x64, &labels, mask);
            p64[ti][i] = v - EPS;
            let down = naive_loss(&plan, &p64, &x64, &labels, mask);
            p64[ti][i] = v;
            want.push((up - down) / (2.0 * EPS));
        }
        let got: Vec<f64> = idx.iter().map(|&i| g.data[i] as f64).collect();
        let err = rel_l2(&got, &want);
        assert!(
            err <= 1e-3,
            "{}: relative L2 {err:.2e}\n got  {got:?}\n want {want:?}",
            g.name
        );
    }
}

#[test]
fn dropout_keeps_about_half_and_scales_by_two() {
    let plan = alexnet::plan_from_str("T<100, 10, 10> { dropout(0.5) }").unwrap();
    let stage = plan.stages()[0];
    let x = vec![1.5f32; 2 * 10_000];
    let mut y = vec![0.0f32; x.len()];
    use alexnet::runtime::prelude::*;
    let mask = DropoutMask { seed: 1, step: 2 };
    Cpu::new()
        .dropout(&plan, stage, 2, mask, &x, &mut y)
        .unwrap();
    let kept = y.iter().filter(|&&v| v == 3.0).count();
    assert_eq!(kept + y.iter().filter(|&&v| v == 0.0).count(), y.len());
    assert!((9_700..10_300).contains(&kept), "{kept}");
    // Another step draws another mask; the same step the same one.
    let mut y2 = vec![0.0f32; x.len()];
    Cpu::new()
        .dropout(
            &plan,
            stage,
            2,
            DropoutMask { seed: 1, step: 3 },
            &x,
            &mut y2,
        )
        .unwrap();
    assert_ne!(y, y2);
    Cpu::new()
        .dropout(&plan, stage, 2, mask, &x, &mut y2)
        .unwrap();
    assert_eq!(y, y2);
}

fn run(trainer: &mut Trainer<Cpu>, steps: std::ops::Range<u64>, batch: usize) -> Vec<f64> {
    let plan = trainer.model().plan().clone();
    let s = plan.input;
    let mut losses = Vec::new();
    for step in steps {
        // The batch of a step is a function of the step alone, as in the example's loop.
        let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + step);
        let x = Tensor::new(
            vec![batch, s.c, s.h, s.w],
            common::random(&mut rng, batch * s.len()),
        )
        .unwrap();
        let labels: Vec<u32> = (0..batch as u64).map(|i| ((i + step) % 6) as u32).collect();
        losses.push(trainer.step(&x, &labels).unwrap().loss);
        if step % 3 == 2 {
            trainer.end_epoch(Some(1.0 / (step + 1) as f64));
        }
    }
    losses
}

/// Training with Winograd convolutions follows training with im2col + GEMM: the filters'
/// transform is rebuilt after every update in place (a stale one would keep the first
/// step's filters, and the losses would part within a few steps).
#[test]
fn winograd_training_follows_im2col() {
    let (plan, params, _, _) = setup(1, 5);
    let config = TrainConfig {
        sgd: Sgd {
            lr: 0.1,
            ..Sgd::default()
        },
        ..TrainConfig::default()
    };
    let train = |algo| {
        let cpu = Cpu::new().with_conv_algorithm(algo);
        let model = Model::from_tensors(cpu, plan.clone(), params.clone()).unwrap();
        let mut t = Trainer::new(model, config.clone()).unwrap();
        let losses = run(&mut t, 0..8, 4);
        (losses, t.model().tensors().unwrap())
    };
    let (la, wa) = train(ConvAlgorithm::Im2col);
    let (lb, wb) = train(ConvAlgorithm::Winograd);
    for (step, (a, b)) in la.iter().zip(&lb).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * a.abs().max(1.0),
            "step {step}: loss {a} with im2col, {b} with Winograd"
        );
    }
    for (a, b) in wa.iter().zip(&wb) {
        let err = rel_l2(&a.data, &b.data);
        assert!(err < 1e-4, "{}: relative L2 {err:.2e}", a.name);
    }
}

#[test]
fn resume_continues_bit_for_bit() {
    let (plan, params, _, _) = setup(1, 3);
    let config = TrainConfig {
        sgd: Sgd {
            lr: 0.05,
            ..Sgd::default()
        },
        schedule: Schedule::Step {
            every: 2,
            factor: 0.5,
            floor: 0.001,
        },
        seed: 9,
    };
    let new = || {
        let model = Model::from_tensors(Cpu::new(), plan.clone(), params.clone()).unwrap();
        let mut t = Trainer::new(model, config.clone()).unwrap();
        t.set_lr_mult("fc", 2.0).unwrap_err();
        t.set_lr_mult("fc3", 2.0).unwrap();
        t
    };
    let mut straight = new();
    let all = run(&mut straight, 0..10, 4);

    let mut first = new();
    let head = run(&mut first, 0..6, 4);
    let dir = std::env::temp_dir().join(format!("alexnet-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.safetensors");
    first.save(&path).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(Cpu::new(), plan.clone(), &path).unwrap();
    assert_eq!(
        resumed.state(),
        straight_state_at(&plan, &params, &config, 6)
    );
    let tail = run(&mut resumed, 6..10, 4);
    assert_eq!([head, tail].concat(), all);
    let a = straight.model().tensors().unwrap();
    let b = resumed.model().tensors().unwrap();
    assert_eq!(a, b, "weights differ after resuming");
    assert!(straight.state().lr < config.sgd.lr, "the step schedule ran");

    // The state file is also a weights file for inference; resuming needs a state file.
    Model::load(Cpu::new(), plan.clone(), &path).unwrap();
    let weights = dir.join("weights.safetensors");
    straight.model().save(&weights).unwrap();
    let err = Trainer::resume(Cpu::new(), plan.clone(), &weights)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a training state"), "{err}");
    let other = alexnet::plan_from_str(&NET.replace("T<", "U<")).unwrap();
    let err = Trainer::resume(Cpu::new(), other, &path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("training state of network `T`, not `U`"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The state of a straight run after `steps` steps (for comparing with a resumed one).
fn straight_state_at(
    plan: &Plan,
    params: &[NamedTensor],
    config: &TrainConfig,
    steps: u64,
) -> &'static alexnet::runtime::train::TrainState {
    let model = Model::from_tensors(Cpu::new(), plan.clone(), params.to_vec()).unwrap();
    let mut t = Trainer::new(model, config.clone()).unwrap();
    t.set_lr_mult("fc3", 2.0).unwrap();
    run(&mut t, 0..steps, 4);
    Box::leak(Box::new(t.state().clone()))
}

#[test]
fn bad_batches_are_refused() {
    let (plan, params, x, _) = setup(2, 4);
    let model = Model::from_tensors(Cpu::new(), plan, params).unwrap();
    let mut t = Trainer::new(model, TrainConfig::default()).unwrap();
    let err = t.step(&x, &[0, 6]).unwrap_err().to_string();
    assert!(
        err.contains("label 6 out of range: `T` has 6 classes"),
        "{err}"
    );
    let err = t.step(&x, &[0]).unwrap_err().to_string();
    assert!(err.contains("1 labels for a batch of 2 images"), "{err}");
    let wrong = Tensor::new(vec![2, 3, 11, 12], vec![0.0; 2 * 3 * 11 * 12]).unwrap();
    assert!(t.step(&wrong, &[0, 1]).is_err());
    let bad = TrainConfig {
        sgd: Sgd {
            lr: -1.0,
            ..Sgd::default()
        },
        ..TrainConfig::default()
    };
    let (plan, params, _, _) = setup(1, 4);
    let model = Model::from_tensors(Cpu::new(), plan, params).unwrap();
    assert!(Trainer::new(model, bad).is_err());
}

#[test]
fn dropout_before_the_first_learned_layer() {
    let src = "T<3, 9, 9> { dropout(0.2) conv(4, 3) relu fc(6) softmax }";
    let plan = alexnet::plan_from_str(src).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let params = common::random_params(&plan, &mut rng);
    let model = Model::from_tensors(Cpu::new(), plan.clone(), params).unwrap();
    let mut t = Trainer::new(model, TrainConfig::default()).unwrap();
    let x = Tensor::new(vec![2, 3, 9, 9], common::random(&mut rng, 2 * 243)).unwrap();
    assert!(t.step(&x, &[1, 4]).unwrap().loss.is_finite());
    // The GPU gets its forward dropout kernel too, and no backward before conv1.
    let cuda = alexnet::codegen::cuda::generate(&plan);
    use alexnet::ir::Role;
    assert!(cuda.find(0, Role::Dropout).is_some());
    assert!(cuda.find(1, Role::DataGrad).is_none());
}

#[test]
fn a_tampered_state_is_refused() {
    let (plan, params, x, labels) = setup(2, 8);
    let model = Model::from_tensors(Cpu::new(), plan.clone(), params).unwrap();
    let mut t = Trainer::new(model, TrainConfig::default()).unwrap();
    t.step(&x, &labels).unwrap();
    let dir = std::env::temp_dir().join(format!("alexnet-tamper-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.safetensors");
    t.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let tensors = alexnet::runtime::weights::parse_safetensors(&bytes).unwrap();
    let meta = alexnet::runtime::weights::parse_metadata(&bytes).unwrap();
    for (key, value, expect) in [
        ("lr", "-1.0", "out-of-range hyper-parameters"),
        ("lr", "NaN", "out-of-range hyper-parameters"),
        ("momentum", "1.5", "out-of-range hyper-parameters"),
        ("base_lr", "0.0", "out-of-range hyper-parameters: lr 0"),
        (
            "weight_decay",
            "-1.0",
            "out-of-range hyper-parameters: weight_decay -1",
        ),
        ("lr_mults", "1.0,1.0", "multipliers for 8 tensors"),
        ("step", "many", "`step` = `many` is not a number"),
        ("schedule", "weekly", "learning-rate schedule `weekly`"),
    ] {
        let mut m = meta.clone();
        m.insert(key.to_string(), value.to_string());
        let bad = dir.join("bad.safetensors");
        alexnet::runtime::weights::write_safetensors(&bad, &tensors, Some(m)).unwrap();
        let err = Trainer::resume(Cpu::new(), plan.clone(), &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect), "{key} = {value}: {err}");
    }
    // A NaN in the weights or the momentum, named.
    for prefix in ["", "momentum."] {
        let mut nan = tensors.clone();
        let t = nan
            .iter_mut()
            .find(|t| t.name.starts_with(prefix) && t.name.ends_with(".weight"))
            .unwrap();
        t.data[1] = f32::NAN;
        let name = t.name.clone();
        let bad = dir.join("nan.safetensors");
        alexnet::runtime::weights::write_safetensors(&bad, &nan, Some(meta.clone())).unwrap();
        let err = Trainer::resume(Cpu::new(), plan.clone(), &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("`{name}` holds NaN")), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The small net's first training step against an independent NumPy implementation of its
/// forward and backward passes in f64 (tests/fixtures/small_train.safetensors, written by
/// scripts/make_training_fixture.py from the same hashed weights, inputs and labels and the
/// same Philox dropout mask).
#[test]
fn small_net_gradients_match_numpy() {
    use alexnet::nets::SmallNet;
    let path = format!(
        "{}/tests/fixtures/small_train.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let meta = alexnet::runtime::weights::parse_metadata(&bytes).unwrap();
    let want = alexnet::runtime::weights::parse_safetensors(&bytes).unwrap();
    let seed = |k: &str| meta[k].parse::<u64>().unwrap();
    let batch: usize = meta["batch"].parse().unwrap();
    let plan = SmallNet::plan().clone();
    let s = plan.input;
    let model = Model::from_tensors(
        Cpu::new(),
        plan.clone(),
        common::hash_weights(&plan, seed("weight_seed")),
    )
    .unwrap();
    let config = TrainConfig {
        seed: seed("dropout_seed"),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, config).unwrap();
    let x = Tensor::new(
        vec![batch, s.c, s.h, s.w],
        common::hash_uniform(seed("input_seed"), 0, batch * s.len(), 1.0),
    )
    .unwrap();
    let labels: Vec<u32> = (0..batch as u64)
        .map(|n| (common::splitmix64(seed("label_seed").wrapping_add(n)) % 10) as u32)
        .collect();
    let stats = trainer.step(&x, &labels).unwrap();
    let loss = want.iter().find(|t| t.name == "loss").unwrap().data[0] as f64;
    assert!(
        (stats.loss - loss).abs() <= 1e-5 * loss.abs(),
        "loss {} vs NumPy {loss}",
        stats.loss
    );
    for g in trainer.gradients().unwrap() {
        let w = want.iter().find(|t| t.name == g.name).unwrap();
        assert_eq!(w.shape, g.shape, "{}", g.name);
        let e = rel_l2(&g.data, &w.data);
        assert!(e <= 1e-4, "{}: relative L2 {e:.2e} against NumPy", g.name);
        println!("{}: {e:.2e}", g.name);
    }
}

/// A batch whose first pixel is `v`, the rest random.
fn poisoned(plan: &Plan, batch: usize, v: f32) -> Tensor {
    let s = plan.input;
    let mut rng = rand::rngs::StdRng::seed_from_u64(77);
    let mut data = common::random(&mut rng, batch * s.len());
    data[0] = v;
    Tensor::new(vec![batch, s.c, s.h, s.w], data).unwrap()
}

#[test]
fn a_step_that_is_not_finite_stops_or_is_skipped_with_the_weights_untouched() {
    use alexnet::runtime::{Error, OnNonFinite};

    let (plan, params, x, labels) = setup(4, 11);
    let config = TrainConfig {
        sgd: Sgd {
            lr: 0.05,
            ..Sgd::default()
        },
        ..TrainConfig::default()
    };
    let first = plan.params()[0].name.clone();
    let dir = std::env::temp_dir().join(format!("alexnet-nonfinite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (what, make) in whole_and_split(&plan, &params, &config) {
        for bad in [f32::NAN, f32::INFINITY] {
            // Stop (the default): an error naming the step and the first tensor; nothing
            // applied; the checkpoint of the last good step loads and is what it was.
            let mut t = make();
            for _ in 0..2 {
                assert_eq!(t.step(&x, &labels).unwrap().skipped, 0);
            }
            let good = dir.join(format!("{what}-good.safetensors"));
            t.save(&good).unwrap();
            let before = alexnet::runtime::weights::read_safetensors(&good).unwrap();
            let err = t.step(&poisoned(&plan, 4, bad), &labels).unwrap_err();
            let Error::NonFinite(nf) = &err else {
                panic!("{what}: {err}")
            };
            assert_eq!(nf.step, 2, "{what}");
            assert_eq!(nf.tensor.as_deref(), Some(&*first), "{what}: {err}");
            let msg = err.to_string();
            assert!(
                msg.starts_with("step 2: ") && msg.contains(&first) && msg.contains("not applied"),
                "{what}: {msg}"
            );
            assert_eq!(t.state().step, 2, "{what}: the step did not count");
            let after = dir.join(format!("{what}-after.safetensors"));
            t.save(&after).unwrap();
            assert_eq!(
                alexnet::runtime::weights::read_safetensors(&after).unwrap(),
                before,
                "{what}: weights or momentum moved"
            );
            Trainer::resume(Cpu::new(), plan.clone(), &good).unwrap();

            // Skip: the update is skipped, the weights and momentum stay, the run goes on.
            t.set_on_non_finite(OnNonFinite::Skip);
            let st = t.step(&poisoned(&plan, 4, bad), &labels).unwrap();
            assert_eq!(st.skipped, 1, "{what}");
            assert_eq!(t.last_skip().map(|s| s.step), Some(2), "{what}");
            assert_eq!(t.state().step, 3, "{what}: a skipped step counts");
            t.save(&after).unwrap();
            let (a, b) = (
                alexnet::runtime::weights::read_safetensors(&good).unwrap(),
                alexnet::runtime::weights::read_safetensors(&after).unwrap(),
            );
            assert_eq!(a, b, "{what}: weights or momentum moved on a skipped step");
            let st = t.step(&x, &labels).unwrap();
            assert!(st.loss.is_finite() && st.skipped == 0, "{what}");
            t.save(&after).unwrap();
            assert_ne!(
                alexnet::runtime::weights::read_safetensors(&after).unwrap(),
                a,
                "{what}: the next good step updates"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

mod memory {
    use alexnet::runtime::footprint::{check_fits, Footprint};
    use alexnet::runtime::{Cpu, Element, Error, Memory, Result};

    /// A backend with `free` bytes of `total`, and host vectors for buffers.
    struct Small {
        free: u64,
        total: u64,
    }

    impl Memory for Small {
        type Buffer<T: Element> = Vec<T>;
        fn name(&self) -> String {
            "small:0".into()
        }
        fn memory_info(&self) -> Result<Option<(u64, u64)>> {
            Ok(Some((self.free, self.total)))
        }
        fn alloc<T: Element>(&self, len: usize) -> Result<Vec<T>> {
            Ok(vec![T::default(); len])
        }
        fn upload<T: Element>(&self, data: &[T]) -> Result<Vec<T>> {
            Ok(data.to_vec())
        }
        fn download<T: Element>(&self, buf: &Vec<T>) -> Result<Vec<T>> {
            Ok(buf.clone())
        }
        fn write<T: Element>(&self, buf: &mut Vec<T>, data: &[T]) -> Result<()> {
            buf[..data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    #[test]
    fn a_batch_that_does_not_fit_is_refused_with_the_figures() {
        let plan = alexnet::nets::AlexNet::plan();
        let gpu = Small {
            free: Footprint::of(plan, 100).training + 1000,
            total: 141_000_000_000,
        };
        check_fits(&gpu, plan, 100, None).unwrap();
        let err = check_fits(&gpu, plan, 4096, None).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
        let msg = err.to_string();
        for want in [
            "small:0: out of memory: training `AlexNet` at batch 4096 needs ",
            "the GPU has ",
            " free of 141.00 GB",
            "a batch of at most about 100 fits",
        ] {
            assert!(msg.contains(want), "`{want}` in: {msg}");
        }
        assert_eq!(msg.lines().count(), 1, "{msg}");
        let none = Small {
            free: 10,
            total: 10,
        };
        assert!(check_fits(&none, plan, 1, None)
            .unwrap_err()
            .to_string()
            .contains("not even one image fits"));
        // Batches of 256x256 bytes, two of them held: 100 images no longer fit.
        let err = check_fits(&gpu, plan, 100, Some(256))
            .unwrap_err()
            .to_string();
        for want in [
            " for two batches of its images",
            "a batch of at most about 9",
        ] {
            assert!(err.contains(want), "`{want}` in: {err}");
        }
        // The CPU says nothing about its memory: nothing to refuse.
        check_fits(&Cpu::new(), plan, 1 << 20, Some(256)).unwrap();
    }

    #[test]
    fn the_footprint_counts_the_weights_and_grows_with_the_batch() {
        let plan = alexnet::nets::AlexNet::plan();
        let f = |b| Footprint::of(plan, b);
        assert_eq!(f(1).params, 60_965_224 * 4);
        assert_eq!(f(1).optimizer, 2 * f(1).params);
        assert_eq!(f(1).images, 0);
        assert_eq!(f(128).with_images(256).images, 2 * 128 * 3 * 256 * 256);
        assert_eq!(
            f(128).with_images(256).training_total(),
            f(128).training_total() + 2 * 128 * 3 * 256 * 256
        );
        for b in [2, 64, 128] {
            assert_eq!(f(b).inference, b as u64 * f(1).inference, "batch {b}");
            assert!(f(b).training > f(b / 2).training, "batch {b}");
            assert!(f(b).training > 2 * f(b).inference, "batch {b}");
        }
    }
}

/// A step on 8-bit images cut by the backend (`Trainer::step_images`, as `train` takes a
/// batch) is the step on the host's patches of them (`Cut::batch`), bit for bit, step
/// after step; the split trainer's host path agrees; a
/// batch that does not fit the network is refused before anything runs.
#[test]
fn a_step_on_images_is_the_step_on_their_patches() {
    use alexnet::runtime::data::patch::Draw;
    use alexnet::runtime::towers::SplitTrainer;
    use alexnet::runtime::train::Train;
    use rand::Rng;
    let (plan, params, _, _) = setup(1, 8);
    let (side, crop, batch) = (16, (12, 12), 5);
    let mut rng = rand::rngs::StdRng::seed_from_u64(80);
    let pre = common::augment_preprocess(side, crop, &mut rng);
    let cut = pre.train_cut();
    let config = TrainConfig {
        seed: 3,
        ..TrainConfig::default()
    };
    let new = || {
        let model = Model::from_tensors(Cpu::new(), plan.clone(), params.clone()).unwrap();
        Trainer::new(model, config.clone()).unwrap()
    };
    let (mut on_images, mut on_patches) = (new(), new());
    let mut split = SplitTrainer::new(
        plan.clone(),
        params.clone(),
        vec![Cpu::new(), Cpu::new()],
        config.clone(),
    )
    .unwrap();
    let s = plan.input;
    for step in 0..3u64 {
        let images: Vec<u8> = (0..batch * side * side * 3).map(|_| rng.random()).collect();
        let draws: Vec<Draw> = (0..batch as u64)
            .map(|i| pre.train_draw(7, 0, step * batch as u64 + i))
            .collect();
        let labels: Vec<u32> = (0..batch as u32).map(|i| (i + step as u32) % 6).collect();
        let x = Tensor::new(
            vec![batch, s.c, s.h, s.w],
            cut.batch(&images, &draws, 1).unwrap(),
        )
        .unwrap();
        let a = on_images
            .step_images(&cut, &images, &draws, &labels)
            .unwrap();
        let b = on_patches.step(&x, &labels).unwrap();
        assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "step {step}");
        let c = Train::step_images(&mut split, &cut, &images, &draws, &labels).unwrap();
        assert!(
            (c.loss - b.loss).abs() <= 1e-5 * b.loss.abs(),
            "step {step}"
        );
    }
    let bits = |t: &Trainer<Cpu>| -> Vec<Vec<u32>> {
        t.model()
            .tensors()
            .unwrap()
            .iter()
            .map(|t| t.data.iter().map(|v| v.to_bits()).collect())
            .collect()
    };
    assert_eq!(bits(&on_images), bits(&on_patches));

    // Refused: patches of another size, a draw that leaves its image, labels that do not
    // match, bytes that are not whole images.
    let images = vec![0u8; 2 * side * side * 3];
    let d = pre.train_draw(7, 0, 0);
    let other = alexnet::runtime::data::patch::Cut {
        crop: (11, 12),
        ..cut
    };
    let err = on_images
        .step_images(&other, &images, &[d, d], &[0, 1])
        .unwrap_err()
        .to_string();
    assert!(err.contains("patches for `T`"), "{err}");
    let outside = Draw { y: 5, ..d };
    assert!(on_images
        .step_images(&cut, &images, &[d, outside], &[0, 1])
        .is_err());
    let err = on_images
        .step_images(&cut, &images, &[d, d], &[0])
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 labels for a batch of 2 images"), "{err}");
    assert!(on_images
        .step_images(&cut, &images[1..], &[d, d], &[0, 1])
        .is_err());
    // Nothing of the refused batches ran: the next step is the patch trainer's.
    assert_eq!(on_images.state().step, on_patches.state().step);
}

/// Makers of a whole trainer (`Trainer` on the CPU) and of a split one (two CPU towers)
/// of the same network, weights and configuration, each call a fresh one.
#[allow(clippy::type_complexity)]
fn whole_and_split(
    plan: &Plan,
    params: &[NamedTensor],
    config: &TrainConfig,
) -> [(
    &'static str,
    Box<dyn Fn() -> Box<dyn alexnet::runtime::train::Train>>,
); 2] {
    use alexnet::runtime::towers::SplitTrainer;
    use alexnet::runtime::train::Train;
    let (p, w, c) = (plan.clone(), params.to_vec(), config.clone());
    let whole = move || -> Box<dyn Train> {
        let model = Model::from_tensors(Cpu::new(), p.clone(), w.clone()).unwrap();
        Box::new(Trainer::new(model, c.clone()).unwrap())
    };
    let (p, w, c) = (plan.clone(), params.to_vec(), config.clone());
    let split = move || -> Box<dyn Train> {
        let cpus = vec![Cpu::new(), Cpu::new()];
        Box::new(SplitTrainer::new(p.clone(), w.clone(), cpus, c.clone()).unwrap())
    };
    [("whole", Box::new(whole)), ("split", Box::new(split))]
}

/// Batches sent ahead (`Train::send_images`, as `train` sends each one step early so that
/// a GPU copies it while the step before computes) are stepped on in the order sent, bit
/// for bit as `step_images` steps on them, whether one or two are waiting, by a whole
/// trainer (its upload thread, on the CPU a copy) and by the split one; the bytes come
/// back; a step with nothing sent, and a batch that fails its checks, are errors that
/// leave the trainer in step; `clear_sent` drops what waits.
#[test]
fn batches_sent_ahead_are_the_steps_on_them_in_order() {
    use alexnet::runtime::data::patch::Draw;
    use alexnet::runtime::train::Train;
    use rand::Rng;
    let (plan, params, _, _) = setup(1, 10);
    let (side, crop, batch) = (16, (12, 12), 4);
    let mut rng = rand::rngs::StdRng::seed_from_u64(100);
    let pre = common::augment_preprocess(side, crop, &mut rng);
    let cut = pre.train_cut();
    let config = TrainConfig {
        seed: 5,
        ..TrainConfig::default()
    };
    // Five batches; the last is smaller (a new buffer of another length).
    let batches: Vec<(Vec<u8>, Vec<Draw>, Vec<u32>)> = (0..5u64)
        .map(|step| {
            let n = if step == 4 { batch - 1 } else { batch };
            let images: Vec<u8> = (0..n * side * side * 3).map(|_| rng.random()).collect();
            let draws = (0..n as u64)
                .map(|i| pre.train_draw(9, 0, step * batch as u64 + i))
                .collect();
            let labels = (0..n as u32).map(|i| (i + step as u32) % 6).collect();
            (images, draws, labels)
        })
        .collect();
    for (name, new) in whole_and_split(&plan, &params, &config) {
        let (mut direct, mut ahead) = (new(), new());
        let want: Vec<u64> = batches
            .iter()
            .map(|(x, d, y)| direct.step_images(&cut, x, d, y).unwrap().loss.to_bits())
            .collect();
        let err = ahead.step_sent(&cut, &batches[0].1, &batches[0].2);
        assert!(
            err.unwrap_err().to_string().contains("none was sent"),
            "{name}"
        );
        // Sent one ahead, then two ahead, then the rest.
        let mut got = Vec::new();
        let mut step = |t: &mut Box<dyn Train>, k: usize| {
            let (st, back) = t.step_sent(&cut, &batches[k].1, &batches[k].2).unwrap();
            assert_eq!(
                back, batches[k].0,
                "{name}: the bytes of batch {k} come back"
            );
            got.push(st.loss.to_bits());
        };
        ahead.send_images(batches[0].0.clone()).unwrap();
        ahead.send_images(batches[1].0.clone()).unwrap();
        step(&mut ahead, 0);
        ahead.send_images(batches[2].0.clone()).unwrap();
        ahead.send_images(batches[3].0.clone()).unwrap();
        step(&mut ahead, 1);
        step(&mut ahead, 2);
        step(&mut ahead, 3);
        ahead.send_images(batches[4].0.clone()).unwrap();
        step(&mut ahead, 4);
        assert_eq!(got, want, "{name}");
        assert_eq!(ahead.state().step, 5, "{name}");
        // A batch whose labels do not match is refused and dropped; the next one sent is
        // stepped on.
        let (x, d, y) = &batches[0];
        ahead.send_images(x.clone()).unwrap();
        ahead.send_images(x.clone()).unwrap();
        let err = ahead.step_sent(&cut, d, &y[1..]).unwrap_err().to_string();
        assert!(err.contains("3 labels for"), "{name}: {err}");
        let a = ahead.step_sent(&cut, d, y).unwrap().0;
        let b = direct.step_images(&cut, x, d, y).unwrap();
        assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "{name}");
        // What waits is dropped by clear_sent.
        ahead.send_images(x.clone()).unwrap();
        ahead.clear_sent().unwrap();
        assert!(ahead.step_sent(&cut, d, y).is_err(), "{name}");
        assert_eq!(ahead.state().step, direct.state().step, "{name}");
    }
}

/// Inference on images cut by the backend (`Model::forward_images`, as `eval` and the
/// epochs' validation run) is inference on the host's patches, bit for bit, for one
/// patch per image and for the paper's ten; `Trainer::evaluate_images` agrees with
/// `Trainer::evaluate`; patches of another size and an empty batch are refused.
#[test]
fn inference_on_images_is_inference_on_their_patches() {
    use alexnet::runtime::data::patch::Draw;
    use rand::Rng;
    let (plan, params, _, _) = setup(1, 9);
    let (side, crop, n) = (16, (12, 12), 3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(90);
    let pre = common::augment_preprocess(side, crop, &mut rng);
    let cut = pre.eval_cut();
    let images: Vec<u8> = (0..n * side * side * 3).map(|_| rng.random()).collect();
    let model = Model::from_tensors(Cpu::new(), plan.clone(), params.clone()).unwrap();
    let s = plan.input;
    let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for per in [
        vec![Draw::centre(side, crop)],
        Draw::ten_crops(side, crop).to_vec(),
    ] {
        let draws: Vec<Draw> = (0..n).flat_map(|_| per.clone()).collect();
        let x = Tensor::new(
            vec![draws.len(), s.c, s.h, s.w],
            cut.batch(&images, &draws, per.len()).unwrap(),
        )
        .unwrap();
        let got = model
            .forward_images(&cut, &images, &draws, per.len())
            .unwrap();
        assert_eq!(bits(&got), bits(&model.forward(&x).unwrap()));
    }
    let trainer = Trainer::new(model, TrainConfig::default()).unwrap();
    let draws = vec![Draw::centre(side, crop); n];
    let x = Tensor::new(
        vec![n, s.c, s.h, s.w],
        cut.batch(&images, &draws, 1).unwrap(),
    )
    .unwrap();
    let labels = [0, 4, 5];
    assert_eq!(
        trainer
            .evaluate_images(&cut, &images, &draws, &labels)
            .unwrap(),
        trainer.evaluate(&x, &labels).unwrap()
    );
    assert!(trainer
        .evaluate_images(&cut, &images, &draws, &labels[..2])
        .is_err());
    let model = trainer.into_model();
    let other = alexnet::runtime::data::patch::Cut {
        crop: (12, 11),
        ..cut
    };
    let err = model
        .forward_images(&other, &images, &draws, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("patches for `T`"), "{err}");
    assert!(model.forward_images(&cut, &[], &[], 1).is_err());
}
