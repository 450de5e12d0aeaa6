//! The CPU backend's own matrix multiply, on operands laid out for an AVX-512 micro-kernel:
//! the convolutions' and fully connected layers' forward products, in f32 ([`Arith::F32`],
//! where the CPU has AVX-512F) and in bf16 ([`Arith::Bf16`], `Precision::Bf16`).
//!
//! The layouts (BLIS's, with B the vector side):
//! - A (`m x k`: a convolution's filters, a fully connected layer's images), packed in
//!   blocks of [`MR`] rows, `[block][k][MR]` (in bf16 the values rounded to bf16 and K
//!   padded to even); or, in f32, read where it is, row-major ([`AOperand::Rows`]: a
//!   convolution's filters, with no copy to keep fresh);
//! - B (`k x n`: a convolution's im2col columns, a fully connected layer's transposed
//!   weights) in panels of [`NR`] columns, `[panel][step][NR]` 32-bit words: in f32 a step
//!   is one row of B (the word is the value's bits), in bf16 two rows, both rounded to
//!   bf16 in one word (the even row in the low half): half the bytes to pack and stream.
//!   Packed whole once ([`pack_b`]: a fully connected layer's weights), or gathered
//!   [`KC`] steps of one panel at a time just before the kernel reads them
//!   ([`BOperand::Gather`]: a convolution's im2col columns, which then never leave L1);
//!
//! rows, columns and K padded with zeros. The loop keeps [`KC`] steps of one B panel
//! (24 KiB) in L1 while every row block of A passes over it; the micro-kernel holds an
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

use std::sync::OnceLock;

use rayon::prelude::*;

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
            Arith::Bf16 => f32::from_bits(bf16_bits(x) << 16),
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

/// Packs A, row-major `m x k` with leading dimension `ld`, into `out`
/// ([`Arith::a_len`] values).
pub fn pack_a(arith: Arith, a: &[f32], m: usize, k: usize, ld: usize, out: &mut [f32]) {
    assert!(k > 0, "pack_a: an empty K");
    let kk = arith.steps(k) * arith.step();
    for (blk, ob) in out[..arith.a_len(m, k)].chunks_mut(kk * MR).enumerate() {
        for r in 0..MR {
            let row = blk * MR + r;
            if row >= m {
                (0..kk).for_each(|p| ob[p * MR + r] = 0.0);
                continue;
            }
            let src = &a[row * ld..row * ld + k];
            for (p, &v) in src.iter().enumerate() {
                ob[p * MR + r] = arith.operand(v);
            }
            (k..kk).for_each(|p| ob[p * MR + r] = 0.0);
        }
    }
}

/// A B of `rows.len() x cols.len()` whose element `(r, n)` is `src[rows[r] + cols[n]]`:
/// a row-major matrix (`rows[r] = r * ld`, `cols[n] = n`), or a convolution's im2col
/// matrix read from a zero-padded image (`rows[r]`: where filter tap `(c, ky, kx)` sits,
/// `cols[n]`: where output position `n`'s window starts), so that packing it is a
/// gather with no padding tests.
#[derive(Clone, Copy)]
pub struct Gather<'a> {
    pub src: &'a [f32],
    pub rows: &'a [u32],
    pub cols: &'a [u32],
}

impl Gather<'_> {
    /// Panics if an element lies outside `src`.
    /// Panics if an element lies outside `src`, or a column offset does not fit an `i32`
    /// (the AVX-512 gather's signed indices).
    fn check(&self) {
        let last = |v: &[u32]| v.iter().max().map_or(0, |&m| m as usize);
        let (r, c) = (last(self.rows), last(self.cols));
        assert!(
            c <= i32::MAX as usize,
            "packed: a column of B's gather lies beyond an i32 offset"
        );
        assert!(
            self.rows.is_empty() || self.cols.is_empty() || r + c < self.src.len(),
            "packed: an element of B's gather lies outside its source"
        );
    }
}

/// Packs B into `out` ([`Arith::b_len`] words), panel by panel (each written in order
/// while the part of the source it reads stays in cache), the panels in parallel when
/// `threads > 1`.
///
/// # Panics
/// If an element of `b` lies outside `b.src`.
pub fn pack_b(arith: Arith, b: Gather<'_>, out: &mut [u32], threads: usize) {
    let (k, n) = (b.rows.len(), b.cols.len());
    if k == 0 || n == 0 {
        return;
    }
    b.check();
    let steps = arith.steps(k);
    let panel = |(pi, op): (usize, &mut [u32])| pack_panel(arith, b, pi, op);
    let out = &mut out[..arith.b_len(k, n)];
    if threads > 1 {
        out.par_chunks_mut(steps * NR).enumerate().for_each(panel);
    } else {
        out.chunks_mut(steps * NR).enumerate().for_each(panel);
    }
}

super::simd::wide! {
    /// Panel `pi` of [`pack_b`] into `op`.
    fn pack_panel(arith: Arith, b: Gather<'_>, pi: usize, op: &mut [u32]) {
        let n = b.cols.len();
        let cols = &b.cols[pi * NR..(pi * NR + NR).min(n)];
        let w = cols.len();
        for (s, dst) in op.chunks_mut(NR).enumerate() {
            match arith {
                Arith::F32 => {
                    let r0 = &b.src[b.rows[s] as usize..];
                    for (d, &c) in dst.iter_mut().zip(cols) {
                        *d = r0[c as usize].to_bits();
                    }
                }
                Arith::Bf16 => {
                    // Gathered first, then rounded in a loop that vectorises.
                    let (mut t0, mut t1) = ([0.0f32; NR], [0.0f32; NR]);
                    let r0 = &b.src[b.rows[2 * s] as usize..];
                    for (t, &c) in t0.iter_mut().zip(cols) {
                        *t = r0[c as usize];
                    }
                    if let Some(&second) = b.rows.get(2 * s + 1) {
                        let r1 = &b.src[second as usize..];
                        for (t, &c) in t1.iter_mut().zip(cols) {
                            *t = r1[c as usize];
                        }
                    }
                    for ((d, &x0), &x1) in dst.iter_mut().zip(&t0).zip(&t1) {
                        *d = bf16_bits(x0) | bf16_bits(x1) << 16;
                    }
                }
            }
            dst[w..].fill(0);
        }
    }
}

/// [`pack_panel`], with AVX-512's gathers where `kernel` is the AVX-512 one (the same
/// words).
fn gather_panel(kernel: Kernel, arith: Arith, b: Gather<'_>, pi: usize, op: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512 && Kernel::Avx512.available() {
        let steps = op.len() / NR;
        assert!(op.len() == steps * NR && b.rows.len() <= steps * arith.step());
        assert!(b.rows.len() > (steps - 1) * arith.step() && pi * NR < b.cols.len());
        let cols = &b.cols[pi * NR..(pi * NR + NR).min(b.cols.len())];
        Gather { cols, ..b }.check();
        // SAFETY: the CPU has AVX-512F; every element of the panel gathered lies inside
        // `b.src` and every column fits the gather's i32 index (`Gather::check` on the
        // panel's columns), `op` holds `steps` steps of `NR` words, and every row index
        // read is below `b.rows.len()` (asserted above).
        unsafe { gather_panel_avx512(arith, b, pi, op) };
        return;
    }
    let _ = kernel;
    pack_panel(arith, b, pi, op)
}

/// [`gather_panel`]'s AVX-512 body: per step, three masked 16-lane gathers of a row of B
/// (the columns outside the panel zero), rounded to bf16 in pairs of rows with
/// [`bf16_bits`]'s arithmetic.
///
/// # Safety
/// AVX-512F; as asserted by [`gather_panel`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_panel_avx512(arith: Arith, b: Gather<'_>, pi: usize, op: &mut [u32]) {
    use std::arch::x86_64::*;
    let cols = &b.cols[pi * NR..(pi * NR + NR).min(b.cols.len())];
    let m = masks(cols.len());
    let idx = [0, 1, 2].map(|v| {
        // SAFETY: the masked lanes lie inside `cols` (the address made with `wrapping_add`:
        // a vector with no lane inside may point past its end).
        unsafe { _mm512_maskz_loadu_epi32(m[v], cols.as_ptr().wrapping_add(v * 16).cast()) }
    });
    let src = b.src.as_ptr();
    let row = |r: u32| -> [__m512i; 3] {
        let base = src.wrapping_add(r as usize).cast::<i32>();
        [0, 1, 2].map(|v| {
            // SAFETY: `r + cols[j]` lies inside `src` for every column of the panel
            // (`Gather::check`); the lanes outside it are masked off and not read.
            unsafe { _mm512_mask_i32gather_epi32::<4>(_mm512_setzero_si512(), m[v], idx[v], base) }
        })
    };
    let out = op.as_mut_ptr();
    for s in 0..op.len() / NR {
        let words = match arith {
            Arith::F32 => row(b.rows[s]),
            Arith::Bf16 => {
                let even = row(b.rows[2 * s]).map(|x| bf16_vec(x));
                let odd = b
                    .rows
                    .get(2 * s + 1)
                    .map_or([_mm512_setzero_si512(); 3], |&r| {
                        row(r).map(|x| bf16_vec(x))
                    });
                [0, 1, 2].map(|v| _mm512_or_si512(even[v], _mm512_slli_epi32::<16>(odd[v])))
            }
        };
        for (v, w) in words.into_iter().enumerate() {
            // SAFETY: step `s` of `op` holds `NR` words.
            unsafe { _mm512_storeu_si512(out.add(s * NR + v * 16).cast(), w) };
        }
    }
}

/// [`bf16_bits`] of 16 values' bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn bf16_vec(b: std::arch::x86_64::__m512i) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let high = _mm512_srli_epi32::<16>(b);
    let odd = _mm512_and_si512(high, _mm512_set1_epi32(1));
    let sum = _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7fff)), odd);
    let rounded = _mm512_srli_epi32::<16>(sum);
    let quiet = _mm512_or_si512(high, _mm512_set1_epi32(0x40));
    let magnitude = _mm512_and_si512(b, _mm512_set1_epi32(0x7fff_ffff));
    let nan = _mm512_cmpgt_epu32_mask(magnitude, _mm512_set1_epi32(0x7f80_0000));
    _mm512_mask_blend_epi32(nan, rounded, quiet)
}

/// Packs B = Wᵀ, where W is row-major `n x k` with leading dimension `ld` (a fully
/// connected layer's weights, `[outputs][inputs]`), into a new buffer: [`pack_b`] on the
/// gather `rows[r] = r`, `cols[j] = j * ld`.
pub fn pack_b_transposed(arith: Arith, w: &[f32], k: usize, n: usize, ld: usize) -> Vec<u32> {
    assert!(k > 0, "pack_b_transposed: an empty K");
    let rows: Vec<u32> = (0..k as u32).collect();
    let cols: Vec<u32> = (0..n).map(|j| (j * ld) as u32).collect();
    let mut out = vec![0u32; arith.b_len(k, n)];
    let b = Gather {
        src: w,
        rows: &rows,
        cols: &cols,
    };
    pack_b(arith, b, &mut out, rayon::current_num_threads());
    out
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

/// Whether `len` values hold `count` runs of `run` values `stride` apart (`count >= 1`),
/// with no overflow in the arithmetic.
fn holds(len: usize, count: usize, stride: usize, run: usize) -> bool {
    (count - 1)
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
    /// Packed by [`pack_b`] or [`pack_b_transposed`].
    Packed(&'a [u32]),
    /// Gathered [`KC`] steps of one panel at a time into a buffer on the stack, just before
    /// the micro-kernel reads them (a convolution's im2col columns are made where they are
    /// used, in L1, and never stored whole).
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

/// [`gemm`] with the panels of B split between `threads` threads, each computing its
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
    /// [`by_columns`]'s scratch buffer, kept between calls: a fresh one (1.2 MB for
    /// AlexNet's conv1) cost its zeroing and page faults every time.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer, `len` values long (its contents whatever the
/// last user left: every value is written before it is read).
fn with_scratch(len: usize, f: impl FnOnce(&mut [f32])) {
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

/// [`gemm`] on this thread.
fn rows(kernel: Kernel, ops: Operands<'_>, c: &mut [f32], ldc: usize, ep: Epilogue<'_>) {
    let Operands { arith, m, n, k, .. } = ops;
    let steps = arith.steps(k);
    let (blocks, panels) = (m.div_ceil(MR), n.div_ceil(NR));
    // B's gathered steps (only for `BOperand::Gather`).
    let mut gathered = [0u32; KC * NR];
    let mut s0 = 0;
    while s0 < steps {
        let kc = KC.min(steps - s0);
        let (first, last) = (s0 == 0, s0 + kc == steps);
        for pn in 0..panels {
            let bp: &[u32] = match ops.b {
                BOperand::Packed(b) => &b[(pn * steps + s0) * NR..][..kc * NR],
                BOperand::Gather(g) => {
                    let st = arith.step();
                    let rows = &g.rows[s0 * st..((s0 + kc) * st).min(k)];
                    let b = Gather { rows, ..g };
                    gather_panel(kernel, arith, b, pn, &mut gathered[..kc * NR]);
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

/// One micro-kernel call: `rows x cols` of C (at most [`MR`] x [`NR`]) from `steps` steps
/// of K.
struct Tile<'a> {
    /// A from the tile's first row and step.
    a: &'a [f32],
    /// Values of `a` from one row to the next.
    a_row: usize,
    /// Values of `a` from one step to the next (in bf16, the odd row of K sits [`MR`]
    /// after the even one: A is packed, `a_row` 1).
    a_step: usize,
    b: &'a [u32],
    steps: usize,
    c: &'a mut [f32],
    ldc: usize,
    rows: usize,
    cols: usize,
    /// C starts from zero (otherwise from what it holds).
    first: bool,
    bias: Option<&'a [f32]>,
    relu: bool,
}

macro_rules! by_rows {
    ($rows:expr, $f:ident, $($arg:expr),*) => {
        match $rows {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            _ => $f::<MR>($($arg),*),
        }
    };
}

impl Tile<'_> {
    fn run(self, arith: Arith, kernel: Kernel) {
        assert!(self.rows >= 1 && self.rows <= MR && self.cols <= NR && self.steps >= 1);
        let odd = match arith {
            Arith::F32 => 0,
            Arith::Bf16 => {
                assert_eq!(self.a_row, 1, "tile: bf16 A not packed");
                MR
            }
        };
        // Checked arithmetic: a wrapped product would let the kernels' pointers past
        // these bounds.
        let a_last = (self.rows - 1)
            .checked_mul(self.a_row)
            .zip((self.steps - 1).checked_mul(self.a_step))
            .and_then(|(r, s)| r.checked_add(s)?.checked_add(odd));
        assert!(
            a_last.is_some_and(|i| i < self.a.len()),
            "tile: A too short"
        );
        assert!(
            self.steps
                .checked_mul(NR)
                .is_some_and(|n| n <= self.b.len()),
            "tile: B too short"
        );
        assert!(
            holds(self.c.len(), self.rows, self.ldc, self.cols),
            "tile: C too short"
        );
        assert!(self.bias.is_none_or(|b| b.len() >= self.rows));
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 if Kernel::Avx512.available() => {
                by_rows!(self.rows, tile_avx512, self, arith)
            }
            _ => by_rows!(self.rows, tile_portable, self, arith),
        }
    }

    /// Bias, ReLU and the store of the portable kernels.
    fn store<const R: usize>(self, acc: &[[f32; NR]; R]) {
        for (r, row) in acc.iter().enumerate() {
            for (dst, &v) in self.c[r * self.ldc..][..self.cols].iter_mut().zip(row) {
                let v = self.bias.map_or(v, |b| v + b[r]);
                *dst = if self.relu { v.max(0.0) } else { v };
            }
        }
    }
}

/// The portable micro-kernel: the AVX-512 one's sums in its order, each rounded once.
fn tile_portable<const R: usize>(t: Tile<'_>, arith: Arith) {
    let mut acc = [[0.0f32; NR]; R];
    if !t.first {
        for (r, row) in acc.iter_mut().enumerate() {
            row[..t.cols].copy_from_slice(&t.c[r * t.ldc..][..t.cols]);
        }
    }
    for s in 0..t.steps {
        let bw = &t.b[s * NR..(s + 1) * NR];
        for (r, row) in acc.iter_mut().enumerate() {
            match arith {
                Arith::F32 => {
                    let av = t.a[s * t.a_step + r * t.a_row];
                    for (v, &w) in row.iter_mut().zip(bw) {
                        *v = av.mul_add(f32::from_bits(w), *v);
                    }
                }
                Arith::Bf16 => {
                    let even = t.a[s * t.a_step + r];
                    let odd = t.a[s * t.a_step + MR + r];
                    for (v, &w) in row.iter_mut().zip(bw) {
                        let (lo, hi) = (f32::from_bits(w << 16), f32::from_bits(w & 0xffff_0000));
                        // Products of bf16 values are exact in f32, so a plain multiply and
                        // add rounds once, as an FMA does (and `mul_add` without hardware
                        // FMA is a slow library call).
                        *v = (*v + odd * hi) + even * lo;
                    }
                }
            }
        }
    }
    t.store(&acc);
}

#[cfg(target_arch = "x86_64")]
fn tile_avx512<const R: usize>(mut t: Tile<'_>, arith: Arith) {
    // SAFETY: `Tile::run` checked that this CPU has AVX-512F (the target feature the
    // functions enable) and asserted the lengths they rely on.
    unsafe {
        match arith {
            Arith::F32 => avx512_f32::<R>(&mut t),
            Arith::Bf16 => avx512_bf16::<R>(&mut t),
        }
    }
}

/// The lanes of each of C's three vectors that lie inside the tile's `cols`.
#[cfg(target_arch = "x86_64")]
fn masks(cols: usize) -> [u16; 3] {
    [0, 1, 2].map(|v| {
        let lo = v * 16;
        if cols >= lo + 16 {
            0xffff
        } else if cols > lo {
            (1u16 << (cols - lo)) - 1
        } else {
            0
        }
    })
}

/// Loads the tile's C (or zeros on the first block of K).
///
/// # Safety
/// AVX-512F; `t.c` holds `(R - 1) * ldc + cols` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn load_c<const R: usize>(t: &Tile<'_>) -> [[std::arch::x86_64::__m512; 3]; R] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 3]; R];
    if !t.first {
        let (m, c) = (masks(t.cols), t.c.as_ptr());
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                // SAFETY: lanes outside the mask are not read; the masked ones lie inside
                // `t.c` (row `r < R`, columns below `cols`). The address is made with
                // `wrapping_add`: a vector with no lane inside may point past the end.
                *x = _mm512_maskz_loadu_ps(m[v], c.wrapping_add(r * t.ldc + v * 16));
            }
        }
    }
    acc
}

/// Adds the bias, applies ReLU and stores the tile (`acc` by value: a reference would
/// keep the accumulators in memory through the kernel's loop).
///
/// # Safety
/// As [`load_c`], and `t.bias` (if any) holds `R` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_c<const R: usize>(t: &mut Tile<'_>, acc: [[std::arch::x86_64::__m512; 3]; R]) {
    use std::arch::x86_64::*;
    let (m, c) = (masks(t.cols), t.c.as_mut_ptr());
    let zero = _mm512_setzero_ps();
    for (r, row) in acc.iter().enumerate() {
        let bias = t.bias.map(|v| _mm512_set1_ps(v[r]));
        for (v, &x) in row.iter().enumerate() {
            let x = bias.map_or(x, |b| _mm512_add_ps(x, b));
            let x = if t.relu { _mm512_max_ps(x, zero) } else { x };
            // SAFETY: as in `load_c`, for writes.
            _mm512_mask_storeu_ps(c.wrapping_add(r * t.ldc + v * 16), m[v], x);
        }
    }
}

/// f32: per step of K, three loads of B, R broadcasts of A and 3R FMAs.
///
/// # Safety
/// AVX-512F; `t.a` holds `steps * MR` values, `t.b` `steps * NR` words, `t.c` and
/// `t.bias` as [`store_c`] needs; `R <= MR`, `cols <= NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_f32<const R: usize>(t: &mut Tile<'_>) {
    use std::arch::x86_64::*;
    let mut acc = load_c::<R>(t);
    let (a, b) = (t.a.as_ptr(), t.b.as_ptr() as *const f32);
    for s in 0..t.steps {
        // SAFETY: `s * NR + 47 < steps * NR` and `s * a_step + r * a_row < a.len()`
        // (`Tile::run`).
        let bp = b.add(s * NR);
        let bv = [
            _mm512_loadu_ps(bp),
            _mm512_loadu_ps(bp.add(16)),
            _mm512_loadu_ps(bp.add(32)),
        ];
        let ap = a.add(s * t.a_step);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ap.add(r * t.a_row));
            for (x, &w) in row.iter_mut().zip(&bv) {
                *x = _mm512_fmadd_ps(av, w, *x);
            }
        }
    }
    store_c::<R>(t, acc);
}

/// bf16: per step (two rows of K), three loads of B widened to six f32 vectors (the odd
/// rows masked out of the high halves, the even ones shifted up), 2R broadcasts of A and
/// 6R FMAs, the odd row first.
///
/// # Safety
/// As [`avx512_f32`], with `t.a` holding `2 * steps * MR` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_bf16<const R: usize>(t: &mut Tile<'_>) {
    use std::arch::x86_64::*;
    let mut acc = load_c::<R>(t);
    let (a, b) = (t.a.as_ptr(), t.b.as_ptr() as *const __m512i);
    let high = _mm512_set1_epi32(0xffff_0000_u32 as i32);
    for s in 0..t.steps {
        // SAFETY: `s * NR + 47 < steps * NR` and `s * a_step + MR + r < a.len()`
        // (`Tile::run`).
        let bp = b.add(s * 3);
        let w = [
            _mm512_loadu_si512(bp),
            _mm512_loadu_si512(bp.add(1)),
            _mm512_loadu_si512(bp.add(2)),
        ];
        let hi = w.map(|x| _mm512_castsi512_ps(_mm512_and_si512(x, high)));
        let lo = w.map(|x| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(x)));
        let even = a.add(s * t.a_step);
        let odd = even.add(MR);
        for (r, row) in acc.iter_mut().enumerate() {
            let ao = _mm512_set1_ps(*odd.add(r));
            let ae = _mm512_set1_ps(*even.add(r));
            for ((x, &h), &l) in row.iter_mut().zip(&hi).zip(&lo) {
                *x = _mm512_fmadd_ps(ae, l, _mm512_fmadd_ps(ao, h, *x));
            }
        }
    }
    store_c::<R>(t, acc);
}

/// Columns of [`gemm_narrow`]'s B: one vector.
pub const NARROW: usize = 16;
/// Rows of A per [`gemm_narrow`] micro-kernel call.
const NARROW_ROWS: usize = 12;

/// Packs the transpose of `x` (`n x k`, row-major, `n <= NARROW`: a batch of images) as
/// [`gemm_narrow`]'s B, `[k][NARROW]` with the missing columns zero.
pub fn pack_narrow(x: &[f32], n: usize, k: usize) -> Vec<f32> {
    assert!(n <= NARROW && k > 0, "pack_narrow: {n} columns, K {k}");
    let mut out = vec![0.0f32; k * NARROW];
    for (j, row) in x.chunks_exact(k).take(n).enumerate() {
        for (p, &v) in row.iter().enumerate() {
            out[p * NARROW + j] = v;
        }
    }
    out
}

/// `c = a * b` in f32 for a narrow B (a fully connected layer at a batch of at most
/// [`NARROW`]): `a` row-major `m x k` with leading dimension `lda` and read as it is (the
/// layer's weights, streamed once, no second copy of them), `b` by [`pack_narrow`], `c`
/// row-major `m x NARROW`. Per step of K one load of B and a broadcast of each of 12 rows
/// of A; each value's sum runs over K in order, so the bits do not depend on `threads`
/// (the rows are split between them).
pub fn gemm_narrow(
    kernel: Kernel,
    a: &[f32],
    (m, k, lda): (usize, usize, usize),
    b: &[f32],
    c: &mut [f32],
    threads: usize,
) {
    if m == 0 {
        return;
    }
    assert!(
        lda >= k && a.len() >= (m - 1) * lda + k,
        "gemm_narrow: A too short"
    );
    assert!(b.len() >= k * NARROW, "gemm_narrow: B too short");
    assert!(c.len() >= m * NARROW, "gemm_narrow: C too short");
    let block = |(blk, cb): (usize, &mut [f32])| {
        let rows = cb.len() / NARROW;
        let ab = &a[blk * NARROW_ROWS * lda..];
        narrow_tile(kernel, ab, rows, k, lda, b, cb);
    };
    let c = &mut c[..m * NARROW];
    if threads > 1 {
        c.par_chunks_mut(NARROW_ROWS * NARROW)
            .enumerate()
            .with_min_len(4)
            .for_each(block);
    } else {
        c.chunks_mut(NARROW_ROWS * NARROW)
            .enumerate()
            .for_each(block);
    }
}

/// `rows <= NARROW_ROWS` rows of [`gemm_narrow`].
fn narrow_tile(
    kernel: Kernel,
    a: &[f32],
    rows: usize,
    k: usize,
    lda: usize,
    b: &[f32],
    c: &mut [f32],
) {
    assert!((1..=NARROW_ROWS).contains(&rows) && a.len() >= (rows - 1) * lda + k);
    assert!(b.len() >= k * NARROW && c.len() >= rows * NARROW);
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512 && Kernel::Avx512.available() {
        // SAFETY: AVX-512F was checked; the lengths `narrow_avx512` relies on were
        // asserted just above.
        unsafe { narrow_avx512(a, rows, k, lda, b, c) };
        return;
    }
    let _ = kernel;
    for (r, cr) in c.chunks_exact_mut(NARROW).take(rows).enumerate() {
        let mut acc = [0.0f32; NARROW];
        for (p, &av) in a[r * lda..r * lda + k].iter().enumerate() {
            for (v, &bv) in acc.iter_mut().zip(&b[p * NARROW..(p + 1) * NARROW]) {
                *v = av.mul_add(bv, *v);
            }
        }
        cr.copy_from_slice(&acc);
    }
}

/// # Safety
/// AVX-512F; `rows <= NARROW_ROWS`, `a` holds `(rows - 1) * lda + k` values, `b`
/// `k * NARROW`, `c` `rows * NARROW`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn narrow_avx512(a: &[f32], rows: usize, k: usize, lda: usize, b: &[f32], c: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); NARROW_ROWS];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    // A full block of rows with a fixed count (so that the accumulators stay in
    // registers), the last, partial one row by row.
    if rows == NARROW_ROWS {
        for p in 0..k {
            // SAFETY: `p < k`: `b[p * NARROW + 15]` and `a[r * lda + p]` (`r < rows`) lie
            // inside the slices.
            let bv = _mm512_loadu_ps(bp.add(p * NARROW));
            for (r, x) in acc.iter_mut().enumerate() {
                *x = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(r * lda + p)), bv, *x);
            }
        }
    } else {
        for (r, x) in acc.iter_mut().enumerate().take(rows) {
            for p in 0..k {
                // SAFETY: as above.
                let bv = _mm512_loadu_ps(bp.add(p * NARROW));
                *x = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(r * lda + p)), bv, *x);
            }
        }
    }
    for (r, &x) in acc.iter().enumerate().take(rows) {
        // SAFETY: `c` holds `rows * NARROW` values.
        _mm512_storeu_ps(c.as_mut_ptr().add(r * NARROW), x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row-major `k x n` matrix as a [`Gather`] (its index vectors leaked: a test).
    fn matrix(b: &[f32], k: usize, n: usize) -> Gather<'_> {
        let rows: Vec<u32> = (0..k as u32).map(|r| r * n as u32).collect();
        let cols: Vec<u32> = (0..n as u32).collect();
        Gather {
            src: b,
            rows: rows.leak(),
            cols: cols.leak(),
        }
    }

    /// Whether every output has the bits of the first.
    fn same_bits(outs: &[Vec<f32>]) -> bool {
        outs.iter().all(|o| {
            o.iter()
                .zip(&outs[0])
                .all(|(x, y)| x.to_bits() == y.to_bits())
        })
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 + 0.5) * 0.618_034 + seed as f32 * 0.37).sin() * 1.7)
            .collect()
    }

    /// The product of the operands as `arith` rounds them, in f64.
    fn reference(arith: Arith, a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize)) -> Vec<f64> {
        let mut c = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| {
                        arith.operand(a[i * k + p]) as f64 * arith.operand(b[p * n + j]) as f64
                    })
                    .sum();
            }
        }
        c
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (down).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (up).
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_bits(-2.5), 0xc020);
        assert!(f32::from_bits(bf16_bits(f32::NAN) << 16).is_nan());
        assert_eq!(bf16_bits(f32::INFINITY), 0x7f80);
        assert_eq!(bf16_bits(f32::MAX), 0x7f80, "rounds up to infinity");
    }

    #[test]
    fn every_kernel_computes_the_product_of_its_operands() {
        // Ragged everywhere: rows not a multiple of MR, columns of NR, an odd K, and more
        // than one block of K.
        let shapes = [
            (13, 101, 301),
            (1, 7, 1),
            (8, 48, 2),
            (3, 50, 257),
            (9, 5, 300),
        ];
        for arith in [Arith::F32, Arith::Bf16] {
            for &(m, n, k) in &shapes {
                let (a, b) = (data(m * k, 1), data(k * n, 2));
                let mut pa = vec![0.0; arith.a_len(m, k)];
                pack_a(arith, &a, m, k, k, &mut pa);
                let mut pb = vec![0; arith.b_len(k, n)];
                pack_b(arith, matrix(&b, k, n), &mut pb, 2);
                // Packed, and read in place (A's rows in f32, B gathered block by block),
                // with a leading dimension longer than K.
                let lda = k + 2;
                let mut a_wide = vec![f32::NAN; (m - 1) * lda + k];
                for i in 0..m {
                    a_wide[i * lda..i * lda + k].copy_from_slice(&a[i * k..(i + 1) * k]);
                }
                let a_rows = AOperand::Rows {
                    data: &a_wide,
                    ld: lda,
                };
                let mut forms = vec![
                    (AOperand::Packed(&pa), BOperand::Packed(&pb)),
                    (AOperand::Packed(&pa), BOperand::Gather(matrix(&b, k, n))),
                ];
                if arith == Arith::F32 {
                    forms.push((a_rows, BOperand::Gather(matrix(&b, k, n))));
                    forms.push((a_rows, BOperand::Packed(&pb)));
                }
                let want = reference(arith, &a, &b, (m, n, k));
                let bias = data(m, 3);
                let mut outs = Vec::new();
                for kernel in [Kernel::Portable, Kernel::Avx512] {
                    if !kernel.available() {
                        eprintln!("{} not on this CPU", kernel.name());
                        continue;
                    }
                    for (threads, &(a, b)) in [1, 2]
                        .into_iter()
                        .flat_map(|t| forms.iter().map(move |f| (t, f)))
                    {
                        let ops = Operands {
                            arith,
                            a,
                            b,
                            m,
                            n,
                            k,
                        };
                        let ldc = n + 3;
                        let mut c = vec![f32::NAN; (m - 1) * ldc + n];
                        gemm(kernel, ops, &mut c, ldc, Epilogue::default(), threads);
                        let (mut num, mut den) = (0.0, 0.0);
                        for i in 0..m {
                            for j in 0..n {
                                let d = c[i * ldc + j] as f64 - want[i * n + j];
                                num += d * d;
                                den += want[i * n + j] * want[i * n + j];
                            }
                        }
                        let rel = (num / den).sqrt();
                        assert!(rel < 5e-6, "{arith:?} {kernel:?} {m}x{n}x{k}: {rel}");
                        // The epilogue: bias per row, then ReLU.
                        let ep = Epilogue {
                            bias: Some(&bias),
                            relu: true,
                        };
                        let mut d = vec![f32::NAN; (m - 1) * ldc + n];
                        gemm(kernel, ops, &mut d, ldc, ep, threads);
                        for i in 0..m {
                            for j in 0..n {
                                let want = (c[i * ldc + j] + bias[i]).max(0.0);
                                assert_eq!(d[i * ldc + j], want);
                            }
                        }
                        outs.push(c);
                    }
                }
                assert!(
                    same_bits(&outs),
                    "{arith:?} {m}x{n}x{k}: kernels, operand forms or threads differ in bits"
                );
            }
        }
    }

    /// Products run from inside a parallel loop (rayon may run one on a thread whose
    /// scratch buffer another is using): the same bits as alone.
    #[test]
    fn nested_products_give_the_same_bits() {
        let (m, n, k) = (20, 150, 70);
        let (a, b) = (data(m * k, 8), data(k * n, 9));
        let ops = Operands {
            arith: Arith::F32,
            a: AOperand::Rows { data: &a, ld: k },
            b: BOperand::Gather(matrix(&b, k, n)),
            m,
            n,
            k,
        };
        let run = || {
            let mut c = vec![f32::NAN; m * n];
            gemm(Kernel::best(), ops, &mut c, n, Epilogue::default(), 2);
            c
        };
        let alone = run();
        let nested: Vec<Vec<f32>> = (0..8).into_par_iter().map(|_| run()).collect();
        assert!(nested
            .iter()
            .all(|c| same_bits(&[alone.clone(), c.clone()])));
    }

    /// The AVX-512 gather and the portable packing give the same words on every kind of
    /// value (NaNs of both signs, quiet and signalling, infinities, zeros, subnormals,
    /// the largest finite values, bf16 ties), f32 and bf16, with an odd K.
    #[test]
    fn the_gather_packs_special_values_as_the_portable_packing_does() {
        if !Kernel::Avx512.available() {
            eprintln!("AVX-512F not on this CPU");
            return;
        }
        let specials = [
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xffa0_0000),
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            f32::from_bits(1),
            -f32::from_bits(0x007f_ffff),
            f32::MAX,
            f32::MIN,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f80_7fff),
        ];
        let (k, n) = (7, 53);
        let src: Vec<f32> = (0..k * n).map(|i| specials[(i * 5 + i / 7) % 16]).collect();
        let g = matrix(&src, k, n);
        for arith in [Arith::F32, Arith::Bf16] {
            for pi in 0..n.div_ceil(NR) {
                let words = arith.steps(k) * NR;
                let (mut fast, mut slow) = (vec![7u32; words], vec![9u32; words]);
                gather_panel(Kernel::Avx512, arith, g, pi, &mut fast);
                pack_panel(arith, g, pi, &mut slow);
                assert_eq!(fast, slow, "{arith:?} panel {pi}");
            }
        }
    }

    #[test]
    fn the_narrow_product_matches_the_definition_with_the_same_bits_everywhere() {
        for &(m, n, k) in &[(29, 16, 301), (12, 5, 64), (1, 1, 3), (40, 9, 1000)] {
            let lda = k + 5;
            let a = data(m * lda, 6);
            let x = data(n * k, 7);
            let b = pack_narrow(&x, n, k);
            let mut outs = Vec::new();
            for kernel in [Kernel::Portable, Kernel::Avx512] {
                if !kernel.available() {
                    continue;
                }
                for threads in [1, 2] {
                    let mut c = vec![f32::NAN; m * NARROW];
                    gemm_narrow(kernel, &a, (m, k, lda), &b, &mut c, threads);
                    for i in 0..m {
                        for j in 0..n {
                            let want: f64 = (0..k)
                                .map(|p| a[i * lda + p] as f64 * x[j * k + p] as f64)
                                .sum();
                            let got = c[i * NARROW + j] as f64;
                            assert!(
                                (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                                "{got} {want}"
                            );
                        }
                        assert!(c[i * NARROW + n..(i + 1) * NARROW]
                            .iter()
                            .all(|&v| v == 0.0));
                    }
                    outs.push(c);
                }
            }
            assert!(
                same_bits(&outs),
                "{m}x{n}x{k}: kernels or threads differ in bits"
            );
        }
    }

    #[test]
    fn transposed_packing_is_the_transpose() {
        for arith in [Arith::F32, Arith::Bf16] {
            let (n, k) = (53, 9);
            let w = data(n * k, 4);
            let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            let mut pb = vec![0; arith.b_len(k, n)];
            pack_b(arith, matrix(&wt, k, n), &mut pb, 1);
            assert_eq!(pack_b_transposed(arith, &w, k, n, k), pb, "{arith:?}");
        }
    }
}
