//! The generated CUDA kernels run without a GPU: each kernel's source is compiled as C++
//! by the host compiler with a small emulation of CUDA's execution model (blocks run one
//! after another; a block's threads are OS threads meeting at `__syncthreads` on a
//! barrier; `__shared__` arrays are shared by a block's threads), then compared with the
//! CPU backend. This checks the templates' index arithmetic, bounds checks and launch
//! geometry where no GPU is lent. It does not check anything specific to the GPU (warps,
//! memory model, speed); `tests/gpu.rs` does that on a GPU. Warp shuffles are emulated
//! through a buffer and a barrier per warp.
//!
//! Needs a C++20 compiler (`c++`, or `CXX`); skipped with a notice where there is none,
//! except under CI, where it fails.

mod common;

use std::path::PathBuf;
use std::process::Command;

use alexnet::ir::Plan;
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
static inline void __syncthreads() { block_barrier->arrive_and_wait(); }
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
"#;

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
// argv: grid.x grid.y grid.z block batch out_len out_path in_path [w_path b_path]
int main(int argc, char** argv) {
    gridDim = {(unsigned)atoi(argv[1]), (unsigned)atoi(argv[2]), (unsigned)atoi(argv[3])};
    blockDim = {(unsigned)atoi(argv[4]), 1, 1};
    int batch = atoi(argv[5]);
    std::vector<float> y(atol(argv[6]), NAN);
    std::vector<float> x = read(argv[8]), w, b;
    if (argc > 10) { w = read(argv[9]); b = read(argv[10]); }
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
    FILE* f = std::fopen(argv[7], "wb");
    std::fwrite(y.data(), 4, y.size(), f);
    std::fclose(f);
}
"#;

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

/// Runs every kernel of a plan's first stage under emulation and compares with the CPU.
fn check(cxx: &str, src: &str, batch: usize) {
    let plan: Plan = alexnet::runtime::plan_from_str(src).unwrap();
    let cuda = alexnet_codegen::cuda::render(&plan);
    let k = &cuda.kernels[0];
    let mut rng = rand::rngs::StdRng::seed_from_u64(batch as u64 + src.len() as u64);
    let params = common::random_params(&plan, &mut rng);
    let s = plan.input;
    let x = random(&mut rng, batch * s.len());
    let model = Model::from_tensors(Cpu::new(), plan.clone(), params.clone()).unwrap();
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

    let dir = std::env::temp_dir().join(format!("alexnet-emu-{}-{}", std::process::id(), k.name));
    std::fs::create_dir_all(&dir).unwrap();
    let learned = !params.is_empty();
    let launch = if learned {
        format!("{}(x.data(), w.data(), b.data(), y.data(), batch)", k.name)
    } else {
        format!("{}(x.data(), y.data(), batch)", k.name)
    };
    let program = format!(
        "{PRELUDE}\n{}\n#define LAUNCH {launch}\n{MAIN}",
        cuda.kernel_sources[0]
    );
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
        "{src}: C++ compile failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (xin, yout) = (dir.join("x.bin"), dir.join("y.bin"));
    write(&xin, &x);
    let [gx, gy, gz] = k.grid(batch);
    let mut cmd = Command::new(&exe);
    cmd.args([
        gx.to_string(),
        gy.to_string(),
        gz.to_string(),
        k.block.to_string(),
        batch.to_string(),
        want.len().to_string(),
    ])
    .arg(&yout)
    .arg(&xin);
    if learned {
        let (win, bin) = (dir.join("w.bin"), dir.join("b.bin"));
        write(&win, &params[0].data);
        write(&bin, &params[1].data);
        cmd.arg(&win).arg(&bin);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{src}: emulated run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<f32> = std::fs::read(&yout)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{src} batch {batch}: {} left elements unwritten (NaN)",
        k.name
    );
    let err = rel_l2(&got, &want);
    assert!(
        err <= 1e-5,
        "{src} batch {batch}: {} differs from the CPU backend: relative L2 {err:.2e}",
        k.name
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
        ("T<1000, 1, 1> { softmax }", &[1, 3]),
        ("T<4, 2, 3> { softmax }", &[2]),
    ] {
        for &b in batches {
            check(&cxx, src, b);
        }
    }
}
