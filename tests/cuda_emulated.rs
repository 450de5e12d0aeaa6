//! The generated CUDA kernels run without a GPU: each kernel's source is compiled as C++
//! by the host compiler with a small emulation of CUDA's execution model (blocks run one
//! after another; a block's threads are OS threads meeting at `__syncthreads` on a
//! barrier; `__shared__` arrays are shared by a block's threads), then compared with the
//! CPU backend. This checks the templates' index arithmetic, bounds checks and launch
//! geometry where no GPU is lent. It does not check anything specific to the GPU (warps,
//! memory model, speed); `tests/gpu.rs` does that on a GPU. Warp shuffles are emulated
//! through a buffer and a barrier per warp, and so are the tensor-core instructions
//! (`mma`, `ldmatrix`, `cp.async`: `tests/emulation/mma.hpp`), whose fragment layouts are
//! index arithmetic.
//!
//! Needs a C++20 compiler (`c++`, or `CXX`); skipped with a notice where there is none,
//! except under CI, where it fails.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use alexnet::codegen::cuda;
use alexnet::codegen::kernels::spec::{ArgTy, Elem};
use alexnet::ir::{KernelSpec, Plan, Role};
use alexnet::runtime::{Cpu, Model, Tensor};
use common::{random, rel_l2};
use rand::SeedableRng;

const PRELUDE: &str = r#"
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>
struct dim3_ { unsigned x = 0, y = 0, z = 0; };
static thread_local dim3_ threadIdx, blockIdx;
static dim3_ blockDim, gridDim;
static std::barrier<>* block_barrier = nullptr;
#define __global__
#define __restrict__
#define __shared__ static
#define __launch_bounds__(n)
#define __device__
#define __host__
#define __forceinline__ inline
// Which barrier interval a thread is in (threads are made anew for every block): the
// tensor-core emulation's race check compares them.
static thread_local unsigned sync_epoch = 0;
static inline void __syncthreads() { block_barrier->arrive_and_wait(); ++sync_epoch; }
static inline float __int_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
// A warp's lanes exchange values through a buffer, meeting on the warp's own barrier
// (whole warps return together in the kernels that shuffle, as on a GPU).
static float shfl_buf[1024];
static std::vector<std::barrier<>*> warp_barriers;
static inline float __shfl_xor_sync(unsigned, float v, int d) {
    unsigned t = threadIdx.x, lane = t % 32, warp = t / 32;
    shfl_buf[t] = v;
    warp_barriers[warp]->arrive_and_wait();
    float r = shfl_buf[warp * 32 + (lane ^ d)];
    warp_barriers[warp]->arrive_and_wait();
    return r;
}
static inline int __shfl_xor_sync(unsigned m, int v, int d) {
    return (int)__shfl_xor_sync(m, (float)v, d);
}
"#;

/// The tensor-core primitives of `kernels_templates/mma.cuh` on the host (see the file).
const MMA: &str = include_str!("emulation/mma.hpp");

fn compiler() -> Option<String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let ok = Command::new(&cxx)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "no C++ compiler ({cxx}) in CI"
        );
        eprintln!("skipped: no C++ compiler ({cxx})");
    }
    ok.then_some(cxx)
}

fn write(path: &PathBuf, v: &[f32]) {
    std::fs::write(
        path,
        v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
}

/// Runs the forward kernel of a plan's first stage under emulation and compares with the
/// CPU.
fn check(cxx: &str, src: &str, batch: usize) {
    let plan: Plan = alexnet::plan_from_str(src).unwrap();
    let kernels = cuda::generate(&plan);
    let k = &kernels.forward[0];
    let mut rng = rand::rngs::StdRng::seed_from_u64(batch as u64 + src.len() as u64);
    let params = common::random_params(&plan, &mut rng);
    let s = plan.input;
    let x = random(&mut rng, batch * s.len());
    let model = Model::from_tensors(Cpu::reference(), plan.clone(), params.clone()).unwrap();
    let mut want = None;
    let first = plan.stage_output_name(plan.stages()[0]).to_string();
    model
        .forward_inspect(
            &Tensor::new(vec![batch, s.c, s.h, s.w], x.clone()).unwrap(),
            |name, v| {
                if name == first {
                    want = Some(v.to_vec());
                }
            },
        )
        .unwrap();
    let want = want.unwrap();

    let nan = vec![f32::NAN; want.len()];
    let mut bufs: Vec<(&str, &[f32])> = vec![("x", &x), ("y", &nan)];
    if let [w, b] = params.as_slice() {
        bufs.extend([("w", &w.data[..]), ("bias", &b.data[..])]);
    }
    let got = emulate(cxx, k, batch, &bufs, &[]);
    let got = &got["y"];
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{src} batch {batch}: {} left elements unwritten (NaN)",
        k.name()
    );
    let err = rel_l2(got, &want);
    assert!(
        err <= 1e-5,
        "{src} batch {batch}: {} differs from the CPU backend: relative L2 {err:.2e}",
        k.name()
    );
}

#[test]
fn generated_kernels_match_the_cpu_under_emulation() {
    let Some(cxx) = compiler() else { return };
    for (src, batches) in [
        ("T<3, 19, 23> { conv(8, 11, stride = 4) }", &[1usize, 3][..]),
        (
            "T<4, 9, 11> { conv(6, 3, stride = 2, pad = 1, groups = 2) relu }",
            &[2],
        ),
        ("T<8, 7, 7> { conv(96, 5, pad = 2, groups = 2) relu }", &[1]),
        ("T<3, 9, 9> { conv(128, 3, pad = 1) relu }", &[2]),
        ("T<3, 13, 13> { maxpool(3, stride = 2) }", &[2]),
        ("T<3, 11, 10> { avgpool(3, stride = 2) }", &[1]),
        (
            "T<7, 4, 5> { lrn(5, alpha = 0.5, beta = 0.75, k = 2.0) }",
            &[2],
        ),
        (
            "T<12, 3, 4> split 2 { lrn(5, alpha = 0.3, beta = 0.6) }",
            &[1],
        ),
        ("T<3, 4, 5> { fc(70) relu }", &[1, 5]),
        ("T<5, 3, 3> { relu }", &[2]),
        ("T<5, 3, 3> { tanh }", &[1, 2]),
        ("T<1000, 1, 1> { softmax }", &[1, 3]),
        ("T<4, 2, 3> { softmax }", &[2]),
    ] {
        for &b in batches {
            check(&cxx, src, b);
        }
    }
}

/// Inference fuses an LRN with the pooling after it (`Role::ForwardPooled`,
/// `Plan::inference_stages`): the fused kernel under emulation writes, bit for bit, what
/// the LRN's and the pooling's own kernels write one after the other (both normalise
/// through `lrn_at`), and matches the CPU backend's fused stage, itself the separate
/// stages' bits (tests/cpu_layers.rs).
#[test]
fn fused_lrn_and_pooling_kernels_match_the_separate_ones_under_emulation() {
    let Some(cxx) = compiler() else { return };
    for (src, batches) in [
        (
            "T<7, 9, 9> { lrn(5, alpha = 0.5, beta = 0.75, k = 2.0) maxpool(3, stride = 2) }",
            &[1usize, 2][..],
        ),
        (
            "T<12, 8, 7> split 2 { lrn(3, alpha = 0.3, beta = 0.6) avgpool(2) }",
            &[2],
        ),
        (
            "T<12, 11, 11> split 2 { lrn(5, alpha = 0.5) maxpool(3, stride = 2) }",
            &[1],
        ),
        // A plane over 32 KiB: a thread per pooled value instead of a block per plane.
        (
            "T<3, 91, 91> { lrn(3, alpha = 0.5) maxpool(3, stride = 2) }",
            &[1],
        ),
    ] {
        let plan: Plan = alexnet::plan_from_str(src).unwrap();
        assert_eq!(plan.inference_stages().len(), 1, "{src}: one fused stage");
        let kernels = cuda::generate(&plan);
        let fused = kernels.find(0, Role::ForwardPooled).unwrap();
        // A block per (image, channel) where the plane fits in shared memory.
        let plane = plan.input.h * plan.input.w * 4 <= 32 * 1024;
        assert_eq!(
            fused.launch.x_per_image == plan.input.c as u64,
            plane,
            "{src}"
        );
        let (lrn, pool) = (
            kernels.find(0, Role::Forward).unwrap(),
            kernels.find(1, Role::Forward).unwrap(),
        );
        let (mid, out) = (plan.layers[0].output.len(), plan.output().len());
        for &batch in batches {
            let mut rng = rand::rngs::StdRng::seed_from_u64(batch as u64 + 90);
            let s = plan.input;
            let x: Vec<f32> = random(&mut rng, batch * s.len())
                .iter()
                .map(|v| 3.0 * v)
                .collect();
            let nan = |n: usize| vec![f32::NAN; batch * n];
            let got = emulate(&cxx, fused, batch, &[("x", &x), ("y", &nan(out))], &[]);
            let got = &got["y"];
            let normalised = emulate(&cxx, lrn, batch, &[("x", &x), ("y", &nan(mid))], &[]);
            let apart = emulate(
                &cxx,
                pool,
                batch,
                &[("x", &normalised["y"]), ("y", &nan(out))],
                &[],
            );
            let apart = &apart["y"];
            assert!(
                got.iter().all(|v| v.is_finite()),
                "{src}: unwritten outputs"
            );
            let same = got
                .iter()
                .zip(apart)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{src} batch {batch}: {} is not the separate kernels' bits",
                fused.name()
            );
            let model = Model::from_tensors(Cpu::reference(), plan.clone(), Vec::new()).unwrap();
            let want = model
                .forward(&Tensor::new(vec![batch, s.c, s.h, s.w], x.clone()).unwrap())
                .unwrap();
            close(&format!("{src} batch {batch}"), got, want.data(), 1e-6);
        }
    }
}

// ---- Training kernels ------------------------------------------------------------------

/// The driver of every emulated kernel, for any signature: argv = grid.x grid.y grid.z block file...; buffer i is
/// read from file i and is `B(i)` in LAUNCH; after the run every buffer is written back to
/// `<file>.out`.
const MAIN: &str = r#"
static std::vector<float> read(const char* path) {
    FILE* f = std::fopen(path, "rb");
    if (!f) { std::perror(path); std::exit(2); }
    std::fseek(f, 0, SEEK_END); long n = std::ftell(f); std::fseek(f, 0, SEEK_SET);
    std::vector<float> v(n / 4);
    if (std::fread(v.data(), 4, v.size(), f) != v.size()) std::exit(3);
    std::fclose(f);
    return v;
}
static std::vector<std::vector<float>> bufs;
#define B(i) (bufs[i].data())
int main(int argc, char** argv) {
    gridDim = {(unsigned)atoi(argv[1]), (unsigned)atoi(argv[2]), (unsigned)atoi(argv[3])};
    blockDim = {(unsigned)atoi(argv[4]), 1, 1};
    for (int i = 5; i < argc; ++i) bufs.push_back(read(argv[i]));
    for (unsigned bz = 0; bz < gridDim.z; ++bz)
    for (unsigned by = 0; by < gridDim.y; ++by)
    for (unsigned bx = 0; bx < gridDim.x; ++bx) {
        std::barrier<> bar(blockDim.x);
        block_barrier = &bar;
        std::vector<std::barrier<>*> warps;
        for (unsigned w = 0; w < (blockDim.x + 31) / 32; ++w) warps.push_back(new std::barrier<>(32));
        warp_barriers = warps;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < blockDim.x; ++t)
            threads.emplace_back([&, t] {
                blockIdx = {bx, by, bz};
                threadIdx = {t, 0, 0};
                LAUNCH;
            });
        for (auto& th : threads) th.join();
        for (auto* w : warps) delete w;
    }
    for (int i = 5; i < argc; ++i) {
        std::string out = std::string(argv[i]) + ".out";
        FILE* f = std::fopen(out.c_str(), "wb");
        std::fwrite(bufs[i - 5].data(), 4, bufs[i - 5].size(), f);
        std::fclose(f);
    }
}
"#;

fn read(path: &std::path::Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Runs kernel `k` under emulation: its arguments are bound by name, buffers from `bufs`
/// (`B(i)` in the launch) and scalars from `scalars` (C literals), in the order of the
/// kernel's spec, which is its signature; returns every buffer after the run, by name.
fn emulate(
    cxx: &str,
    k: &KernelSpec,
    batch: usize,
    bufs: &[(&str, &[f32])],
    scalars: &[(&str, String)],
) -> HashMap<String, Vec<f32>> {
    emulate_variant(cxx, k, &cuda::source(k), batch, bufs, scalars)
}

/// [`emulate`] with `source` (the kernel's, or a variant of it) instead of the kernel's.
fn emulate_variant(
    cxx: &str,
    k: &KernelSpec,
    source: &str,
    batch: usize,
    bufs: &[(&str, &[f32])],
    scalars: &[(&str, String)],
) -> HashMap<String, Vec<f32>> {
    let args: Vec<String> = k
        .args
        .iter()
        .map(|a| {
            if a.name == "batch" {
                return batch.to_string();
            }
            if let Some(i) = bufs.iter().position(|(n, _)| *n == a.name) {
                // The driver's buffers are float arrays; 16-bit ones hold two values a word.
                return match a.ty {
                    ArgTy::Ptr(e, _) => format!("({}*)B({i})", e.c_type()),
                    _ => format!("B({i})"),
                };
            }
            scalars
                .iter()
                .find(|(n, _)| *n == a.name)
                .unwrap_or_else(|| panic!("{}: argument `{}` not given", k.name(), a.name))
                .1
                .clone()
        })
        .collect();
    let call = format!("{}({})", k.name(), args.join(", "));
    let tag = format!("{}-{batch}-{:x}", k.name(), source_hash(source));
    let grid = k.launch.grid(batch);
    emulate_source(cxx, &tag, source, &call, grid, k.launch.block, bufs)
}

/// A short hash of a kernel's source, so that variants of one kernel build apart.
fn source_hash(s: &str) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Compiles `source` (kernels) with the prelude, the tensor-core emulation and the driver,
/// runs `call` (a kernel call whose buffer `i` is `B(i)`) on a grid of `block`-thread
/// blocks, returns every buffer after the run by name.
fn emulate_source(
    cxx: &str,
    tag: &str,
    source: &str,
    call: &str,
    grid: [u32; 3],
    block: u32,
    bufs: &[(&str, &[f32])],
) -> HashMap<String, Vec<f32>> {
    // A folder of its own per call: tests run in threads, and two may emulate the same
    // kernel at once (the f32 reduction of a weight gradient's chunks, in tf32 and bf16).
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call_id = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "alexnet-emu-{}-{call_id}-{tag}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let program =
        format!("{PRELUDE}\n{MMA}\n#include <string>\n{source}\n#define LAUNCH {call}\n{MAIN}");
    let (cpp, exe) = (dir.join("k.cpp"), dir.join("k"));
    std::fs::write(&cpp, program).unwrap();
    let out = Command::new(cxx)
        .args(["-std=c++20", "-O1", "-pthread", "-w", "-o"])
        .arg(&exe)
        .arg(&cpp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tag}: C++ compile failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let [gx, gy, gz] = grid;
    let mut cmd = Command::new(&exe);
    cmd.args([gx, gy, gz, block].map(|v| v.to_string()));
    let mut files = Vec::new();
    for (i, (_, b)) in bufs.iter().enumerate() {
        let f = dir.join(format!("b{i}.bin"));
        // An empty buffer still needs one element to be a valid pointer.
        write(&f, if b.is_empty() { &[0.0] } else { b });
        cmd.arg(&f);
        files.push(f);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{tag}: emulated run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let res = bufs
        .iter()
        .zip(&files)
        .map(|((n, _), f)| (n.to_string(), read(&f.with_extension("bin.out"))))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    res
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what}: unwritten (NaN) or infinite values"
    );
    let e = rel_l2(got, want);
    assert!(e <= tol, "{what}: relative L2 {e:.2e} against the CPU");
}

/// Every backward kernel of stage `at` of a network that starts with a 1x1
/// convolution (so that the stage needs an input gradient), on random inputs, against the
/// CPU backend's backward of that stage.
fn check_backward(cxx: &str, body: &str, input: (usize, usize, usize), batch: usize, at: usize) {
    use alexnet::runtime::cpu::StageGrads;
    let (c, h, w) = input;
    let src = match body.strip_prefix("split ") {
        Some(b) => format!("T<{c}, {h}, {w}> split 2 {{ conv({c}, 1) {b} }}"),
        None => format!("T<{c}, {h}, {w}> {{ conv({c}, 1) {body} }}"),
    };
    let plan: Plan = alexnet::plan_from_str(&src).unwrap();
    let stage = plan.stages()[at];
    let layer = &plan.layers[stage.layer];
    let t = cuda::generate(&plan);
    let mut rng = rand::rngs::StdRng::seed_from_u64(batch as u64 + src.len() as u64);
    let x = random(&mut rng, batch * layer.input.len());
    let params = common::random_params(&plan, &mut rng);
    let stage_params: Vec<Vec<f32>> = params
        .iter()
        .filter(|p| p.name.starts_with(&*layer.name))
        .map(|p| p.data.clone())
        .collect();
    // The stage's output from the CPU forward.
    let mut y = vec![0.0f32; batch * layer.output.len()];
    {
        use alexnet::runtime::prelude::*;
        let p: Vec<&Vec<f32>> = stage_params.iter().collect();
        Cpu::reference()
            .forward_stage(&plan, stage, batch, &x, &p, &mut y)
            .unwrap();
    }
    let dy = random(&mut rng, y.len());
    let mut dx = vec![0.0f32; x.len()];
    let mut grads: Vec<Vec<f32>> = stage_params.iter().map(|p| vec![0.0; p.len()]).collect();
    let p: Vec<&[f32]> = stage_params.iter().map(|p| p.as_slice()).collect();
    Cpu::new()
        .backward_slices(
            &plan,
            stage,
            batch,
            &x,
            &y,
            &dy,
            &p,
            StageGrads {
                dx: Some(&mut dx),
                dparams: grads.iter_mut().map(|g| g.as_mut_slice()).collect(),
            },
        )
        .unwrap();
    let nan = |n: usize| vec![f32::NAN; n];
    let what = |k: &str| format!("{src} batch {batch}: {k}");
    if layer.op.is_learned() {
        let mut dy_masked = dy.clone();
        if stage.fused_relu {
            let k = t.find(stage.layer, Role::ReluMask).unwrap();
            let r = emulate(cxx, k, batch, &[("y", &y), ("dy", &dy)], &[]);
            dy_masked = r["dy"].clone();
        }
        let k = t.find(stage.layer, Role::WeightGrad).unwrap();
        let chunks = k.launch.grid(batch)[0] as usize;
        let ws = nan(chunks * k.workspace_per_chunk());
        let (dw0, db0) = (nan(grads[0].len()), nan(grads[1].len()));
        let r = emulate(
            cxx,
            k,
            batch,
            &[
                ("x", &x),
                ("dy", &dy_masked),
                ("dw", &dw0),
                ("db", &db0),
                ("ws", &ws),
            ],
            &[],
        );
        let (mut dw, mut db) = (r["dw"].clone(), r["db"].clone());
        if chunks > 1 {
            let red = t.find(stage.layer, Role::WeightReduce).unwrap();
            let r = emulate(
                cxx,
                red,
                batch,
                &[("ws", &r["ws"]), ("dw", &dw), ("db", &db)],
                &[],
            );
            (dw, db) = (r["dw"].clone(), r["db"].clone());
        }
        close(
            &what(&format!("{} ({chunks} chunks) weight", k.name())),
            &dw,
            &grads[0],
            1e-5,
        );
        close(&what(&format!("{} bias", k.name())), &db, &grads[1], 1e-5);
        let k = t.find(stage.layer, Role::DataGrad).unwrap();
        let dx0 = nan(dx.len());
        let r = emulate(
            cxx,
            k,
            batch,
            &[("dy", &dy_masked), ("w", &stage_params[0]), ("dx", &dx0)],
            &[],
        );
        close(&what(k.name()), &r["dx"], &dx, 1e-5);
    } else {
        // Each backward kernel reads the buffers its template names (relu and tanh the
        // output, pooling and LRN the input).
        let k = t.find(stage.layer, Role::Backward).unwrap();
        let dx0 = nan(dx.len());
        let r = emulate(
            cxx,
            k,
            batch,
            &[("x", &x), ("y", &y), ("dy", &dy), ("dx", &dx0)],
            &[],
        );
        close(&what(k.name()), &r["dx"], &dx, 1e-5);
    }
}

#[test]
fn backward_kernels_match_the_cpu_under_emulation() {
    let Some(cxx) = compiler() else { return };
    for (body, at, input, batches) in [
        (
            "relu conv(6, 3, stride = 2, pad = 1, groups = 2)",
            1,
            (4, 9, 11),
            &[1usize, 3][..],
        ),
        (
            "conv(8, 5, pad = 2, groups = 2) relu",
            1,
            (4, 12, 12),
            &[1, 2],
        ),
        ("fc(70) relu", 1, (3, 4, 5), &[1, 5]),
        ("maxpool(3, stride = 2)", 1, (3, 13, 13), &[2]),
        ("avgpool(2, stride = 2)", 1, (4, 12, 12), &[1]),
        ("avgpool(3, stride = 2)", 1, (3, 11, 10), &[1]),
        (
            "lrn(5, alpha = 0.5, beta = 0.75, k = 2.0)",
            1,
            (7, 4, 5),
            &[2],
        ),
        ("lrn(3, alpha = 0.5)", 1, (8, 3, 3), &[1]),
        ("avgpool(1) relu", 2, (5, 3, 3), &[2]),
        ("tanh", 1, (5, 3, 3), &[1, 2]),
        ("split lrn(3, alpha = 0.5)", 1, (8, 3, 3), &[1]),
        ("split lrn(3, alpha = 0.5)", 1, (8, 12, 12), &[1]),
        ("split lrn(5)", 1, (12, 2, 3), &[2]),
    ] {
        for &b in batches {
            check_backward(&cxx, body, input, b, at);
        }
    }
}

/// A tower's dropout kernel draws each unit from its index in the whole network: tower t's
/// output under emulation is, bit for bit, tower t's channels of the unsplit network's
/// dropout (CPU backend), so split training drops the units unsplit training drops.
#[test]
fn tower_dropout_kernels_draw_the_unsplit_masks() {
    use alexnet::runtime::philox::DropoutMask;
    use alexnet::runtime::prelude::*;
    let Some(cxx) = compiler() else { return };
    let plan = alexnet::plan_from_str(
        "T<4, 6, 6> split 2 { conv(8, 3) relu dropout(0.5) conv(6, 3, groups = 2) relu fc(4) }",
    )
    .unwrap();
    let stage = *plan
        .stages()
        .iter()
        .find(|s| matches!(plan.layers[s.layer].op, alexnet::ir::Op::Dropout(_)))
        .unwrap();
    let batch = 3;
    let full = plan.layers[stage.layer].input.len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let x = random(&mut rng, batch * full);
    let mask = DropoutMask {
        seed: 0x1234_5678_9abc_def0,
        step: (7u64 << 32) + 3,
    };
    let mut whole = vec![0.0f32; x.len()];
    Cpu::new()
        .dropout(&plan, stage, batch, mask, &x, &mut whole)
        .unwrap();
    let half = full / 2;
    for t in 0..2 {
        let tower = plan.tower(t).unwrap();
        let kernels = cuda::generate(&tower);
        let k = kernels.find(stage.layer, Role::Dropout).unwrap();
        let part = |v: &[f32]| -> Vec<f32> {
            (0..batch)
                .flat_map(|i| v[i * full + t * half..i * full + (t + 1) * half].to_vec())
                .collect()
        };
        let seeds = [
            ("seed_lo", mask.seed as u32),
            ("seed_hi", (mask.seed >> 32) as u32),
            ("step_lo", mask.step as u32),
            ("step_hi", (mask.step >> 32) as u32),
        ]
        .map(|(n, v)| (n, format!("{v}u")));
        let xt = part(&x);
        let r = emulate(
            &cxx,
            k,
            batch,
            &[("x", &xt), ("y", &vec![f32::NAN; xt.len()])],
            &seeds,
        );
        let r = &r["y"];
        assert_eq!(
            *r,
            part(&whole),
            "tower {t}: the mask differs from the unsplit one"
        );
        let dropped = r.iter().filter(|v| **v == 0.0).count();
        assert!(
            dropped > 0 && dropped < r.len(),
            "tower {t}: {dropped} dropped"
        );
    }
}

/// A tower's exchange kernels rearrange exactly as the unsplit layout says: `gather` puts
/// the tower's part and the other tower's side by side (tower 0 first), `pack` takes the
/// other tower's part of a gradient of the whole input, `reduce` adds the tower's own part
/// to the part received. Checked bit for bit against those definitions, for both towers.
#[test]
fn tower_exchange_kernels_rearrange_the_unsplit_layout() {
    let Some(cxx) = compiler() else { return };
    let plan = alexnet::plan_from_str(
        "T<4, 6, 6> split 2 { conv(8, 3) relu dropout(0.5) conv(6, 3, groups = 2) relu fc(4) }",
    )
    .unwrap();
    let batch = 3;
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    for t in 0..2 {
        let tower = plan.tower(t).unwrap();
        let ex = cuda::exchanges(&tower);
        assert_eq!(ex.len(), 3, "one exchange, before fc: gather, pack, reduce");
        let layer = ex[0].layer();
        let p = tower.layers[layer - 1].output.len();
        let kernel = |role| ex.iter().find(|k| k.role == role).unwrap();
        let part = |v: &[f32], k: usize| -> Vec<f32> {
            (0..batch)
                .flat_map(|i| v[i * 2 * p + k * p..i * 2 * p + (k + 1) * p].to_vec())
                .collect()
        };
        let whole = random(&mut rng, batch * 2 * p);
        let nan = vec![f32::NAN; batch * 2 * p];
        let (own, other) = (part(&whole, t), part(&whole, 1 - t));
        let r = emulate(
            &cxx,
            kernel(Role::Gather),
            batch,
            &[("own", &own), ("other", &other), ("whole", &nan)],
            &[],
        );
        assert_eq!(r["whole"], whole, "tower {t}: gather");
        let r = emulate(
            &cxx,
            kernel(Role::Pack),
            batch,
            &[("dx", &whole), ("packed", &nan[..batch * p])],
            &[],
        );
        assert_eq!(r["packed"], part(&whole, 1 - t), "tower {t}: pack");
        let received = random(&mut rng, batch * p);
        let r = emulate(
            &cxx,
            kernel(Role::Reduce),
            batch,
            &[
                ("dx", &whole),
                ("received", &received),
                ("dy", &nan[..batch * p]),
            ],
            &[],
        );
        let want: Vec<f32> = part(&whole, t)
            .iter()
            .zip(&received)
            .map(|(a, b)| a + b)
            .collect();
        assert_eq!(r["dy"], want, "tower {t}: reduce");
    }
}

/// `SgdTensors` (kernels_templates/sgd.cuh) as a C++ aggregate: one pointer per tensor
/// and role, `B(i)` being the emulation's i-th buffer, then the learning rates.
fn sgd_tensors(w: &[usize], v: &[usize], g: &[usize], lr: &[f32]) -> String {
    let ptrs = |ix: &[usize]| {
        ix.iter()
            .map(|i| format!("B({i})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let lr: Vec<String> = lr.iter().map(|l| format!("{l:e}f")).collect();
    format!(
        "SgdTensors{{{{{}}}, {{{}}}, {{{}}}, {{{}}}}}",
        ptrs(w),
        ptrs(v),
        ptrs(g),
        lr.join(", ")
    )
}

#[test]
fn the_finite_check_and_sgd_kernels_match_the_cpu_under_emulation() {
    use alexnet::runtime::optim::Sgd;
    let Some(cxx) = compiler() else { return };
    let plan = alexnet::plan_from_str("T<3, 9, 9> { conv(6, 3) relu fc(40) relu fc(5) }").unwrap();
    let specs = plan.params();
    let n = specs.len();
    let kernels = cuda::training(&plan, alexnet::ir::Precision::F32);
    let kernel = |finite: bool| {
        let mut k = kernels
            .iter()
            .find(|k| match k.role {
                Role::Finite { first, count } => finite && first == 0 && count == n,
                Role::Sgd { first, count } => !finite && first == 0 && count == n,
                _ => false,
            })
            .unwrap_or_else(|| panic!("no kernel for all {n} tensors"))
            .clone();
        // A grid-stride loop: a few blocks walk every tensor (fc(40)'s weight is 11,760
        // values), and the emulation starts fewer threads.
        k.launch.x_fixed = 3;
        k
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let grads: Vec<Vec<f32>> = specs.iter().map(|s| random(&mut rng, s.len())).collect();
    let names: Vec<String> = (0..n).map(|i| format!("g{i}")).collect();

    // Finite: NaN, +inf and -inf in some tensors (the last value of one, past the first
    // stride of another), f32::MAX in another, which is finite.
    let finite = kernel(true);
    for (poison, want) in [
        (vec![], vec![false; n]),
        (
            vec![
                (1, 0, f32::NAN),
                (2, usize::MAX, f32::INFINITY),
                (3, 0, f32::MAX),
            ],
            (0..n).map(|i| i == 1 || i == 2).collect(),
        ),
        (
            vec![(0, usize::MAX, f32::NEG_INFINITY), (n - 1, 3, -f32::NAN)],
            (0..n).map(|i| i == 0 || i == n - 1).collect(),
        ),
        (vec![(2, 800, f32::NAN)], (0..n).map(|i| i == 2).collect()),
    ] {
        let mut g = grads.clone();
        for &(t, i, v) in &poison {
            let i = i.min(g[t].len() - 1);
            g[t][i] = v;
        }
        let flags = vec![0.0; n];
        let mut bufs: Vec<(&str, &[f32])> =
            names.iter().zip(&g).map(|(n, g)| (&**n, &g[..])).collect();
        bufs.push(("flags", &flags));
        let ix: Vec<usize> = (0..n).collect();
        let t = sgd_tensors(&[], &[], &ix, &[]);
        let r = emulate(&cxx, &finite, 1, &bufs, &[("t", t)]);
        let got: Vec<bool> = r["flags"].iter().map(|&f| f != 0.0).collect();
        assert_eq!(got, want, "{poison:?}");
    }

    // SGD: every tensor updated as the CPU's optimiser does, with its own multiplier.
    let sgd = Sgd {
        lr: 0.03,
        momentum: 0.9,
        weight_decay: 0.0005,
    };
    let mults: Vec<f32> = (0..n).map(|i| 1.0 + i as f32).collect();
    let w: Vec<Vec<f32>> = specs.iter().map(|s| random(&mut rng, s.len())).collect();
    let v: Vec<Vec<f32>> = specs.iter().map(|s| random(&mut rng, s.len())).collect();
    let wn: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    let vn: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
    let mut bufs: Vec<(&str, &[f32])> = Vec::new();
    for (names, data) in [(&wn, &w), (&vn, &v), (&names, &grads)] {
        bufs.extend(names.iter().zip(data).map(|(n, d)| (&**n, &d[..])));
    }
    let lr: Vec<f32> = mults.iter().map(|m| sgd.lr * m).collect();
    let ix = |k: usize| (k * n..(k + 1) * n).collect::<Vec<_>>();
    let t = sgd_tensors(&ix(0), &ix(1), &ix(2), &lr);
    let scalars = [
        ("t", t),
        ("momentum", format!("{:e}f", sgd.momentum)),
        ("decay", format!("{:e}f", sgd.weight_decay)),
    ];
    let r = emulate(&cxx, &kernel(false), 1, &bufs, &scalars);
    for i in 0..n {
        let (mut wi, mut vi) = (w[i].clone(), v[i].clone());
        sgd.step(&mut wi, &mut vi, &grads[i], mults[i]);
        close(&format!("w{i}"), &r[&wn[i]], &wi, 1e-6);
        close(&format!("v{i}"), &r[&vn[i]], &vi, 1e-6);
    }
}

// ---- Tensor cores ----------------------------------------------------------------------

/// `x` rounded to tf32 as `cvt.rna.tf32.f32` does: to 10 mantissa bits, to nearest, ties
/// away from zero (infinities and NaN unchanged).
fn tf32(x: f32) -> f32 {
    let u = x.to_bits();
    if u & 0x7f80_0000 == 0x7f80_0000 {
        return x;
    }
    f32::from_bits(u.wrapping_add(0x1000) & !0x1fff)
}

/// Two 16-bit values a word, the first in the low half: how the driver passes a 16-bit
/// buffer.
fn pack16(bits: &[u16]) -> Vec<f32> {
    bits.chunks(2)
        .map(|c| f32::from_bits(u32::from(c[0]) | u32::from(*c.get(1).unwrap_or(&0)) << 16))
        .collect()
}

/// `v` as the kernel of `elem` reads it (16-bit values packed, f32 as they are: the tf32
/// kernel rounds them itself) and the values its products see.
fn operand(elem: Elem, v: &[f32]) -> (Vec<f32>, Vec<f32>) {
    match elem {
        Elem::F32 => (v.to_vec(), v.iter().map(|&x| tf32(x)).collect()),
        Elem::Bf16 => {
            let h: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
            (
                pack16(&h.iter().map(|x| x.to_bits()).collect::<Vec<_>>()),
                h.iter().map(|x| x.to_f32()).collect(),
            )
        }
        Elem::F16 => {
            let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
            (
                pack16(&h.iter().map(|x| x.to_bits()).collect::<Vec<_>>()),
                h.iter().map(|x| x.to_f32()).collect(),
            )
        }
        Elem::U8 => unreachable!("no tensor-core GEMM of bytes"),
    }
}

/// `relu?(bias?[n] + sum_k a[m, k] * b[n, k])`, summed in f64.
fn gemm_reference(a: &[f32], b: &[f32], bias: Option<&[f32]>, relu: bool, n: usize) -> Vec<f32> {
    let k = b.len() / n;
    a.chunks(k)
        .flat_map(|row| {
            b.chunks(k).enumerate().map(move |(j, col)| {
                let s: f64 = row
                    .iter()
                    .zip(col)
                    .map(|(&x, &y)| f64::from(x) * f64::from(y))
                    .sum::<f64>()
                    + bias.map_or(0.0, |bs| f64::from(bs[j]));
                let v = s as f32;
                if relu {
                    v.max(0.0)
                } else {
                    v
                }
            })
        })
        .collect()
}

/// The tensor-core GEMM under emulation against an f32 GEMM of the same rounded inputs,
/// for each precision: fc6's K (9216) with a batch of 8 as M and 300 of its 4096 outputs
/// (`ALEXNET_EMU_FC6_N=4096` runs them all, minutes per precision), and convolution-like shapes
/// (conv4's and conv2's per-group GEMMs for two 13 x 13 images); M, N and K ragged
/// against the tiles.
#[test]
fn tensor_core_gemms_match_an_f32_gemm_under_emulation() {
    use alexnet::codegen::kernels::mma::{MmaGemm, MmaTile};
    use alexnet::codegen::kernels::spec::Epilogue;
    let Some(cxx) = compiler() else { return };
    let (small, large) = (MmaTile::SMALL_M, MmaTile::LARGE);
    let fc_n: usize = std::env::var("ALEXNET_EMU_FC6_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut rng = rand::rngs::StdRng::seed_from_u64(41);
    for (elem, rows, batch, n, k, tile, bias, relu) in [
        (Elem::Bf16, 1, 8, fc_n, 9216, small, true, true),
        (Elem::F16, 1, 8, fc_n, 9216, small, true, true),
        (Elem::F32, 1, 8, fc_n, 9216, small, true, true),
        (Elem::Bf16, 169, 2, 192, 1728, large, true, false),
        (Elem::F16, 169, 2, 128, 1200, large, false, true),
        (Elem::F32, 169, 2, 128, 1200, large, true, false),
        (Elem::Bf16, 5, 3, 40, 200, small, false, false),
        (Elem::F32, 13, 3, 100, 1156, large, false, true),
    ] {
        let g = MmaGemm::new(rows, n, k, elem, tile, Epilogue { bias, relu }).unwrap();
        let spec = g.spec(0, "emu");
        let m = rows * batch;
        let (a, ar) = operand(elem, &random(&mut rng, m * k));
        let (b, br) = operand(elem, &random(&mut rng, n * k));
        let bias_v = random(&mut rng, n);
        let want = gemm_reference(&ar, &br, bias.then_some(&bias_v[..]), relu, n);
        let c0 = vec![f32::NAN; m * n];
        let start = std::time::Instant::now();
        let r = emulate(
            &cxx,
            &spec,
            batch,
            &[
                ("x", &a),
                ("w", &b),
                ("bias", if bias { &bias_v } else { &[] }),
                ("y", &c0),
            ],
            &[],
        );
        let what = format!("{} (M = {m}, batch {batch})", spec.name());
        close(&what, &r["y"], &want, 1e-5);
        println!(
            "{what}: relative L2 {:.2e} ({:.1} s)",
            rel_l2(&r["y"], &want),
            start.elapsed().as_secs_f64()
        );
    }
}

/// A tensor-core precision as the tests below check it: its name in kernel names, how it
/// rounds an operand, and its error against f32 that the tests accept.
#[derive(Clone, Copy)]
struct MmaPrecision {
    precision: alexnet::ir::Precision,
    name: &'static str,
    round: fn(f32) -> f32,
    against_f32: f64,
}

const TF32: MmaPrecision = MmaPrecision {
    precision: alexnet::ir::Precision::Tf32,
    name: "tf32",
    round: tf32,
    against_f32: 2e-3,
};

/// `--precision bf16` on a GPU: f32 operands rounded to bf16 (to nearest, ties to even) as
/// the kernels stage them.
const BF16: MmaPrecision = MmaPrecision {
    precision: alexnet::ir::Precision::Bf16,
    name: "bf16r",
    round: |x| half::bf16::from_f32(x).to_f32(),
    against_f32: 2e-2,
};

/// `--precision f16` on a GPU: f32 operands rounded to f16 (to nearest, ties to even) as
/// the kernels stage them; f16's 10-bit mantissa makes its error a little under tf32's
/// (whose rounding ties away) on these values, well inside f16's range.
const F16: MmaPrecision = MmaPrecision {
    precision: alexnet::ir::Precision::F16,
    name: "f16r",
    round: |x| half::f16::from_f32(x).to_f32(),
    against_f32: 2e-3,
};

/// `--precision tf32`: the plan's forward pass in tf32 runs the fully connected layers on
/// the tensor-core GEMM, split along K where one image's grid would be small (the parts
/// into a workspace, then their ordered sum with the epilogue), and keeps the f32 kernel
/// where K is not whole 16-byte rows. Each such stage under emulation against the CPU
/// backend's stage on the same inputs rounded to tf32 (the products the tensor cores see:
/// to f32 accuracy) and on the inputs as they are (tf32's own error, which the test
/// states).
#[test]
fn tf32_fully_connected_stages_match_the_cpu_under_emulation() {
    mma_fully_connected_stages(TF32);
}

/// `--precision bf16` on a GPU: the fully connected stages as in tf32, on operands rounded
/// to bf16 as the kernel stages them (`gemm_mma_bf16r`), also against the CPU backend's
/// own bf16 (the same products, summed in another order).
#[test]
fn bf16_fully_connected_stages_match_the_cpu_under_emulation() {
    mma_fully_connected_stages(BF16);
}

/// `--precision f16` on a GPU: the fully connected stages of bf16 with f16 rounding
/// (`gemm_mma_f16r`, its split form).
#[test]
fn f16_fully_connected_stages_match_the_cpu_under_emulation() {
    mma_fully_connected_stages(F16);
}

fn mma_fully_connected_stages(mp: MmaPrecision) {
    use alexnet::ir::{Precision, Role};
    use alexnet::runtime::prelude::*;
    let Some(cxx) = compiler() else { return };
    // tf32 keeps the f32 kernel where K is not whole 16-byte rows of f32 (its cp.async
    // copies whole chunks); bf16r reads its rows with the threads, and takes any K.
    let odd: Plan = alexnet::plan_from_str("T<3, 5, 5> { fc(7) }").unwrap();
    let odd_kernels = cuda::generate(&odd);
    assert_eq!(odd_kernels.differing_forward(Precision::Tf32).count(), 0);
    assert!(odd_kernels.differing_forward(Precision::Bf16).count() > 0);
    assert_eq!(
        odd_kernels.forward_in(Precision::Tf32),
        odd_kernels.forward.to_vec()
    );
    // tf32 (K steps of 16): fc(40) relu: K = 576 in 36 steps, split in 4 parts, bias and
    // ReLU in the sum; fc(10): K = 40 (3 steps), not split, bias only; fc(24): K = 300 (19
    // steps, the last one ragged), split in 2 parts of 10 and 9 steps; K = 600 (38 steps)
    // in 4 parts, the last of 8. bf16 (K steps of 32): 18 steps in 2 parts, 2 steps, 10
    // steps not split, and 19 steps (the last ragged) in parts of 10 and 9. A batch of 37
    // is ragged against the 32-row tile. bf16 only: K = 75 (3 steps, the rows read value
    // by value).
    for (src, tf32_splits, bf16_splits) in [
        (
            "T<64, 3, 3> { fc(40) relu fc(10) }",
            &[4, 1][..],
            &[2, 1][..],
        ),
        ("T<300, 1, 1> { fc(24) }", &[2][..], &[1][..]),
        ("T<600, 1, 1> { fc(24) relu }", &[4][..], &[2][..]),
        ("T<3, 5, 5> { fc(7) }", &[][..], &[1][..]),
    ] {
        let splits = if mp.name == "tf32" {
            tf32_splits
        } else {
            bf16_splits
        };
        let plan: Plan = alexnet::plan_from_str(src).unwrap();
        let kernels = cuda::generate(&plan);
        let mma_forward = kernels.forward_in(mp.precision);
        let mut rng = rand::rngs::StdRng::seed_from_u64(47);
        let params = common::random_params(&plan, &mut rng);
        let batch = 37;
        for (stage, &split) in plan.stages().into_iter().zip(splits) {
            let layer = &plan.layers[stage.layer];
            let ks: Vec<&KernelSpec> = mma_forward
                .iter()
                .filter(|k| k.layer() == stage.layer)
                .collect();
            let gemm = ks[0];
            let named = format!("_mma_{}_", mp.name);
            assert!(gemm.name().contains(&named), "{}", gemm.name());
            assert!(gemm.gemm.is_some_and(|g| g.tile.tensor_cores()));
            assert_eq!(gemm.launch.grid_z as usize, split, "{}", gemm.name());
            assert_eq!(ks.len(), if split > 1 { 2 } else { 1 }, "{src}");
            let x = random(&mut rng, batch * layer.input.len());
            let p: Vec<Vec<f32>> = params
                .iter()
                .filter(|t| t.name.starts_with(&*layer.name))
                .map(|t| t.data.clone())
                .collect();
            let cpu_in = |precision, x: &[f32], w: &[f32]| {
                let mut y = vec![0.0f32; batch * layer.output.len()];
                let (x, w, b) = (x.to_vec(), w.to_vec(), p[1].clone());
                Cpu::reference()
                    .with_precision(precision)
                    .unwrap()
                    .forward_stage(&plan, stage, batch, &x, &[&w, &b], &mut y)
                    .unwrap();
                y
            };
            let cpu = |x: &[f32], w: &[f32]| cpu_in(Precision::F32, x, w);
            let rounded = |v: &[f32]| v.iter().map(|&v| (mp.round)(v)).collect::<Vec<f32>>();
            let want_rounded = cpu(&rounded(&x), &rounded(&p[0]));
            let want_f32 = cpu(&x, &p[0]);
            let y0 = vec![f32::NAN; want_f32.len()];
            let got = if split > 1 {
                assert_eq!(ks[1].role, Role::ForwardReduce);
                emulate_split(&cxx, (gemm, ks[1]), batch, split, &x, &p[0], &p[1])
            } else {
                let r = emulate(
                    &cxx,
                    gemm,
                    batch,
                    &[("x", &x), ("w", &p[0]), ("bias", &p[1]), ("y", &y0)],
                    &[],
                );
                r["y"].clone()
            };
            close(gemm.name(), &got, &want_rounded, 1e-5);
            if mp.precision.on_cpu() {
                let cpu_own = cpu_in(mp.precision, &x, &p[0]);
                close(gemm.name(), &got, &cpu_own, 1e-5);
            }
            let e = rel_l2(&got, &want_f32);
            println!(
                "{}: {} against f32, relative L2 {e:.2e}",
                gemm.name(),
                mp.name
            );
            assert!(
                e <= mp.against_f32,
                "{}: relative L2 {e:.2e} against f32",
                gemm.name()
            );
        }
    }
}

/// `--precision tf32` for convolutions: the implicit GEMM on tensor cores
/// (`conv_mma_tf32`: the im2col tile gathered by the threads, the weights by `cp.async`,
/// an NCHW store), for strides, padding, groups, a 1x1 kernel and pixels ragged against
/// the 128-row tile, and conv1's filters of 3 x 11 x 11 = 363 values (not whole 16-byte
/// rows: the threads gather the weights' tile too), under emulation against the CPU
/// backend's stage on tf32-rounded inputs (1e-5) and on the inputs as they are (tf32's
/// error, stated).
#[test]
fn tf32_convolutions_match_the_cpu_under_emulation() {
    mma_convolutions(TF32);
}

/// `--precision bf16` on a GPU for convolutions: `conv_mma_bf16r`, the tf32 test's shapes
/// with every operand rounded to bf16 as the threads stage it (eight values a 16-byte
/// chunk, so conv1's 363-value filters and the 18-value ones end mid-chunk), also against
/// the CPU backend's own bf16 convolution (the direct one of `Cpu::reference`: the same
/// products, summed in another order).
#[test]
fn bf16_convolutions_match_the_cpu_under_emulation() {
    mma_convolutions(BF16);
}

/// `--precision f16` on a GPU for convolutions: `conv_mma_f16r`, bf16's shapes.
#[test]
fn f16_convolutions_match_the_cpu_under_emulation() {
    mma_convolutions(F16);
}

fn mma_convolutions(mp: MmaPrecision) {
    use alexnet::ir::Precision;
    use alexnet::runtime::prelude::*;
    let Some(cxx) = compiler() else { return };
    for src in [
        "T<3, 23, 23> { conv(8, 11, stride = 4) relu }",
        // Three groups of 130 channels (two column tiles each), stride 2 and pad 2, and a
        // filter of 18 values (weights gathered); conv1's 363 values with padding and 136
        // channels.
        "T<6, 13, 13> { conv(390, 3, stride = 2, pad = 2, groups = 3) relu }",
        "T<3, 20, 17> { conv(136, 11, stride = 4, pad = 2) }",
        "T<8, 9, 11> { conv(16, 3, stride = 2, pad = 1, groups = 2) relu }",
        "T<4, 12, 12> { conv(12, 5, pad = 2) }",
        "T<16, 5, 5> { conv(24, 1) relu }",
        // Two groups of 8 channels, K = 72: whole 16-byte rows of weights in both
        // precisions, read at each group's offset (AlexNet's conv2, conv4 and conv5).
        "T<16, 9, 9> { conv(16, 3, pad = 1, groups = 2) relu }",
    ] {
        let plan: Plan = alexnet::plan_from_str(src).unwrap();
        let kernels = cuda::generate(&plan);
        let k = &kernels.forward_in(mp.precision)[0];
        let named = format!("_mma_{}_conv_", mp.name);
        assert!(k.name().contains(&named), "{}", k.name());
        assert!(k.gemm.is_some_and(|g| g.tile.tensor_cores()));
        let stage = plan.stages()[0];
        let layer = &plan.layers[stage.layer];
        let mut rng = rand::rngs::StdRng::seed_from_u64(53);
        let params = common::random_params(&plan, &mut rng);
        let (w, b) = (&params[0].data, &params[1].data);
        let batch = 3;
        let x = random(&mut rng, batch * layer.input.len());
        let cpu_in = |precision, x: &[f32], w: &[f32]| {
            let mut y = vec![0.0f32; batch * layer.output.len()];
            let (x, w) = (x.to_vec(), w.to_vec());
            Cpu::reference()
                .with_precision(precision)
                .unwrap()
                .forward_stage(&plan, stage, batch, &x, &[&w, b], &mut y)
                .unwrap();
            y
        };
        let cpu = |x: &[f32], w: &[f32]| cpu_in(Precision::F32, x, w);
        let rounded = |v: &[f32]| v.iter().map(|&v| (mp.round)(v)).collect::<Vec<f32>>();
        let want_rounded = cpu(&rounded(&x), &rounded(w));
        let want_f32 = cpu(&x, w);
        let y0 = vec![f32::NAN; want_f32.len()];
        let r = emulate(
            &cxx,
            k,
            batch,
            &[("x", &x), ("w", w), ("bias", b), ("y", &y0)],
            &[],
        );
        close(k.name(), &r["y"], &want_rounded, 1e-5);
        if mp.precision.on_cpu() {
            let cpu_own = cpu_in(mp.precision, &x, w);
            close(k.name(), &r["y"], &cpu_own, 1e-5);
        }
        let e = rel_l2(&r["y"], &want_f32);
        println!("{}: {} against f32, relative L2 {e:.2e}", k.name(), mp.name);
        assert!(
            e <= mp.against_f32,
            "{}: relative L2 {e:.2e} against f32",
            k.name()
        );
    }
}

/// Training in tf32 on a GPU: the input gradients and the weight and bias gradients of
/// convolutions and fully connected layers on tensor cores (`conv_mma_dgrad_tf32`,
/// `conv_mma_wgrad_tf32` with the f32 ordered sum of its chunks), under emulation against
/// the CPU backend's f32 gradients of the same stage on operands rounded to tf32 (the
/// products the tensor cores see: to f32 accuracy) and on them as they are (tf32's own
/// error, which the test states).
#[test]
fn tf32_gradients_match_the_cpu_under_emulation() {
    mma_gradients(TF32);
}

/// Training in bf16 on a GPU: the same with every operand rounded to bf16 as the threads
/// stage it (`conv_mma_dgrad_bf16r`, `conv_mma_wgrad_bf16r`).
#[test]
fn bf16_gradients_match_the_cpu_under_emulation() {
    mma_gradients(BF16);
}

/// The gradient kernels of `--precision f16` (`conv_mma_dgrad_f16r`,
/// `conv_mma_wgrad_f16r`): built and checked, though a trainer refuses f16 until a loss
/// scale keeps small gradients in its range.
#[test]
fn f16_gradients_match_the_cpu_under_emulation() {
    mma_gradients(F16);
}

fn mma_gradients(mp: MmaPrecision) {
    use alexnet::ir::Role;
    use alexnet::runtime::cpu::StageGrads;
    let Some(cxx) = compiler() else { return };
    // Each after a 1x1 convolution, so that its stage computes an input gradient: strides
    // 1, 2 and 4 (dy's taps that land between pixels are skipped), padding, three groups
    // of 130 channels (several column tiles), AlexNet's conv2 shape in small (two groups of
    // 48 channels: the narrow tile), 11 x 11 filters at stride 4 (K = 25 x 121 ends
    // mid-chunk), and fully connected layers (a 1 x 1 convolution of the input's values;
    // K = 70 outputs ends mid-chunk too). The weight gradients: one chunk, or several
    // (their partial sums added in order by the f32 reduction).
    for (src, batches) in [
        (
            "T<4, 9, 11> { conv(4, 1) conv(6, 3, stride = 2, pad = 1, groups = 2) }",
            &[1usize, 3][..],
        ),
        (
            "T<6, 13, 13> { conv(6, 1) conv(390, 3, stride = 2, pad = 2, groups = 3) }",
            &[2],
        ),
        (
            "T<96, 7, 7> { conv(96, 1) conv(256, 5, pad = 2, groups = 2) }",
            &[2],
        ),
        (
            "T<3, 20, 17> { conv(3, 1) conv(25, 11, stride = 4, pad = 2) }",
            &[2],
        ),
        ("T<16, 5, 5> { conv(16, 1) conv(24, 1) }", &[1]),
        ("T<3, 4, 5> { conv(3, 1) fc(70) }", &[1, 5]),
        ("T<8, 4, 4> { conv(8, 1) fc(40) }", &[3]),
    ] {
        let plan: Plan = alexnet::plan_from_str(src).unwrap();
        let kernels = cuda::generate(&plan);
        let stage = plan.stages()[1];
        let layer = &plan.layers[stage.layer];
        let training = kernels.training_in(mp.precision);
        let find = |role: Role| {
            training
                .iter()
                .find(|k| k.role == role && k.layer() == stage.layer)
                .unwrap()
        };
        let (dgrad, wgrad, reduce) = (
            find(Role::DataGrad),
            find(Role::WeightGrad),
            find(Role::WeightReduce),
        );
        for (k, pass) in [(dgrad, "dgrad"), (wgrad, "wgrad")] {
            let named = format!("_mma_{}_{pass}_", mp.name);
            assert!(k.name().contains(&named), "{src}: {}", k.name());
            assert!(k.gemm.is_some_and(|g| g.tile.tensor_cores()));
        }
        // The f32 kernels keep the f32 gradients.
        for role in [Role::DataGrad, Role::WeightGrad] {
            let f32_kernel = kernels.find(stage.layer, role).unwrap();
            assert!(
                !f32_kernel.name().contains("_mma_"),
                "{}",
                f32_kernel.name()
            );
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(61 + src.len() as u64);
        let params = common::random_params(&plan, &mut rng);
        let (w, b) = (&params[2].data, &params[3].data);
        for &batch in batches {
            let x = random(&mut rng, batch * layer.input.len());
            let y = vec![0.0f32; batch * layer.output.len()];
            let dy = random(&mut rng, y.len());
            // The CPU's gradients (f32) of x, dy and filters `w`: dx, dw, db.
            let cpu = |x: &[f32], dy: &[f32], w: &[f32]| {
                let mut dx = vec![0.0f32; x.len()];
                let mut dw = vec![0.0f32; w.len()];
                let mut db = vec![0.0f32; b.len()];
                Cpu::new()
                    .backward_slices(
                        &plan,
                        stage,
                        batch,
                        x,
                        &y,
                        dy,
                        &[w, b],
                        StageGrads {
                            dx: Some(&mut dx),
                            dparams: vec![&mut dw, &mut db],
                        },
                    )
                    .unwrap();
                [dx, dw, db]
            };
            let rounded = |v: &[f32]| v.iter().map(|&v| (mp.round)(v)).collect::<Vec<f32>>();
            let want_rounded = cpu(&rounded(&x), &rounded(&dy), &rounded(w));
            let want_f32 = cpu(&x, &dy, w);
            let nan = |n: usize| vec![f32::NAN; n];
            let r = emulate(
                &cxx,
                dgrad,
                batch,
                &[("dy", &dy), ("w", w), ("dx", &nan(x.len()))],
                &[],
            );
            let dx = r["dx"].clone();
            let chunks = wgrad.launch.grid(batch)[0] as usize;
            let ws = nan(chunks * wgrad.workspace_per_chunk());
            let r = emulate(
                &cxx,
                wgrad,
                batch,
                &[
                    ("x", &x),
                    ("dy", &dy),
                    ("dw", &nan(w.len())),
                    ("db", &nan(b.len())),
                    ("ws", &ws),
                ],
                &[],
            );
            let (mut dw, mut db) = (r["dw"].clone(), r["db"].clone());
            if chunks > 1 {
                let r = emulate(
                    &cxx,
                    reduce,
                    batch,
                    &[("ws", &r["ws"]), ("dw", &dw), ("db", &db)],
                    &[],
                );
                (dw, db) = (r["dw"].clone(), r["db"].clone());
            }
            for (i, (got, what)) in [
                (&dx, dgrad.name().to_string()),
                (&dw, format!("{} ({chunks} chunks) weight", wgrad.name())),
                (&db, format!("{} ({chunks} chunks) bias", wgrad.name())),
            ]
            .into_iter()
            .enumerate()
            {
                let what = format!("{what} batch {batch}");
                close(&what, got, &want_rounded[i], 1e-5);
                let e = rel_l2(got, &want_f32[i]);
                println!("{what}: {} against f32, relative L2 {e:.2e}", mp.name);
                assert!(
                    e <= mp.against_f32,
                    "{what}: relative L2 {e:.2e} against f32"
                );
            }
        }
    }
}

/// Split-K where the last part is shorter than the pipeline (K = 160: 10 steps of 16 in
/// parts of 3, 3, 3 and 1): the parts and their ordered sum against an f32 GEMM of the
/// tf32-rounded inputs.
#[test]
fn a_split_whose_last_part_is_short_matches_under_emulation() {
    use alexnet::codegen::kernels::mma::{MmaGemm, MmaTile};
    use alexnet::codegen::kernels::spec::Epilogue;
    let Some(cxx) = compiler() else { return };
    let e = Epilogue {
        bias: true,
        relu: true,
    };
    let g = MmaGemm::new(1, 40, 160, Elem::F32, MmaTile::SMALL_M, e)
        .unwrap()
        .with_split(4)
        .unwrap();
    assert!(g.with_split(11).is_err(), "a part without a K step");
    let (gemm, sum) = (g.spec(0, "s"), g.reduce(0, "s").unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let batch = 37;
    let (a, ar) = operand(Elem::F32, &random(&mut rng, batch * 160));
    let (b, br) = operand(Elem::F32, &random(&mut rng, 40 * 160));
    let bias = random(&mut rng, 40);
    let want = gemm_reference(&ar, &br, Some(&bias), true, 40);
    let y = emulate_split(&cxx, (&gemm, &sum), batch, 4, &a, &b, &bias);
    close("split in parts of 3, 3, 3, 1 steps", &y, &want, 1e-5);
}

/// A split-K GEMM under emulation: its `split` parts into a NaN-poisoned workspace, then
/// their ordered sum with the bias into a NaN-poisoned output; returns the output.
fn emulate_split(
    cxx: &str,
    (gemm, sum): (&KernelSpec, &KernelSpec),
    batch: usize,
    split: usize,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    let outputs = batch * bias.len();
    let ws0 = vec![f32::NAN; split * outputs];
    let parts = emulate(cxx, gemm, batch, &[("x", x), ("w", w), ("ws", &ws0)], &[]);
    let y0 = vec![f32::NAN; outputs];
    let r = emulate(
        cxx,
        sum,
        batch,
        &[("ws", &parts["ws"]), ("bias", bias), ("y", &y0)],
        &[],
    );
    r["y"].clone()
}

/// The emulation checks the pipeline's shared-memory hazards whatever the threads' timing
/// (`tests/emulation/mma.hpp`): a pipeline that refills a stage before every warp has
/// finished reading it (here the barrier moved after the refill) is stopped with the race
/// named, although on the host it may well compute the right numbers.
#[test]
fn a_stage_refilled_before_the_barrier_fails_under_emulation() {
    use alexnet::codegen::kernels::mma::{MmaGemm, MmaTile};
    use alexnet::codegen::kernels::spec::Epilogue;
    let Some(cxx) = compiler() else { return };
    let plain = Epilogue {
        bias: false,
        relu: false,
    };
    let g = MmaGemm::new(13, 100, 1152, Elem::Bf16, MmaTile::LARGE, plain).unwrap();
    let spec = g.spec(0, "early");
    let ahead = "        auto ahead = [&] {\n            if (kt + STAGES - 1 < NT) load((kt + STAGES - 1) % STAGES, kt0 + kt + STAGES - 1);\n            cp_async_commit();\n        };\n        if constexpr (!LATE) ahead();\n";
    let right = format!("        cp_async_wait<STAGES - 2>();\n        __syncthreads();\n{ahead}");
    let wrong = format!("        cp_async_wait<STAGES - 2>();\n{ahead}        __syncthreads();\n");
    let source = cuda::source(&spec);
    assert!(source.contains(&right), "gemm_mma.cuh's main loop changed");
    let mut rng = rand::rngs::StdRng::seed_from_u64(43);
    let (batch, m, n, k) = (3, 39, 100, 1152);
    let (a, ar) = operand(Elem::Bf16, &random(&mut rng, m * k));
    let (b, br) = operand(Elem::Bf16, &random(&mut rng, n * k));
    let want = gemm_reference(&ar, &br, None, false, n);
    let c0 = vec![f32::NAN; m * n];
    let bufs: [(&str, &[f32]); 4] = [("x", &a), ("w", &b), ("bias", &[]), ("y", &c0)];
    let right_c = emulate_variant(&cxx, &spec, &source, batch, &bufs, &[])["y"].clone();
    close("the pipeline as written", &right_c, &want, 1e-5);
    let broken = source.replacen(&right, &wrong, 1);
    let failed = std::panic::catch_unwind(|| {
        emulate_variant(&cxx, &spec, &broken, batch, &bufs, &[]);
    });
    let message = failed
        .err()
        .and_then(|e| e.downcast_ref::<String>().cloned())
        .expect("a stage refilled before the barrier went unnoticed");
    assert!(
        message.contains("race: cp.async refills a chunk another warp read")
            || message.contains("race: ldmatrix reads a chunk another warp refilled"),
        "{message}"
    );
}

/// The same for a convolution, whose threads gather their tiles and issue the next
/// stage's loads after the step's mma (`LATE` in `gemm_mma.cuh`): as written it matches
/// the CPU's stage on tf32-rounded inputs; with those loads moved before the barrier, the
/// emulation names the race.
#[test]
fn a_gathering_stage_refilled_before_the_barrier_fails_under_emulation() {
    use alexnet::ir::Precision;
    use alexnet::runtime::prelude::*;
    let Some(cxx) = compiler() else { return };
    let plan: Plan =
        alexnet::plan_from_str("T<16, 9, 9> { conv(16, 3, pad = 1, groups = 2) }").unwrap();
    let spec = cuda::generate(&plan).forward_in(Precision::Tf32)[0].clone();
    assert!(spec.name().contains("_mma_tf32_conv_"), "{}", spec.name());
    let late = "        if constexpr (LATE) ahead();\n";
    let define = "        auto ahead = [&] {\n            if (kt + STAGES - 1 < NT) load((kt + STAGES - 1) % STAGES, kt0 + kt + STAGES - 1);\n            cp_async_commit();\n        };\n";
    let wait = "        cp_async_wait<STAGES - 2>();\n";
    let right =
        format!("{wait}        __syncthreads();\n{define}        if constexpr (!LATE) ahead();\n");
    let early = format!("{wait}{define}        ahead();\n        __syncthreads();\n");
    let source = cuda::source(&spec);
    assert!(
        source.contains(late) && source.contains(&right),
        "gemm_mma.cuh's main loop changed"
    );
    let stage = plan.stages()[0];
    let layer = &plan.layers[stage.layer];
    let mut rng = rand::rngs::StdRng::seed_from_u64(59);
    let params = common::random_params(&plan, &mut rng);
    let (w, b) = (&params[0].data, &params[1].data);
    let batch = 3;
    let x = random(&mut rng, batch * layer.input.len());
    let mut want = vec![0.0f32; batch * layer.output.len()];
    let (xr, wr): (Vec<f32>, Vec<f32>) = (
        x.iter().map(|&v| tf32(v)).collect(),
        w.iter().map(|&v| tf32(v)).collect(),
    );
    Cpu::reference()
        .forward_stage(&plan, stage, batch, &xr, &[&wr, b], &mut want)
        .unwrap();
    let y0 = vec![f32::NAN; want.len()];
    let bufs: [(&str, &[f32]); 4] = [("x", &x), ("w", w), ("bias", b), ("y", &y0)];
    let got = emulate_variant(&cxx, &spec, &source, batch, &bufs, &[])["y"].clone();
    close("the gathering pipeline as written", &got, &want, 1e-5);
    let broken = source.replacen(late, "", 1).replacen(&right, &early, 1);
    let failed = std::panic::catch_unwind(|| {
        emulate_variant(&cxx, &spec, &broken, batch, &bufs, &[]);
    });
    let message = failed
        .err()
        .and_then(|e| e.downcast_ref::<String>().cloned())
        .expect("a gathered stage refilled before the barrier went unnoticed");
    assert!(message.contains("race:"), "{message}");
}

/// One warp runs each primitive of `mma.cuh` on data the test chose and writes what it
/// got: the fragments are built from the PTX ISA's layout tables written out lane by lane
/// (the emulation gathers them the other way, element by element), the products checked
/// against a direct sum; ldmatrix's lane mapping, tf32 rounding and cp.async's zero fill
/// and group waits against their definitions.
const PRIMITIVES: &str = r#"
#include "mma.cuh"
extern "C" __global__ void primitives(const float* __restrict__ in, float* __restrict__ out) {
    const unsigned* bits = reinterpret_cast<const unsigned*>(in);
    unsigned* res = reinterpret_cast<unsigned*>(out);
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    // mma q (bf16, f16, tf32): A 16 x 16 (row-major), B 16 x 8 (k-major, one value a word:
    // the 16-bit value's bits, or the tf32 value's), C 16 x 8 at in[512 q ..]; D to
    // out[128 q ..] (16 x 8).
    for (int q = 0; q < 3; ++q) {
        const unsigned* A = bits + 512 * q;
        const unsigned* B = A + 256;
        const float* C = in + 512 * q + 384;
        auto a = [&](int r, int k) { return A[r * 16 + k]; };
        auto b = [&](int k, int n) { return B[k * 8 + n]; };
        auto two = [](unsigned lo, unsigned hi) { return lo | hi << 16; };
        unsigned fa[4], fb[2];
        if (q == 2) {
            fa[0] = a(g, t); fa[1] = a(g + 8, t); fa[2] = a(g, t + 4); fa[3] = a(g + 8, t + 4);
            fb[0] = b(t, g); fb[1] = b(t + 4, g);
        } else {
            fa[0] = two(a(g, 2 * t), a(g, 2 * t + 1));
            fa[1] = two(a(g + 8, 2 * t), a(g + 8, 2 * t + 1));
            fa[2] = two(a(g, 2 * t + 8), a(g, 2 * t + 9));
            fa[3] = two(a(g + 8, 2 * t + 8), a(g + 8, 2 * t + 9));
            fb[0] = two(b(2 * t, g), b(2 * t + 1, g));
            fb[1] = two(b(2 * t + 8, g), b(2 * t + 9, g));
        }
        float d[4];
        for (int i = 0; i < 4; ++i) d[i] = C[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2];
        if (q == 0) mma_m16n8k16_bf16(d, fa, fb);
        else if (q == 1) mma_m16n8k16_f16(d, fa, fb);
        else mma_m16n8k8_tf32(d, fa, fb);
        for (int i = 0; i < 4; ++i) out[128 * q + (g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = d[i];
    }
    // to_tf32 of the 64 words at in[1536 ..] to out[384 ..].
    res[384 + lane] = to_tf32(bits[1536 + lane]);
    res[416 + lane] = to_tf32(bits[1568 + lane]);
    // ldmatrix.x4 of four 8 x 8 matrices of 16-bit values, value 1000 + 64 i + 8 r + c;
    // lane's register i to out[448 + 4 lane + i].
    __shared__ __align__(16) unsigned short m[4][8][8];
    for (int e = lane; e < 256; e += 32) m[e / 64][(e / 8) % 8][e % 8] = (unsigned short)(1000 + e);
    __syncthreads();
    unsigned r[4];
    ldmatrix_x4(r, &m[lane / 8][lane % 8][0]);
    for (int i = 0; i < 4; ++i) res[448 + 4 * lane + i] = r[i];
    // cp.async: chunk j (16 bytes of in[1600 + 4 j ..]) into a row of NaN, the odd chunks
    // predicated off (zero-filled); chunks 0-3 in a first group, 4-7 in a second. After
    // wait<1> the first group has landed (out[576 ..], 16 values); after wait<0>, both
    // (out[608 ..], 32 values).
    __shared__ __align__(16) float s[8][4];
    s[lane / 4][lane % 4] = NAN;
    __syncthreads();
    if (lane < 4) cp_async_16(&s[lane][0], in + 1600 + 4 * lane, lane % 2 == 0);
    cp_async_commit();
    if (lane >= 4 && lane < 8) cp_async_16(&s[lane][0], in + 1600 + 4 * lane, lane % 2 == 0);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (lane < 16) out[576 + lane] = s[lane / 4][lane % 4];
    __syncthreads();
    cp_async_wait<0>();
    __syncthreads();
    out[608 + lane] = s[lane / 4][lane % 4];
}
"#;

#[test]
fn the_emulated_tensor_core_primitives_follow_the_ptx_definitions() {
    let Some(cxx) = compiler() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(43);
    let mut input = vec![0.0f32; 1632];
    let mut want_mma = vec![0.0f32; 384];
    for (q, elem) in [Elem::Bf16, Elem::F16, Elem::F32].into_iter().enumerate() {
        let kn = if elem == Elem::F32 { 8 } else { 16 };
        let value = |x: f32| -> (f32, u32) {
            match elem {
                Elem::Bf16 => {
                    let h = half::bf16::from_f32(x);
                    (h.to_f32(), u32::from(h.to_bits()))
                }
                Elem::F16 => {
                    let h = half::f16::from_f32(x);
                    (h.to_f32(), u32::from(h.to_bits()))
                }
                Elem::F32 => (tf32(x), tf32(x).to_bits()),
                Elem::U8 => unreachable!("no tensor-core GEMM of bytes"),
            }
        };
        let a: Vec<(f32, u32)> = random(&mut rng, 256).into_iter().map(value).collect();
        let b: Vec<(f32, u32)> = random(&mut rng, 128).into_iter().map(value).collect();
        let c = random(&mut rng, 128);
        let base = 512 * q;
        for (i, &(_, bits)) in a.iter().chain(&b).enumerate() {
            input[base + i] = f32::from_bits(bits);
        }
        input[base + 384..base + 512].copy_from_slice(&c);
        for row in 0..16 {
            for col in 0..8 {
                let s: f64 = (0..kn)
                    .map(|k| f64::from(a[row * 16 + k].0) * f64::from(b[k * 8 + col].0))
                    .sum();
                want_mma[128 * q + row * 8 + col] = (s + f64::from(c[row * 8 + col])) as f32;
            }
        }
    }
    // tf32 rounding: ties (half an ulp of tf32) go away from zero, overflow goes to
    // infinity, then 32 random values.
    let special: [(u32, u32); 10] = [
        (0x3f80_1000, 0x3f80_2000), // 1 + 2^-11: a tie, away from zero (RNE would give 1)
        (0xbf80_1000, 0xbf80_2000),
        (0x3f80_0fff, 0x3f80_0000),
        (0x3f80_3000, 0x3f80_4000),
        (0x7f7f_ffff, 0x7f80_0000), // f32::MAX rounds to infinity
        (0x7f80_0000, 0x7f80_0000),
        (0x0000_1000, 0x0000_2000), // subnormals round the same way
        (0x0000_0fff, 0x0000_0000),
        (0x8000_0000, 0x8000_0000),
        (0x4049_0fdb, 0x4049_0000), // pi
    ];
    let mut tf_in: Vec<u32> = special.iter().map(|s| s.0).collect();
    tf_in.resize(32, 0x3f80_0000);
    tf_in.extend(random(&mut rng, 32).iter().map(|x| x.to_bits()));
    for (i, &v) in tf_in.iter().enumerate() {
        input[1536 + i] = f32::from_bits(v);
    }
    let chunks = random(&mut rng, 32);
    input[1600..1632].copy_from_slice(&chunks);

    let out0 = vec![f32::NAN; 640];
    let r = emulate_source(
        &cxx,
        "primitives",
        &alexnet::codegen::kernels::spec::inline_headers(PRIMITIVES, &cuda::header).unwrap(),
        "primitives(B(0), B(1))",
        [1, 1, 1],
        32,
        &[("in", &input), ("out", &out0)],
    );
    let out = &r["out"];
    for (q, name) in ["bf16", "f16", "tf32"].iter().enumerate() {
        let got = &out[128 * q..128 * (q + 1)];
        let want = &want_mma[128 * q..128 * (q + 1)];
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "mma {name}: D({}, {}) = {g}, want {w}",
                i / 8,
                i % 8
            );
        }
    }
    let bits: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
    for (i, &(x, want)) in special.iter().enumerate() {
        assert_eq!(bits[384 + i], want, "to_tf32({x:#010x})");
        assert_eq!(tf32(f32::from_bits(x)).to_bits(), want, "the test's tf32");
    }
    for (i, &x) in tf_in.iter().enumerate() {
        assert_eq!(bits[384 + i], tf32(f32::from_bits(x)).to_bits());
    }
    for lane in 0..32u32 {
        for i in 0..4u32 {
            let (row, word) = (lane / 4, lane % 4);
            let lo = 1000 + 64 * i + 8 * row + 2 * word;
            assert_eq!(
                bits[(448 + 4 * lane + i) as usize],
                lo | (lo + 1) << 16,
                "ldmatrix: lane {lane} register {i}"
            );
        }
    }
    let landed = |j: usize| -> Vec<f32> {
        if j.is_multiple_of(2) {
            chunks[4 * j..4 * j + 4].to_vec()
        } else {
            vec![0.0; 4]
        }
    };
    let first: Vec<f32> = (0..4).flat_map(landed).collect();
    assert_eq!(
        out[576..592],
        first[..],
        "cp.async: the first group after wait<1>"
    );
    let all: Vec<f32> = (0..8).flat_map(landed).collect();
    assert_eq!(
        out[608..640],
        all[..],
        "cp.async: both groups after wait<0>"
    );
}

/// The kernels' own rounding of f32 to f16 and to bf16 (`f16_bits`, `bf16_bits` in
/// `gemm_mma.cuh`, which `--precision f16` and `bf16` stage their operands with), bit for
/// bit against the `half` crate's on the cases that matter: ties either way, the largest
/// f16 and the first values that overflow to infinity, f16's smallest normal, subnormals
/// and the values that round to zero, NaN and infinities; then random values over many
/// magnitudes.
#[test]
fn the_kernels_round_to_f16_and_bf16_as_the_half_crate() {
    use rand::Rng;
    let Some(cxx) = compiler() else { return };
    let mut values: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        65504.0,
        65519.0,
        65520.0,
        -65520.0,
        1e6,
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        6.103_515_6e-5, // 2^-14, the smallest normal f16
        6.097_555e-5,   // 1023 * 2^-24, the largest subnormal, exactly
        5.960_464_5e-8, // 2^-24, the smallest subnormal
        2.980_232_2e-8, // 2^-25: a tie with zero, which is even
        2.980_233e-8,   // just above: the smallest subnormal
        1e-9,
        1e-30,
        f32::MIN_POSITIVE,
        1.0e-44,
        1.000_488_3,                 // 1 + 2^-11: an f16 tie, to even (1)
        1.001_464_8,                 // 1 + 3 * 2^-11: a tie, to even (1 + 2^-9)
        1.003_906_3,                 // 1 + 2^-8: a bf16 tie
        8.940_697e-8,                // 1.5 * 2^-24: a subnormal tie, to even (2 units)
        f32::from_bits(0x387f_f000), // 1023.5 * 2^-24: a tie that carries into 2^-14
        f32::from_bits(0x387f_ffff), // just below 2^-14: rounds up to it
        f32::from_bits(0x3420_0000), // 2.5 * 2^-24: a subnormal tie, down to even (2)
        f32::from_bits(0x3fff_f000), // a tie below 2 that carries into the next binade
        f32::from_bits(0x477f_efff), // just below 65520, the tie: 65504
        f32::from_bits(0x7f80_0001), // a signalling NaN
        f32::from_bits(0xff80_0001), // a negative one
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(71);
    for _ in 0..400 {
        let m: f32 = rng.random_range(1.0..2.0);
        let e: i32 = rng.random_range(-30..20);
        let sign = if rng.random::<bool>() { -1.0 } else { 1.0 };
        values.push(sign * m * 2f32.powi(e));
    }
    let src = alexnet::codegen::kernels::spec::inline_headers(
        r#"#include "gemm_mma.cuh"
extern "C" __global__ void rounding(const float* __restrict__ in, float* __restrict__ out, int n) {
    unsigned* res = reinterpret_cast<unsigned*>(out);
    for (int i = 0; i < n; ++i) res[i] = f16_bits(in[i]) | (bf16_bits(in[i]) << 16);
}
"#,
        &cuda::header,
    )
    .unwrap();
    let out0 = vec![0.0f32; values.len()];
    let r = emulate_source(
        &cxx,
        "rounding",
        &src,
        &format!("rounding(B(0), B(1), {})", values.len()),
        [1, 1, 1],
        1,
        &[("in", &values), ("out", &out0)],
    );
    for (v, got) in values.iter().zip(&r["out"]) {
        let bits = got.to_bits();
        let (f16, bf16) = (bits & 0xffff, bits >> 16);
        let (want16, wantb) = (half::f16::from_f32(*v), half::bf16::from_f32(*v));
        if v.is_nan() {
            // A quiet NaN with the value's sign (payloads may differ).
            assert!(half::f16::from_bits(f16 as u16).is_nan(), "f16 of {v}");
            assert!(half::bf16::from_bits(bf16 as u16).is_nan(), "bf16 of {v}");
            let sign = v.to_bits() >> 31;
            assert_eq!((f16 >> 15, bf16 >> 15), (sign, sign), "the sign of {v}");
            continue;
        }
        assert_eq!(
            f16 as u16,
            want16.to_bits(),
            "f16 of {v:e} ({:#010x})",
            v.to_bits()
        );
        assert_eq!(
            wantb.to_bits(),
            bf16 as u16,
            "bf16 of {v:e} ({:#010x})",
            v.to_bits()
        );
    }
}

// ---- Input augmentation ------------------------------------------------------------------

/// The generated augmentation kernel cuts, from a batch of prepared 8-bit images, the very
/// patches the CPU's transforms cut from the same images: the training patches of a seed
/// and epoch (same crops, mirrors and colour shifts: the draws are the `Preprocess`'s),
/// the centre crop and the ten crops, bit for bit.
#[test]
fn the_augmentation_kernel_cuts_the_cpu_s_patches_bit_for_bit() {
    use alexnet::codegen::kernels::spec::c_float;
    use alexnet::ir::Shape;
    use alexnet::runtime::data::patch::{Cut, Draw};
    use rand::Rng;
    let Some(cxx) = compiler() else { return };
    let (side, crop, n) = (13, (9, 7), 3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let images: Vec<u8> = (0..n * side * side * 3).map(|_| rng.random()).collect();
    let pre = common::augment_preprocess(side, crop, &mut rng);
    // Image i as the transforms take it: CHW, 0..255 as f32.
    let chw = |i: usize| -> Vec<f32> {
        let img = &images[i * side * side * 3..(i + 1) * side * side * 3];
        (0..3)
            .flat_map(|c| (0..side * side).map(move |p| f32::from(img[p * 3 + c])))
            .collect()
    };
    let (seed, epoch) = (4, 2);
    let train: Vec<Draw> = (0..n as u64)
        .map(|i| pre.train_draw(seed, epoch, i))
        .collect();
    assert!(train.iter().any(|d| d.flip) && train.iter().any(|d| !d.flip));
    let cases: [(&str, Vec<Draw>, usize, Cut, _); 3] = [
        (
            "train",
            train,
            1,
            pre.train_cut(),
            pre.train_transform(seed, epoch),
        ),
        (
            "centre",
            vec![Draw::centre(side, crop); n],
            1,
            pre.eval_cut(),
            pre.eval_transform(),
        ),
        (
            "ten crops",
            (0..n).flat_map(|_| Draw::ten_crops(side, crop)).collect(),
            10,
            pre.eval_cut(),
            pre.ten_crop_transform(),
        ),
    ];
    // The driver's buffers are float words: the bytes four to a word.
    let mut padded = images.clone();
    padded.resize(images.len().div_ceil(4) * 4, 0);
    let words: Vec<f32> = padded
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    for (what, draws, per_image, cut, transform) in cases {
        let want: Vec<f32> = (0..n).flat_map(|i| transform(chw(i), i as u64)).collect();
        let batch = cut.batch(&images, &draws, per_image).unwrap();
        let f = cut.scale;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&batch),
            bits(&want),
            "{what}: Cut::batch and the transform"
        );
        let k = cuda::augment::augment(Shape::new(3, crop.0, crop.1), side, per_image).unwrap();
        let flat: Vec<f32> = draws
            .iter()
            .flat_map(|d| d.to_kernel(side, crop).unwrap())
            .collect();
        let out = vec![f32::NAN; want.len()];
        let scalars = [
            ("units", c_float(f.units)),
            ("scale_r", c_float(f.scale[0])),
            ("scale_g", c_float(f.scale[1])),
            ("scale_b", c_float(f.scale[2])),
        ];
        let got = emulate(
            &cxx,
            &k,
            n,
            &[
                ("images", &words),
                ("draws", &flat),
                ("mean", &pre.mean),
                ("out", &out),
            ],
            &scalars,
        );
        assert_eq!(
            bits(&got["out"]),
            bits(&want),
            "{what}: the kernel and the CPU"
        );
    }
}

/// `kernels` says where each stage's tile came from: a table's entry the layer takes
/// ("tuned"), one it refuses (a tensor-core tile for an f32 layer: the heuristic's
/// kernels are generated, and the report says so), or no entry (the heuristic).
#[test]
fn tile_sources_say_whether_the_layer_took_the_tables_tile() {
    use alexnet::codegen::kernels::spec::MmaTile;
    use alexnet::codegen::kernels::tuning::{Choice, Entry, Source, Table};
    use alexnet::ir::Precision;
    let plan: Plan =
        alexnet::plan_from_str("T<8, 12, 12> { conv(40, 3, pad = 1, groups = 2) relu fc(40) }")
            .unwrap();
    let tunables = cuda::tunable(&plan, Precision::F32);
    assert_eq!(tunables.len(), 2);
    // Not the heuristic's own tile (the first candidate), so its kernels differ.
    let taken = tunables[0].candidates[1].0;
    let refused = Choice::Mma {
        tile: MmaTile {
            bm: 64,
            bn: 64,
            bk: 32,
            warps_m: 2,
            warps_n: 2,
            stages: 4,
        },
        split: 1,
    };
    let mut table = Table::default();
    for (t, choice) in tunables.iter().zip([taken, refused]) {
        table.set(Entry {
            key: t.key.clone(),
            precision: Precision::F32,
            batch: 128,
            choice,
            ms: 1.0,
            heuristic_ms: 1.0,
        });
    }
    let sources = cuda::tile_sources_in(&plan, Precision::F32, Some(&table), "sm_test");
    let got: Vec<Source> = sources.into_iter().map(|(_, _, s)| s).collect();
    assert_eq!(
        got,
        [
            Source::Table("sm_test".into()),
            Source::Refused("sm_test".into())
        ]
    );
    let none = cuda::tile_sources_in(&plan, Precision::F32, None, "sm_test");
    assert!(none.iter().all(|(_, _, s)| *s == Source::Heuristic));
}

/// Tiles from a tuning table (issue 17) change the generated kernels (their names and
/// launch geometry say so), not the function they compute: a table with a tile other than
/// the heuristic's for a grouped convolution and a fully connected layer, in f32 (SIMT), tf32
/// (a 64 x 64 tensor-core tile) and bf16 (16-row tiles, split-K in 3), and each kernel under
/// emulation against the CPU.
#[test]
fn tuned_tiles_compute_the_same_function_under_emulation() {
    use alexnet::codegen::kernels::spec::{MmaTile, Tile};
    use alexnet::codegen::kernels::tuning::{Choice, Entry, Table};
    use alexnet::ir::Precision;
    use alexnet::runtime::prelude::*;
    let Some(cxx) = compiler() else { return };
    let conv: Plan =
        alexnet::plan_from_str("T<8, 12, 12> { conv(40, 3, pad = 1, groups = 2) relu }").unwrap();
    let fc: Plan = alexnet::plan_from_str("T<64, 3, 3> { fc(40) relu }").unwrap();
    let (conv_key, fc_key) = ("conv c8x12x12 o40 r3 s1 p1 g2", "fc i576 o40");
    let simt = |tm, rm, tn, rn, tk| Choice::Simt(Tile { tm, rm, tn, rn, tk });
    let mma = |bm, bn, warps_m, warps_n, split| Choice::Mma {
        tile: MmaTile {
            bm,
            bn,
            bk: 32,
            warps_m,
            warps_n,
            stages: 4,
        },
        split,
    };
    let mut table = Table::default();
    for (key, precision, choice) in [
        (conv_key, Precision::F32, simt(64, 4, 32, 4, 16)),
        (fc_key, Precision::F32, simt(64, 4, 128, 8, 16)),
        (conv_key, Precision::Tf32, mma(64, 64, 2, 2, 1)),
        (fc_key, Precision::Bf16, mma(16, 128, 1, 4, 3)),
    ] {
        table.set(Entry {
            key: key.into(),
            precision,
            batch: 128,
            choice,
            ms: 1.0,
            heuristic_ms: 1.0,
        });
    }
    let batch = 5;
    let mut rng = rand::rngs::StdRng::seed_from_u64(61);
    for (plan, precision, named, block) in [
        (&conv, Precision::F32, "_t64x32_r4x4k16", 128),
        (&fc, Precision::F32, "_t64x128_r4x8k16", 256),
        (&conv, Precision::Tf32, "_t64x64", 128),
        (&fc, Precision::Bf16, "_t16x128_s3", 128),
    ] {
        let kernels = cuda::generate_with(plan, Some(&table));
        let ks = kernels.forward_in(precision);
        let k = &ks[0];
        assert!(k.name().ends_with(named), "{precision}: {}", k.name());
        assert_eq!(k.launch.block, block, "{}", k.name());
        // Without the table, the heuristic's kernel.
        let plain = cuda::generate_with(plan, None).forward_in(precision);
        assert_ne!(plain[0].name(), k.name());
        let params = common::random_params(plan, &mut rng);
        let (w, b) = (&params[0].data, &params[1].data);
        let x = random(&mut rng, batch * plan.input.len());
        let stage = plan.stages()[0];
        let mut want = vec![0.0f32; batch * plan.output().len()];
        Cpu::reference()
            .with_precision(if precision == Precision::Bf16 {
                Precision::Bf16
            } else {
                Precision::F32
            })
            .unwrap()
            .forward_stage(plan, stage, batch, &x, &[w, b], &mut want)
            .unwrap();
        let got = if ks.len() == 2 {
            emulate_split(&cxx, (k, &ks[1]), batch, 3, &x, w, b)
        } else {
            let y0 = vec![f32::NAN; want.len()];
            let bufs: Vec<(&str, &[f32])> = vec![("x", &x), ("w", w), ("bias", b), ("y", &y0)];
            emulate(&cxx, k, batch, &bufs, &[])["y"].clone()
        };
        // f32 and bf16 as the CPU computes them; tf32 within its rounding of f32.
        let tol = if precision == Precision::Tf32 {
            5e-3
        } else {
            1e-5
        };
        close(k.name(), &got, &want, tol);
    }
}
