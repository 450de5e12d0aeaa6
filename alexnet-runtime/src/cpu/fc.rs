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
    } else if batch <= packed::NARROW && packed::Kernel::best().avx512() {
        // Up to 16 images: every weight read once, broadcast against a vector of the
        // images' inputs (the weights stay where they are: no second copy).
        let xt = packed::pack_narrow(x, batch, inputs);
        let mut yt = vec![0.0f32; outputs * packed::NARROW];
        let dims = (outputs, inputs, inputs);
        packed::gemm_narrow(packed::Kernel::best(), w, dims, &xt, &mut yt, threads);
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
    if batch <= STREAM_MAX_BATCH {
        // A few images: both products stream the weights row by row (see below).
        weight_grad(&dyr, x, dw, batch, inputs, outputs);
        if let Some(dx) = dx {
            data_grad(&dyr, w, dx, batch, inputs, outputs);
        }
        return;
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

/// Batches up to which the backward products stream the weights themselves: at batch 8
/// sgemm wrote fc6's 151 MB weight gradient in 25 ms and read its weights for the input
/// gradient in 32 ms (5-6 GB/s; its small-M products are not bandwidth-bound).
const STREAM_MAX_BATCH: usize = 16;

/// Output rows of the weight gradient per task.
const GRAD_ROWS: usize = 16;

/// Input columns of the input gradient per task (`batch x GRAD_COLS` sums in L1).
const GRAD_COLS: usize = 512;

/// `dW[o][i] = sum_n dY[n][o] X[n][i]`, written over `dw`, the images in order
/// (deterministic whatever the threads): each task a block of rows, each row written
/// once, with non-temporal stores where the CPU has AVX-512 (no read of the old values:
/// 151 MB for fc6) on its whole 64-byte lines.
fn weight_grad(
    dyr: &[f32],
    x: &[f32],
    dw: &mut [f32],
    batch: usize,
    inputs: usize,
    outputs: usize,
) {
    assert!((1..=STREAM_MAX_BATCH).contains(&batch) && x.len() >= batch * inputs);
    let streamed = cfg!(target_arch = "x86_64") && super::simd::avx512();
    dw[..outputs * inputs]
        .par_chunks_mut(GRAD_ROWS * inputs)
        .enumerate()
        .for_each(|(blk, rows)| {
            let mut c = [0.0f32; STREAM_MAX_BATCH];
            for (r, row) in rows.chunks_exact_mut(inputs).enumerate() {
                for (n, cn) in c[..batch].iter_mut().enumerate() {
                    *cn = dyr[n * outputs + blk * GRAD_ROWS + r];
                }
                let c = &c[..batch];
                if !streamed {
                    weight_grad_row(row, x, c, inputs);
                    continue;
                }
                // The head up to a 64-byte boundary and the tail after the last whole
                // line as usual, the lines between streamed.
                let head = ((64 - row.as_ptr() as usize % 64) % 64 / 4).min(inputs);
                let lines = (inputs - head) / 16 * 16;
                let (front, rest) = row.split_at_mut(head);
                let (body, tail) = rest.split_at_mut(lines);
                weight_grad_row(front, x, c, inputs);
                weight_grad_row(tail, &x[head + lines..], c, inputs);
                #[cfg(target_arch = "x86_64")]
                {
                    assert!((body.as_ptr() as usize).is_multiple_of(64) || lines == 0);
                    // SAFETY: `simd::avx512()` checked the CPU; `body` is whole lines from a
                    // 64-byte boundary, and `x` holds `batch` images of `inputs` values,
                    // of which it reads columns `head..head + lines` (asserted above).
                    unsafe { weight_grad_row_streamed(body, &x[head..], c, inputs) };
                }
            }
            #[cfg(target_arch = "x86_64")]
            if streamed {
                // SAFETY: an SSE fence, on a CPU that has AVX-512.
                unsafe { std::arch::x86_64::_mm_sfence() };
            }
        });
}

/// Part of a row of [`weight_grad`] (`c` the row's output gradient for each image) with
/// non-temporal stores: the same products and sums, in the same order, as
/// [`weight_grad_row`]. The caller fences after its last row.
///
/// # Safety
/// The CPU has AVX-512F; `row` starts on a 64-byte boundary and its length is a multiple
/// of 16; `x` holds `(c.len() - 1) * inputs + row.len()` values (image `n`'s values for
/// `row` from `n * inputs`); `c` is not empty.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weight_grad_row_streamed(row: &mut [f32], x: &[f32], c: &[f32], inputs: usize) {
    use std::arch::x86_64::*;
    let (xp, out) = (x.as_ptr(), row.as_mut_ptr());
    for at in (0..row.len()).step_by(16) {
        // SAFETY (every access): `at + 16 <= row.len()`, `n < c.len()`: within `x` and
        // `row`, as the caller promised.
        let mut acc = _mm512_mul_ps(_mm512_set1_ps(c[0]), unsafe { _mm512_loadu_ps(xp.add(at)) });
        for (n, &cn) in c.iter().enumerate().skip(1) {
            let xv = unsafe { _mm512_loadu_ps(xp.add(n * inputs + at)) };
            acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_set1_ps(cn), xv));
        }
        unsafe { _mm512_stream_ps(out.add(at), acc) };
    }
}

super::simd::wide! {
    /// Part of a row of [`weight_grad`] (`c` the row's output gradient for each image,
    /// `x` image `n`'s values for `row` from `n * inputs`): 16 values at a time, summed
    /// over the images in registers and stored once.
    fn weight_grad_row(row: &mut [f32], x: &[f32], c: &[f32], inputs: usize) {
        let (chunks, tail) = row.as_chunks_mut::<16>();
        for (k, d) in chunks.iter_mut().enumerate() {
            let at = k * 16;
            let x0 = &x[at..at + 16];
            let mut acc = [0.0f32; 16];
            for j in 0..16 {
                acc[j] = c[0] * x0[j];
            }
            for (n, &cn) in c.iter().enumerate().skip(1) {
                let xn = &x[n * inputs + at..n * inputs + at + 16];
                for j in 0..16 {
                    acc[j] += cn * xn[j];
                }
            }
            *d = acc;
        }
        let at = chunks.len() * 16;
        for (j, d) in tail.iter_mut().enumerate() {
            let mut v = c[0] * x[at + j];
            for (n, &cn) in c.iter().enumerate().skip(1) {
                v += cn * x[n * inputs + at + j];
            }
            *d = v;
        }
    }
}

/// `dX[n][i] = sum_o dY[n][o] W[o][i]`, written over `dx`, the outputs in order
/// (deterministic whatever the threads): each task a block of input columns, reading its
/// part of every weight row once while its `batch x GRAD_COLS` sums stay in L1.
fn data_grad(dyr: &[f32], w: &[f32], dx: &mut [f32], batch: usize, inputs: usize, outputs: usize) {
    let blocks: Vec<(usize, Vec<f32>)> = (0..inputs.div_ceil(GRAD_COLS))
        .into_par_iter()
        .map(|blk| {
            let i0 = blk * GRAD_COLS;
            let len = GRAD_COLS.min(inputs - i0);
            let mut sums = vec![0.0f32; batch * len];
            data_grad_cols(dyr, w, &mut sums, i0, len, inputs, outputs);
            (i0, sums)
        })
        .collect();
    for (i0, sums) in blocks {
        let len = sums.len() / batch;
        for (n, part) in sums.chunks_exact(len).enumerate() {
            dx[n * inputs + i0..n * inputs + i0 + len].copy_from_slice(part);
        }
    }
}

super::simd::wide! {
    /// [`data_grad`] on columns `i0 .. i0 + len`, into `sums` (`batch x len`, zeroed): the
    /// weight rows four at a time, each image's sums loaded and stored once per four rows.
    fn data_grad_cols(
        dyr: &[f32],
        w: &[f32],
        sums: &mut [f32],
        i0: usize,
        len: usize,
        inputs: usize,
        outputs: usize,
    ) {
        let mut o = 0;
        while o + 4 <= outputs {
            let rows: [&[f32]; 4] =
                std::array::from_fn(|k| &w[(o + k) * inputs + i0..(o + k) * inputs + i0 + len]);
            for (n, acc) in sums.chunks_exact_mut(len).enumerate() {
                let c: [f32; 4] = std::array::from_fn(|k| dyr[n * outputs + o + k]);
                for (j, a) in acc.iter_mut().enumerate() {
                    // The outputs in order, as one at a time would add them.
                    *a = (((*a + c[0] * rows[0][j]) + c[1] * rows[1][j]) + c[2] * rows[2][j])
                        + c[3] * rows[3][j];
                }
            }
            o += 4;
        }
        for o in o..outputs {
            let wr = &w[o * inputs + i0..o * inputs + i0 + len];
            for (n, acc) in sums.chunks_exact_mut(len).enumerate() {
                let c = dyr[n * outputs + o];
                for (a, &v) in acc.iter_mut().zip(wr) {
                    *a += c * v;
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0)
            .collect()
    }

    /// The streamed backward products against f64 sums, at batches up to
    /// [`STREAM_MAX_BATCH`], for row lengths that leave a head and a tail around the
    /// 64-byte lines and weight gradients starting at every offset within a line (the
    /// non-temporal stores' path where the CPU has AVX-512, the plain one otherwise: the
    /// same bits, compared below).
    #[test]
    fn streamed_weight_and_input_gradients_are_the_products() {
        for (batch, inputs, outputs) in [(1, 37, 5), (3, 130, 17), (8, 512, 33), (16, 75, 9)] {
            let x = values(batch * inputs, 1);
            let w = values(outputs * inputs, 2);
            let dy = values(batch * outputs, 3);
            let mut want_dw = vec![0.0f64; outputs * inputs];
            for (o, row) in want_dw.chunks_mut(inputs).enumerate() {
                for (i, v) in row.iter_mut().enumerate() {
                    *v = (0..batch)
                        .map(|n| dy[n * outputs + o] as f64 * x[n * inputs + i] as f64)
                        .sum();
                }
            }
            let mut first: Option<Vec<f32>> = None;
            for offset in 0..16 {
                let mut buf = vec![f32::NAN; outputs * inputs + offset];
                weight_grad(&dy, &x, &mut buf[offset..], batch, inputs, outputs);
                let got = &buf[offset..];
                for (g, w) in got.iter().zip(&want_dw) {
                    assert!((*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()), "{g} {w}");
                }
                match &first {
                    None => first = Some(got.to_vec()),
                    Some(f) => assert!(
                        f.iter().zip(got).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "batch {batch} inputs {inputs}: offset {offset} gives other bits"
                    ),
                }
            }
            let mut dx = vec![f32::NAN; batch * inputs];
            data_grad(&dy, &w, &mut dx, batch, inputs, outputs);
            for n in 0..batch {
                for i in 0..inputs {
                    let want: f64 = (0..outputs)
                        .map(|o| dy[n * outputs + o] as f64 * w[o * inputs + i] as f64)
                        .sum();
                    let got = dx[n * inputs + i] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{got} {want}"
                    );
                }
            }
        }
    }
}
