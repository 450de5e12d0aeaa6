//! The ReLU on the CPU (a standalone one: after conv or fc it is fused into their stage).

use rayon::prelude::*;

use super::{CpuLayer, StageCx};
use crate::error::Result;
use crate::ir::Relu;

impl CpuLayer for Relu {
    fn forward(
        &self,
        _s: &StageCx<'_>,
        x: &[f32],
        _params: &[&[f32]],
        y: &mut [f32],
    ) -> Result<()> {
        relu(x, y);
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
        relu_backward(y, dy, s.dx(dx)?);
        Ok(())
    }
}

pub fn relu(x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(1 << 16)
        .zip(x.par_chunks(1 << 16))
        .for_each(|(y, x)| {
            for (o, v) in y.iter_mut().zip(x) {
                *o = v.max(0.0);
            }
        });
}

/// Gradient of ReLU from its output: `dx = dy` where `y > 0`, else 0.
pub fn relu_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((d, &g), &v) in dx.iter_mut().zip(dy).zip(y) {
        *d = if v > 0.0 { g } else { 0.0 };
    }
}
