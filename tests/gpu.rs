//! The CUDA backend against the CPU backend. The tests marked `needs a CUDA GPU` run on
//! the lent GPU machine (`scripts/gpu-check.sh`); the others run everywhere.
//!
//! Every comparison: fresh random inputs and weights, outputs poisoned with NaN before
//! each run (an element a kernel fails to write fails the test), relative L2 <= 1e-5.

mod common;

use alexnet::codegen::cuda;
use alexnet::ir::{Plan, Precision};
use alexnet::nets::{AlexNet, SmallNet, TorchvisionAlexNet};
use alexnet::runtime::prelude::*;
use alexnet::runtime::{Cpu, Cuda, Device, Model, Tensor};
use common::rel_l2;
use rand::SeedableRng;

const TOL: f64 = 1e-5;

use common::{fan_in_weights as weights, random_scaled as random};

/// Runs `plan` on the GPU and the CPU at each batch size; returns the worst error.
fn compare(plan: &Plan, batches: &[usize], seed: u64) -> f64 {
    compare_in(plan, batches, seed, Precision::F32, TOL)
}

/// [`compare`] with the GPU in `precision`: the stages before the first one on tensor cores
/// within [`TOL`], that one's and the later ones' within `loose`.
fn compare_in(plan: &Plan, batches: &[usize], seed: u64, precision: Precision, loose: f64) -> f64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let w = weights(plan, &mut rng);
    let backend = Cuda::new(0)
        .expect("a CUDA GPU")
        .with_precision(precision)
        .unwrap();
    assert_eq!(backend.precision(), precision);
    // The outputs of the first stage on tensor cores and of every later one.
    let kernels = cuda::kernels(plan).forward_in(precision);
    let tensor_cores = |layer: usize| {
        kernels
            .iter()
            .any(|k| k.layer() == layer && k.gemm.is_some_and(|g| g.tile.tensor_cores()))
    };
    let mut after_tc = Vec::new();
    for st in plan.inference_stages() {
        if tensor_cores(st.layer) || !after_tc.is_empty() {
            after_tc.push(plan.stage_output_name(st).to_string());
        }
    }
    let mut gpu = Model::from_tensors(backend, plan.clone(), w.clone()).unwrap();
    gpu.set_poison(true);
    let cpu = Model::from_tensors(Cpu::reference(), plan.clone(), w).unwrap();
    let s = plan.input;
    let mut worst: f64 = 0.0;
    for &n in batches {
        let x = Tensor::new(vec![n, s.c, s.h, s.w], random(&mut rng, n * s.len(), 1.0)).unwrap();
        let mut stages = Vec::new();
        let got = gpu
            .forward_inspect(&x, |name, v| stages.push((name.to_string(), v.to_vec())))
            .unwrap();
        let mut want_stages = Vec::new();
        let want = cpu
            .forward_inspect(&x, |name, v| {
                want_stages.push((name.to_string(), v.to_vec()))
            })
            .unwrap();
        for ((name, g), (_, c)) in stages.iter().zip(&want_stages) {
            assert!(
                g.iter().all(|v| v.is_finite()),
                "{} batch {n}: {name} has unwritten (NaN) or infinite values",
                plan.name
            );
            let e = rel_l2(g, c);
            let tol = if after_tc.contains(name) { loose } else { TOL };
            assert!(
                e <= tol,
                "{} batch {n}: {name} differs from the CPU: relative L2 {e:.2e}",
                plan.name
            );
            worst = worst.max(e);
        }
        let e = rel_l2(got.data(), want.data());
        let tol = if after_tc.is_empty() { TOL } else { loose };
        assert!(
            e <= tol,
            "{} batch {n}: output relative L2 {e:.2e}",
            plan.name
        );
        println!(
            "{} {precision} batch {n}: worst stage {worst:.2e}, output {e:.2e}",
            plan.name
        );
    }
    worst
}

fn plan(src: &str) -> Plan {
    alexnet::plan_from_str(src).unwrap()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn every_layer_kind_matches_the_cpu() {
    for (i, src) in [
        "T<3, 19, 23> { conv(8, 11, stride = 4) }",
        "T<4, 9, 11> { conv(6, 3, stride = 2, pad = 1, groups = 2) relu }",
        "T<6, 7, 7> { conv(96, 5, pad = 2, groups = 3) }",
        "T<3, 13, 13> { maxpool(3, stride = 2) }",
        "T<3, 11, 10> { avgpool(3, stride = 2) }",
        "T<7, 4, 5> { lrn(5, alpha = 0.5, beta = 0.75, k = 2.0) }",
        "T<12, 3, 4> split 2 { lrn(5, alpha = 0.3, beta = 0.6) }",
        // An LRN with its pooling fused (one inference stage, lrn_pool_fwd).
        "T<7, 9, 9> { lrn(5, alpha = 0.5, beta = 0.75, k = 2.0) maxpool(3, stride = 2) }",
        "T<12, 8, 7> split 2 { lrn(3, alpha = 0.3, beta = 0.6) avgpool(2) }",
        "T<3, 4, 5> { fc(37) relu }",
        "T<130, 1, 1> { fc(70) }",
        "T<5, 3, 3> { relu }",
        "T<5, 3, 3> { tanh }",
        "T<5, 3, 3> { dropout(0.5) softmax }",
        "T<1000, 1, 1> { softmax }",
        "T<4, 2, 3> { softmax }",
    ]
    .iter()
    .enumerate()
    {
        compare(&plan(src), &[1, 7, 128], i as u64);
    }
}

/// `--precision tf32`: the convolutions and fully connected layers on tensor cores, within tf32's error of the
/// CPU's f32 (under emulation the same kernels are 2.4e-4 to 2.7e-4 from f32 on random
/// data, per layer; the stages before the first one on tensor cores stay within 1e-5).
#[test]
#[ignore = "needs a CUDA GPU"]
fn tf32_forward_is_within_tf32_error_of_the_cpu() {
    // Not split along K (K = 60), split in 4 (K = 576) and in 2 with a ragged last step
    // (K = 300), and the small net; compute-sanitizer runs this one (racecheck included).
    for (i, src) in [
        "T<3, 4, 5> { fc(37) relu }",
        "T<64, 3, 3> { fc(40) relu fc(10) }",
        "T<300, 1, 1> { fc(24) }",
    ]
    .iter()
    .enumerate()
    {
        compare_in(
            &plan(src),
            &[1, 7, 37],
            20 + i as u64,
            Precision::Tf32,
            2e-3,
        );
    }
    compare_in(
        &plan("T<8, 9, 11> { conv(16, 3, stride = 2, pad = 1, groups = 2) relu }"),
        &[1, 7, 37],
        23,
        Precision::Tf32,
        2e-3,
    );
    // conv1's 363-value filters (the weights' tile gathered by the threads).
    compare_in(
        &plan("T<3, 23, 23> { conv(8, 11, stride = 4) relu }"),
        &[1, 7, 37],
        24,
        Precision::Tf32,
        2e-3,
    );
    compare_in(SmallNet::plan(), &[1, 7, 128], 12, Precision::Tf32, 5e-3);
}

/// AlexNet in tf32 (conv1-conv5 and fc6-fc8 on tensor cores, the fc layers split along
/// K) at batch 1 and 128; torchvision's too. The errors of seven tf32 layers add up: the
/// bound is 5e-3 (PyTorch's TF32 differs from its f32 by about 1e-3 on such networks).
#[test]
#[ignore = "needs a CUDA GPU"]
fn alexnet_in_tf32_is_within_tf32_error_of_the_cpu() {
    compare_in(AlexNet::plan(), &[1, 128], 13, Precision::Tf32, 5e-3);
    compare_in(
        TorchvisionAlexNet::plan(),
        &[1, 128],
        16,
        Precision::Tf32,
        5e-3,
    );
}

/// `--precision bf16` on a GPU (f32 operands rounded to bf16 as the tensor-core kernels
/// stage them): the tf32 test's layers within bf16's error of the CPU's f32 (2e-2; under
/// emulation 1.9e-3 to 2.2e-3 per layer), and within 1e-5 of the CPU backend's own bf16
/// (the same products, summed in another order) where one layer is on tensor cores (two:
/// the second one's inputs differ in their last bits, so a few of their bf16 roundings
/// differ, 2e-3).
#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_forward_is_within_bf16_error_of_the_cpu() {
    for (i, (src, same)) in [
        ("T<3, 4, 5> { fc(37) relu }", 1e-5),
        ("T<64, 3, 3> { fc(40) relu fc(10) }", 2e-3),
        ("T<600, 1, 1> { fc(24) }", 1e-5),
        (
            "T<8, 9, 11> { conv(16, 3, stride = 2, pad = 1, groups = 2) relu }",
            1e-5,
        ),
        ("T<3, 23, 23> { conv(8, 11, stride = 4) relu }", 1e-5),
    ]
    .into_iter()
    .enumerate()
    {
        let p = plan(src);
        compare_in(&p, &[1, 7, 37], 30 + i as u64, Precision::Bf16, 2e-2);
        same_as_cpu_bf16(&p, 37, 40 + i as u64, same);
    }
    compare_in(SmallNet::plan(), &[1, 7, 128], 12, Precision::Bf16, 2e-2);
    same_as_cpu_bf16(SmallNet::plan(), 37, 45, 2e-3);
}

/// `--precision f16` on a GPU (f32 operands rounded to f16 as the tensor-core kernels stage
/// them): the bf16 test's layers, the small net and AlexNet within 5e-3 of the CPU's f32
/// (f16's 10-bit mantissa: under emulation 2e-4 to 3e-4 per layer), and a trainer refuses
/// f16 with an error that says why.
#[test]
#[ignore = "needs a CUDA GPU"]
fn f16_forward_is_within_f16_error_of_the_cpu() {
    for (i, src) in [
        "T<3, 4, 5> { fc(37) relu }",
        "T<64, 3, 3> { fc(40) relu fc(10) }",
        "T<600, 1, 1> { fc(24) }",
        "T<8, 9, 11> { conv(16, 3, stride = 2, pad = 1, groups = 2) relu }",
        "T<3, 23, 23> { conv(8, 11, stride = 4) relu }",
    ]
    .into_iter()
    .enumerate()
    {
        compare_in(&plan(src), &[1, 7, 37], 50 + i as u64, Precision::F16, 5e-3);
    }
    compare_in(SmallNet::plan(), &[1, 7, 128], 12, Precision::F16, 5e-3);
    compare_in(AlexNet::plan(), &[1, 128], 13, Precision::F16, 5e-3);
    let gpu = Cuda::new(0)
        .unwrap()
        .with_precision(Precision::F16)
        .unwrap();
    let model = Model::init(gpu, SmallNet::plan().clone(), 1).unwrap();
    let err = alexnet::runtime::Trainer::new(model, Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("loss scale"), "{err}");
}

/// AlexNet in bf16 on a GPU at batch 1 and 128 against the CPU's f32 (2e-2, the issue's
/// bound; the CPU's own bf16 is 6.3e-3 from f32) and against the CPU's bf16 (the same
/// products; later layers see activations whose f32 sums differ in the last bits, so that
/// a few of their bf16 roundings differ: 2e-3).
#[test]
#[ignore = "needs a CUDA GPU"]
fn alexnet_in_bf16_is_within_bf16_error_of_the_cpu() {
    compare_in(AlexNet::plan(), &[1, 128], 13, Precision::Bf16, 2e-2);
    same_as_cpu_bf16(AlexNet::plan(), 32, 14, 2e-3);
}

/// The GPU in bf16 against the CPU backend in bf16: the outputs of a batch of `batch`
/// within `tol`.
fn same_as_cpu_bf16(plan: &Plan, batch: usize, seed: u64, tol: f64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let w = weights(plan, &mut rng);
    let gpu = Cuda::new(0)
        .expect("a CUDA GPU")
        .with_precision(Precision::Bf16)
        .unwrap();
    let cpu = Cpu::new().with_precision(Precision::Bf16).unwrap();
    let mut gpu = Model::from_tensors(gpu, plan.clone(), w.clone()).unwrap();
    gpu.set_poison(true);
    let cpu = Model::from_tensors(cpu, plan.clone(), w).unwrap();
    let s = plan.input;
    let x = Tensor::new(
        vec![batch, s.c, s.h, s.w],
        random(&mut rng, batch * s.len(), 1.0),
    )
    .unwrap();
    let (got, want) = (gpu.forward(&x).unwrap(), cpu.forward(&x).unwrap());
    let e = rel_l2(got.data(), want.data());
    println!("{} bf16, GPU against CPU bf16: {e:.2e}", plan.name);
    assert!(e <= tol, "{}: GPU bf16 against CPU bf16 {e:.2e}", plan.name);
}

/// A forward pass recorded as a CUDA graph (`Model::capture`) and replayed on new inputs
/// gives the bits of `Model::forward`, in f32 and bf16, at batch 1 and 128 (AlexNet,
/// whose fc layers use the split-K workspace in bf16); a batch of another size is refused.
#[test]
#[ignore = "needs a CUDA GPU"]
fn a_replayed_graph_gives_the_forward_pass_bits() {
    let plan = AlexNet::plan().clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(41);
    let w = weights(&plan, &mut rng);
    for precision in [Precision::F32, Precision::Bf16] {
        let gpu = Cuda::new(0).unwrap().with_precision(precision).unwrap();
        let model = Model::from_tensors(gpu, plan.clone(), w.clone()).unwrap();
        let s = plan.input;
        let mut model = model;
        for batch in [1, 128] {
            let mut graph = model.capture(batch).unwrap();
            let model = graph.model();
            for round in 0..3 {
                let x = Tensor::new(
                    vec![batch, s.c, s.h, s.w],
                    random(&mut rng, batch * s.len(), 100.0),
                )
                .unwrap();
                let (a, b) = (graph.forward(&x).unwrap(), model.forward(&x).unwrap());
                assert_eq!(a.shape(), b.shape());
                let same = a
                    .data()
                    .iter()
                    .zip(b.data())
                    .all(|(u, v)| u.to_bits() == v.to_bits());
                assert!(
                    same,
                    "{precision} batch {batch} round {round}: replay differs"
                );
            }
            let other = Tensor::zeros(vec![batch + 1, s.c, s.h, s.w]);
            let err = graph.forward(&other).unwrap_err().to_string();
            assert!(err.contains("graph"), "{err}");
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn fixture_networks_match_the_cpu() {
    compare(SmallNet::plan(), &[1, 7, 128], 1);
    compare(TorchvisionAlexNet::plan(), &[1, 7, 128], 2);
    compare(AlexNet::plan(), &[1, 7, 128], 3);
}

#[test]
fn the_generated_source_is_what_the_runtime_compiles() {
    for (plan, src, kernels) in [
        (AlexNet::plan(), AlexNet::CUDA_SOURCE, AlexNet::CUDA_KERNELS),
        (
            SmallNet::plan(),
            SmallNet::CUDA_SOURCE,
            SmallNet::CUDA_KERNELS,
        ),
    ] {
        // The runtime compiles the kernels the macro embedded in the plan: the same ones
        // the generator gives for the plan now, for the whole network and each tower.
        let generated = plan.generated.expect("network! embeds its kernels");
        assert_eq!(cuda::generate(plan), generated.kernels);
        assert_eq!(cuda::forward_source(plan, &generated.kernels), src);
        let launches: Vec<_> = generated
            .kernels
            .forward
            .iter()
            .map(|k| k.launch.clone())
            .collect();
        assert_eq!(launches, kernels);
        for t in 0..plan.split.min(2) {
            let tower = plan.tower(t).unwrap();
            assert!(std::ptr::eq(tower.generated.unwrap(), &generated.towers[t]));
            assert_eq!(cuda::generate(&tower), generated.towers[t].kernels);
            assert!(matches!(
                cuda::kernels(&tower),
                std::borrow::Cow::Borrowed(_)
            ));
        }
        assert!(matches!(cuda::kernels(plan), std::borrow::Cow::Borrowed(_)));
        // A plan changed after the macro ran gets kernels of its own, not the embedded ones.
        let mut changed = plan.clone();
        let mut layers = changed.layers.to_vec();
        let l = layers.iter_mut().find(|l| l.op.is_learned()).unwrap();
        l.name = "renamed".into();
        changed.layers = layers.into();
        assert_eq!(changed.generated, plan.generated);
        assert_ne!(changed.fingerprint(), plan.fingerprint());
        let own = cuda::kernels(&changed);
        assert!(matches!(own, std::borrow::Cow::Owned(_)));
        assert!(own.forward.iter().any(|k| k.name().starts_with("renamed_")));
    }
}

#[test]
fn asking_for_cuda_without_a_gpu_is_a_clear_error() {
    if Cuda::unavailable_reason().is_none() {
        return; // this machine has a GPU
    }
    let err = Device::cuda(0).unwrap_err();
    assert!(matches!(err, alexnet::runtime::Error::NoGpu(_)), "{err:?}");
    let err = err.to_string();
    assert!(err.starts_with("cuda was asked for, but "), "{err}");
    let auto = Device::auto();
    assert!(matches!(auto, Device::Cpu(_)), "auto falls back to the CPU");
    assert!(auto.name().starts_with("cpu"));
    assert!(Device::parse("tpu")
        .unwrap_err()
        .to_string()
        .contains("expected cpu, cuda, cuda:N or auto"));
}

/// 16-bit buffers live on the GPU beside f32 ones, typed (the kernels are f32 for now).
#[test]
#[ignore = "needs a CUDA GPU"]
fn sixteen_bit_buffers_live_beside_f32_ones() {
    let gpu = Cuda::new(0).unwrap();
    let bf: Vec<half::bf16> = [1.0f32, 3.0e38, -0.0078125]
        .iter()
        .map(|&v| half::bf16::from_f32(v))
        .collect();
    let h: Vec<half::f16> = [0.5f32, -2.0, 65504.0]
        .iter()
        .map(|&v| half::f16::from_f32(v))
        .collect();
    let (b1, b2) = (gpu.upload(&bf).unwrap(), gpu.upload(&h).unwrap());
    let mut z = gpu.alloc::<half::bf16>(4).unwrap();
    gpu.write(&mut z, &bf).unwrap();
    assert_eq!(gpu.download(&b1).unwrap(), bf);
    assert_eq!(gpu.download(&b2).unwrap(), h);
    assert_eq!(gpu.download_prefix(&z, 3).unwrap(), bf);
    assert_eq!(gpu.download(&z).unwrap()[3], half::bf16::ZERO);
}

/// Running out of GPU memory is an error a caller can tell from the others.
#[test]
#[ignore = "needs a CUDA GPU"]
fn out_of_memory_is_its_own_error() {
    let gpu = Cuda::new(0).unwrap();
    let err = gpu.alloc::<f32>(1 << 40).unwrap_err();
    assert!(
        matches!(err, alexnet::runtime::Error::OutOfMemory { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("out of memory"), "{err}");
}

/// The generated augmentation kernel on the GPU cuts, from a batch of prepared 8-bit
/// images at AlexNet's size, the CPU's training patches (same draws: the crops, mirrors
/// and colour shifts of a seed and epoch), centre crops and ten crops, bit for bit.
#[test]
#[ignore = "needs a CUDA GPU"]
fn the_augmentation_kernel_cuts_the_cpu_s_patches_on_the_gpu() {
    use alexnet::ir::Shape;
    use alexnet::runtime::cuda::nvrtc;
    use alexnet::runtime::data::patch::{Cut, Draw};
    use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg};
    use rand::Rng;
    let ctx = CudaContext::new(0).unwrap();
    let (major, minor) = ctx.compute_capability().unwrap();
    let arch = format!("sm_{major}{minor}");
    let stream = ctx.default_stream();
    let (side, crop, n) = (256, (227, 227), 6);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let images: Vec<u8> = (0..n * side * side * 3).map(|_| rng.random()).collect();
    let pre = common::augment_preprocess(side, crop, &mut rng);
    let train: Vec<Draw> = (0..n as u64).map(|i| pre.train_draw(3, 1, i)).collect();
    let cases: [(&str, Vec<Draw>, usize, Cut); 3] = [
        ("train", train, 1, pre.train_cut()),
        (
            "centre",
            vec![Draw::centre(side, crop); n],
            1,
            pre.eval_cut(),
        ),
        (
            "ten crops",
            (0..n).flat_map(|_| Draw::ten_crops(side, crop)).collect(),
            10,
            pre.eval_cut(),
        ),
    ];
    let d_images = stream.clone_htod(&images).unwrap();
    let d_mean = stream.clone_htod(&pre.mean).unwrap();
    for (what, draws, per_image, cut) in cases {
        let want = cut.batch(&images, &draws, per_image).unwrap();
        let f = cut.scale;
        let spec = cuda::augment::augment(Shape::new(3, crop.0, crop.1), side, per_image).unwrap();
        let compiled =
            nvrtc::compile_cubin(&cuda::source(&spec), "augment.cu", &arch, &[]).unwrap();
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(compiled.cubin))
            .unwrap();
        let function = module.load_function(spec.name()).unwrap();
        let flat: Vec<f32> = draws
            .iter()
            .flat_map(|d| d.to_kernel(side, crop).unwrap())
            .collect();
        let d_draws = stream.clone_htod(&flat).unwrap();
        let mut d_out = stream.alloc_zeros::<f32>(want.len()).unwrap();
        let [gx, gy, gz] = spec.launch.grid(n);
        let cfg = LaunchConfig {
            grid_dim: (gx, gy, gz),
            block_dim: (spec.launch.block, 1, 1),
            shared_mem_bytes: 0,
        };
        let batch = n as i32;
        let mut args = stream.launch_builder(&function);
        args.arg(&d_images)
            .arg(&d_draws)
            .arg(&d_mean)
            .arg(&mut d_out)
            .arg(&f.units)
            .arg(&f.scale[0])
            .arg(&f.scale[1])
            .arg(&f.scale[2])
            .arg(&batch);
        // SAFETY: the arguments are the kernel's parameters in the order of its spec
        // (images u8, draws, mean, out f32, four floats, the batch), each buffer holds what
        // the spec's lengths say for `n` images, and the grid is the spec's.
        unsafe { args.launch(cfg) }.unwrap();
        let got = stream.clone_dtoh(&d_out).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let same = bits(&got) == bits(&want);
        println!(
            "augmentation on the GPU, {what}: {} values, bit for bit: {same}",
            want.len()
        );
        assert!(same, "{what}: the GPU's patches differ from the CPU's");
    }
}
