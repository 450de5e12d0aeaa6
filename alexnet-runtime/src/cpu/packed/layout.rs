//! The operands' layouts: A packed in blocks of rows ([`pack_a`]), B packed in panels
//! ([`pack_b`], [`pack_b_transposed`]) or gathered a block of one panel at a time
//! ([`gather_panel`], with AVX-512 gathers where the kernel is an AVX-512 one).

use rayon::prelude::*;

use super::tile::masks;
use super::{bf16_bits, Arith, Kernel, MR, NR};

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
    /// In bf16, optionally: word `i` the pair of `src[i]` (low half) and `src[i + 1]`
    /// (high half), rounded to bf16 ([`pair_neighbours`]), so that a step whose two rows
    /// are neighbours (`rows[2s + 1] = rows[2s] + 1`: a convolution's taps along a filter
    /// row) is one gather of ready words instead of two gathers and their rounding.
    pub paired: Option<&'a [u32]>,
}

crate::cpu::simd::wide! {
    /// [`Gather::paired`] for `src`: word `i` holds `src[i]` rounded to bf16 in its low
    /// half and `src[i + 1]` (zero past the end) in its high half.
    pub fn pair_neighbours(src: &[f32]) -> Vec<u32> {
        let mut out = vec![0u32; src.len()];
        for (i, o) in out.iter_mut().enumerate() {
            let next = src.get(i + 1).map_or(0, |&v| bf16_bits(v));
            *o = bf16_bits(src[i]) | next << 16;
        }
        out
    }
}

impl Gather<'_> {
    /// Panics if an element lies outside `src`, a column offset does not fit an `i32`
    /// (the AVX-512 gather's signed indices), or [`Gather::paired`] is not as long as
    /// `src`.
    pub(super) fn check(&self) {
        assert!(
            self.paired.is_none_or(|p| p.len() == self.src.len()),
            "packed: a gather's pairs are not as long as its source"
        );
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

crate::cpu::simd::wide! {
    /// Panel `pi` of [`pack_b`] into `op`.
    pub(super) fn pack_panel(arith: Arith, b: Gather<'_>, pi: usize, op: &mut [u32]) {
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

/// [`pack_panel`], with AVX-512's gathers where `kernel` is an AVX-512 one (the same
/// words): a convolution's im2col columns, a block of one panel at a time.
pub(super) fn gather_panel(kernel: Kernel, arith: Arith, b: Gather<'_>, pi: usize, op: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if kernel.avx512() {
        let steps = op.len() / NR;
        assert!(op.len() == steps * NR && arith.steps(b.rows.len()) == steps);
        assert!(steps > 0 && pi * NR < b.cols.len());
        let cols = &b.cols[pi * NR..(pi * NR + NR).min(b.cols.len())];
        Gather { cols, ..b }.check();
        // SAFETY: the CPU has AVX-512F; every element of the panel gathered lies inside
        // `b.src` and every column fits the gather's i32 index (`Gather::check` on the
        // panel's columns), `op` holds `steps` steps of `NR` words, and every row index
        // read is below `b.rows.len()` (asserted above, and tested in the bf16 loop).
        unsafe { gather_panel_avx512(arith, b, pi, op) };
        return;
    }
    let _ = kernel;
    pack_panel(arith, b, pi, op)
}

/// [`gather_panel`]'s AVX-512 body: per step, three masked 16-lane gathers of a row of B
/// (the columns outside the panel zero), or in f32, for two steps whose rows are
/// neighbours, 8-lane gathers of both values split into the two steps; in bf16 two rows,
/// rounded as [`bf16_bits`] rounds and paired in each word, or one gather of
/// [`Gather::paired`]'s words where the two rows are neighbours.
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
    // `bf16_bits` on 16 lanes: to nearest with ties to even, a NaN quieted.
    let round = |x: __m512i| -> __m512i {
        let hi = _mm512_srli_epi32::<16>(x);
        let odd = _mm512_and_si512(hi, _mm512_set1_epi32(1));
        let bias = _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff));
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(x, bias));
        let abs = _mm512_and_si512(x, _mm512_set1_epi32(0x7fff_ffff));
        let nan = _mm512_cmpgt_epu32_mask(abs, _mm512_set1_epi32(0x7f80_0000));
        let quiet = _mm512_or_si512(hi, _mm512_set1_epi32(0x40));
        _mm512_mask_blend_epi32(nan, rounded, quiet)
    };
    // f32: two steps whose rows are neighbours (a convolution's taps along a filter row)
    // in 8-lane gathers of both values at once, then split into the two steps: half the
    // gathered elements of two 16-lane gathers per row.
    let neighbours = |r: u32| -> [[__m512i; 3]; 2] {
        let base = src.wrapping_add(r as usize).cast::<i64>();
        let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        let odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        let mut both = [[_mm512_setzero_si512(); 3]; 2];
        for v in 0..3 {
            let half = |lanes: __m256i, mask: u16| {
                // SAFETY: lane `j` reads `src[r + cols[j]]` and `src[r + 1 + cols[j]]`,
                // both inside `src`: `r + 1` is a row of the gather too (the caller's
                // test), and `Gather::check` bounds every row plus every column; the
                // lanes outside the mask are not read.
                unsafe {
                    _mm512_mask_i32gather_epi64::<4>(
                        _mm512_setzero_si512(),
                        mask as u8,
                        lanes,
                        base,
                    )
                }
            };
            let lo = half(_mm512_castsi512_si256(idx[v]), m[v] & 0xff);
            let hi = half(_mm512_extracti64x4_epi64::<1>(idx[v]), m[v] >> 8);
            both[0][v] = _mm512_permutex2var_epi32(lo, even, hi);
            both[1][v] = _mm512_permutex2var_epi32(lo, odd, hi);
        }
        both
    };
    let out = op.as_mut_ptr();
    let steps = op.len() / NR;
    let mut s = 0;
    while s < steps {
        let next = b.rows.get(s + 1).filter(|_| s + 1 < steps);
        if arith == Arith::F32 && next.is_some_and(|&r| b.rows[s].checked_add(1) == Some(r)) {
            for (t, words) in neighbours(b.rows[s]).into_iter().enumerate() {
                for (v, w) in words.into_iter().enumerate() {
                    // SAFETY: steps `s` and `s + 1` of `op` hold `NR` words each.
                    unsafe { _mm512_storeu_si512(out.add((s + t) * NR + v * 16).cast(), w) };
                }
            }
            s += 2;
            continue;
        }
        let words = match arith {
            Arith::F32 => row(b.rows[s]),
            Arith::Bf16 => match (b.paired, b.rows.get(2 * s + 1)) {
                (Some(p), Some(&odd)) if b.rows[2 * s].checked_add(1) == Some(odd) => {
                    // SAFETY (of the closure's gathers): `paired` is as long as `src`
                    // (`Gather::check`), so the same offsets lie inside it.
                    let base = p
                        .as_ptr()
                        .wrapping_add(b.rows[2 * s] as usize)
                        .cast::<i32>();
                    [0, 1, 2].map(|v| unsafe {
                        _mm512_mask_i32gather_epi32::<4>(_mm512_setzero_si512(), m[v], idx[v], base)
                    })
                }
                _ => {
                    let even = row(b.rows[2 * s]).map(round);
                    let odd = b
                        .rows
                        .get(2 * s + 1)
                        .map_or([_mm512_setzero_si512(); 3], |&r| row(r).map(round));
                    [0, 1, 2].map(|v| _mm512_or_si512(even[v], _mm512_slli_epi32::<16>(odd[v])))
                }
            },
        };
        for (v, w) in words.into_iter().enumerate() {
            // SAFETY: step `s` of `op` holds `NR` words.
            unsafe { _mm512_storeu_si512(out.add(s * NR + v * 16).cast(), w) };
        }
        s += 1;
    }
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
        paired: None,
    };
    pack_b(arith, b, &mut out, rayon::current_num_threads());
    out
}
