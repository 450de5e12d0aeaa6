//! ReLU and softmax.

use rayon::prelude::*;

use crate::ir::Shape;

pub fn relu(x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(1 << 16)
        .zip(x.par_chunks(1 << 16))
        .for_each(|(y, x)| {
            for (o, v) in y.iter_mut().zip(x) {
                *o = v.max(0.0);
            }
        });
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
