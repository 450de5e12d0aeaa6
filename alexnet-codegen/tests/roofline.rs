//! The roofline model of `cuda::roofline` on kernels the front end generates: FLOPs of the
//! GEMMs, bytes of every kernel, and the compute ceiling a small grid leaves.

use alexnet_codegen::cuda::kernels;
use alexnet_codegen::cuda::roofline::{estimate, Bound, Estimate, H200};
use alexnet_codegen::ir::{KernelSpec, Plan, Role};
use alexnet_codegen::plan_from_str;

/// A plan's kernels at batch 128, estimated with fixed resources.
fn estimates(src: &str) -> (Plan, Vec<(KernelSpec, Estimate)>) {
    let plan = plan_from_str(src).unwrap();
    let k = kernels(&plan).into_owned();
    let out = k
        .forward
        .iter()
        .map(|s| (s.clone(), estimate(s, &plan, 128, &H200, 64, 8192)))
        .collect();
    (plan, out)
}

#[test]
fn gemms_count_their_multiply_adds_and_every_kernel_its_bytes() {
    let (plan, e) = estimates("N<3, 32, 32> { conv(16, 5, pad = 2) relu maxpool(2) fc(10) }");
    let conv = &e[0];
    assert_eq!(conv.0.role, Role::Forward);
    let macs = 16 * 32 * 32 * 3 * 25;
    assert_eq!(conv.1.flops, 2 * macs * 128);
    // x, w, bias, y once each.
    let bytes = 4 * (128 * 3 * 32 * 32 + 16 * 3 * 25 + 16 + 128 * 16 * 32 * 32);
    assert_eq!(conv.1.bytes, bytes as u64);
    // The pool: no FLOPs counted, memory bound, its input and output once.
    let pool = &e[1];
    assert_eq!(pool.1.flops, 0);
    assert_eq!(pool.1.bound, Bound::Memory);
    assert_eq!(pool.1.bytes, 4 * 128 * (16 * 32 * 32 + 16 * 16 * 16));
    assert!((pool.1.seconds - pool.1.bytes as f64 / H200.bandwidth).abs() < 1e-15);
    assert_eq!(plan.layers.len(), 4);
}

#[test]
fn a_grid_smaller_than_the_gpu_lowers_the_compute_ceiling() {
    // fc8, fc(1000) over 4096 inputs at batch 128: 64 tiles of 32x64 for 132 SMs.
    let (_, e) = estimates("N<4096, 1, 1> { fc(1000) }");
    let fc = &e[0].1;
    assert!(fc.blocks < 132, "{}", fc.blocks);
    let flops = 2.0 * 4096.0 * 1000.0 * 128.0;
    let full = flops / H200.f32_flops;
    assert_eq!(fc.bound, Bound::Compute);
    assert!(fc.seconds > full * 132.0 / fc.blocks as f64 * 0.999);
    assert!(fc.fill < 1.0);
}

#[test]
fn the_optimiser_moves_every_parameter() {
    let plan = plan_from_str("N<3, 16, 16> { conv(8, 3) relu maxpool(2) fc(10) softmax }").unwrap();
    let k = kernels(&plan).into_owned();
    let params: u64 = plan.params().iter().map(|p| p.len() as u64).sum();
    let find = |want: fn(&Role) -> bool| {
        let spec = k.training.iter().find(|s| want(&s.role)).unwrap();
        estimate(spec, &plan, 32, &H200, 32, 0)
    };
    // Weights, gradients and momentum read; weights and momentum written.
    let sgd = find(|r| matches!(r, Role::Sgd { .. })).bytes;
    assert_eq!(sgd, 5 * 4 * params);
    // The gradients read, and one flag written per tensor.
    let finite = find(|r| matches!(r, Role::Finite { .. })).bytes;
    assert_eq!(finite, 4 * params + 4 * plan.params().len() as u64);
}
