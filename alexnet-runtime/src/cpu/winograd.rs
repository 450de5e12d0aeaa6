//! Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2015) for 3x3 stride-1 convolutions: each 4x4 block of
//! outputs takes 36 multiplies per input channel instead of 144. AlexNet's conv3-conv5 are
//! such layers and hold 47% of its multiply-adds.
//!
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for a 6x6 input tile `d` and a 3x3 filter `g`. Summed
//! over input channels, the element-wise product becomes 36 independent matrix products
//! `M[ξ] = U[ξ] V[ξ]` (output channels x input channels times input channels x tiles), run by
//! the backend's GEMM. The filters' transform `U` is cached between calls (see
//! [`PackCache`](super::pack::PackCache)); the input transform `V` and the output transform
//! run per call, on 16 tiles at a time.
//!
//! The points 0, ±1, ±2 and ∞ keep the transforms' coefficients small; the error this adds
//! on AlexNet's layers is measured by tests/cpu_layers.rs (`winograd_error_on_alexnet`)
//! and stated in docs/benchmarks.md.

use rayon::prelude::*;

use super::gemm::{sgemm, Mat};
use super::ConvAlgorithm;
use alexnet_core::kernels::gemm::Gemm as ConvGeom;

/// Outputs per tile side.
const M: usize = 4;
/// Input tile side: `M + 3 - 1`.
const A: usize = 6;
/// Elements of a transformed tile.
const XI: usize = A * A;

/// Whether this layer runs as Winograd under `choice`: only when asked for
/// ([`ConvAlgorithm::Winograd`]), and then on every 3x3 stride-1 layer.
/// [`ConvAlgorithm::Auto`] does not take it: on this project's 2-core machine
/// (`cargo bench --bench cpu_conv`, docs/benchmarks.md) it measured slower than im2col +
/// GEMM on AlexNet's conv3-conv5 at batch 1 and 16 in most runs; the transformed input and
/// products (2.25x the data of the output, all of it through memory) cost more than the
/// 4x fewer multiplies save.
pub fn applies(g: &ConvGeom, choice: ConvAlgorithm) -> bool {
    g.k == 3 && g.stride == 1 && choice == ConvAlgorithm::Winograd
}

/// The filters `w` (`[O][C/groups][3][3]`) transformed: `U[group][ξ][o][c]`, where `o`
/// and `c` count within the group.
pub fn transform_filters(w: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (cg, og) = (g.input.c / g.groups, g.output.c / g.groups);
    let mut u = vec![0.0f32; g.groups * XI * og * cg];
    u.par_chunks_mut(XI * og * cg)
        .enumerate()
        .for_each(|(grp, ug)| {
            for o in 0..og {
                for c in 0..cg {
                    let f = &w[((grp * og + o) * cg + c) * 9..][..9];
                    // G f: 6x3, then (G f) Gᵀ: 6x6.
                    let mut gf = [[0.0f32; 3]; A];
                    for col in 0..3 {
                        let t = filter_col([f[col], f[3 + col], f[6 + col]]);
                        for (row, v) in t.iter().enumerate() {
                            gf[row][col] = *v;
                        }
                    }
                    for (row, r) in gf.iter().enumerate() {
                        let t = filter_col(*r);
                        for (col, v) in t.iter().enumerate() {
                            ug[((row * A + col) * og + o) * cg + c] = *v;
                        }
                    }
                }
            }
        });
    u
}

/// `G g` for one column `g` of a filter.
fn filter_col(g: [f32; 3]) -> [f32; A] {
    let [g0, g1, g2] = g;
    [
        g0 / 4.0,
        -(g0 + g1 + g2) / 6.0,
        -(g0 - g1 + g2) / 6.0,
        g0 / 24.0 + g1 / 12.0 + g2 / 6.0,
        g0 / 24.0 - g1 / 12.0 + g2 / 6.0,
        g2,
    ]
}

/// Tiles transformed together: the transforms run on `[f32; L]` lanes, which the compiler
/// turns into vector instructions.
const L: usize = 16;
type Lanes = [f32; L];

/// `Bᵀ d` on six lanes.
#[inline(always)]
fn bt(d: [&Lanes; A]) -> [Lanes; A] {
    let mut o = [[0.0f32; L]; A];
    for j in 0..L {
        let (d0, d1, d2, d3, d4, d5) = (d[0][j], d[1][j], d[2][j], d[3][j], d[4][j], d[5][j]);
        o[0][j] = 4.0 * d0 - 5.0 * d2 + d4;
        o[1][j] = -4.0 * (d1 + d2) + d3 + d4;
        o[2][j] = 4.0 * (d1 - d2) - d3 + d4;
        o[3][j] = 2.0 * (d3 - d1) - d2 + d4;
        o[4][j] = 2.0 * (d1 - d3) - d2 + d4;
        o[5][j] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    o
}

/// `Aᵀ m` on six lanes.
#[inline(always)]
fn at(m: [&Lanes; A]) -> [Lanes; M] {
    let mut o = [[0.0f32; L]; M];
    for j in 0..L {
        let (m0, m1, m2, m3, m4, m5) = (m[0][j], m[1][j], m[2][j], m[3][j], m[4][j], m[5][j]);
        let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
        o[0][j] = m0 + s12 + s34;
        o[1][j] = d12 + 2.0 * d34;
        o[2][j] = s12 + 4.0 * s34;
        o[3][j] = d12 + 8.0 * d34 + m5;
    }
    o
}

/// `Bᵀ d B` for `L` tiles: `d[r * A + c]` holds element (r, c) of every tile.
fn input_tile(d: &[Lanes; XI]) -> [Lanes; XI] {
    let mut t = [[0.0f32; L]; XI];
    for c in 0..A {
        let col = bt(std::array::from_fn(|r| &d[r * A + c]));
        for (r, v) in col.into_iter().enumerate() {
            t[r * A + c] = v;
        }
    }
    let mut v = [[0.0f32; L]; XI];
    for r in 0..A {
        let row = bt(std::array::from_fn(|c| &t[r * A + c]));
        v[r * A..(r + 1) * A].copy_from_slice(&row);
    }
    v
}

/// `Aᵀ m A` for `L` tiles: element (r, c) of the 4x4 outputs in `[r * M + c]`.
fn output_tile(m: &[Lanes; XI]) -> [Lanes; M * M] {
    let mut t = [[0.0f32; L]; A * M];
    for r in 0..A {
        let row = at(std::array::from_fn(|c| &m[r * A + c]));
        t[r * M..(r + 1) * M].copy_from_slice(&row);
    }
    let mut o = [[0.0f32; L]; M * M];
    for c in 0..M {
        let col = at(std::array::from_fn(|r| &t[r * M + c]));
        for (r, v) in col.into_iter().enumerate() {
            o[r * M + c] = v;
        }
    }
    o
}

/// `y = relu?(conv(x, w) + b)` for `batch` images, with `u` from [`transform_filters`].
// The tile loops index a lane (the second index) of `[Lanes; N]` arrays, which no
// iterator over one array expresses.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
pub fn forward(
    x: &[f32],
    u: &[f32],
    b: &[f32],
    y: &mut [f32],
    batch: usize,
    g: ConvGeom,
    relu: bool,
    threads: usize,
) {
    let (c, h, wd) = (g.input.c, g.input.h, g.input.w);
    let (o, p, q) = (g.output.c, g.output.h, g.output.w);
    let (cg, og) = (c / g.groups, o / g.groups);
    let (th, tw) = (p.div_ceil(M), q.div_ceil(M));
    let tiles = th * tw;
    let t = batch * tiles;
    // The zero-padded input plane that every tile reads from.
    let (ph, pw) = (M * th + 2, M * tw + 2);

    // V[c][ξ][t] for every input channel c (all groups).
    let mut v = vec![0.0f32; c * XI * t];
    v.par_chunks_mut(XI * t).enumerate().for_each(|(ch, vc)| {
        let mut padded = vec![0.0f32; ph * pw];
        let mut d = [[0.0f32; L]; XI];
        for n in 0..batch {
            let plane = &x[(n * c + ch) * h * wd..][..h * wd];
            for (r, row) in padded.chunks_mut(pw).enumerate() {
                row.fill(0.0);
                let iy = r as isize - g.pad as isize;
                if iy >= 0 && (iy as usize) < h {
                    let src = &plane[iy as usize * wd..][..wd];
                    let lo = g.pad.min(pw);
                    let len = wd.min(pw - lo);
                    row[lo..lo + len].copy_from_slice(&src[..len]);
                }
            }
            for t0 in (0..tiles).step_by(L) {
                let len = L.min(tiles - t0);
                for lane in 0..len {
                    let (ty, tx) = ((t0 + lane) / tw, (t0 + lane) % tw);
                    let base = ty * M * pw + tx * M;
                    for r in 0..A {
                        let src = &padded[base + r * pw..][..A];
                        for (cc, val) in src.iter().enumerate() {
                            d[r * A + cc][lane] = *val;
                        }
                    }
                }
                let out = input_tile(&d);
                for (xi, lanes) in out.iter().enumerate() {
                    vc[xi * t + n * tiles + t0..][..len].copy_from_slice(&lanes[..len]);
                }
            }
        }
    });

    // M[o][ξ][t] = U[group][ξ] V[group's channels][ξ]: an output channel's 36 rows lie
    // together for the output transform. The products run one after another, each split
    // over the threads by rows of M.
    let mut m = vec![0.0f32; o * XI * t];
    for grp in 0..g.groups {
        for xi in 0..XI {
            let ui = &u[(grp * XI + xi) * og * cg..][..og * cg];
            let vi = &v[grp * cg * XI * t + xi * t..];
            sgemm(
                Mat::row_major(ui, og, cg, cg),
                Mat::row_major(vi, cg, t, XI * t),
                &mut m[grp * og * XI * t + xi * t..],
                XI * t,
                false,
                threads,
            );
        }
    }
    // Aᵀ M A per output plane, plus bias and ReLU.
    y[..batch * o * p * q]
        .par_chunks_mut(p * q)
        .enumerate()
        .for_each(|(plane_i, yp)| {
            let (n, oc) = (plane_i / o, plane_i % o);
            let bias = b[oc];
            let mut d = [[0.0f32; L]; XI];
            for t0 in (0..tiles).step_by(L) {
                let len = L.min(tiles - t0);
                for (xi, lanes) in d.iter_mut().enumerate() {
                    let src = &m[(oc * XI + xi) * t + n * tiles + t0..][..len];
                    lanes[..len].copy_from_slice(src);
                }
                let out = output_tile(&d);
                for lane in 0..len {
                    let (ty, tx) = ((t0 + lane) / tw, (t0 + lane) % tw);
                    for r in 0..M.min(p - ty * M) {
                        let row = &mut yp[(ty * M + r) * q + tx * M..];
                        for (cc, val) in row.iter_mut().take(M.min(q - tx * M)).enumerate() {
                            let s = out[r * M + cc][lane] + bias;
                            *val = if relu { s.max(0.0) } else { s };
                        }
                    }
                }
            }
        });
}
