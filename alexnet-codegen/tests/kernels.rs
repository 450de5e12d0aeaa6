//! The plan's towers and the kernels generated for the paper's AlexNet: names, sizes,
//! launch geometry, and where the towers exchange, through the front end as a user writes
//! the network.

use alexnet_codegen::cuda;
use alexnet_codegen::ir::{Conv, Lrn, Op, Plan, Precision, Role, Shape, TowerInput};
use alexnet_codegen::kernels::spec::{Elem, KernelSpec};
use alexnet_codegen::plan_from_str;

/// The paper's AlexNet.
const ALEXNET: &str = "AlexNet<3, 227, 227> split 2 {
        conv(96, 11, stride = 4) relu lrn(5, alpha = 1e-4, beta = 0.75, k = 2.0) maxpool(3, stride = 2)
        conv(256, 5, pad = 2, groups = 2) relu lrn(5, alpha = 1e-4, beta = 0.75, k = 2.0) maxpool(3, stride = 2)
        conv(384, 3, pad = 1) relu conv(384, 3, pad = 1, groups = 2) relu conv(256, 3, pad = 1, groups = 2) relu maxpool(3, stride = 2)
        dropout(0.5) fc(4096) relu dropout(0.5) fc(4096) relu fc(1000) softmax
    }";

fn alexnet() -> Plan {
    plan_from_str(ALEXNET).expect("the paper's AlexNet plans")
}

#[test]
fn alexnet_towers_exchange_where_the_paper_says() {
    let plan = alexnet();
    let both: Vec<&str> = (0..plan.layers.len())
        .filter(|&i| plan.tower_input(i) == Some(TowerInput::BothTowers))
        .map(|i| &*plan.layers[i].name)
        .collect();
    // The paper: the towers talk at conv3 and the fully connected layers (and the
    // softmax needs every class).
    assert_eq!(both, ["conv3", "fc6", "fc7", "fc8", "softmax"]);
    assert_eq!(plan.tower_input(0), Some(TowerInput::NetworkInput));
    // By hand, f32 bytes per image: conv3 reads pool2's 256x13x13, fc6 pool5's 256x6x6
    // (through drop6), fc7 and fc8 4096 values, softmax 1000.
    let hand = [256 * 13 * 13, 256 * 6 * 6, 4096, 4096, 1000].map(|n| n * 4);
    assert_eq!(
        plan.exchange_bytes(plan.layers.iter().position(|l| l.name == "conv3").unwrap()),
        hand[0]
    );
    assert_eq!(plan.exchange_bytes_total(), hand.iter().sum::<usize>());
    assert_eq!(plan.exchange_bytes_total(), 246_688);
    let summary = plan.summary();
    assert!(
        summary.contains("exchanged between the towers per image: 246,688 bytes"),
        "{summary}"
    );
    assert!(summary.contains("173,056"), "{summary}");
    // An unsplit network has no towers.
    let flat = plan_from_str("T<3, 8, 8> { conv(4, 3) fc(2) }").unwrap();
    assert_eq!(flat.tower_input(1), None);
    assert_eq!(flat.exchange_bytes_total(), 0);
    assert!(!flat.summary().contains("reads"));

    // Tower plans: half of every layer, the whole input where both towers are read.
    let t1 = plan.tower(1).unwrap();
    assert_eq!(
        t1.layers.len(),
        plan.layers.len() - 1,
        "the final softmax runs once"
    );
    let at = |n: &str| t1.layers.iter().find(|l| l.name == n).unwrap().clone();
    assert_eq!(at("conv1").input, Shape::new(3, 227, 227));
    assert_eq!(at("conv1").output, Shape::new(48, 55, 55));
    assert_eq!(at("conv2").input, Shape::new(48, 27, 27));
    assert!(matches!(
        at("conv2").op,
        Op::Conv(Conv {
            out: 128,
            groups: 1,
            ..
        })
    ));
    assert_eq!(at("conv3").input, Shape::new(256, 13, 13));
    assert!(matches!(
        at("lrn1").op,
        Op::Lrn(Lrn {
            channel_groups: 1,
            ..
        })
    ));
    assert_eq!(at("fc6").input, Shape::new(256, 6, 6));
    assert_eq!(at("fc8").output, Shape::new(500, 1, 1));
    // A tower gathers both towers' outputs where the whole network reads both.
    let gathered: Vec<&str> = (0..t1.layers.len())
        .filter(|&i| t1.gathers(i))
        .map(|i| &*t1.layers[i].name)
        .collect();
    assert_eq!(gathered, ["conv3", "fc6", "fc7", "fc8"]);
    assert!((0..plan.layers.len()).all(|i| !plan.gathers(i)));
    // Every parameter is split in two, rows by tower.
    assert_eq!(t1.param_count() * 2, plan.param_count());
    assert!(plan.tower(2).is_none() && flat.tower(0).is_none());
}

#[test]
fn alexnet_kernels_are_named_and_sized() {
    let plan = alexnet();
    let kernels = cuda::forward(&plan, Precision::F32);
    let source = cuda::forward_source(&plan, &cuda::generate(&plan));
    let names: Vec<&str> = kernels.iter().map(|k| k.name()).collect();
    assert_eq!(names[0], "conv1_fwd_c3_k96_r11_t128x96");
    assert_eq!(names[3], "conv2_fwd_c48_k128_r5_t128x128");
    assert!(names.contains(&"fc6_fwd_i9216_o4096_t32x64"), "{names:?}");
    assert!(names.contains(&"lrn1_fwd_c96_n5_g2"), "{names:?}");
    assert!(
        names.contains(&"lrn1_fwd_maxpool_c96_n5_g2_k3s2"),
        "{names:?}"
    );
    assert!(names.contains(&"softmax_fwd_c1000"), "{names:?}");
    // Dropout runs no kernel; a fused ReLU has none of its own; training runs lrn1 and
    // pool1 apart (Forward), inference fuses them (ForwardPooled), and the same for lrn2.
    assert_eq!(kernels.len(), plan.stages().len() - 2 + 2);
    let stages = plan.inference_stages();
    assert_eq!(stages.len(), plan.stages().len() - 2);
    let pooled: Vec<String> = stages
        .iter()
        .filter(|s| s.fused_pool)
        .map(|&s| plan.stage_label(s))
        .collect();
    assert_eq!(pooled, ["lrn1+pool1", "lrn2+pool2"]);
    for k in &kernels {
        assert!(
            source.contains(&format!("\n{}(", k.name())),
            "{} not in source",
            k.name()
        );
        let fused = k.name().contains("pool_c");
        let want = if fused {
            Role::ForwardPooled
        } else {
            Role::Forward
        };
        assert_eq!(k.role, want, "{}", k.name());
    }
    assert!(!source.contains("{{"));
    assert!(!source.contains("#include"), "headers are inlined");
    // conv1 at batch 128: 128 * 55 * 55 pixels in tiles of 128, 96 channels in one.
    assert_eq!(kernels[0].launch.grid(128), [3025, 1, 1]);
    assert_eq!(kernels[3].launch.grid(1), [6, 1, 2]);
    let gemm = kernels[0].gemm.expect("conv1 is a GEMM");
    assert_eq!((gemm.tile.block(), gemm.tile.threads()), ((128, 96), 192));
    assert!(gemm.epilogue.relu && gemm.epilogue.bias);
}

/// In bf16 (on a GPU) the same layers as in tf32 run on tensor cores, with the kernels
/// that read f32 and round to bf16 as they stage it (the fc layers split as in tf32: fc6
/// and fc7 in 4 parts, fc8 in 8); every other stage keeps its f32 kernel.
#[test]
fn alexnet_bf16_runs_the_conv_and_fc_layers_on_tensor_cores() {
    let plan = alexnet();
    let (f32, bf16) = (
        cuda::forward(&plan, Precision::F32),
        cuda::forward(&plan, Precision::Bf16),
    );
    let generated = cuda::generate(&plan);
    assert_eq!(generated.forward_in(Precision::Bf16), bf16);
    let changed: Vec<&str> = bf16
        .iter()
        .filter(|k| !f32.contains(k))
        .map(|k| k.name())
        .collect();
    assert_eq!(
        changed,
        [
            "conv1_mma_bf16r_conv_r11_s4_g1_n96_k363_t128x128",
            "conv2_mma_bf16r_conv_r5_s1_g2_n128_k1200_t128x128",
            "conv3_mma_bf16r_conv_r3_s1_g1_n384_k2304_t128x128",
            "conv4_mma_bf16r_conv_r3_s1_g2_n192_k1728_t128x128",
            "conv5_mma_bf16r_conv_r3_s1_g2_n128_k1728_t128x128",
            "fc6_mma_bf16r_n4096_k9216_t32x128_s4",
            "fc6_mma_reduce_n4096_s4",
            "fc7_mma_bf16r_n4096_k4096_t32x128_s4",
            "fc7_mma_reduce_n4096_s4",
            "fc8_mma_bf16r_n1000_k4096_t32x128_s8",
            "fc8_mma_reduce_n1000_s8"
        ]
    );
    for k in bf16.iter().filter(|k| !f32.contains(k)) {
        if let Some(g) = k.gemm {
            assert!(
                g.tile.tensor_cores() && g.elem == Elem::Bf16,
                "{}",
                k.name()
            );
            assert!(k.stub.contains("_bf16r<"), "{}", k.stub);
        }
    }
    // Every other stage keeps its f32 kernels, and every layer still has its kernels.
    let learned: Vec<usize> = bf16
        .iter()
        .filter(|k| !f32.contains(k))
        .map(|k| k.layer())
        .collect();
    for k in bf16.iter().filter(|k| f32.contains(k)) {
        assert!(!learned.contains(&k.layer()), "{}", k.name());
    }
    let layers = |ks: &[KernelSpec]| {
        let mut v: Vec<usize> = ks.iter().map(|k| k.layer()).collect();
        v.dedup();
        v
    };
    assert_eq!(layers(&bf16), layers(&f32));
}

/// In tf32 conv1-conv5 run the tensor-core implicit GEMM (conv1's 363-value filters, not
/// whole 16-byte rows, gathered by the threads), and the fc layers the tensor-core GEMM split along K (fc6 and
/// fc7 in 4 parts, fc8 in 8: about 128 blocks at batch 1), then the ordered sum of the
/// parts with the bias and the fused ReLU of fc6 and fc7; every other stage keeps its f32
/// kernel.
#[test]
fn alexnet_tf32_runs_the_conv_and_fc_layers_on_tensor_cores() {
    let plan = alexnet();
    let (f32, tf32) = (
        cuda::forward(&plan, Precision::F32),
        cuda::forward(&plan, Precision::Tf32),
    );
    let generated = cuda::generate(&plan);
    assert_eq!(generated.forward_in(Precision::Tf32), tf32);
    assert_eq!(generated.forward_in(Precision::F32), f32);
    let convs: Vec<&str> = tf32
        .iter()
        .filter(|k| !f32.contains(k) && k.name().starts_with("conv"))
        .map(|k| k.name())
        .collect();
    assert_eq!(
        convs,
        [
            "conv1_mma_tf32_conv_r11_s4_g1_n96_k363_t128x128",
            "conv2_mma_tf32_conv_r5_s1_g2_n128_k1200_t128x128",
            "conv3_mma_tf32_conv_r3_s1_g1_n384_k2304_t128x128",
            "conv4_mma_tf32_conv_r3_s1_g2_n192_k1728_t128x128",
            "conv5_mma_tf32_conv_r3_s1_g2_n128_k1728_t128x128"
        ]
    );
    for k in tf32.iter().filter(|k| convs.contains(&k.name())) {
        let g = k.gemm.expect("a GEMM");
        assert!(g.tile.tensor_cores() && g.epilogue.bias && g.epilogue.relu);
    }
    // conv2 at batch 128: 128 * 27 * 27 pixels in tiles of 128, one column tile, 2 groups.
    let conv2 = tf32.iter().find(|k| k.name() == convs[1]).unwrap();
    assert_eq!(conv2.launch.grid(128), [729, 1, 2]);
    let changed: Vec<&str> = tf32
        .iter()
        .filter(|k| !f32.contains(k) && k.name().starts_with("fc"))
        .map(|k| k.name())
        .collect();
    assert_eq!(
        changed,
        [
            "fc6_mma_tf32_n4096_k9216_t32x128_s4",
            "fc6_mma_reduce_n4096_s4",
            "fc7_mma_tf32_n4096_k4096_t32x128_s4",
            "fc7_mma_reduce_n4096_s4",
            "fc8_mma_tf32_n1000_k4096_t32x128_s8",
            "fc8_mma_reduce_n1000_s8"
        ]
    );
    let new: Vec<_> = tf32
        .iter()
        .filter(|k| !f32.contains(k) && k.name().starts_with("fc"))
        .collect();
    for pair in new.chunks(2) {
        let [gemm, sum] = pair else {
            panic!("{pair:?}")
        };
        let g = gemm.gemm.expect("a GEMM");
        // The parts carry no epilogue; the sum does.
        assert!(g.tile.tensor_cores() && !g.epilogue.bias && !g.epilogue.relu);
        assert_eq!((gemm.role, sum.role), (Role::Forward, Role::ForwardReduce));
        assert!(
            sum.gemm.is_none() && sum.stub.contains("BIAS = true"),
            "{}",
            sum.stub
        );
        let relu = !gemm.name().starts_with("fc8");
        assert_eq!(sum.stub.contains("RELU = true"), relu, "{}", sum.stub);
        // One row per image, 32 rows a block.
        assert_eq!(gemm.launch.block, 128);
    }
    let fc6 = new[0];
    assert_eq!(fc6.launch.grid(1), [1, 32, 4]);
    assert_eq!(fc6.launch.grid(128), [4, 32, 4]);
}

#[test]
fn alexnet_training_kernels() {
    let plan = alexnet();
    let t = cuda::generate(&plan);
    // conv1 (layer 0) gets no input gradient; conv2 does.
    assert!(t.find(0, Role::DataGrad).is_none());
    assert!(t.find(0, Role::WeightGrad).is_some());
    assert!(t.find(4, Role::DataGrad).is_some());
    // Nothing before conv1; the final softmax is the loss.
    let loss = t.training.iter().find(|k| k.role == Role::Loss).unwrap();
    assert_eq!(loss.name(), "AlexNet_softmax_xent_c1000");
    assert_eq!(
        t.training
            .iter()
            .filter(|k| k.role == Role::Dropout)
            .count(),
        2
    );
    assert!(matches!(
        t.training.last().unwrap().role,
        Role::Sgd {
            first: 0,
            count: 16
        }
    ));
    // conv1's weight gradient at batch 128: 96 x 364 in 3 tiles of 96 x 128, split
    // into about 528 / 3 chunks.
    let w = t.find(0, Role::WeightGrad).unwrap();
    let [gx, gy, gz] = w.launch.grid(128);
    assert_eq!((gy, gz), (3, 1));
    assert!((170..=180).contains(&gx), "{gx}");
    assert_eq!(w.workspace_per_chunk(), 96 * 364);
    let source = cuda::training_source(&plan, &t);
    assert!(!source.contains("{{"));
    for k in t.training.iter() {
        assert!(source.contains(&format!("\n{}(", k.name())), "{}", k.name());
    }
}

#[test]
fn a_tower_has_no_loss_kernel() {
    // The loss runs once, on the gathered logits; each tower still updates its own rows.
    let tower = alexnet().tower(1).unwrap();
    let t = cuda::training(&tower, Precision::F32);
    assert!(t.iter().all(|k| k.role != Role::Loss));
    assert!(t.iter().any(|k| k.role == Role::Dropout));
    assert!(matches!(t.last().unwrap().role, Role::Sgd { .. }));
    assert!(cuda::training(&alexnet(), Precision::F32)
        .iter()
        .any(|k| k.role == Role::Loss));
}

#[test]
fn alexnet_towers_exchange_before_conv3_and_the_fc_layers() {
    let plan = alexnet();
    assert!(
        cuda::exchanges(&plan).is_empty(),
        "a whole network has no exchanges"
    );
    let t1 = cuda::exchanges(&plan.tower(1).unwrap());
    let names: Vec<&str> = t1
        .iter()
        .filter(|k| k.role == Role::Gather)
        .map(|k| k.name())
        .collect();
    assert_eq!(
        names,
        [
            "conv3_exchange_p21632_t1_gather",
            "fc6_exchange_p4608_t1_gather",
            "fc7_exchange_p2048_t1_gather",
            "fc8_exchange_p2048_t1_gather"
        ]
    );
    assert_eq!(t1.len(), 12, "gather, pack and reduce for each");
    for k in &t1 {
        let source = cuda::source(k);
        assert!(
            source.contains(&format!("\n{}(", k.name())),
            "{} not in source",
            k.name()
        );
        assert!(source.contains("TOWER = 1 };"), "{source}");
    }
    // conv3 at batch 128: 128 images of 128 x 13 x 13 values, 256 per block.
    assert_eq!(t1[0].launch.grid(128), [10816, 1, 1]);
    assert_eq!(
        t1[0].layer(),
        plan.layers.iter().position(|l| l.name == "conv3").unwrap()
    );
}
