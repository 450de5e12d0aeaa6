//! The CPU backend's own matrix multiply, on operands laid out for an AVX-512 micro-kernel:
//! the convolutions' (direct and Winograd's) and fully connected layers' forward products,
//! in f32 ([`Arith::F32`], where the CPU has AVX-512F; in `Precision::Bf16` the
//! convolutions' operands rounded to bf16 and kept in f32 words) and in bf16
//! ([`Arith::Bf16`]: the fully connected layers' weights in `Precision::Bf16`).
//!
//! The layouts (BLIS's, with B the vector side):
//! - A (`m x k`: a convolution's filters, Winograd's transformed tiles, a fully connected
//!   layer's images), packed in blocks of [`MR`] rows, `[block][k][MR]` (in bf16 the
//!   values rounded to bf16 and K padded to even); or, in f32, read where it is,
//!   row-major ([`AOperand::Rows`]: a convolution's filters, with no copy to keep fresh;
//!   Winograd's tiles);
//! - B (`k x n`: a convolution's im2col columns, Winograd's transformed filters, a fully
//!   connected layer's transposed weights) in panels of [`NR`] columns, `[panel][step][NR]` 32-bit words: in f32 a step
//!   is one row of B (the word is the value's bits), in bf16 two rows, both rounded to
//!   bf16 in one word (the even row in the low half): half the bytes to pack and stream.
//!   Packed whole once ([`pack_b`](layout::pack_b): a fully connected layer's weights), or gathered
//!   [`KC`] steps of one panel at a time just before the kernel reads them, in f32 only
//!   ([`BOperand::Gather`]: a convolution's im2col columns, which then never leave L1);
//!
//! rows, columns and K padded with zeros. The loop keeps [`KC`] steps of one B panel
//! (24 KiB) in L1 while every row block of A passes over it (with a single row block and
//! B packed, a fully connected layer at a small batch, each panel streams whole instead); the micro-kernel holds an
//! `MR x NR` tile of C in 24 registers, and adds the bias and the ReLU as it stores the
//! last block of K. Threads split the row blocks, or the panels when B is gathered and
//! has at least one panel per thread (each thread gathers only the columns it computes).
//!
//! bf16 products are exact in f32 (while they stay normal f32 values), so the bf16 kernels
//! add each product to the f32 sum with one rounding, per pair of K the odd product first and then the even one (the order
//! of AVX512_BF16's `vdpbf16ps`; on this project's machine that instruction ran at half the
//! rate of f32 FMAs, so the kernel widens B to f32 in registers and uses FMAs instead). The
//! portable kernels (any CPU, or `ALEXNET_CPU_PACKED=portable`) compute the same sums in
//! the same order (f32 with `mul_add`, bf16 with a multiply and an add, exact products
//! rounding once either way): the same bits as the AVX-512 ones, except where a bf16
//! product leaves f32's normal range (below 2^-126 or above its largest value), which
//! the portable kernel rounds and the FMA does not.
//!
//! The only `unsafe` is the AVX-512 code (the micro-kernels and the gather of B): its
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
pub use layout::{pack_a, pack_b_transposed, Gather};
pub use narrow::{gemm_narrow, pack_narrow, NARROW};
use tile::Tile;

/// Rows of A per block (and of C per micro-kernel call).
pub const MR: usize = 8;
/// Columns of B per panel (three 16-lane vectors).
pub const NR: usize = 48;
/// Steps of K per block of the loop.
const KC: usize = 128;

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
    /// AVX-512F FMAs.
    Avx512,
    /// Plain Rust, on any CPU: the same bits, much slower.
    Portable,
}

impl Kernel {
    /// The fastest this CPU runs, unless `ALEXNET_CPU_PACKED=portable`.
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            if std::env::var("ALEXNET_CPU_PACKED").is_ok_and(|v| v == "portable") {
                return Kernel::Portable;
            }
            if Kernel::Avx512.available() {
                Kernel::Avx512
            } else {
                Kernel::Portable
            }
        })
    }

    /// Whether this CPU runs this kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512 => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "AVX-512 micro-kernel",
            Kernel::Portable => "portable kernel",
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
    /// Read where it is (f32 only): row-major, leading dimension `ld`. Nothing is copied,
    /// so nothing can go stale when training changes the filters between calls, and no
    /// call pays to compare a copy with them.
    Rows { data: &'a [f32], ld: usize },
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
    /// used, in L1, and never stored whole). f32 only: bf16 convolutions gather inputs
    /// already rounded to bf16 in f32 words.
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
                    arith == Arith::F32,
                    "packed gemm: rows of A read in place in {arith:?}"
                );
                assert!(
                    ld >= k && holds(data.len(), m, ld, k),
                    "packed gemm: A too short"
                );
            }
        }
        match self.b {
            BOperand::Packed(b) => {
                assert!(b.len() >= arith.b_len(k, n), "packed gemm: B too short")
            }
            BOperand::Gather(g) => {
                assert!(arith == Arith::F32, "packed gemm: B gathered in {arith:?}");
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
    // row block (a fully connected layer at batches up to MR) there is nothing to keep,
    // and a packed B is streamed a whole panel at a time instead: one contiguous run per
    // panel for the prefetchers, where blocks of K made runs of 24 KiB a panel apart
    // (fc6 in bf16 at batch 1 read its weights at 15 GB/s that way, f32's rows at 25).
    let kc_max = match ops.b {
        BOperand::Packed(_) if blocks == 1 => steps,
        _ => KC,
    };
    let mut s0 = 0;
    while s0 < steps {
        let kc = kc_max.min(steps - s0);
        let (first, last) = (s0 == 0, s0 + kc == steps);
        for pn in 0..panels {
            let bp: &[u32] = match ops.b {
                BOperand::Packed(b) => &b[(pn * steps + s0) * NR..][..kc * NR],
                BOperand::Gather(g) => {
                    // f32 (`Operands::check`): a step is one row of B.
                    let b = Gather {
                        rows: &g.rows[s0..s0 + kc],
                        ..g
                    };
                    gather_panel(kernel, b, pn, &mut gathered[..kc * NR]);
                    &gathered[..kc * NR]
                }
            };
            let cols = NR.min(n - pn * NR);
            for blk in 0..blocks {
                let r = MR.min(m - blk * MR);
                let (a, a_row, a_step) = ops.a.tile(arith, k, blk, s0);
                let tile = Tile {
                    a,
                    a_row,
                    a_step,
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
                };
                tile.run(arith, kernel);
            }
        }
        s0 += kc;
    }
}
