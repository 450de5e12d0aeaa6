//! The CPU backend's own matrix multiply, on operands laid out for an AVX-512 micro-kernel:
//! the convolutions' (direct and Winograd's) and fully connected layers' forward products,
//! in f32 ([`Arith::F32`], where the CPU has AVX-512F) and in bf16 ([`Arith::Bf16`]: in
//! `Precision::Bf16`, the fully connected layers' weights, and the convolutions' operands
//! where the kernel has `vdpbf16ps`; without it the convolutions keep their bf16-rounded
//! operands in f32 words on the f32 kernel).
//!
//! The layouts (BLIS's, with B the vector side):
//! - A (`m x k`: a convolution's filters, Winograd's transformed tiles, a fully connected
//!   layer's images), packed in blocks of [`MR`] rows, `[block][k][MR]` (in bf16 the
//!   values rounded to bf16 and K padded to even); or read where it is, row-major
//!   ([`AOperand::Rows`]: a convolution's filters, with no copy to keep fresh; Winograd's
//!   tiles); or, for `vdpbf16ps`, in pairs of K packed once ([`AOperand::Pairs`],
//!   [`pack_pairs`]: a convolution's filters in bf16);
//! - B (`k x n`: a convolution's im2col columns, Winograd's transformed filters, a fully
//!   connected layer's transposed weights) in panels of [`NR`] columns,
//!   `[panel][step][NR]` 32-bit words: in f32 a step is one row of B (the word is the
//!   value's bits), in bf16 two rows, both rounded to bf16 in one word (the even row in
//!   the low half): half the bytes to pack and stream. Packed whole once
//!   ([`pack_b`](layout::pack_b): a fully connected layer's weights), or gathered [`KC`]
//!   steps of one panel at a time just before the kernel reads them
//!   ([`BOperand::Gather`]: a convolution's im2col columns, which then never leave L1);
//!
//! rows, columns and K padded with zeros. The loop keeps [`KC`] steps of one B panel
//! (24 KiB) in L1 while every row block of A passes over it (with a single row block and
//! B packed, a fully connected layer at a small batch, each panel streams whole instead);
//! the micro-kernel holds an `MR x NR` tile of C in 24 registers, and adds the bias and
//! the ReLU as it stores the last block of K. Threads split the row blocks, or the panels
//! when B is gathered and has at least one panel per thread (each thread gathers only the
//! columns it computes).
//!
//! bf16 products are exact in f32 (while they stay normal f32 values), so the bf16 kernels
//! add each product to the f32 sum with one rounding, per pair of K the odd product first
//! and then the even one: the order, and the bits, of AVX512_BF16's `vdpbf16ps`, which
//! [`Kernel::Avx512Bf16`] uses where it issues at the FMA's rate (twice the flops: AMD's
//! Zen 4 and 5); [`Kernel::Avx512`] widens B to f32 in registers and uses FMAs (on the
//! Intel core this project measured, `vdpbf16ps` ran at half the FMA's flops). The
//! portable kernels (any CPU, or `ALEXNET_CPU_PACKED=portable`) compute the same sums in
//! the same order (f32 with `mul_add`, bf16 with a multiply and an add, exact products
//! rounding once either way): the same bits as the AVX-512 ones, except where a bf16
//! product leaves f32's normal range (below 2^-126 or above its largest value), which
//! the portable kernel rounds and the FMA does not, and where a value, a product or a
//! partial sum is subnormal, which `vdpbf16ps` flushes to zero.
//!
//! The only `unsafe` is the AVX-512 code (the micro-kernels, the gather of B and CPUID): its
//! intrinsics and pointer arithmetic, with every bound asserted before the call.
//!
//! Files: this one the operands and the loop around the micro-kernel ([`gemm`](fn@gemm):
//! blocks of K, panels, row blocks, and how threads share them); `layout.rs` packing and
//! gathering the operands; `tile.rs` the micro-kernels (main loop apart from the epilogue
//! that adds the bias and ReLU as C is stored); `narrow.rs` the fully connected layers'
//! product at batches up to 16; `tests.rs` every form against the definition.

use std::sync::OnceLock;

use rayon::prelude::*;

mod layout;
mod narrow;
#[cfg(test)]
mod tests;
mod tile;

use layout::gather_panel;
pub use layout::{pack_a, pack_b_transposed, pair_neighbours, Gather};
pub use narrow::{gemm_narrow, pack_narrow, NARROW};
use tile::Tile;

/// Rows of A per block (and of C per micro-kernel call).
pub const MR: usize = 8;
/// Columns of B per panel (three 16-lane vectors).
pub const NR: usize = 48;
/// Steps of K per block of the loop.
const KC: usize = 128;

/// A packed B is streamed a whole panel at a time for at most this many row blocks of A
/// (the first block reads each panel from memory, prefetching it, the second from L2).
const STREAMED_BLOCKS: usize = 2;

/// The arithmetic of the operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arith {
    /// f32 operands, f32 sums.
    F32,
    /// Operands rounded to bf16 (to nearest, ties to even), f32 sums.
    Bf16,
}

impl Arith {
    /// Values of K per step of B.
    const fn step(self) -> usize {
        match self {
            Arith::F32 => 1,
            Arith::Bf16 => 2,
        }
    }

    /// Steps along a K of `k`.
    pub fn steps(self, k: usize) -> usize {
        k.div_ceil(self.step())
    }

    /// Values of a packed A of `m x k`.
    pub fn a_len(self, m: usize, k: usize) -> usize {
        m.div_ceil(MR) * self.steps(k) * self.step() * MR
    }

    /// Words of a packed B of `k x n`.
    pub fn b_len(self, k: usize, n: usize) -> usize {
        n.div_ceil(NR) * self.steps(k) * NR
    }

    /// `x` as this arithmetic's operand.
    #[inline(always)]
    fn operand(self, x: f32) -> f32 {
        match self {
            Arith::F32 => x,
            Arith::Bf16 => round_bf16(x),
        }
    }
}

/// The bits of `x` rounded to bf16, to nearest with ties to even; a NaN stays a (quiet)
/// NaN. Without branches, so that the packing loops vectorise.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let quiet = (b >> 16) | 0x40;
    let nan = 0u32.wrapping_sub(u32::from(b & 0x7fff_ffff > 0x7f80_0000));
    (quiet & nan) | (rounded & !nan)
}

/// `x` rounded to bf16 (to nearest, ties to even), as an f32: a bf16 operand held in an
/// f32 word.
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits(bf16_bits(x) << 16)
}

/// Which micro-kernel computes the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512F FMAs (bf16 operands widened to f32 in registers).
    Avx512,
    /// AVX-512F FMAs for f32, AVX512_BF16's `vdpbf16ps` for bf16 products (two products
    /// of a pair of K into each f32 lane per instruction).
    Avx512Bf16,
    /// Plain Rust, on any CPU: the same bits as [`Kernel::Avx512`], much slower.
    Portable,
}

impl Kernel {
    /// The fastest this CPU runs: [`Kernel::Avx512Bf16`] where the CPU has AVX512_BF16 and
    /// its `vdpbf16ps` pays ([`dot_pays`]), otherwise [`Kernel::Avx512`] where it has
    /// AVX-512F, otherwise [`Kernel::Portable`]. `ALEXNET_CPU_PACKED=portable`, `fma`
    /// (AVX-512 FMAs only) or `dot` (`vdpbf16ps` wherever the CPU has it) overrides the
    /// choice.
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            let asked = std::env::var("ALEXNET_CPU_PACKED").unwrap_or_default();
            let order: &[Kernel] = match asked.as_str() {
                "portable" => &[Kernel::Portable],
                "fma" => &[Kernel::Avx512, Kernel::Portable],
                "dot" => &[Kernel::Avx512Bf16, Kernel::Avx512, Kernel::Portable],
                _ if dot_pays() => &[Kernel::Avx512Bf16, Kernel::Avx512, Kernel::Portable],
                _ => &[Kernel::Avx512, Kernel::Portable],
            };
            order
                .iter()
                .copied()
                .find(|k| k.available())
                .unwrap_or(Kernel::Portable)
        })
    }

    /// Whether this CPU runs this kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 => {
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512 | Kernel::Avx512Bf16 => false,
        }
    }

    /// Whether this is an AVX-512 kernel that this CPU runs (the f32 products, the
    /// gathers and the narrow product are the same in both).
    pub fn avx512(self) -> bool {
        self != Kernel::Portable && Kernel::Avx512.available()
    }

    /// Whether bf16 products run on `vdpbf16ps` (A then in pairs of K, [`pair_a`]).
    pub fn dots(self) -> bool {
        self == Kernel::Avx512Bf16 && self.available()
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "AVX-512 micro-kernel",
            Kernel::Avx512Bf16 => "AVX-512 micro-kernel with AVX512_BF16 dot products",
            Kernel::Portable => "portable kernel",
        }
    }
}

/// Whether AVX512_BF16's `vdpbf16ps` beats widening bf16 to f32 for FMAs: on AMD's cores
/// (Zen 4 and 5) it issues at the FMA's rate, two products per lane, so twice the flops
/// (`cargo bench --bench cpu_peak` on Zen 5: 447 against 222 GFLOP/s per core); on the
/// Intel core this project measured (Sapphire Rapids' generation) it ran at half the
/// FMA's flops, where widening wins.
fn dot_pays() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID leaf 0 exists on every x86-64 CPU.
        #[allow(unused_unsafe)]
        let id = unsafe { std::arch::x86_64::__cpuid(0) };
        let vendor: Vec<u8> = [id.ebx, id.edx, id.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        vendor == b"AuthenticAMD"
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Steps `s0..s0 + kc` of the K of a bf16 A (`m x k`) as pairs for `vdpbf16ps`:
/// `[block][step][MR]` words, each the even value of K in its low half and the odd one in
/// its high half (the layout of B's words), rows beyond `m` and K beyond `k` zero. Rows
/// read in place are rounded to bf16 here; `pack_a`'s values already are. A that is
/// already in pairs is read where it is, never through here.
fn pair_a(a: AOperand<'_>, (m, k): (usize, usize), (s0, kc): (usize, usize), out: &mut Vec<u32>) {
    let blocks = m.div_ceil(MR);
    out.clear();
    out.resize(blocks * kc * MR, 0);
    match a {
        AOperand::Packed(p) => {
            // The f32 pairs of `pack_a`: per step the even row's MR values, then the odd's.
            let steps = Arith::Bf16.steps(k);
            for (blk, ob) in out.chunks_mut(kc * MR).enumerate() {
                let src = &p[(blk * steps + s0) * 2 * MR..][..kc * 2 * MR];
                pair_packed(src, ob);
            }
        }
        AOperand::Pairs(_) => unreachable!("pairs are read in place"),
        AOperand::Rows { data, ld } => {
            for (blk, ob) in out.chunks_mut(kc * MR).enumerate() {
                for r in 0..MR.min(m - blk * MR) {
                    let row = &data[(blk * MR + r) * ld..][..k];
                    let (p0, p1) = (2 * s0, (2 * (s0 + kc)).min(k));
                    pair_row(&row[p0..p1], &mut ob[r..]);
                }
            }
        }
    }
}

crate::cpu::simd::wide! {
    /// `pack_a`'s f32 pairs (already rounded) as words, step by step.
    fn pair_packed(src: &[f32], out: &mut [u32]) {
        for (words, step) in out.chunks_exact_mut(MR).zip(src.chunks_exact(2 * MR)) {
            let (even, odd) = step.split_at(MR);
            for ((w, &e), &o) in words.iter_mut().zip(even).zip(odd) {
                *w = e.to_bits() >> 16 | (o.to_bits() & 0xffff_0000);
            }
        }
    }
}

crate::cpu::simd::wide! {
    /// One row of A's values (`2 kc` or fewer, rounded here) into every [`MR`]th word of
    /// `out`.
    fn pair_row(row: &[f32], out: &mut [u32]) {
        for (s, pair) in row.chunks(2).enumerate() {
            let odd = pair.get(1).map_or(0, |&v| bf16_bits(v));
            out[s * MR] = bf16_bits(pair[0]) | odd << 16;
        }
    }
}

/// What is done to C as the last block of K is added: a bias per row, then ReLU.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub relu: bool,
}

/// Whether `len` values hold `count` runs of `run` values `stride` apart (no runs: always),
/// with no overflow in the arithmetic.
fn holds(len: usize, count: usize, stride: usize, run: usize) -> bool {
    count == 0
        || (count - 1)
            .checked_mul(stride)
            .and_then(|x| x.checked_add(run))
            .is_some_and(|need| need <= len)
}

/// A of a product (`m x k`: a convolution's filters, a fully connected layer's images).
#[derive(Clone, Copy)]
pub enum AOperand<'a> {
    /// Packed by [`pack_a`] in the product's arithmetic.
    Packed(&'a [f32]),
    /// Read where it is: row-major, leading dimension `ld`. Nothing is copied, so nothing
    /// can go stale when training changes the filters between calls, and no call pays to
    /// compare a copy with them (in bf16 each block of K is rounded and packed as the
    /// product reaches it).
    Rows { data: &'a [f32], ld: usize },
    /// In bf16, for [`Kernel::dots`] only: pairs of K packed once by [`pack_pairs`] (a
    /// convolution's filters, which would otherwise be paired again on every call).
    Pairs(&'a [u32]),
}

/// A (`m x k`, row-major, leading dimension `ld`) rounded to bf16 and packed in pairs of
/// K for `vdpbf16ps` ([`AOperand::Pairs`]): `[block][step][MR]` words, the even value of K
/// in the low half.
pub fn pack_pairs(a: &[f32], m: usize, k: usize, ld: usize) -> Vec<u32> {
    assert!(
        k > 0 && ld >= k && holds(a.len(), m, ld, k),
        "pack_pairs: A too short"
    );
    let mut out = Vec::new();
    let rows = AOperand::Rows { data: a, ld };
    pair_a(rows, (m, k), (0, Arith::Bf16.steps(k)), &mut out);
    out
}

impl<'a> AOperand<'a> {
    /// The rows from `m0` on (`m0` a multiple of [`MR`]).
    fn rows_from(self, arith: Arith, k: usize, m0: usize) -> AOperand<'a> {
        match self {
            AOperand::Packed(a) => AOperand::Packed(&a[m0 / MR * arith.a_len(MR, k)..]),
            AOperand::Rows { data, ld } => AOperand::Rows {
                data: &data[m0 * ld..],
                ld,
            },
            AOperand::Pairs(p) => AOperand::Pairs(&p[m0 * arith.steps(k)..]),
        }
    }

    /// Block `blk`'s values from step `s0` on, the stride between its rows and the stride
    /// between steps.
    fn tile(self, arith: Arith, k: usize, blk: usize, s0: usize) -> (&'a [f32], usize, usize) {
        match self {
            AOperand::Packed(a) => {
                let step = arith.step() * MR;
                (&a[(blk * arith.steps(k) + s0) * step..], 1, step)
            }
            AOperand::Rows { data, ld } => (&data[blk * MR * ld + s0..], ld, 1),
            // Read as pairs (`rows`), never as values.
            AOperand::Pairs(_) => (&[], 1, 2 * MR),
        }
    }
}

/// B of a product (`k x n`: a convolution's im2col columns, a fully connected layer's
/// transposed weights).
#[derive(Clone, Copy)]
pub enum BOperand<'a> {
    /// Packed by [`pack_b`](layout::pack_b) or [`pack_b_transposed`].
    Packed(&'a [u32]),
    /// Gathered [`KC`] steps of one panel at a time into a buffer on the stack, just before
    /// the micro-kernel reads them (a convolution's im2col columns are made where they are
    /// used, in L1, and never stored whole); in bf16 two rows per step, rounded as they
    /// are paired.
    Gather(Gather<'a>),
}

/// The operands of one product (`m x k` times `k x n`) in `arith`.
#[derive(Clone, Copy)]
pub struct Operands<'a> {
    pub arith: Arith,
    pub a: AOperand<'a>,
    pub b: BOperand<'a>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

impl Operands<'_> {
    /// Panics unless the operands hold every value the product reads.
    fn check(&self) {
        let Operands { arith, m, n, k, .. } = *self;
        assert!(k > 0, "packed gemm: an empty K");
        match self.a {
            AOperand::Packed(a) => {
                assert!(a.len() >= arith.a_len(m, k), "packed gemm: A too short")
            }
            AOperand::Rows { data, ld } => {
                assert!(
                    ld >= k && holds(data.len(), m, ld, k),
                    "packed gemm: A too short"
                );
            }
            AOperand::Pairs(p) => {
                assert!(arith == Arith::Bf16, "packed gemm: pairs of A in {arith:?}");
                assert!(
                    p.len() >= m.div_ceil(MR) * arith.steps(k) * MR,
                    "packed gemm: A too short"
                );
            }
        }
        match self.b {
            BOperand::Packed(b) => {
                assert!(b.len() >= arith.b_len(k, n), "packed gemm: B too short")
            }
            BOperand::Gather(g) => {
                assert!(
                    g.rows.len() == k && g.cols.len() == n,
                    "packed gemm: B's gather is not k x n"
                );
                g.check();
            }
        }
    }
}

/// `c = a * b` then the epilogue: `c` row-major with leading dimension `ldc` (its first
/// row the first of `a`). With `threads > 1` the panels of a gathered B (when there are
/// at least as many panels as threads), or else the row blocks, are split between the threads (each value's sum is the same whatever the
/// split).
pub fn gemm(
    kernel: Kernel,
    ops: Operands<'_>,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue<'_>,
    threads: usize,
) {
    let Operands { arith, m, n, k, .. } = ops;
    if m == 0 || n == 0 {
        return;
    }
    ops.check();
    assert!(
        kernel.dots() || !matches!(ops.a, AOperand::Pairs(_)),
        "packed gemm: pairs of A for a kernel without bf16 dot products"
    );
    assert!(
        ldc >= n && holds(c.len(), m, ldc, n),
        "packed gemm: C too short"
    );
    if let Some(bias) = ep.bias {
        assert!(bias.len() >= m, "packed gemm: bias too short");
    }
    let (blocks, panels) = (m.div_ceil(MR), n.div_ceil(NR));
    if let BOperand::Gather(gather) = ops.b {
        if threads > 1 && panels >= threads {
            // Each thread gathers B only for the panels it computes: the columns are split
            // (a row split would have every thread gather all of B). With fewer panels
            // than threads the rows are split, so that no thread idles.
            return by_columns(kernel, ops, gather, c, ldc, ep, threads);
        }
    }
    if threads <= 1 || blocks < 2 {
        rows(kernel, ops, c, ldc, ep);
        return;
    }
    let rows_per = blocks.div_ceil(threads) * MR;
    c.par_chunks_mut(rows_per * ldc)
        .enumerate()
        .with_min_len(1)
        .for_each(|(i, cc)| {
            let m0 = i * rows_per;
            if m0 >= m {
                return;
            }
            let mi = rows_per.min(m - m0);
            let ep = Epilogue {
                bias: ep.bias.map(|b| &b[m0..m0 + mi]),
                relu: ep.relu,
            };
            let ops = Operands {
                a: ops.a.rows_from(arith, k, m0),
                m: mi,
                ..ops
            };
            rows(kernel, ops, cc, ldc, ep);
        });
}

/// [`gemm`](fn@gemm) with the panels of B split between `threads` threads, each computing its
/// columns of C into its part of a scratch buffer, then copied into `c` a row at a time.
fn by_columns(
    kernel: Kernel,
    ops: Operands<'_>,
    gather: Gather<'_>,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue<'_>,
    threads: usize,
) {
    let (m, n) = (ops.m, ops.n);
    let per = n.div_ceil(NR).div_ceil(threads) * NR;
    with_scratch(m * n, |scratch| {
        // Part `i`: columns `i * per..` of C, row-major with its own width.
        let mut parts: Vec<(usize, &mut [f32])> = Vec::new();
        let mut rest = scratch;
        for n0 in (0..n).step_by(per) {
            let (part, tail) = rest.split_at_mut(m * per.min(n - n0));
            parts.push((n0, part));
            rest = tail;
        }
        parts.par_iter_mut().with_min_len(1).for_each(|(n0, t)| {
            let ni = t.len() / m;
            let b = Gather {
                cols: &gather.cols[*n0..*n0 + ni],
                ..gather
            };
            let part = Operands {
                b: BOperand::Gather(b),
                n: ni,
                ..ops
            };
            rows(kernel, part, t, ni, ep);
        });
        c.par_chunks_mut(ldc)
            .take(m)
            .enumerate()
            .for_each(|(r, row)| {
                for (n0, t) in &parts {
                    let ni = t.len() / m;
                    row[*n0..n0 + ni].copy_from_slice(&t[r * ni..(r + 1) * ni]);
                }
            });
    });
}

thread_local! {
    /// [`by_columns`]'s scratch buffer, and Winograd's (`cpu/winograd.rs`, one item at a
    /// time), kept between calls: a fresh one (1.2 MB for AlexNet's conv1) cost its
    /// zeroing and page faults every time.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer, `len` values long (its contents whatever the
/// last user left: every value is written before it is read).
pub(crate) fn with_scratch(len: usize, f: impl FnOnce(&mut [f32])) {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (rayon may run another job here while this one waits
        // for its parts): a buffer of its own.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// [`gemm`](fn@gemm) on this thread.
fn rows(kernel: Kernel, ops: Operands<'_>, c: &mut [f32], ldc: usize, ep: Epilogue<'_>) {
    let Operands { arith, m, n, k, .. } = ops;
    let steps = arith.steps(k);
    let (blocks, panels) = (m.div_ceil(MR), n.div_ceil(NR));
    // B's gathered steps (only for `BOperand::Gather`).
    let mut gathered = [0u32; KC * NR];
    // Blocks of K keep a slice of B in L1 while every row block passes over it. With one
    // or two row blocks (a fully connected layer at batches up to 2 MR) there is little
    // to keep, and a packed B is streamed a whole panel at a time instead, the first
    // block prefetching it and the second finding it in L2: one contiguous run per panel
    // for the prefetchers, where blocks of K made runs of 24 KiB a panel apart (fc6 in
    // bf16 at batch 1 read its weights at 15 GB/s that way, f32's rows at 25).
    let streamed = matches!(ops.b, BOperand::Packed(_)) && blocks <= STREAMED_BLOCKS;
    let kc_max = if streamed { steps } else { KC };
    // In bf16: A's block of K as pairs of words for `vdpbf16ps`, or (rows of A read in
    // place, for the FMA kernels) packed as `pack_a` packs it.
    let dots = arith == Arith::Bf16 && kernel.dots();
    let (mut pairs, mut a_block) = (Vec::new(), Vec::new());
    let mut s0 = 0;
    while s0 < steps {
        let kc = kc_max.min(steps - s0);
        let (first, last) = (s0 == 0, s0 + kc == steps);
        // The values of K this block covers.
        let (k0, k1) = (s0 * arith.step(), ((s0 + kc) * arith.step()).min(k));
        let rows_packed = match ops.a {
            AOperand::Rows { data, ld } if arith == Arith::Bf16 && !dots => {
                a_block.resize(arith.a_len(m, k1 - k0), 0.0);
                pack_a(arith, &data[k0..], m, k1 - k0, ld, &mut a_block);
                true
            }
            _ => false,
        };
        if dots && !matches!(ops.a, AOperand::Pairs(_)) {
            pair_a(ops.a, (m, k), (s0, kc), &mut pairs);
        }
        for pn in 0..panels {
            let bp: &[u32] = match ops.b {
                BOperand::Packed(b) => &b[(pn * steps + s0) * NR..][..kc * NR],
                BOperand::Gather(g) => {
                    let b = Gather {
                        rows: &g.rows[k0..k1],
                        ..g
                    };
                    gather_panel(kernel, arith, b, pn, &mut gathered[..kc * NR]);
                    &gathered[..kc * NR]
                }
            };
            let cols = NR.min(n - pn * NR);
            for blk in 0..blocks {
                let r = MR.min(m - blk * MR);
                let (a, a_row, a_step) = if rows_packed {
                    (&a_block[blk * kc * 2 * MR..], 1, 2 * MR)
                } else {
                    ops.a.tile(arith, k, blk, s0)
                };
                let tile = Tile {
                    a,
                    a_row,
                    a_step,
                    pairs: dots.then(|| match ops.a {
                        AOperand::Pairs(p) => &p[(blk * steps + s0) * MR..][..kc * MR],
                        _ => &pairs[blk * kc * MR..][..kc * MR],
                    }),
                    b: bp,
                    steps: kc,
                    c: &mut c[blk * MR * ldc + pn * NR..],
                    ldc,
                    rows: r,
                    cols,
                    first,
                    bias: if last {
                        ep.bias.map(|v| &v[blk * MR..blk * MR + r])
                    } else {
                        None
                    },
                    relu: last && ep.relu,
                    stream: streamed && blk == 0,
                };
                tile.run(arith, kernel);
            }
        }
        s0 += kc;
    }
}
