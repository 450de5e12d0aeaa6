//! The machine's own ceilings, for the CPU bench's roofline: the cores' arithmetic peak
//! (AVX-512 FMAs, and AVX512_BF16's dot products where the CPU has them: [`peak_gflops`]),
//! the rate of the backend's matrix multiply on a large square product, and a STREAM-like
//! read bandwidth (what bounds a layer that streams its weights once, as fc6-fc8 do at
//! batch 1).

use std::time::Instant;

use rayon::prelude::*;

use super::gemm::{sgemm, Mat};

/// GFLOP/s of the backend's sgemm on a `1024 x 1024 x 1024` product with every thread of
/// rayon's pool, best of 5 after a warm-up.
pub fn gemm_gflops() -> f64 {
    const N: usize = 1024;
    let a: Vec<f32> = (0..N * N)
        .map(|i| ((i * 31) % 97) as f32 / 97.0 - 0.5)
        .collect();
    let b: Vec<f32> = (0..N * N)
        .map(|i| ((i * 17) % 89) as f32 / 89.0 - 0.5)
        .collect();
    let mut c = vec![0.0f32; N * N];
    let threads = rayon::current_num_threads();
    let secs = best_of_5(|| {
        sgemm(
            Mat::row_major(&a, N, N, N),
            Mat::row_major(&b, N, N, N),
            &mut c,
            N,
            false,
            threads,
        )
    });
    2.0 * (N * N * N) as f64 / secs / 1e9
}

/// GB/s of summing a 256 MiB buffer of f32 with every thread of rayon's pool, best of 5
/// after a warm-up.
pub fn read_bandwidth() -> f64 {
    const LEN: usize = 64 << 20;
    let buf: Vec<f32> = (0..LEN).map(|i| (i % 7) as f32).collect();
    let secs = best_of_5(|| {
        std::hint::black_box(buf.par_chunks(1 << 16).map(sum).sum::<f32>());
    });
    (LEN * 4) as f64 / secs / 1e9
}

/// The shortest of 5 timed runs of `f`, after one untimed run.
fn best_of_5(mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// A sum with 16 independent partial sums, so that it vectorises and the loads, not the
/// additions, set its speed.
fn sum(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (chunks, tail) = v.as_chunks::<16>();
    for c in chunks {
        for j in 0..16 {
            acc[j] += c[j];
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// An instruction whose peak rate [`peak_gflops`] measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peak {
    /// `vfmadd231ps zmm`: 16 f32 multiply-adds, 32 flops.
    Fma,
    /// `vdpbf16ps zmm`: 16 lanes of two bf16 products added to f32, 64 flops.
    Bf16Dot,
}

impl Peak {
    /// The instruction's name.
    pub fn name(self) -> &'static str {
        match self {
            Peak::Fma => "vfmadd231ps zmm",
            Peak::Bf16Dot => "vdpbf16ps zmm",
        }
    }
}

/// Independent accumulators per thread, so that the instruction's latency does not hide
/// its throughput.
const CHAINS: usize = 28;

/// GFLOP/s of `peak`'s instruction on `threads` threads at once, each stepping 28
/// independent accumulators `iters` times; `None` where the CPU lacks the instruction.
/// `cargo bench --bench cpu_peak` runs it long; `bench` briefly, for its roofline.
pub fn peak_gflops(peak: Peak, threads: usize, iters: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let (run, flops): (fn(usize) -> f32, f64) = match peak {
            Peak::Fma if is_x86_feature_detected!("avx512f") => {
                // SAFETY: AVX-512F was detected just above.
                (|n| unsafe { chains::fma(n) }, 32.0)
            }
            Peak::Bf16Dot
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bf16") =>
            {
                // SAFETY: AVX-512F and AVX512_BF16 were detected just above.
                (|n| unsafe { chains::dot_bf16(n) }, 64.0)
            }
            _ => return None,
        };
        let threads = threads.max(1);
        let t = Instant::now();
        let sums: Vec<f32> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|_| s.spawn(move || run(iters))).collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).collect()
        });
        std::hint::black_box(sums);
        Some((threads * CHAINS * iters) as f64 * flops / t.elapsed().as_secs_f64() / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (peak, threads, iters);
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod chains {
    use super::CHAINS;
    use std::arch::x86_64::*;

    /// [`CHAINS`] independent accumulators, each stepped `iters` times by `step`, then
    /// summed (so that nothing is optimised away). Inlined into its callers, whose target
    /// features compile it.
    #[inline(always)]
    fn chains(iters: usize, step: impl Fn(__m512) -> __m512) -> f32 {
        // SAFETY: only ever inlined into the AVX-512F functions below.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); CHAINS];
            for _ in 0..iters {
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
    pub unsafe fn fma(iters: usize) -> f32 {
        let (a, b) = (_mm512_set1_ps(1.0001), _mm512_set1_ps(0.9999));
        chains(iters, |x| _mm512_fmadd_ps(a, b, x))
    }

    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dot_bf16(iters: usize) -> f32 {
        // Pairs of bf16 ones and of 1 + 2^-7: each lane adds about 2 per instruction.
        // SAFETY: the bits of 32 bf16 values, reinterpreted.
        let a = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3f80_3f80)) };
        let b = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3f81_3f81)) };
        chains(iters, |x| _mm512_dpbf16_ps(x, a, b))
    }
}
