//! Every layer kind of the CPU backend against a direct, naive implementation of its
//! definition, on fresh random inputs and weights, over shapes that exercise strides,
//! padding, groups, towers, overlapping windows and both fc paths (matrix-vector for small
//! batches, GEMM for larger ones).

mod common;

use alexnet::ir::Plan;
use alexnet::runtime::weights::NamedTensor;
use alexnet::runtime::{ConvAlgorithm, Cpu, Model, Tensor};
use common::{random, rel_l2};
use rand::SeedableRng;

/// Builds a plan from DSL text (the same front end as the macro, at run time).
fn plan(src: &str) -> Plan {
    alexnet::plan_from_str(src).unwrap_or_else(|e| panic!("{src}: {e}"))
}

/// Runs a one-layer plan on random data; returns (input, weights, output).
fn run(plan: &Plan, batch: usize, seed: u64) -> (Vec<f32>, Vec<NamedTensor>, Vec<f32>) {
    run_on(Cpu::new(), plan, batch, seed)
}

/// [`run`] on a given CPU backend.
fn run_on(
    cpu: Cpu,
    plan: &Plan,
    batch: usize,
    seed: u64,
) -> (Vec<f32>, Vec<NamedTensor>, Vec<f32>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let params = common::random_params(plan, &mut rng);
    let s = plan.input;
    let x = random(&mut rng, batch * s.len());
    let model = Model::from_tensors(cpu, plan.clone(), params.clone()).unwrap();
    let y = model
        .forward(&Tensor::new(vec![batch, s.c, s.h, s.w], x.clone()).unwrap())
        .unwrap();
    (x, params, y.into_data())
}

fn naive(plan: &Plan, batch: usize, x: &[f32], params: &[NamedTensor]) -> Vec<f32> {
    let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let (w, b) = match params {
        [w, b] => (f64s(&w.data), f64s(&b.data)),
        _ => (Vec::new(), Vec::new()),
    };
    let mut y = common::naive::forward(&plan.layers[0], batch, &f64s(x), &w, &b);
    // A ReLU may follow the layer (the backend fuses it); nothing else.
    for layer in &plan.layers[1..] {
        assert!(
            matches!(layer.op, alexnet::ir::Op::Relu(_)),
            "naive: only a ReLU may follow the first layer"
        );
        y.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    y.into_iter().map(|v| v as f32).collect()
}

fn check(src: &str, batches: &[usize]) {
    check_on(Cpu::new(), src, batches)
}

fn check_on(cpu: Cpu, src: &str, batches: &[usize]) {
    for (seed, &batch) in batches.iter().enumerate() {
        let err = error(cpu.clone(), src, batch, seed as u64 + 1);
        assert!(err < 1e-5, "{src} batch {batch}: relative L2 {err:.2e}");
    }
}

/// The relative L2 error of the CPU backend against the naive definition, on one batch.
fn error(cpu: Cpu, src: &str, batch: usize, seed: u64) -> f64 {
    let plan = plan(src);
    let (x, params, y) = run_on(cpu, &plan, batch, seed);
    let want = naive(&plan, batch, &x, &params);
    assert!(y.iter().all(|v| v.is_finite()), "{src}: non-finite output");
    rel_l2(&y, &want)
}

/// The convolutions every f32 path is checked on.
const CONVS: [(&str, &[usize]); 8] = [
    ("T<3, 19, 23> { conv(8, 11, stride = 4) }", &[1, 3]),
    (
        "T<4, 9, 11> { conv(6, 3, stride = 2, pad = 1, groups = 2) }",
        &[1, 2, 5],
    ),
    ("T<6, 7, 7> { conv(9, 5, pad = 2, groups = 3) }", &[1, 4]),
    ("T<2, 5, 5> { conv(3, 1) }", &[2]),
    ("T<2, 6, 6> { conv(4, 2, stride = 3, pad = 1) }", &[3]),
    // conv1- and conv2-like: many output positions, long filter columns, groups.
    ("T<3, 40, 40> { conv(8, 11, stride = 2, pad = 3) }", &[1, 2]),
    ("T<96, 20, 21> { conv(8, 5, pad = 2, groups = 2) }", &[1, 3]),
    // More output channels than one row block of the packed kernel, in towers.
    ("T<10, 8, 9> split 2 { conv(36, 3, pad = 1) }", &[1, 2]),
];

#[test]
fn conv_strides_padding_groups() {
    // Auto (the default), im2col + GEMM, and the packed micro-kernel (on a CPU without
    // AVX-512F its portable kernel).
    for algo in [
        ConvAlgorithm::Auto,
        ConvAlgorithm::Im2col,
        ConvAlgorithm::Packed,
    ] {
        for (src, batches) in CONVS {
            check_on(Cpu::new().with_conv_algorithm(algo), src, batches);
        }
    }
}

/// The packed convolution splits the work by the thread count and the batch (one image
/// per thread; at batch 1 a group per thread, or the panels of each product, or its row
/// blocks): every split gives the same bits, and an image gives the same bits alone and
/// inside a batch.
#[test]
fn the_packed_convolution_gives_the_same_bits_on_any_split() {
    same_bits_on_any_split(
        ConvAlgorithm::Packed,
        &[
            // 2 groups: one per thread on 2 threads (and 4), one after another on 3.
            "T<96, 20, 21> { conv(8, 5, pad = 2, groups = 2) }",
            // 3 groups, and one group with 7 panels of 48 output positions, or 4.
            "T<6, 7, 7> { conv(9, 5, pad = 2, groups = 3) }",
            "T<3, 40, 40> { conv(20, 11, stride = 2, pad = 3) }",
            "T<16, 15, 13> { conv(24, 3, pad = 1) }",
        ],
    );
}

/// Winograd's work items (groups, whole images, output channels split in panels when
/// there are fewer items than threads) change with the threads and the batch; the bits
/// must not.
#[test]
fn winograd_gives_the_same_bits_on_any_split() {
    same_bits_on_any_split(
        ConvAlgorithm::Winograd,
        &[
            // 5 panels of output channels: split between the threads at batch 1.
            "T<32, 13, 13> { conv(200, 3, pad = 1) }",
            // 64 tiles an image: one image an item.
            "T<8, 30, 30> { conv(20, 3, pad = 1, groups = 2) }",
            // 6 tiles an image: 5 images an item, tiles not a whole block of 8.
            "T<12, 9, 11> { conv(100, 3) }",
            // F(4x4, 5x5), 49 tiles an image, 2 groups of 3 panels (48, 48 and 4).
            "T<12, 27, 27> { conv(200, 5, pad = 2, groups = 2) }",
        ],
    );
}

/// The first image's output of each convolution in `convs` has the same bits on thread
/// pools of 1 to 4 threads, at batch 1 and 3, under `algorithm`, and matches the definition.
fn same_bits_on_any_split(algorithm: ConvAlgorithm, convs: &[&str]) {
    for &src in convs {
        let plan = plan(src);
        let mut rng = rand::rngs::StdRng::seed_from_u64(31);
        let params = common::random_params(&plan, &mut rng);
        let s = plan.input;
        let x = random(&mut rng, 3 * s.len());
        let mut outs: Vec<(String, Vec<f32>)> = Vec::new();
        for threads in [1, 2, 3, 4] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let cpu = Cpu::new().with_conv_algorithm(algorithm);
                let model = Model::from_tensors(cpu, plan.clone(), params.clone()).unwrap();
                for batch in [1, 3] {
                    let xb = Tensor::new(vec![batch, s.c, s.h, s.w], x[..batch * s.len()].to_vec());
                    let y = model.forward(&xb.unwrap()).unwrap().into_data();
                    let first = y[..plan.layers[0].output.len()].to_vec();
                    outs.push((format!("{threads} threads, batch {batch}"), first));
                }
            });
        }
        let want = naive(&plan, 1, &x[..s.len()], &params);
        assert!(rel_l2(&outs[0].1, &want) < 1e-5, "{src}");
        for (name, y) in &outs[1..] {
            let same = y
                .iter()
                .zip(&outs[0].1)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{src}: {name} differs in bits from {}", outs[0].0);
        }
    }
}

/// The f32 packed convolution reads its filters in place on every call (it kept a packed
/// copy once), so a filter changed in place behind the backend's back is seen.
#[test]
fn a_filter_changed_in_place_is_seen_by_the_packed_convolution() {
    use alexnet::runtime::{Inference, Memory};
    let plan = plan("T<3, 19, 23> { conv(8, 11, stride = 4) }");
    let stage = plan.stages()[0];
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let params = common::random_params(&plan, &mut rng);
    let cpu = Cpu::new().with_conv_algorithm(ConvAlgorithm::Packed);
    let x = random(&mut rng, plan.input.len());
    let (mut w, b) = (params[0].data.clone(), params[1].data.clone());
    let mut y = cpu.alloc::<f32>(plan.layers[0].output.len()).unwrap();
    cpu.forward_stage(&plan, stage, 1, &x, &[&w, &b], &mut y)
        .unwrap();
    let before = y.clone();
    // Not through the backend, and a weight no sample would hold.
    w[1] += 3.0;
    cpu.forward_stage(&plan, stage, 1, &x, &[&w, &b], &mut y)
        .unwrap();
    let want = naive(
        &plan,
        1,
        &x,
        &[
            NamedTensor {
                data: w.clone(),
                ..params[0].clone()
            },
            params[1].clone(),
        ],
    );
    assert_ne!(before, y);
    assert!(rel_l2(&y, &want) < 1e-5);
}

#[test]
fn winograd_3x3_and_5x5_stride_1() {
    // Winograd F(4x4, 3x3) and F(4x4, 5x5) on every 3x3 and 5x5 stride-1 layer: sizes that
    // leave partial tiles, no padding, padding 1 and 2, groups, towers, several batch sizes.
    let wino = || Cpu::new().with_conv_algorithm(ConvAlgorithm::Winograd);
    check_on(wino(), "T<8, 13, 13> { conv(8, 3, pad = 1) }", &[1, 3]);
    check_on(wino(), "T<16, 9, 11> { conv(12, 3) }", &[2]);
    check_on(
        wino(),
        "T<4, 6, 7> { conv(6, 3, pad = 2, groups = 2) }",
        &[1, 2],
    );
    check_on(wino(), "T<9, 5, 4> { conv(10, 3, pad = 1) }", &[3]);
    check_on(wino(), "T<10, 3, 3> split 2 { conv(20, 3, pad = 1) }", &[2]);
    // Several panels of output channels, several items of whole images, tiles padded to
    // a block of the micro-kernel.
    check_on(
        wino(),
        "T<32, 13, 13> { conv(200, 3, pad = 1) }",
        &[1, 3, 5],
    );
    check_on(wino(), "T<12, 9, 11> { conv(100, 3) }", &[1, 7]);
    check_on(
        wino(),
        "T<8, 30, 30> { conv(20, 3, pad = 1, groups = 2) }",
        &[2],
    );
    check_on(wino(), "T<8, 13, 13> { conv(8, 5, pad = 2) }", &[1, 3]);
    check_on(wino(), "T<6, 9, 11> { conv(70, 5) }", &[1, 2]);
    check_on(
        wino(),
        "T<12, 27, 27> { conv(100, 5, pad = 2, groups = 2) }",
        &[1, 2],
    );
    check_on(
        wino(),
        "T<4, 6, 7> { conv(6, 5, pad = 3, groups = 2) }",
        &[2],
    );
    // 24 input channels (a partial block of 16), 32 outputs (not a panel of 48), ReLU.
    check_on(
        wino(),
        "T<24, 13, 13> { conv(32, 3, pad = 1) relu }",
        &[1, 4],
    );
    check_on(wino(), "T<20, 11, 11> { conv(40, 5, pad = 2) relu }", &[3]);
    // Small images: many images an item, split so that every thread has work.
    check_on(wino(), "T<3, 4, 4> { conv(8, 3, pad = 1) }", &[1, 9]);
}

/// Winograd's error on the shapes of AlexNet's conv2-conv5 (uniform random weights and
/// inputs; the relative error of a linear layer does not depend on their scale), against
/// the naive definition in f64, beside im2col + GEMM's. Stated in docs/benchmarks.md.
#[test]
fn winograd_error_on_alexnet() {
    for src in [
        "T<96, 27, 27> { conv(256, 5, pad = 2, groups = 2) }",
        "T<256, 13, 13> { conv(384, 3, pad = 1) }",
        "T<384, 13, 13> { conv(384, 3, pad = 1, groups = 2) }",
        "T<384, 13, 13> { conv(256, 3, pad = 1, groups = 2) }",
    ] {
        let [wino, im2col] = [ConvAlgorithm::Winograd, ConvAlgorithm::Im2col]
            .map(|a| error(Cpu::new().with_conv_algorithm(a), src, 2, 11));
        println!("{src}: relative L2 {wino:.2e} (im2col + GEMM: {im2col:.2e})");
        assert!(wino < 1e-5, "{src}: relative L2 {wino:.2e}");
    }
}

#[test]
fn pooling_overlapping_and_not() {
    check("T<3, 13, 13> { maxpool(3, stride = 2) }", &[1, 3]);
    check("T<2, 8, 9> { maxpool(2) }", &[2]);
    check("T<3, 11, 10> { avgpool(3, stride = 2) }", &[1, 2]);
    check("T<2, 6, 6> { avgpool(2, stride = 1) }", &[3]);
}

#[test]
fn lrn_plain_and_per_tower() {
    check(
        "T<7, 4, 5> { lrn(5, alpha = 0.5, beta = 0.75, k = 2.0) }",
        &[1, 2],
    );
    check(
        "T<8, 3, 3> { lrn(3, alpha = 0.1, beta = 0.6, k = 1.0) }",
        &[2],
    );
    check("T<12, 3, 4> split 2 { lrn(5, alpha = 0.3) }", &[1, 3]);
}

#[test]
fn fc_both_paths() {
    // Batches up to 4 use the matrix-vector path, larger ones the GEMM.
    check("T<3, 4, 5> { fc(37) }", &[1, 2, 4, 5, 9]);
    check("T<130, 1, 1> { fc(70) }", &[1, 6]);
}

#[test]
fn elementwise() {
    check("T<5, 3, 3> { relu }", &[2]);
    check("T<5, 3, 3> { tanh }", &[2, 3]);
    check("T<5, 3, 3> { dropout(0.5) }", &[2]);
    check("T<10, 1, 1> { softmax }", &[1, 3]);
    check("T<4, 2, 3> { softmax }", &[2]);
}

#[test]
fn fused_relu_matches_separate_relu() {
    for algo in [
        ConvAlgorithm::Im2col,
        ConvAlgorithm::Packed,
        ConvAlgorithm::Winograd,
    ] {
        let (input, conv) = ("T<4, 9, 9>", "conv(6, 3, pad = 1)");
        let fused = plan(&format!("{input} {{ {conv} relu }}"));
        let (x, params, y) = run_on(Cpu::new().with_conv_algorithm(algo), &fused, 3, 7);
        let conv_only = plan(&format!("{input} {{ {conv} }}"));
        let want: Vec<f32> = naive(&conv_only, 3, &x, &params)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        assert!(rel_l2(&y, &want) < 1e-5, "{algo:?}: {input} {conv} relu");
    }
}

/// Runs `stages` of `plan` one after another on the CPU backend, as `Model::forward` does.
fn through(plan: &Plan, stages: &[alexnet::ir::Stage], batch: usize, x: &[f32]) -> Vec<f32> {
    use alexnet::runtime::Inference;
    let cpu = Cpu::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let params = common::random_params(plan, &mut rng);
    let mut y = x.to_vec();
    for &st in stages {
        if plan.layers[st.layer].op.kind().identity_at_inference() {
            continue;
        }
        let mut out = vec![f32::NAN; batch * plan.layers[st.last()].output.len()];
        let p: Vec<Vec<f32>> = params
            .iter()
            .filter(|t| {
                t.name
                    .starts_with(&format!("{}.", plan.layers[st.layer].name))
            })
            .map(|t| t.data.clone())
            .collect();
        let p: Vec<&Vec<f32>> = p.iter().collect();
        cpu.forward_stage(plan, st, batch, &y, &p, &mut out)
            .unwrap();
        y = out;
    }
    y
}

/// Inference runs an LRN and the pooling after it as one stage (`Plan::inference_stages`):
/// the same bits as the two stages training runs, in towers, with max and average pooling,
/// and in the whole of AlexNet.
#[test]
fn lrn_with_its_pooling_fused_gives_the_separate_stages_bits() {
    for (src, batch) in [
        ("T<7, 9, 9> { lrn(5, alpha = 0.5, beta = 0.75, k = 2.0) maxpool(3, stride = 2) }", 2),
        ("T<12, 8, 7> split 2 { lrn(3, alpha = 0.3, beta = 0.6) avgpool(2) }", 3),
        ("T<12, 11, 11> split 2 { lrn(5) maxpool(3, stride = 2) }", 1),
        (
            "T<3, 32, 32> split 2 { conv(16, 5, pad = 2) relu lrn(3) maxpool(3, stride = 2) fc(10) softmax }",
            2,
        ),
    ] {
        let p = plan(src);
        let fused = p.inference_stages();
        assert_eq!(fused.iter().filter(|s| s.fused_pool).count(), 1, "{src}");
        assert_eq!(fused.len() + 1, p.stages().len(), "{src}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(batch as u64);
        let x: Vec<f32> = random(&mut rng, batch * p.input.len())
            .iter()
            .map(|v| 4.0 * v)
            .collect();
        let (a, b) = (through(&p, &fused, batch, &x), through(&p, &p.stages(), batch, &x));
        assert!(a.iter().all(|v| v.is_finite()), "{src}");
        assert_eq!(a.len(), batch * p.output().len());
        assert!(a.iter().zip(&b).all(|(u, v)| u.to_bits() == v.to_bits()), "{src}");
    }
    let alexnet = alexnet::nets::AlexNet::plan();
    let fused = alexnet.inference_stages();
    let labels: Vec<String> = fused
        .iter()
        .filter(|s| s.fused_pool)
        .map(|&s| alexnet.stage_label(s))
        .collect();
    assert_eq!(labels, ["lrn1+pool1", "lrn2+pool2"]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let x = random(&mut rng, alexnet.input.len());
    let a = through(alexnet, &fused, 1, &x);
    let b = through(alexnet, &alexnet.stages(), 1, &x);
    assert!(a.iter().zip(&b).all(|(u, v)| u.to_bits() == v.to_bits()));
}

/// A fused inference stage has no backward pass: asked for one, the CPU says so.
#[test]
fn a_fused_inference_stage_refuses_a_backward_pass() {
    let p = plan("T<6, 7, 7> { lrn(3) maxpool(3, stride = 2) }");
    let st = p.inference_stages()[0];
    let n = p.input.len();
    let y = vec![0.0; p.output().len()];
    let mut dx = vec![0.0; n];
    let err = Cpu::new()
        .backward_slices(
            &p,
            st,
            1,
            &vec![0.0; n],
            &y,
            &y,
            &[],
            alexnet::runtime::cpu::StageGrads {
                dx: Some(&mut dx),
                dparams: Vec::new(),
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lrn0+pool0") && err.contains("inference"),
        "{err}"
    );
}

#[test]
fn forward_is_deterministic() {
    let p = plan("T<3, 32, 32> split 2 { conv(16, 5, pad = 2) relu lrn(3) maxpool(3, stride = 2) fc(10) softmax }");
    let (_, _, a) = run(&p, 5, 3);
    let (_, _, b) = run(&p, 5, 3);
    assert_eq!(a, b);
}
