//! Local response normalisation across channels, with a sliding window sum of squares.

use rayon::prelude::*;

use super::packed::with_scratch;
use super::{pool, CpuLayer, StageCx};
use crate::error::Result;
use crate::ir::{Lrn, Pool, Shape};

#[derive(Clone, Copy, Debug)]
pub struct LrnParams {
    pub size: usize,
    pub alpha: f32,
    pub beta: f32,
    pub k: f32,
    /// The window stays inside each of this many equal channel groups (towers).
    pub channel_groups: usize,
}

impl LrnParams {
    fn of(l: &Lrn) -> Self {
        LrnParams {
            size: l.size,
            alpha: l.alpha,
            beta: l.beta,
            k: l.k,
            channel_groups: l.channel_groups,
        }
    }
}

impl CpuLayer for Lrn {
    fn forward(&self, s: &StageCx<'_>, x: &[f32], _params: &[&[f32]], y: &mut [f32]) -> Result<()> {
        match s.pool {
            Some((pool, output)) => {
                forward_pooled(x, y, s.layer.input, LrnParams::of(self), pool, output)
            }
            None => forward(x, y, s.layer.input, LrnParams::of(self)),
        }
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
        backward(x, dy, s.dx(dx)?, s.layer.input, LrnParams::of(self));
        Ok(())
    }
}

/// Pixels of a plane normalised together: long enough to vectorise without a tail on
/// every image row, short enough that the squares of a group's channels stay in L1/L2.
const CHUNK: usize = 512;

/// `y[c] = x[c] / (k + alpha / size * sum_{|c' - c| <= size/2, same group} x[c']^2)^beta`.
/// Each (image, channel group) is an independent task: in NCHW its channels are one
/// contiguous block, so a split network's two towers normalise in parallel even at batch 1.
pub fn forward(x: &[f32], y: &mut [f32], shape: Shape, p: LrnParams) {
    let (h, w) = (shape.h, shape.w);
    let cg = shape.c / p.channel_groups;
    let len = cg * h * w;
    y.par_chunks_mut(len).zip(x.par_chunks(len)).for_each_init(
        || {
            let n = CHUNK.min(h * w);
            (vec![0.0f32; cg * n], vec![0.0f32; n])
        },
        |(sq, sum), (yb, xb)| block(xb, yb, sq, sum, (cg, h, w), p),
    );
}

/// [`forward`] and then [`pool::forward`] with `pool` to `output` per image, in one
/// pass (the inference stage `lrn + pool`, [`crate::ir::Plan::inference_stages`]): each
/// (image, channel group) block is normalised into a thread's scratch, still in cache,
/// and pooled from there; the normalised values are never stored. The same bits as the
/// two layers apart.
pub fn forward_pooled(
    x: &[f32],
    y: &mut [f32],
    shape: Shape,
    p: LrnParams,
    pool: Pool,
    output: Shape,
) {
    let (h, w) = (shape.h, shape.w);
    let cg = shape.c / p.channel_groups;
    let (len, out_len) = (cg * h * w, cg * output.h * output.w);
    y.par_chunks_mut(out_len)
        .zip(x.par_chunks(len))
        .for_each_init(
            || {
                let n = CHUNK.min(h * w);
                (vec![0.0f32; cg * n], vec![0.0f32; n], vec![0.0f32; w])
            },
            |(sq, sum, cols), (yb, xb)| {
                // The thread's kept scratch: a fresh block (580 kB for conv1's towers) cost
                // more in page faults than the pass saves.
                with_scratch(len, |normalised| {
                    block(xb, normalised, sq, sum, (cg, h, w), p);
                    pool::pool_planes(
                        normalised,
                        yb,
                        cols,
                        shape,
                        output,
                        pool.k,
                        pool.stride,
                        pool::kind(&pool),
                    );
                })
            },
        );
}

super::simd::wide! {
    /// [`forward`] on one (image, channel group) block, in runs of [`CHUNK`] pixels.
    fn block(
        xb: &[f32],
        yb: &mut [f32],
        sq: &mut [f32],
        sum: &mut [f32],
        dims: (usize, usize, usize),
        p: LrnParams,
    ) {
        let (cg, h, w) = dims;
        let a = p.alpha / p.size as f32;
        let plane = h * w;
        for start in (0..plane).step_by(CHUNK) {
            let len = CHUNK.min(plane - start);
            let at = |ch: usize| ch * plane + start;
            squares(xb, &mut sq[..cg * len], cg, plane, start, len);
            window_sums(sq, cg, len, p.size / 2, &mut sum[..len], |ch, sum| {
                scale(
                    &mut yb[at(ch)..at(ch) + len],
                    &xb[at(ch)..at(ch) + len],
                    sum,
                    a,
                    p.k,
                    p.beta,
                );
            });
        }
    }
}

/// `sq[ch][j] = x[ch][start + j]^2` for `j < len` and the `cg` channels (planes of
/// `plane` values) of one group.
#[inline(always)]
fn squares(xb: &[f32], sq: &mut [f32], cg: usize, plane: usize, start: usize, len: usize) {
    for ch in 0..cg {
        let src = &xb[ch * plane + start..][..len];
        for (s, v) in sq[ch * len..(ch + 1) * len].iter_mut().zip(src) {
            *s = v * v;
        }
    }
}

/// Calls `f(ch, sum)` for each channel `ch < cg` in order, with `sum[j]` the sum of
/// `rows[c][j]` over the channels `c` within `half` of `ch` (a running sum: one row added
/// and one taken away per channel).
#[inline(always)]
fn window_sums(
    rows: &[f32],
    cg: usize,
    w: usize,
    half: usize,
    sum: &mut [f32],
    mut f: impl FnMut(usize, &[f32]),
) {
    sum.fill(0.0);
    for ch in 0..half.min(cg) {
        add(sum, &rows[ch * w..(ch + 1) * w], 1.0);
    }
    for ch in 0..cg {
        if ch + half < cg {
            add(sum, &rows[(ch + half) * w..(ch + half + 1) * w], 1.0);
        }
        if ch > half {
            add(sum, &rows[(ch - half - 1) * w..(ch - half) * w], -1.0);
        }
        f(ch, sum);
    }
}

#[inline(always)]
fn add(acc: &mut [f32], v: &[f32], sign: f32) {
    for (a, b) in acc.iter_mut().zip(v) {
        *a += sign * b;
    }
}

#[inline(always)]
fn scale(out: &mut [f32], x: &[f32], sum: &[f32], a: f32, k: f32, beta: f32) {
    if beta == 0.75 {
        // t^-0.75 = 1 / (sqrt(t) * sqrt(sqrt(t))): two vectorisable square roots instead of powf.
        for ((o, &v), &s) in out.iter_mut().zip(x).zip(sum) {
            // The running sum can drift a hair below zero from cancellation.
            let t = k + a * s.max(0.0);
            let r = t.sqrt();
            *o = v / (r * r.sqrt());
        }
    } else {
        for ((o, &v), &s) in out.iter_mut().zip(x).zip(sum) {
            *o = v * (k + a * s.max(0.0)).powf(-beta);
        }
    }
}

/// Gradient of LRN. With `s_i = k + a * sum_{j in N(i)} x_j^2` (a = alpha / size) and
/// `y_i = x_i s_i^-beta`, and a window symmetric within the channel group:
/// `dx_j = dy_j s_j^-beta - 2 a beta x_j sum_{i in N(j)} dy_i x_i s_i^(-beta-1)`.
/// `dx` is overwritten. Row by row, as the forward pass: the window sums run over rows of
/// a channel group and every other step is element-wise over a row (vectorisable), with
/// `s^-beta` from two square roots when beta is 0.75.
pub fn backward(x: &[f32], dy: &[f32], dx: &mut [f32], shape: Shape, p: LrnParams) {
    let (h, w) = (shape.h, shape.w);
    let cg = shape.c / p.channel_groups;
    let half = p.size / 2;
    let a = p.alpha / p.size as f32;
    let (beta, k) = (p.beta, p.k);
    let block = cg * h * w;
    dx.par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .zip(dy.par_chunks(block))
        .for_each_init(
            || {
                let rows = || vec![0.0f32; cg * w];
                (rows(), rows(), rows(), vec![0.0f32; w])
            },
            |(sq, pw, t, sum), ((dxb, xb), dyb)| {
                for row in 0..h {
                    let at = |ch: usize| ch * h * w + row * w;
                    squares(xb, sq, cg, h * w, row * w, w);
                    // pw = s^-beta, t = dy x s^(-beta-1) for every channel of the row.
                    window_sums(sq, cg, w, half, sum, |ch, sum| {
                        let (xr, dyr) = (&xb[at(ch)..at(ch) + w], &dyb[at(ch)..at(ch) + w]);
                        let (pr, tr) =
                            (&mut pw[ch * w..(ch + 1) * w], &mut t[ch * w..(ch + 1) * w]);
                        for j in 0..w {
                            let s = k + a * sum[j].max(0.0);
                            let pv = if beta == 0.75 {
                                let r = s.sqrt();
                                1.0 / (r * r.sqrt())
                            } else {
                                s.powf(-beta)
                            };
                            pr[j] = pv;
                            tr[j] = dyr[j] * xr[j] * pv / s;
                        }
                    });
                    window_sums(t, cg, w, half, sum, |ch, cross| {
                        let (xr, dyr) = (&xb[at(ch)..at(ch) + w], &dyb[at(ch)..at(ch) + w]);
                        let pr = &pw[ch * w..(ch + 1) * w];
                        let out = &mut dxb[at(ch)..at(ch) + w];
                        for j in 0..w {
                            out[j] = dyr[j] * pr[j] - 2.0 * a * beta * xr[j] * cross[j];
                        }
                    });
                }
            },
        );
}
