//! Fully connected layers at batches up to [`NARROW`]: the weights read in place, each
//! broadcast against a vector of the batch's inputs ([`gemm_narrow`]).

use rayon::prelude::*;

use super::{holds, Kernel};

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
        lda >= k && holds(a.len(), m, lda, k),
        "gemm_narrow: A too short"
    );
    assert!(
        holds(b.len(), k, NARROW, NARROW),
        "gemm_narrow: B too short"
    );
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
    // Checked arithmetic: a wrapped product would let the kernel's pointers past these
    // bounds.
    assert!((1..=NARROW_ROWS).contains(&rows) && holds(a.len(), rows, lda, k));
    assert!(holds(b.len(), k, NARROW, NARROW) && c.len() >= rows * NARROW);
    #[cfg(target_arch = "x86_64")]
    if kernel.avx512() {
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
