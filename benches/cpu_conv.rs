//! AlexNet's 3x3 layers (conv3-conv5) on the CPU with each convolution algorithm,
//! alternating run by run so that the shared machine's drift hits both alike: the evidence
//! behind `ConvAlgorithm::Auto`'s choice. `cargo bench --bench cpu_conv [-- BATCH...]`.

use std::time::Instant;

use alexnet::runtime::weights;
use alexnet::runtime::{ConvAlgorithm, Cpu, Model, Tensor};

const LAYERS: [(&str, &str); 3] = [
    ("conv3", "T<256, 13, 13> { conv(384, 3, pad = 1) relu }"),
    (
        "conv4",
        "T<384, 13, 13> { conv(384, 3, pad = 1, groups = 2) relu }",
    ),
    (
        "conv5",
        "T<384, 13, 13> { conv(256, 3, pad = 1, groups = 2) relu }",
    ),
];
const RUNS: usize = 10;

fn main() {
    let batches: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let batches = if batches.is_empty() {
        vec![1, 16]
    } else {
        batches
    };
    let algos = [ConvAlgorithm::Im2col, ConvAlgorithm::Winograd];
    println!("ms per batch, min and median of {RUNS} runs, algorithms alternating");
    for (name, src) in LAYERS {
        let plan = alexnet::plan_from_str(src).expect("plan");
        let params = weights::kaiming_init(&plan, 0);
        let models: Vec<Model<Cpu>> = algos
            .iter()
            .map(|&a| {
                let cpu = Cpu::new().with_conv_algorithm(a);
                Model::from_tensors(cpu, plan.clone(), params.clone()).expect("model")
            })
            .collect();
        let s = plan.input;
        for &batch in &batches {
            let x = Tensor::new(
                vec![batch, s.c, s.h, s.w],
                (0..batch * s.len())
                    .map(|i| ((i * 31) % 255) as f32 / 255.0 - 0.5)
                    .collect(),
            )
            .expect("input");
            let mut times = vec![Vec::new(); algos.len()];
            for m in &models {
                m.forward(&x).expect("warm-up");
            }
            for _ in 0..RUNS {
                for (m, t) in models.iter().zip(&mut times) {
                    let t0 = Instant::now();
                    m.forward(&x).expect("forward");
                    t.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            let cells: Vec<String> = algos
                .iter()
                .zip(&mut times)
                .map(|(a, t)| {
                    t.sort_by(f64::total_cmp);
                    format!("{a:?} {:.2} / {:.2}", t[0], t[RUNS / 2])
                })
                .collect();
            println!("{name} batch {batch:>3}: {}", cells.join(", "));
        }
    }
}
