//! AlexNet's convolutions on the CPU with each convolution algorithm (im2col + sgemm, the
//! packed AVX-512 micro-kernel, Winograd on the 3x3 and 5x5 layers) and in bf16, alternating run by
//! run so that the shared machine's drift hits all alike: the evidence behind
//! `ConvAlgorithm::Auto`'s choice. `cargo bench --bench cpu_conv [-- BATCH... NAME...]`:
//! a name picks algorithms (`im2col`, `packed`, `winograd`, `bf16`, `bf16-direct`) or
//! layers (`conv3`),
//! all of each by default.

use std::time::Instant;

use alexnet::ir::Precision;
use alexnet::runtime::weights;
use alexnet::runtime::{ConvAlgorithm, Cpu, Model, Tensor};

const LAYERS: [(&str, &str); 5] = [
    ("conv1", "T<3, 227, 227> { conv(96, 11, stride = 4) relu }"),
    (
        "conv2",
        "T<96, 27, 27> { conv(256, 5, pad = 2, groups = 2) relu }",
    ),
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
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.parse::<usize>().is_err() && !a.starts_with('-'))
        .collect();
    const ALGORITHMS: [&str; 5] = ["im2col", "packed", "winograd", "bf16", "bf16-direct"];
    for n in &names {
        let known = ALGORITHMS.contains(&n.as_str()) || LAYERS.iter().any(|(l, _)| l == n);
        if !known {
            eprintln!(
                "cpu_conv: unknown name {n:?} (algorithms: {}; layers: conv1 to conv5)",
                ALGORITHMS.join(", ")
            );
            std::process::exit(2);
        }
    }
    let picked = |kind: &str, name: &str| {
        let of_kind: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with("conv") == (kind == "layer"))
            .collect();
        of_kind.is_empty() || of_kind.iter().any(|n| *n == name)
    };
    let bf16 = |a| {
        Cpu::new()
            .with_conv_algorithm(a)
            .with_precision(Precision::Bf16)
    };
    let algos: [(&str, Cpu); 5] = [
        (
            "im2col",
            Cpu::new().with_conv_algorithm(ConvAlgorithm::Im2col),
        ),
        (
            "packed",
            Cpu::new().with_conv_algorithm(ConvAlgorithm::Packed),
        ),
        (
            "winograd",
            Cpu::new().with_conv_algorithm(ConvAlgorithm::Winograd),
        ),
        ("bf16", bf16(ConvAlgorithm::Auto).expect("bf16")),
        // bf16 on the direct packed convolution (Auto takes Winograd on 3x3 and 5x5 layers).
        ("bf16-direct", bf16(ConvAlgorithm::Packed).expect("bf16")),
    ];
    println!("ms per batch, min and median of {RUNS} runs, algorithms alternating");
    for (name, src) in LAYERS.into_iter().filter(|(n, _)| picked("layer", n)) {
        let plan = alexnet::plan_from_str(src).expect("plan");
        let params = weights::kaiming_init(&plan, 0);
        // Winograd takes only 3x3 and 5x5 stride-1 layers (conv1 would be packed again).
        let algos: Vec<&(&str, Cpu)> = algos
            .iter()
            .filter(|(a, _)| *a != "winograd" || name != "conv1")
            .filter(|(a, _)| picked("algorithm", a))
            .collect();
        let models: Vec<Model<Cpu>> = algos
            .iter()
            .map(|(_, cpu)| {
                Model::from_tensors(cpu.clone(), plan.clone(), params.clone()).expect("model")
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
                .map(|((a, _), t)| {
                    t.sort_by(f64::total_cmp);
                    format!("{a} {:.2} / {:.2}", t[0], t[RUNS / 2])
                })
                .collect();
            println!("{name} batch {batch:>3}: {}", cells.join(", "));
        }
    }
}
