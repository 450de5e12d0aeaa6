//! Max and average pooling (no padding, floor rounding, overlapping windows allowed).

use rayon::prelude::*;

use crate::ir::Shape;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Avg,
}

pub fn forward(x: &[f32], y: &mut [f32], input: Shape, output: Shape, k: usize, stride: usize, kind: PoolKind) {
    let (h, w) = (input.h, input.w);
    let (p, q) = (output.h, output.w);
    let scale = 1.0 / (k * k) as f32;
    y.par_chunks_mut(p * q).zip(x.par_chunks(h * w)).for_each(|(out, plane)| {
        for oy in 0..p {
            for ox in 0..q {
                let (y0, x0) = (oy * stride, ox * stride);
                let v = match kind {
                    PoolKind::Max => {
                        let mut m = f32::NEG_INFINITY;
                        for ky in 0..k {
                            for v in &plane[(y0 + ky) * w + x0..(y0 + ky) * w + x0 + k] {
                                m = m.max(*v);
                            }
                        }
                        m
                    }
                    PoolKind::Avg => {
                        let mut acc = 0.0;
                        for ky in 0..k {
                            acc += plane[(y0 + ky) * w + x0..(y0 + ky) * w + x0 + k].iter().sum::<f32>();
                        }
                        acc * scale
                    }
                };
                out[oy * q + ox] = v;
            }
        }
    });
}
