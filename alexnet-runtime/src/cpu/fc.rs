//! Fully connected layer: `y = relu?(x W^T + b)`.

use rayon::prelude::*;

use super::gemm::{sgemm_strided, Mat};
use super::packed::{self, Arith};
use super::{CpuLayer, StageCx};
use crate::error::Result;
use crate::ir::{Fc, Precision};

/// Up to this batch size the layer is a few matrix-vector products, bound by reading W:
/// each weight row is streamed once against every image.
const GEMV_MAX_BATCH: usize = 4;

#[allow(clippy::too_many_arguments)]
pub fn forward(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
    batch: usize,
    inputs: usize,
    outputs: usize,
    relu: bool,
    threads: usize,
) {
    if batch <= GEMV_MAX_BATCH {
        gemv(x, w, b, y, batch, inputs, outputs);
    } else if batch <= packed::NARROW && packed::Kernel::best() == packed::Kernel::Avx512 {
        // Up to 16 images: every weight read once, broadcast against a vector of the
        // images' inputs (the weights stay where they are: no second copy).
        let xt = packed::pack_narrow(x, batch, inputs);
        let mut yt = vec![0.0f32; outputs * packed::NARROW];
        let dims = (outputs, inputs, inputs);
        packed::gemm_narrow(packed::Kernel::Avx512, w, dims, &xt, &mut yt, threads);
        transpose_add_bias(&yt, packed::NARROW, b, y, outputs);
    } else {
        // y^T = W x^T into a row-major [outputs, batch] buffer, so that the threads split
        // W's rows between them and each weight is read once; then transpose and add bias.
        let mut yt = vec![0.0f32; outputs * batch];
        sgemm_strided(
            Mat::row_major(w, outputs, inputs, inputs),
            Mat::transposed(x, inputs, batch, inputs),
            &mut yt,
            batch,
            1,
            false,
            threads,
        );
        transpose_add_bias(&yt, batch, b, y, outputs);
    }
    if relu {
        y.iter_mut().for_each(|v| *v = v.max(0.0));
    }
}

/// `y[n][o] = yt[o][n] + b[o]`: `yt` row-major `[outputs][ld]`, `y` `[batch][outputs]`.
fn transpose_add_bias(yt: &[f32], ld: usize, b: &[f32], y: &mut [f32], outputs: usize) {
    for (n, row) in y.chunks_mut(outputs).enumerate() {
        for (o, v) in row.iter_mut().enumerate() {
            *v = yt[o * ld + n] + b[o];
        }
    }
}

/// [`forward`] with bf16 products and f32 sums ([`Precision::Bf16`]): `wt` the weights
/// packed once by `packed::pack_b_transposed` (half the bytes of f32 to stream at small
/// batches), the images packed per call; the output columns (the layer's units) split
/// between the threads in whole panels.
#[allow(clippy::too_many_arguments)]
pub fn forward_bf16(
    x: &[f32],
    wt: &[u32],
    b: &[f32],
    y: &mut [f32],
    batch: usize,
    inputs: usize,
    outputs: usize,
    relu: bool,
    threads: usize,
) {
    let (arith, kernel) = (Arith::Bf16, packed::Kernel::best());
    let mut xa = vec![0.0f32; arith.a_len(batch, inputs)];
    packed::pack_a(arith, x, batch, inputs, inputs, &mut xa);
    let panel = arith.steps(inputs) * packed::NR;
    let panels = outputs.div_ceil(packed::NR);
    let per = panels.div_ceil(4 * threads.max(1)).max(1);
    let parts: Vec<(usize, usize, Vec<f32>)> = (0..panels.div_ceil(per))
        .into_par_iter()
        .map(|chunk| {
            let (p0, p1) = (chunk * per, ((chunk + 1) * per).min(panels));
            let n0 = p0 * packed::NR;
            let n = (p1 * packed::NR).min(outputs) - n0;
            let mut t = vec![0.0f32; batch * n];
            let ops = packed::Operands {
                arith,
                a: packed::AOperand::Packed(&xa),
                b: packed::BOperand::Packed(&wt[p0 * panel..p1 * panel]),
                m: batch,
                n,
                k: inputs,
            };
            packed::gemm(kernel, ops, &mut t, n, packed::Epilogue::default(), 1);
            (n0, n, t)
        })
        .collect();
    for (n0, n, t) in parts {
        for (r, row) in t.chunks(n).enumerate() {
            let dst = &mut y[r * outputs + n0..][..n];
            for ((d, &v), &bias) in dst.iter_mut().zip(row).zip(&b[n0..n0 + n]) {
                let v = v + bias;
                *d = if relu { v.max(0.0) } else { v };
            }
        }
    }
}

/// Gradients of a fully connected layer: `dw`, `db` and `dx` (when wanted) overwritten;
/// `y` masks `dy` for the fused ReLU.
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
    inputs: usize,
    outputs: usize,
    relu: bool,
    threads: usize,
) {
    let dyr: Vec<f32> = dy[..batch * outputs]
        .iter()
        .zip(y)
        .map(|(&g, &v)| if relu && v <= 0.0 { 0.0 } else { g })
        .collect();
    db[..outputs].fill(0.0);
    for row in dyr.chunks(outputs) {
        for (b, g) in db.iter_mut().zip(row) {
            *b += g;
        }
    }
    // dW [O, I] = dY^T [O, N] x [N, I], written over what dW held (fc6's is 151 MB: no
    // pass to clear it, none to read it back)
    sgemm_strided(
        Mat::transposed(&dyr, outputs, batch, outputs),
        Mat::row_major(x, batch, inputs, inputs),
        dw,
        inputs,
        1,
        false,
        threads,
    );
    if let Some(dx) = dx {
        // dX [N, I] = dY [N, O] W [O, I]
        sgemm_strided(
            Mat::row_major(&dyr, batch, outputs, outputs),
            Mat::row_major(w, outputs, inputs, inputs),
            dx,
            inputs,
            1,
            false,
            threads,
        );
    }
}

fn gemv(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
    batch: usize,
    inputs: usize,
    outputs: usize,
) {
    const ROWS: usize = 32;
    let blocks: Vec<Vec<f32>> = w
        .par_chunks(ROWS * inputs)
        .enumerate()
        .map(|(blk, wb)| gemv_block(x, wb, &b[blk * ROWS..], batch, inputs))
        .collect();
    for (blk, vals) in blocks.iter().enumerate() {
        for (i, v) in vals.iter().enumerate() {
            let (r, n) = (i / batch, i % batch);
            y[n * outputs + blk * ROWS + r] = *v;
        }
    }
}

super::simd::wide! {
    /// One block of weight rows of [`gemv`] against every image: `[row][image]`.
    fn gemv_block(x: &[f32], wb: &[f32], b: &[f32], batch: usize, inputs: usize) -> Vec<f32> {
        let mut out = vec![0.0; (wb.len() / inputs) * batch];
        let mut rows = wb.chunks_exact(inputs).enumerate();
        // Four weight rows at a time share each load of the input.
        while let Some((r, w0)) = rows.next() {
            let rest: Vec<(usize, &[f32])> = rows.by_ref().take(3).collect();
            for n in 0..batch {
                let xn = &x[n * inputs..(n + 1) * inputs];
                if let [(_, w1), (_, w2), (_, w3)] = rest.as_slice() {
                    let d = dot4([w0, w1, w2, w3], xn);
                    for (j, v) in d.iter().enumerate() {
                        out[(r + j) * batch + n] = b[r + j] + v;
                    }
                } else {
                    out[r * batch + n] = b[r] + dot(w0, xn);
                    for &(rj, wj) in &rest {
                        out[rj * batch + n] = b[rj] + dot(wj, xn);
                    }
                }
            }
        }
        out
    }
}

/// Four dot products against the same vector, 8 partial sums each.
#[inline(always)]
fn dot4(w: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    let mut acc = [[0.0f32; 8]; 4];
    let (xc, xt) = x.as_chunks::<8>();
    let wc = w.map(|r| r.as_chunks::<8>());
    for (i, xv) in xc.iter().enumerate() {
        for (a, (rc, _)) in acc.iter_mut().zip(&wc) {
            let wv = &rc[i];
            for j in 0..8 {
                a[j] += wv[j] * xv[j];
            }
        }
    }
    let mut out = [0.0f32; 4];
    for (k, (a, (_, rt))) in acc.iter().zip(&wc).enumerate() {
        out[k] = a.iter().sum::<f32>() + rt.iter().zip(xt).map(|(p, q)| p * q).sum::<f32>();
    }
    out
}

/// A dot product with 16 independent partial sums, so the compiler can vectorise it.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ac, at) = a.as_chunks::<16>();
    let (bc, bt) = b.as_chunks::<16>();
    for (x, y) in ac.iter().zip(bc) {
        for j in 0..16 {
            acc[j] += x[j] * y[j];
        }
    }
    let tail: f32 = at.iter().zip(bt).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Bytes of a fully connected layer's parameters (`inputs x out` weights and `out` biases)
/// that its forward pass reads in `precision`: in bf16 the weights are streamed as packed
/// bf16 (see [`CpuLayer::forward`] below), the biases stay f32.
pub fn param_bytes(inputs: usize, out: usize, precision: Precision) -> usize {
    let weight = match precision {
        Precision::Bf16 => 2,
        _ => 4,
    };
    weight * inputs * out + 4 * out
}

impl CpuLayer for Fc {
    fn forward(&self, s: &StageCx<'_>, x: &[f32], params: &[&[f32]], y: &mut [f32]) -> Result<()> {
        let (w, b) = s.weight_and_bias(params)?;
        let inputs = s.layer.input.len();
        if s.precision == Precision::Bf16 {
            let key = format!("{}/{:?}", s.layer.name, Arith::Bf16);
            let wt = s.packs.get(&key, w, s.bf16_freshness(), |w| {
                packed::pack_b_transposed(Arith::Bf16, w, inputs, self.out, inputs)
            });
            forward_bf16(
                x,
                &wt.data,
                b,
                y,
                s.batch,
                inputs,
                self.out,
                s.fused_relu,
                s.threads,
            );
            return Ok(());
        }
        forward(
            x,
            w,
            b,
            y,
            s.batch,
            inputs,
            self.out,
            s.fused_relu,
            s.threads,
        );
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
        let inputs = s.layer.input.len();
        backward(
            x,
            w,
            y,
            dy,
            dx,
            dw,
            db,
            s.batch,
            inputs,
            self.out,
            s.fused_relu,
            s.threads,
        );
        Ok(())
    }
}
