//! Softmax over channels on the CPU. In training a final softmax folds into the loss
//! (`loss.rs`); its backward pass here serves the gradient checks.

use rayon::prelude::*;

use super::{CpuLayer, StageCx};
use crate::error::Result;
use crate::ir::{Shape, Softmax};

impl CpuLayer for Softmax {
    fn forward(&self, s: &StageCx<'_>, x: &[f32], _params: &[&[f32]], y: &mut [f32]) -> Result<()> {
        softmax(x, y, s.layer.input);
        Ok(())
    }

    fn backward(
        &self,
        s: &StageCx<'_>,
        _x: &[f32],
        y: &[f32],
        dy: &[f32],
        _params: &[&[f32]],
        dx: Option<&mut [f32]>,
        _dparams: &mut [&mut [f32]],
    ) -> Result<()> {
        softmax_backward(y, dy, s.dx(dx)?, s.layer.input);
        Ok(())
    }
}

/// Softmax over channels at each position, numerically stable (max subtracted).
pub fn softmax(x: &[f32], y: &mut [f32], shape: Shape) {
    let (c, hw) = (shape.c, shape.h * shape.w);
    y.par_chunks_mut(shape.len())
        .zip(x.par_chunks(shape.len()))
        .for_each(|(yi, xi)| {
            for p in 0..hw {
                let m = (0..c)
                    .map(|ch| xi[ch * hw + p])
                    .fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f64;
                for ch in 0..c {
                    let e = (xi[ch * hw + p] - m).exp();
                    yi[ch * hw + p] = e;
                    sum += e as f64;
                }
                let inv = (1.0 / sum) as f32;
                for ch in 0..c {
                    yi[ch * hw + p] *= inv;
                }
            }
        });
}

/// Gradient of softmax over channels from its output: `dx = y (dy - sum_c dy_c y_c)`.
pub fn softmax_backward(y: &[f32], dy: &[f32], dx: &mut [f32], shape: Shape) {
    let (c, hw) = (shape.c, shape.h * shape.w);
    for ((dxi, yi), dyi) in dx
        .chunks_mut(shape.len())
        .zip(y.chunks(shape.len()))
        .zip(dy.chunks(shape.len()))
    {
        for p in 0..hw {
            let dot: f64 = (0..c)
                .map(|ch| dyi[ch * hw + p] as f64 * yi[ch * hw + p] as f64)
                .sum();
            for ch in 0..c {
                let i = ch * hw + p;
                dxi[i] = (yi[i] as f64 * (dyi[i] as f64 - dot)) as f32;
            }
        }
    }
}
