//! A convolution's geometry as the CPU kernels see it, shared by the im2col + GEMM path
//! (`conv.rs`) and Winograd's (`winograd.rs`).

use crate::ir::{Conv, Layer, Shape};

/// Convolution hyper-parameters.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvGeom {
    pub input: Shape,
    pub output: Shape,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl ConvGeom {
    /// The geometry of `layer`, a convolution `conv`.
    pub fn of(conv: &Conv, layer: &Layer) -> Self {
        ConvGeom {
            input: layer.input,
            output: layer.output,
            k: conv.k,
            stride: conv.stride,
            pad: conv.pad,
            groups: conv.groups,
        }
    }

    /// Rows of the im2col matrix of one group: `C/groups * k * k`.
    pub fn col_rows(&self) -> usize {
        self.input.c / self.groups * self.k * self.k
    }

    /// Values of the im2col matrix of one group of one image.
    pub fn col_len(&self) -> usize {
        self.col_rows() * self.output.h * self.output.w
    }
}
