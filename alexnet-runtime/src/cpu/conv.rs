//! Convolution on the CPU: im2col, then one GEMM per group, with bias and the fused ReLU
//! in the epilogue.

use rayon::prelude::*;

use super::gemm::{sgemm, Mat};
use super::pack::Freshness;
use super::packed::{self, Arith};
use super::winograd;
use super::{CpuLayer, StageCx};
use crate::error::Result;
use crate::ir::{Conv, Precision};
// A convolution's geometry: the same struct the generated GPU kernels are planned from.
use alexnet_core::kernels::gemm::Gemm as ConvGeom;

#[allow(clippy::too_many_arguments)]
/// `y = relu?(conv(x, w) + b)` for `batch` images. `threads` is the parallelism to use:
/// over images when the batch is large enough, inside each GEMM otherwise.
pub fn forward(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
    batch: usize,
    g: ConvGeom,
    relu: bool,
    threads: usize,
) {
    let (in_len, out_len) = (g.input.len(), g.output.len());
    if batch >= threads || threads <= 1 {
        y.par_chunks_mut(out_len)
            .zip(x.par_chunks(in_len))
            .with_min_len(1)
            .for_each_init(
                || vec![0.0f32; col_len(&g)],
                |col, (yi, xi)| image(xi, w, b, yi, &g, relu, col, 1),
            );
    } else {
        let mut col = vec![0.0f32; col_len(&g)];
        for (yi, xi) in y.chunks_mut(out_len).zip(x.chunks(in_len)) {
            image(xi, w, b, yi, &g, relu, &mut col, threads);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn image(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
    g: &ConvGeom,
    relu: bool,
    col: &mut [f32],
    threads: usize,
) {
    let cg = g.input.c / g.groups;
    let og = g.output.c / g.groups;
    let pq = g.output.h * g.output.w;
    let kk = g.kcol();
    for grp in 0..g.groups {
        let xg = &x[grp * cg * g.input.h * g.input.w..(grp + 1) * cg * g.input.h * g.input.w];
        im2col(xg, cg, g, col, threads);
        let yg = &mut y[grp * og * pq..(grp + 1) * og * pq];
        for (o, row) in yg.chunks_mut(pq).enumerate() {
            row.fill(b[grp * og + o]);
        }
        let wg = &w[grp * og * kk..(grp + 1) * og * kk];
        sgemm(
            Mat::row_major(wg, og, kk, kk),
            Mat::row_major(col, kk, pq, pq),
            yg,
            pq,
            true,
            threads,
        );
        if relu {
            yg.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }
}

/// [`forward`] on the packed micro-kernel (`packed/`): each image's im2col columns
/// gathered a block at a time straight into the kernel's layout, the filters `w` read in
/// place, bias and the fused ReLU in the kernel's epilogue. With `bf16`
/// ([`Precision::Bf16`]) the inputs are rounded to bf16 as they are padded, and either
/// `pairs` holds the filters in bf16 pairs ([`packed::pack_pairs`], each group's after the
/// other; `w` is then not read) for a kernel with `vdpbf16ps` ([`packed::Kernel::dots`]:
/// the same bits as the f32 kernel's, twice its flops on the CPUs where it is chosen), or
/// `w` holds filters already rounded ([`packed::round_bf16`]): bf16 operands in f32 words,
/// whose products (exact in f32) run on the f32 kernel at its full rate, where the
/// widening bf16 kernel cost 5-7% on AlexNet's conv1 and conv2.
#[allow(clippy::too_many_arguments)]
pub fn forward_packed(
    bf16: bool,
    pairs: Option<&[u32]>,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
    batch: usize,
    g: ConvGeom,
    relu: bool,
    threads: usize,
) {
    let (in_len, out_len) = (g.input.len(), g.output.len());
    let (taps, corners) = (taps(&g), corners(&g));
    let cx = PackedCx {
        taps: &taps,
        corners: &corners,
        bf16,
        kernel: packed::Kernel::best(),
        w,
        pairs,
        b,
        g: &g,
        relu,
    };
    if batch >= threads || threads <= 1 {
        y.par_chunks_mut(out_len)
            .zip(x.par_chunks(in_len))
            .with_min_len(1)
            .for_each(|(yi, xi)| cx.image(xi, yi, 1));
    } else {
        for (yi, xi) in y.chunks_mut(out_len).zip(x.chunks(in_len)) {
            cx.image(xi, yi, threads);
        }
    }
}

/// What every image of [`forward_packed`] shares.
struct PackedCx<'a> {
    /// Inputs rounded to bf16 as they are padded.
    bf16: bool,
    kernel: packed::Kernel,
    /// As [`forward_packed`]'s `w`.
    w: &'a [f32],
    /// The filters in bf16 pairs, each group's packed by [`packed::pack_pairs`] one after
    /// the other (in bf16 on a kernel with dot products).
    pairs: Option<&'a [u32]>,
    b: &'a [f32],
    g: &'a ConvGeom,
    relu: bool,
    /// The gather's rows ([`taps`]) and columns ([`corners`]).
    taps: &'a [u32],
    corners: &'a [u32],
}

/// Where each output position's window starts in a zero-padded plane of the input
/// (`(oy * stride) * padded_width + ox * stride`): the columns of a [`packed::Gather`].
fn corners(g: &ConvGeom) -> Vec<u32> {
    let wp = g.input.w + 2 * g.pad;
    let (p, q, s) = (g.output.h, g.output.w, g.stride);
    (0..p * q)
        .map(|n| ((n / q * s) * wp + n % q * s) as u32)
        .collect()
}

/// Where each filter tap `(c, ky, kx)` of a group sits in its zero-padded planes: the rows
/// of a [`packed::Gather`].
fn taps(g: &ConvGeom) -> Vec<u32> {
    let (hp, wp, k) = (g.input.h + 2 * g.pad, g.input.w + 2 * g.pad, g.k);
    (0..g.kcol())
        .map(|r| {
            let (c, ky, kx) = (r / (k * k), r / k % k, r % k);
            ((c * hp + ky) * wp + kx) as u32
        })
        .collect()
}

/// One group of one image zero-padded (`[c][h + 2 pad][w + 2 pad]`), its values rounded to
/// bf16 with `bf16`; the image itself when there is neither.
fn padded<'a>(x: &'a [f32], cg: usize, g: &ConvGeom, bf16: bool) -> std::borrow::Cow<'a, [f32]> {
    let (h, w, pad) = (g.input.h, g.input.w, g.pad);
    if pad == 0 && !bf16 {
        return std::borrow::Cow::Borrowed(&x[..cg * h * w]);
    }
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let mut xp = vec![0.0f32; cg * hp * wp];
    for c in 0..cg {
        for iy in 0..h {
            let dst = &mut xp[(c * hp + iy + pad) * wp + pad..][..w];
            let src = &x[(c * h + iy) * w..][..w];
            if bf16 {
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = packed::round_bf16(v);
                }
            } else {
                dst.copy_from_slice(src);
            }
        }
    }
    std::borrow::Cow::Owned(xp)
}

impl PackedCx<'_> {
    /// One image: its groups on parallel threads when they share out evenly (a multiple
    /// of the thread count: each thread reads only its groups' filters), otherwise one
    /// after another with the threads splitting each product.
    fn image(&self, x: &[f32], y: &mut [f32], threads: usize) {
        let g = self.g;
        let group_out = g.output.c / g.groups * g.output.h * g.output.w;
        if threads > 1 && g.groups.is_multiple_of(threads) {
            y.par_chunks_mut(group_out)
                .enumerate()
                .with_min_len(1)
                .for_each(|(grp, yg)| self.group(x, grp, yg, 1));
        } else {
            for (grp, yg) in y.chunks_mut(group_out).enumerate() {
                self.group(x, grp, yg, threads);
            }
        }
    }

    /// Group `grp` of one image into `yg`, its part of the output.
    fn group(&self, x: &[f32], grp: usize, yg: &mut [f32], threads: usize) {
        let g = self.g;
        let cg = g.input.c / g.groups;
        let og = g.output.c / g.groups;
        let pq = g.output.h * g.output.w;
        let kk = g.kcol();
        let plane = g.input.h * g.input.w;
        let a_len = og * kk;
        let xg = &x[grp * cg * plane..(grp + 1) * cg * plane];
        let xp = padded(xg, cg, g, self.bf16);
        // bf16 operands in f32 words, or in pairs for `vdpbf16ps` where that pays (the
        // same bits as the f32 kernel's, at twice its flops there), the image's
        // neighbours paired so that most steps of K are one gather.
        // (Pairs on a kernel without dot products: the product asserts.)
        let (arith, a, paired) = match self.pairs {
            Some(p) => {
                let per = p.len() / g.groups;
                let a = packed::AOperand::Pairs(&p[grp * per..(grp + 1) * per]);
                (Arith::Bf16, a, Some(packed::pair_neighbours(&xp)))
            }
            _ => {
                let data = &self.w[grp * a_len..(grp + 1) * a_len];
                (Arith::F32, packed::AOperand::Rows { data, ld: kk }, None)
            }
        };
        let b = packed::Gather {
            src: &xp,
            rows: self.taps,
            cols: self.corners,
            paired: paired.as_deref(),
        };
        let ops = packed::Operands {
            arith,
            a,
            b: packed::BOperand::Gather(b),
            m: og,
            n: pq,
            k: kk,
        };
        let ep = packed::Epilogue {
            bias: Some(&self.b[grp * og..(grp + 1) * og]),
            relu: self.relu,
        };
        packed::gemm(self.kernel, ops, yg, pq, ep, threads);
    }
}

/// Gradients of a convolution for `batch` images: `dw`, `db` and `dx` (when wanted: conv1
/// needs none) are overwritten. `y` is the layer's output, needed to
/// apply the fused ReLU's mask to `dy`.
///
/// With more images than threads, the batch is cut into one contiguous range of images per
/// thread; each range accumulates its own weight and bias gradients, which are then added
/// in range order, so the sums are the same bits on every run with the same thread count.
/// With fewer, images run one after another and the threads split each GEMM.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    w: &[f32],
    y: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: &mut [f32],
    batch: usize,
    g: ConvGeom,
    relu: bool,
    threads: usize,
) {
    // Overwritten: the sums start from zero here.
    dw.fill(0.0);
    db.fill(0.0);
    if threads <= 1 || batch < threads {
        backward_images(x, w, y, dy, dx, dw, db, batch, g, relu, threads);
        return;
    }
    let (in_len, out_len) = (g.input.len(), g.output.len());
    let per = batch.div_ceil(threads);
    let ranges = batch.div_ceil(per);
    let dxs: Vec<Option<&mut [f32]>> = match dx {
        Some(d) => d[..batch * in_len]
            .chunks_mut(per * in_len)
            .map(Some)
            .collect(),
        None => (0..ranges).map(|_| None).collect(),
    };
    let parts: Vec<(Vec<f32>, Vec<f32>)> = dxs
        .into_par_iter()
        .enumerate()
        .with_min_len(1)
        .map(|(r, dxr)| {
            let (lo, hi) = (r * per, ((r + 1) * per).min(batch));
            let mut dwr = vec![0.0f32; dw.len()];
            let mut dbr = vec![0.0f32; db.len()];
            backward_images(
                &x[lo * in_len..hi * in_len],
                w,
                &y[lo * out_len..hi * out_len],
                &dy[lo * out_len..hi * out_len],
                dxr,
                &mut dwr,
                &mut dbr,
                hi - lo,
                g,
                relu,
                1,
            );
            (dwr, dbr)
        })
        .collect();
    for (dwr, dbr) in &parts {
        for (a, v) in dw.iter_mut().zip(dwr) {
            *a += v;
        }
        for (a, v) in db.iter_mut().zip(dbr) {
            *a += v;
        }
    }
}

/// [`backward`] for `batch` images one after another, with `threads` splitting each GEMM;
/// `dw` and `db` accumulated into.
#[allow(clippy::too_many_arguments)]
fn backward_images(
    x: &[f32],
    w: &[f32],
    y: &[f32],
    dy: &[f32],
    mut dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: &mut [f32],
    batch: usize,
    g: ConvGeom,
    relu: bool,
    threads: usize,
) {
    let (in_len, out_len) = (g.input.len(), g.output.len());
    let cg = g.input.c / g.groups;
    let og = g.output.c / g.groups;
    let pq = g.output.h * g.output.w;
    let kk = g.kcol();
    let (h, wd) = (g.input.h, g.input.w);
    let mut col = vec![0.0f32; col_len(&g)];
    let mut dyr = vec![0.0f32; out_len];
    if let Some(dx) = dx.as_deref_mut() {
        dx[..batch * in_len].fill(0.0);
    }
    for n in 0..batch {
        let (xn, yn, dyn_) = (
            &x[n * in_len..(n + 1) * in_len],
            &y[n * out_len..(n + 1) * out_len],
            &dy[n * out_len..(n + 1) * out_len],
        );
        for ((d, &g_), &yv) in dyr.iter_mut().zip(dyn_).zip(yn) {
            *d = if relu && yv <= 0.0 { 0.0 } else { g_ };
        }
        for grp in 0..g.groups {
            let dyg = &dyr[grp * og * pq..(grp + 1) * og * pq];
            for (o, row) in dyg.chunks(pq).enumerate() {
                db[grp * og + o] += row.iter().sum::<f32>();
            }
            let xg = &xn[grp * cg * h * wd..(grp + 1) * cg * h * wd];
            im2col(xg, cg, &g, &mut col, threads);
            // dW_g += dY_g col^T
            sgemm(
                Mat::row_major(dyg, og, pq, pq),
                Mat::transposed(&col, pq, kk, pq),
                &mut dw[grp * og * kk..(grp + 1) * og * kk],
                kk,
                true,
                threads,
            );
            if let Some(dx) = dx.as_deref_mut() {
                // dcol = W_g^T dY_g, then folded back onto the image.
                let wg = &w[grp * og * kk..(grp + 1) * og * kk];
                sgemm(
                    Mat::transposed(wg, kk, og, kk),
                    Mat::row_major(dyg, og, pq, pq),
                    &mut col,
                    pq,
                    false,
                    threads,
                );
                let dxg =
                    &mut dx[n * in_len + grp * cg * h * wd..n * in_len + (grp + 1) * cg * h * wd];
                col2im(&col, cg, &g, dxg);
            }
        }
    }
}

/// Values of the im2col matrix of one group of one image.
fn col_len(g: &ConvGeom) -> usize {
    g.kcol() * g.output.h * g.output.w
}

/// Adds `col[(c*k + ky)*k + kx][oy*Q + ox]` back onto the image positions it was read from,
/// in that order (the bits do not depend on how the loops are cut); the columns that fall
/// inside the image are worked out per `kx`, so that the inner loop has no bounds test and
/// vectorises for stride 1.
fn col2im(col: &[f32], cg: usize, g: &ConvGeom, dx: &mut [f32]) {
    let (h, w, k, s, pad) = (g.input.h, g.input.w, g.k, g.stride, g.pad);
    let (p, q) = (g.output.h, g.output.w);
    for c in 0..cg {
        for ky in 0..k {
            for kx in 0..k {
                let row = &col[((c * k + ky) * k + kx) * p * q..][..p * q];
                let (lo, hi) = valid_columns(g, kx);
                if lo >= hi {
                    continue;
                }
                for oy in 0..p {
                    let iy = (oy * s + ky) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let dst = &mut dx[(c * h + iy as usize) * w..][..w];
                    let src = &row[oy * q + lo..oy * q + hi];
                    let start = lo * s + kx - pad;
                    if s == 1 {
                        for (d, v) in dst[start..start + (hi - lo)].iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        for (d, v) in dst[start..].iter_mut().step_by(s).zip(src) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

/// The output columns `lo..hi` whose input column `ox * stride + kx - pad` lies inside the
/// image.
fn valid_columns(g: &ConvGeom, kx: usize) -> (usize, usize) {
    let (w, s, pad, q) = (g.input.w, g.stride, g.pad, g.output.w);
    let lo = if kx >= pad { 0 } else { (pad - kx).div_ceil(s) };
    let hi = if w + pad > kx {
        q.min((w - 1 + pad - kx) / s + 1)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Unfolds `cg` channels of one image into `col[(c*k + ky)*k + kx][oy*Q + ox]`.
fn im2col(x: &[f32], cg: usize, g: &ConvGeom, col: &mut [f32], threads: usize) {
    let (h, w, k, s, pad) = (g.input.h, g.input.w, g.k, g.stride, g.pad);
    let (p, q) = (g.output.h, g.output.w);
    let fill_row = |r: usize, row: &mut [f32]| {
        let (c, ky, kx) = (r / (k * k), r / k % k, r % k);
        let plane = &x[c * h * w..(c + 1) * h * w];
        let (lo, hi) = valid_columns(g, kx);
        for oy in 0..p {
            let out = &mut row[oy * q..(oy + 1) * q];
            let iy = (oy * s + ky) as isize - pad as isize;
            if iy < 0 || iy >= h as isize {
                out.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * w..(iy as usize + 1) * w];
            out[..lo].fill(0.0);
            out[hi..].fill(0.0);
            if s == 1 {
                let start = lo + kx - pad;
                out[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
            } else {
                for (ox, v) in out[lo..hi].iter_mut().enumerate() {
                    *v = src[(ox + lo) * s + kx - pad];
                }
            }
        }
    };
    let rows = cg * k * k;
    let col = &mut col[..rows * p * q];
    if threads > 1 {
        col.par_chunks_mut(p * q)
            .enumerate()
            .for_each(|(r, row)| fill_row(r, row));
    } else {
        col.chunks_mut(p * q)
            .enumerate()
            .for_each(|(r, row)| fill_row(r, row));
    }
}

impl CpuLayer for Conv {
    fn forward(&self, s: &StageCx<'_>, x: &[f32], params: &[&[f32]], y: &mut [f32]) -> Result<()> {
        let (w, b) = s.weight_and_bias(params)?;
        let g = self.gemm(s.layer.input, s.layer.output);
        if winograd::applies(&g, s.conv, s.precision, s.batch) {
            let (arith, fresh) = match s.precision {
                Precision::Bf16 => (Arith::Bf16, s.bf16_freshness()),
                _ => (Arith::F32, Freshness::Compare),
            };
            // The geometry too: a buffer reused for this key keeps its layout's zeros.
            let (cg, og) = (g.input.c / g.groups, g.output.c / g.groups);
            let key = format!(
                "{}/winograd/{arith:?}/k{}g{}c{cg}o{og}",
                s.layer.name, g.k, g.groups
            );
            let u = s.packs.get_into(&key, w, fresh, |w, out| {
                winograd::transform_filters(w, &g, arith, out)
            });
            let call = winograd::Call {
                x,
                u: &u.data,
                b,
                batch: s.batch,
                g,
                relu: s.fused_relu,
                arith,
                threads: s.threads,
            };
            winograd::forward(call, y);
        } else if s.precision == Precision::Bf16 && packed::Kernel::best().dots() {
            let key = format!("{}/bf16-pairs", s.layer.name);
            let (og, kk) = (g.output.c / g.groups, g.kcol());
            let wp = s.packs.get(&key, w, s.bf16_freshness(), |w| {
                w.chunks(og * kk)
                    .flat_map(|wg| packed::pack_pairs(wg, og, kk, kk))
                    .collect::<Vec<u32>>()
            });
            let relu = s.fused_relu;
            forward_packed(
                true,
                Some(&wp.data),
                x,
                w,
                b,
                y,
                s.batch,
                g,
                relu,
                s.threads,
            );
        } else if s.precision == Precision::Bf16 {
            let key = format!("{}/bf16", s.layer.name);
            let wr = s.packs.get(&key, w, s.bf16_freshness(), |w| {
                w.iter()
                    .map(|&v| packed::round_bf16(v))
                    .collect::<Vec<f32>>()
            });
            let relu = s.fused_relu;
            forward_packed(true, None, x, &wr.data, b, y, s.batch, g, relu, s.threads);
        } else if s.conv.packed() {
            // The filters read where they are: nothing to pack, or to compare with them.
            let relu = s.fused_relu;
            forward_packed(false, None, x, w, b, y, s.batch, g, relu, s.threads);
        } else {
            forward(x, w, b, y, s.batch, g, s.fused_relu, s.threads);
        }
        Ok(())
    }

    fn backward(
        &self,
        s: &StageCx<'_>,
        x: &[f32],
        y: &[f32],
        dy: &[f32],
        params: &[&[f32]],
        dx: Option<&mut [f32]>,
        dparams: &mut [&mut [f32]],
    ) -> Result<()> {
        let (w, dw, db) = s.learned(params, dparams)?;
        let g = self.gemm(s.layer.input, s.layer.output);
        backward(x, w, y, dy, dx, dw, db, s.batch, g, s.fused_relu, s.threads);
        Ok(())
    }
}
