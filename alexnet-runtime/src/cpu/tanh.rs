//! The hyperbolic tangent on the CPU, element-wise; its gradient `dy * (1 - y^2)` reads
//! the output, as the generated kernel does.

use rayon::prelude::*;

use super::{CpuLayer, StageCx};
use crate::error::Result;
use crate::ir::Tanh;

/// Values per parallel task.
const CHUNK: usize = 1 << 14;

impl CpuLayer for Tanh {
    fn forward(
        &self,
        _s: &StageCx<'_>,
        x: &[f32],
        _params: &[&[f32]],
        y: &mut [f32],
    ) -> Result<()> {
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| {
                for (o, v) in y.iter_mut().zip(x) {
                    *o = v.tanh();
                }
            });
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
        s.dx(dx)?
            .par_chunks_mut(CHUNK)
            .zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
            .for_each(|(dx, (y, dy))| {
                for ((d, &v), &g) in dx.iter_mut().zip(y).zip(dy) {
                    *d = g * (1.0 - v * v);
                }
            });
        Ok(())
    }
}
