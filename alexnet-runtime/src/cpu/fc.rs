//! Fully connected layer: `y = relu?(x W^T + b)`, one GEMM over the whole batch.

use super::gemm::{sgemm, Mat};

pub fn forward(x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], batch: usize, inputs: usize, outputs: usize, relu: bool, threads: usize) {
    for row in y.chunks_mut(outputs) {
        row.copy_from_slice(b);
    }
    // W is [outputs, inputs] row-major, so W^T is its transposed view.
    sgemm(
        Mat::row_major(x, batch, inputs, inputs),
        Mat::transposed(w, inputs, outputs, inputs),
        y,
        outputs,
        true,
        threads,
    );
    if relu {
        y.iter_mut().for_each(|v| *v = v.max(0.0));
    }
}
