//! A strided view of a matrix in a slice, the operand type of the CPU backend's matrix
//! multiplies (`gemm.rs`, `blas.rs`).

/// A strided view of a matrix stored in a slice: element `(i, j)` is
/// `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> Mat<'a> {
    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        Mat {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Rows `start..start + rows`.
    pub(super) fn rows(self, start: usize, rows: usize) -> Self {
        Mat {
            data: &self.data[start * self.row_stride..],
            rows,
            ..self
        }
    }

    /// A row-major `rows x cols` matrix with leading dimension `ld`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            row_stride: ld,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major `cols x rows` matrix with leading dimension `ld`.
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            row_stride: 1,
            col_stride: ld,
        }
    }
}

/// Index one past the last element a strided `rows x cols` view touches; `usize::MAX`
/// (out of bounds of any slice) if that overflows.
pub(super) fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        return 0;
    }
    (rows - 1)
        .checked_mul(rs)
        .and_then(|r| (cols - 1).checked_mul(cs).and_then(|c| r.checked_add(c)))
        .and_then(|e| e.checked_add(1))
        .unwrap_or(usize::MAX)
}
