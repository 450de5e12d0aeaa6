//! A direct, naive f64 implementation of every layer's forward pass, straight from the
//! definitions: the reference for tests/cpu_layers.rs and, differentiated numerically,
//! for tests/gradients.rs.

use alexnet::ir::{Conv, Layer, Lrn, Op, Pool};

/// The output of one layer (no fused ReLU) for `batch` images.
pub fn forward(l: &Layer, batch: usize, x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    let (i, o) = (l.input, l.output);
    let mut y = vec![f64::NAN; batch * o.len()];
    let at = |n: usize, c: usize, h: usize, wi: usize| x[((n * i.c + c) * i.h + h) * i.w + wi];
    for n in 0..batch {
        for c in 0..o.c {
            for p in 0..o.h {
                for q in 0..o.w {
                    let v: f64 = match l.op {
                        Op::Conv(Conv {
                            k,
                            stride,
                            pad,
                            groups,
                            ..
                        }) => {
                            let (cg, og) = (i.c / groups, o.c / groups);
                            let g = c / og;
                            let mut acc = b[c];
                            for ci in 0..cg {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let (iy, ix) = (
                                            (p * stride + ky) as isize - pad as isize,
                                            (q * stride + kx) as isize - pad as isize,
                                        );
                                        if iy >= 0
                                            && ix >= 0
                                            && (iy as usize) < i.h
                                            && (ix as usize) < i.w
                                        {
                                            let wv = w[((c * cg + ci) * k + ky) * k + kx];
                                            acc +=
                                                wv * at(n, g * cg + ci, iy as usize, ix as usize);
                                        }
                                    }
                                }
                            }
                            acc
                        }
                        Op::Pool(Pool {
                            max: true,
                            k,
                            stride,
                        }) => (0..k * k)
                            .map(|j| at(n, c, p * stride + j / k, q * stride + j % k))
                            .fold(f64::MIN, f64::max),
                        Op::Pool(Pool {
                            max: false,
                            k,
                            stride,
                        }) => {
                            (0..k * k)
                                .map(|j| at(n, c, p * stride + j / k, q * stride + j % k))
                                .sum::<f64>()
                                / (k * k) as f64
                        }
                        Op::Lrn(Lrn {
                            size,
                            alpha,
                            beta,
                            k,
                            channel_groups,
                        }) => {
                            let cg = i.c / channel_groups;
                            let (lo, hi) = (c / cg * cg, c / cg * cg + cg);
                            let half = size / 2;
                            let s: f64 = (c.saturating_sub(half).max(lo)..(c + half + 1).min(hi))
                                .map(|j| at(n, j, p, q).powi(2))
                                .sum();
                            at(n, c, p, q)
                                / (k as f64 + alpha as f64 / size as f64 * s).powf(beta as f64)
                        }
                        Op::Fc(_) => {
                            let wr = &w[c * i.len()..(c + 1) * i.len()];
                            b[c] + wr
                                .iter()
                                .zip(&x[n * i.len()..(n + 1) * i.len()])
                                .map(|(p, q)| p * q)
                                .sum::<f64>()
                        }
                        Op::Relu(_) => at(n, c, p, q).max(0.0),
                        Op::Tanh(_) => at(n, c, p, q).tanh(),
                        Op::Dropout(_) => at(n, c, p, q),
                        Op::Softmax(_) => {
                            let m = (0..i.c).map(|j| at(n, j, p, q)).fold(f64::MIN, f64::max);
                            let z: f64 = (0..i.c).map(|j| (at(n, j, p, q) - m).exp()).sum();
                            (at(n, c, p, q) - m).exp() / z
                        }
                    };
                    y[((n * o.c + c) * o.h + p) * o.w + q] = v;
                }
            }
        }
    }
    y
}
