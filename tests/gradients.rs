//! The CPU backward pass of every layer kind against central finite differences of the
//! naive f64 forward pass (tests/common/naive.rs), on small shapes with random data.
//!
//! Tolerance: the analytic gradients are computed in f32 (relative error about 1e-6); the
//! numeric ones in f64 with a step of 1e-4 (truncation error about 1e-8 relative). Kinks
//! (ReLU at 0, ties in max pooling) can break a finite difference, but with inputs drawn
//! uniformly from [-1, 1) a step of 1e-4 crosses one with probability about 1e-4 per
//! coordinate. A relative L2 of 1e-3 over the sampled coordinates is far above the
//! expected error and far below what any wrong gradient gives.

mod common;

use alexnet::ir::{Op, Plan};
use alexnet::runtime::cpu::StageGrads;
use alexnet::runtime::weights::NamedTensor;
use alexnet::runtime::{Cpu, Model, Tensor};
use common::rel_l2;
use rand::{Rng, SeedableRng};

const EPS: f64 = 1e-4;
const TOL: f64 = 1e-3;
const SAMPLES: usize = 40;

struct Case {
    plan: Plan,
    batch: usize,
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
}

fn case(src: &str, batch: usize, seed: u64) -> Case {
    let plan = alexnet::plan_from_str(src).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut random = |n: usize| {
        (0..n)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect::<Vec<f32>>()
    };
    let specs = plan.params();
    let (w, b) = match specs.as_slice() {
        [w, b] => (random(w.len()), random(b.len())),
        _ => (Vec::new(), Vec::new()),
    };
    let x = random(batch * plan.input.len());
    let dy = random(batch * plan.layers[0].output.len());
    Case {
        plan,
        batch,
        x,
        w,
        b,
        dy,
    }
}

/// `sum(dy * f(x, w, b))` in f64, f being the first stage (a layer and its fused ReLU).
fn loss(c: &Case, x: &[f64], w: &[f64], b: &[f64]) -> f64 {
    let stage = c.plan.stages()[0];
    let y = common::naive::forward(&c.plan.layers[0], c.batch, x, w, b);
    y.iter()
        .zip(&c.dy)
        .map(|(&v, &g)| if stage.fused_relu { v.max(0.0) } else { v } * g as f64)
        .sum()
}

/// Central differences of the loss at up to SAMPLES coordinates of `which` (0 = x, 1 = w,
/// 2 = b); returns the coordinates and the derivatives.
fn numeric(c: &Case, which: usize) -> (Vec<usize>, Vec<f64>) {
    let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let mut parts = [f64s(&c.x), f64s(&c.w), f64s(&c.b)];
    let n = parts[which].len();
    let idx: Vec<usize> = (0..SAMPLES.min(n))
        .map(|i| i * n / SAMPLES.min(n).max(1))
        .collect();
    let mut d = Vec::with_capacity(idx.len());
    for &i in &idx {
        let v = parts[which][i];
        parts[which][i] = v + EPS;
        let up = loss(c, &parts[0], &parts[1], &parts[2]);
        parts[which][i] = v - EPS;
        let down = loss(c, &parts[0], &parts[1], &parts[2]);
        parts[which][i] = v;
        d.push((up - down) / (2.0 * EPS));
    }
    (idx, d)
}

/// The analytic gradients: (dx, dw, db).
fn analytic(c: &Case, want_dx: bool) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let plan = &c.plan;
    let params: Vec<NamedTensor> = plan
        .params()
        .into_iter()
        .zip([c.w.clone(), c.b.clone()])
        .map(|(s, data)| NamedTensor {
            name: s.name,
            shape: s.shape,
            data,
        })
        .collect();
    let model = Model::from_tensors(Cpu::new(), plan.clone(), params).unwrap();
    let s = plan.input;
    let stage = plan.stages()[0];
    let mut y = None;
    let name = plan.stage_output_name(stage).to_string();
    model
        .forward_inspect(
            &Tensor::new(vec![c.batch, s.c, s.h, s.w], c.x.clone()).unwrap(),
            |n, v| {
                if n == name && y.is_none() {
                    y = Some(v.to_vec());
                }
            },
        )
        .unwrap();
    // Inference skips dropout (the identity), so it reports no output of its own.
    let y = y.unwrap_or_else(|| c.x.clone());
    let mut dx = want_dx.then(|| vec![f32::NAN; c.x.len()]);
    // NaN in: every gradient is overwritten, none accumulated into.
    let (mut dw, mut db) = (vec![f32::NAN; c.w.len()], vec![f32::NAN; c.b.len()]);
    let params: Vec<&[f32]> = if c.w.is_empty() {
        Vec::new()
    } else {
        vec![&c.w, &c.b]
    };
    let dparams: Vec<&mut [f32]> = if c.w.is_empty() {
        Vec::new()
    } else {
        vec![&mut dw, &mut db]
    };
    Cpu::new()
        .backward_slices(
            plan,
            stage,
            c.batch,
            &c.x,
            &y,
            &c.dy,
            &params,
            StageGrads {
                dx: dx.as_deref_mut(),
                dparams,
            },
        )
        .unwrap();
    (dx, dw, db)
}

fn check(src: &str, batch: usize) {
    let c = case(src, batch, src.len() as u64 + batch as u64);
    let (dx, dw, db) = analytic(&c, true);
    let dx = dx.unwrap();
    assert!(
        dx.iter().all(|v| v.is_finite()),
        "{src}: dx not fully written"
    );
    for (which, got, what) in [(0, &dx, "input"), (1, &dw, "weight"), (2, &db, "bias")] {
        if got.is_empty() {
            continue;
        }
        let (idx, want) = numeric(&c, which);
        let got: Vec<f64> = idx.iter().map(|&i| got[i] as f64).collect();
        let err = rel_l2(&got, &want);
        assert!(err <= TOL, "{src} batch {batch}: {what} gradient relative L2 {err:.2e}\n got  {got:?}\n want {want:?}");
    }
    // A first layer needs no input gradient: the parameter gradients are the same without.
    if matches!(c.plan.layers[0].op, Op::Conv { .. } | Op::Fc { .. }) {
        let (none, dw2, db2) = analytic(&c, false);
        assert!(none.is_none());
        assert_eq!((dw2, db2), (dw, db));
    }
}

#[test]
fn convolution() {
    check("T<3, 9, 9> { conv(4, 3) }", 2);
    check(
        "T<4, 9, 11> { conv(6, 3, stride = 2, pad = 1, groups = 2) relu }",
        2,
    );
    check("T<3, 19, 19> { conv(5, 11, stride = 4) relu }", 1);
    check("T<6, 5, 5> { conv(6, 5, pad = 2, groups = 3) }", 3);
}

#[test]
fn fully_connected() {
    check("T<3, 4, 5> { fc(7) }", 3);
    check("T<20, 1, 1> { fc(9) relu }", 6);
}

#[test]
fn pooling() {
    check("T<3, 9, 9> { maxpool(3, stride = 2) }", 2);
    check("T<2, 8, 8> { maxpool(2) }", 1);
    check("T<3, 9, 8> { avgpool(3, stride = 2) }", 2);
}

#[test]
fn local_response_normalisation() {
    check(
        "T<7, 3, 4> { lrn(5, alpha = 0.5, beta = 0.75, k = 2.0) }",
        2,
    );
    check(
        "T<12, 2, 3> split 2 { lrn(5, alpha = 0.3, beta = 0.6, k = 1.0) }",
        1,
    );
    check("T<8, 12, 12> split 2 { lrn(3, alpha = 0.5) }", 1);
}

#[test]
fn elementwise() {
    check("T<5, 3, 3> { relu }", 2);
    check("T<5, 3, 3> { tanh }", 2);
    check("T<5, 3, 3> { dropout(0.5) }", 2);
    check("T<10, 1, 1> { softmax }", 3);
    check("T<4, 2, 3> { softmax }", 2);
}
