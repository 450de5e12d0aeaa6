//! Dropout on the CPU at inference, and as a stage of the gradient checks: the identity.
//! Training applies its mask through `Training::dropout` (`training.rs`), with the same
//! Philox stream as the GPU.

use super::{CpuLayer, StageCx};
use crate::error::Result;
use crate::ir::Dropout;

impl CpuLayer for Dropout {
    fn forward(
        &self,
        _s: &StageCx<'_>,
        x: &[f32],
        _params: &[&[f32]],
        y: &mut [f32],
    ) -> Result<()> {
        y.copy_from_slice(x);
        Ok(())
    }

    fn backward(
        &self,
        s: &StageCx<'_>,
        _x: &[f32],
        _y: &[f32],
        dy: &[f32],
        _params: &[&[f32]],
        dx: Option<&mut [f32]>,
        _dparams: &mut [&mut [f32]],
    ) -> Result<()> {
        s.dx(dx)?.copy_from_slice(dy);
        Ok(())
    }
}
