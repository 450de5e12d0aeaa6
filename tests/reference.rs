//! CPU forward pass against ONNX Runtime, per layer and end to end, on the three fixture
//! networks. The fixtures (tests/fixtures, written by scripts/make_fixtures.py) hold ONNX
//! Runtime's outputs for weights and inputs drawn from a seeded hash that both sides
//! compute, so only outputs are committed.

mod common;

use std::collections::HashMap;

use alexnet::ir::Plan;
use alexnet::nets::{AlexNet, SmallNet, TorchvisionAlexNet};
use alexnet::runtime::weights::parse_safetensors;
use alexnet::runtime::{Cpu, Model, Tensor};
use common::{hash_uniform, hash_weights, rel_l2, sketch};

const TOL: f64 = 1e-4;

struct Fixture {
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
    meta: HashMap<String, String>,
}

fn fixture(name: &str) -> Fixture {
    let path = format!(
        "{}/tests/fixtures/{name}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).expect("fixture header");
    let meta = header.metadata().clone().expect("fixture metadata");
    // f64 sketches and f32 outputs both come back as f32 from the runtime's reader; read
    // the f64 ones exactly.
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("fixture");
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let data: Vec<f64> = match view.dtype() {
            safetensors::Dtype::F64 => view
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("{name}: dtype {other:?}"),
        };
        tensors.insert(name, (view.shape().to_vec(), data));
    }
    let _ = parse_safetensors(&bytes).expect("the runtime reads fixtures too");
    Fixture { tensors, meta }
}

fn check(net: &str, plan: &Plan) {
    let fx = fixture(net);
    let seed = |k: &str| fx.meta[k].parse::<u64>().unwrap();
    let batch: usize = fx.meta["batch"].parse().unwrap();
    let model = Model::from_tensors(
        Cpu::new(),
        plan.clone(),
        hash_weights(plan, seed("weight_seed")),
    )
    .unwrap();
    let s = plan.input;
    let x = Tensor::new(
        vec![batch, s.c, s.h, s.w],
        hash_uniform(seed("input_seed"), 0, batch * s.len(), 1.0),
    )
    .unwrap();

    let mut report = Vec::new();
    let mut worst: f64 = 0.0;
    let y = model
        .forward_inspect(&x, |name, values| {
            let err = if let Some((_, full)) = fx.tensors.get(name) {
                rel_l2(values, full)
            } else {
                let (_, sk) = fx
                    .tensors
                    .get(&format!("{name}.sketch"))
                    .unwrap_or_else(|| panic!("{net}: fixture lacks layer {name}"));
                let (_, norm) = &fx.tensors[&format!("{name}.norm")];
                let ours = (values.iter().map(|&v| v as f64 * v as f64).sum::<f64>()).sqrt();
                rel_l2(&sketch(values), sk).max((ours - norm[0]).abs() / norm[0])
            };
            worst = worst.max(err);
            report.push(format!("{name}: {err:.2e}"));
        })
        .unwrap();
    let (_, want) = &fx.tensors["output"];
    let end = rel_l2(y.data(), want);
    println!("{net}: {} | output {end:.2e}", report.join(", "));
    assert!(
        report.len() >= 5,
        "{net}: only {} stages compared",
        report.len()
    );
    assert!(
        worst <= TOL,
        "{net}: a layer differs from ONNX Runtime: {}",
        report.join(", ")
    );
    assert!(end <= TOL, "{net}: output relative L2 {end:.2e} > {TOL:e}");
    // The comparison is only meaningful if the output is not degenerate (e.g. uniform).
    let mean = want.iter().sum::<f64>() / want.len() as f64;
    let spread = (want.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / want.len() as f64).sqrt();
    assert!(
        spread > 1e-3 * mean.abs().max(1e-3),
        "{net}: degenerate reference output"
    );
}

#[test]
fn small_net_matches_onnx_runtime() {
    check("small", SmallNet::plan());
}

#[test]
fn torchvision_alexnet_matches_onnx_runtime() {
    check("torchvision", TorchvisionAlexNet::plan());
}

#[test]
fn paper_alexnet_matches_onnx_runtime() {
    check("alexnet", AlexNet::plan());
}
