//! The CPU's arithmetic ceilings per core and for every core together: AVX-512 f32 FMAs
//! (`vfmadd231ps`) beside AVX512_BF16's dot product (`vdpbf16ps`, two bf16 products into
//! each f32 lane), each on 28 independent accumulators so that latency does not hide the
//! throughput. The evidence behind the bf16 micro-kernel's choice (cpu/packed/): on AMD's
//! Zen 5 `vdpbf16ps` gives twice the f32 FMA's flops and the kernel uses it; on the Intel
//! core measured before it gave half, and the kernel widens bf16 to f32 for FMAs there.
//! `cargo bench --bench cpu_peak`.

use std::time::Instant;

const CHAINS: usize = 28;
const ITERS: usize = 20_000_000;

#[cfg(target_arch = "x86_64")]
mod kernels {
    use super::{CHAINS, ITERS};
    use std::arch::x86_64::*;

    /// [`CHAINS`] independent accumulators, each stepped [`ITERS`] times by `step`, then
    /// summed (so that nothing is optimised away). Inlined into its callers, whose target
    /// features compile it.
    #[inline(always)]
    fn chains(step: impl Fn(__m512) -> __m512) -> f32 {
        // SAFETY: only ever inlined into the AVX-512F functions below.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); CHAINS];
            for _ in 0..ITERS {
                for x in acc.iter_mut() {
                    *x = step(*x);
                }
            }
            let s = acc
                .iter()
                .fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x));
            _mm512_reduce_add_ps(s)
        }
    }

    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma_f32() -> f32 {
        let (a, b) = (_mm512_set1_ps(1.0001), _mm512_set1_ps(0.9999));
        chains(|x| _mm512_fmadd_ps(a, b, x))
    }

    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dot_bf16() -> f32 {
        // Pairs of bf16 ones and of 1 + 2^-7: each lane adds about 2 per instruction.
        let a = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3f80_3f80));
        let b = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3f81_3f81));
        chains(|x| _mm512_dpbf16_ps(x, a, b))
    }
}

/// GFLOP/s of `run` on `threads` threads at once, `flops` per instruction.
fn rate(threads: usize, flops: f64, run: fn() -> f32) -> f64 {
    let t = Instant::now();
    let sums: Vec<f32> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads).map(|_| s.spawn(run)).collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    std::hint::black_box(sums);
    (threads * CHAINS * ITERS) as f64 * flops / t.elapsed().as_secs_f64() / 1e9
}

/// Prints `run`'s rate on one thread and on every core.
fn report(name: &str, flops: f64, run: fn() -> f32, cores: usize) {
    for threads in [1, cores] {
        let r = rate(threads, flops, run);
        println!("{name}, {threads} thread(s): {r:.0} GFLOP/s");
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if !is_x86_feature_detected!("avx512f") {
            println!("no AVX-512F on this CPU");
            return;
        }
        // SAFETY: AVX-512F was detected just above.
        let fma: fn() -> f32 = || unsafe { kernels::fma_f32() };
        report("vfmadd231ps zmm", 32.0, fma, cores);
        if !is_x86_feature_detected!("avx512bf16") {
            println!("no AVX512_BF16 on this CPU");
            return;
        }
        // SAFETY: AVX-512F and AVX512_BF16 were detected above.
        let dot: fn() -> f32 = || unsafe { kernels::dot_bf16() };
        report("vdpbf16ps zmm", 64.0, dot, cores);
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("x86-64 only");
}
