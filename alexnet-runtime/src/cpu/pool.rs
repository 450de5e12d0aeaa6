//! Max and average pooling (no padding, floor rounding, overlapping windows allowed).

use rayon::prelude::*;

use super::{CpuLayer, StageCx};
use crate::error::Result;
use crate::ir::{Pool, Shape};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Avg,
}

impl CpuLayer for Pool {
    fn forward(&self, s: &StageCx<'_>, x: &[f32], _params: &[&[f32]], y: &mut [f32]) -> Result<()> {
        let l = s.layer;
        forward(x, y, l.input, l.output, self.k, self.stride, kind(self));
        Ok(())
    }

    fn backward(
        &self,
        s: &StageCx<'_>,
        x: &[f32],
        _y: &[f32],
        dy: &[f32],
        _params: &[&[f32]],
        dx: Option<&mut [f32]>,
        _dparams: &mut [&mut [f32]],
    ) -> Result<()> {
        let l = s.layer;
        let dx = s.dx(dx)?;
        backward(
            x,
            dy,
            dx,
            l.input,
            l.output,
            self.k,
            self.stride,
            kind(self),
        );
        Ok(())
    }
}

pub fn kind(p: &Pool) -> PoolKind {
    if p.max {
        PoolKind::Max
    } else {
        PoolKind::Avg
    }
}

/// Each output row reduces its `k` input rows column-wise first (contiguous, vectorisable),
/// then slides the window along that reduced row.
pub fn forward(
    x: &[f32],
    y: &mut [f32],
    input: Shape,
    output: Shape,
    k: usize,
    stride: usize,
    kind: PoolKind,
) {
    let (h, w) = (input.h, input.w);
    let (p, q) = (output.h, output.w);
    y.par_chunks_mut(p * q)
        .zip(x.par_chunks(h * w))
        .for_each_init(
            || vec![0.0f32; w],
            |cols, (out, plane)| pool_planes(plane, out, cols, input, output, k, stride, kind),
        );
}

/// [`forward`] on consecutive planes of one thread: `planes` holds whole `input` planes
/// (channels), `out` the same number of `output` planes; `cols` is scratch of `input.w`
/// values. The LRN's fused stage pools its normalised channels with it.
#[allow(clippy::too_many_arguments)]
pub fn pool_planes(
    planes: &[f32],
    out: &mut [f32],
    cols: &mut [f32],
    input: Shape,
    output: Shape,
    k: usize,
    stride: usize,
    kind: PoolKind,
) {
    let (h, w) = (input.h, input.w);
    let (p, q) = (output.h, output.w);
    let scale = 1.0 / (k * k) as f32;
    for (plane, out) in planes.chunks_exact(h * w).zip(out.chunks_exact_mut(p * q)) {
        for oy in 0..p {
            let rows = &plane[oy * stride * w..(oy * stride + k) * w];
            cols.copy_from_slice(&rows[..w]);
            for r in rows.chunks_exact(w).skip(1) {
                match kind {
                    PoolKind::Max => cols.iter_mut().zip(r).for_each(|(c, v)| *c = c.max(*v)),
                    PoolKind::Avg => cols.iter_mut().zip(r).for_each(|(c, v)| *c += v),
                }
            }
            for (ox, o) in out[oy * q..(oy + 1) * q].iter_mut().enumerate() {
                let win = &cols[ox * stride..ox * stride + k];
                *o = match kind {
                    PoolKind::Max => win.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                    PoolKind::Avg => win.iter().sum::<f32>() * scale,
                };
            }
        }
    }
}

/// Gradient of pooling: max routes each output's gradient to the first maximum of its
/// window (the element the forward pass returned), average spreads it evenly. `dx` is
/// overwritten.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    input: Shape,
    output: Shape,
    k: usize,
    stride: usize,
    kind: PoolKind,
) {
    let (h, w) = (input.h, input.w);
    let (p, q) = (output.h, output.w);
    let scale = 1.0 / (k * k) as f32;
    dx.par_chunks_mut(h * w)
        .zip(x.par_chunks(h * w))
        .zip(dy.par_chunks(p * q))
        .for_each(|((dplane, plane), g)| {
            dplane.fill(0.0);
            for oy in 0..p {
                for ox in 0..q {
                    let (y0, x0) = (oy * stride, ox * stride);
                    let gv = g[oy * q + ox];
                    match kind {
                        PoolKind::Max => {
                            let mut best = (y0 * w + x0, f32::NEG_INFINITY);
                            for ky in 0..k {
                                for kx in 0..k {
                                    let i = (y0 + ky) * w + x0 + kx;
                                    if plane[i] > best.1 {
                                        best = (i, plane[i]);
                                    }
                                }
                            }
                            dplane[best.0] += gv;
                        }
                        PoolKind::Avg => {
                            for ky in 0..k {
                                for v in &mut dplane[(y0 + ky) * w + x0..(y0 + ky) * w + x0 + k] {
                                    *v += gv * scale;
                                }
                            }
                        }
                    }
                }
            }
        });
}
