//! The machine's own ceilings, for the CPU bench's roofline: the rate of the backend's
//! matrix multiply on a large square product (what a convolution or fully connected layer
//! can reach at best here) and a STREAM-like read bandwidth (what bounds a layer that
//! streams its weights once, as fc6-fc8 do at batch 1).

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
