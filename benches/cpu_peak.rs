//! The CPU's arithmetic ceilings per core and for every core together: AVX-512 f32 FMAs
//! (`vfmadd231ps`) beside AVX512_BF16's dot product (`vdpbf16ps`, two bf16 products into
//! each f32 lane), each on 28 independent accumulators so that latency does not hide the
//! throughput. The evidence behind the bf16 micro-kernel's choice (cpu/packed/): on AMD's
//! Zen 5 `vdpbf16ps` gives twice the f32 FMA's flops and the kernel uses it; on the Intel
//! core measured before it gave half, and the kernel widens bf16 to f32 for FMAs there.
//! `cargo bench --bench cpu_peak`.

use alexnet::runtime::cpu::probe::{peak_gflops, Peak};

/// Steps of each accumulator per thread: about a second of work.
const ITERS: usize = 20_000_000;

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for peak in [Peak::Fma, Peak::Bf16Dot] {
        for threads in [1, cores] {
            match peak_gflops(peak, threads, ITERS) {
                Some(r) => println!("{}, {threads} thread(s): {r:.0} GFLOP/s", peak.name()),
                None => {
                    println!("{}: not on this CPU", peak.name());
                    break;
                }
            }
        }
    }
}
