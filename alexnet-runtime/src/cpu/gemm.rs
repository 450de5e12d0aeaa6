//! The CPU backend's matrix multiply: OpenBLAS's sgemm when the machine has it (see
//! `blas.rs`), otherwise a safe wrapper around the `gemm` crate's strided f32 product.
//! With `blas.rs`, the only place the CPU backend calls code that takes raw pointers.

use rayon::prelude::*;

use super::mat::extent;
pub use super::mat::Mat;

/// `c = a * b` (or `c += a * b` with `accumulate`), `c` row-major `a.rows x b.cols` with
/// leading dimension `ldc`. `threads > 1` splits the product over rayon's pool.
pub fn sgemm(a: Mat, b: Mat, c: &mut [f32], ldc: usize, accumulate: bool, threads: usize) {
    sgemm_strided(a, b, c, ldc, 1, accumulate, threads)
}

/// [`sgemm`] with a strided destination: element `(i, j)` of `c` is `c[i * c_rs + j * c_cs]`.
///
/// # Panics
/// If the shapes disagree or a view reaches past its slice: callers size their buffers
/// from the plan, so that is a bug in the backend, not a user error.
pub fn sgemm_strided(
    a: Mat,
    b: Mat,
    c: &mut [f32],
    c_rs: usize,
    c_cs: usize,
    accumulate: bool,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "sgemm: inner dimensions differ");
    assert!(
        extent(m, k, a.row_stride, a.col_stride) <= a.data.len(),
        "sgemm: lhs out of bounds"
    );
    assert!(
        extent(k, n, b.row_stride, b.col_stride) <= b.data.len(),
        "sgemm: rhs out of bounds"
    );
    assert!(
        extent(m, n, c_rs, c_cs) <= c.len(),
        "sgemm: dst out of bounds"
    );
    assert!(
        dst_distinct(m, n, c_rs, c_cs),
        "sgemm: dst elements overlap"
    );
    let strides = [
        a.row_stride,
        a.col_stride,
        b.row_stride,
        b.col_stride,
        c_rs,
        c_cs,
    ];
    assert!(
        strides.iter().all(|&st| isize::try_from(st).is_ok()),
        "sgemm: stride overflows isize"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[i * c_rs + j * c_cs] = 0.0;
                }
            }
        }
        return;
    }
    if let Some(blas) = super::blas::get() {
        // CBLAS writes a row-major C; a column-major C is the transposed product.
        let (a, b, ldc) = if c_cs == 1 {
            (a, b, c_rs)
        } else {
            (b.t(), a.t(), c_cs)
        };
        if (c_cs == 1 || c_rs == 1) && blas.supports(&a, &b, ldc) {
            let (m, n) = (a.rows, b.cols);
            let c = &mut c[..extent(m, n, ldc, 1)];
            if threads <= 1 || m < 2 {
                blas.sgemm_row_major(a, b, c, ldc, accumulate);
            } else {
                // Each thread computes a block of C's rows (contiguous, so disjoint borrows).
                let per = m.div_ceil(threads);
                c.par_chunks_mut(per * ldc).enumerate().for_each(|(j, cj)| {
                    let start = j * per;
                    blas.sgemm_row_major(a.rows(start, per.min(m - start)), b, cj, ldc, accumulate);
                });
            }
            return;
        }
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above prove that every element the three strided views address
    // lies inside its slice (the views' extents fit), and `dst` is borrowed mutably while
    // `lhs` and `rhs` are shared borrows, so the destination aliases neither input. The
    // destination elements are distinct (`dst_distinct`). Strides fit in `isize`
    // (asserted).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs as isize,
            c_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Whether a strided `m x n` view addresses each element once: one stride must step over
/// the whole extent of the other dimension.
fn dst_distinct(m: usize, n: usize, rs: usize, cs: usize) -> bool {
    m <= 1 && (n <= 1 || cs > 0)
        || n <= 1 && rs > 0
        || rs >= extent(1, n, 0, cs) && cs > 0
        || cs >= extent(m, 1, rs, 0) && rs > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: Mat, b: Mat) -> Vec<f32> {
        let mut c = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                let mut s = 0.0;
                for p in 0..a.cols {
                    s += a.data[i * a.row_stride + p * a.col_stride]
                        * b.data[p * b.row_stride + j * b.col_stride];
                }
                c[i * b.cols + j] = s;
            }
        }
        c
    }

    #[test]
    fn matches_naive_product_with_strides() {
        let a: Vec<f32> = (0..35).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..28).map(|i| (i as f32 * 0.71).cos()).collect();
        let (am, bm) = (Mat::row_major(&a, 5, 7, 7), Mat::transposed(&b, 7, 4, 7));
        for threads in [1, 2] {
            let mut c = vec![9.0; 20];
            sgemm(am, bm, &mut c, 4, false, threads);
            let want = naive(am, bm);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() < 1e-5, "{x} vs {y}");
            }
        }
    }
}
