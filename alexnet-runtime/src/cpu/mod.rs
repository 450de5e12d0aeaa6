//! The CPU backend: every layer in f32, convolution as im2col + GEMM (the `gemm` crate),
//! parallel over the batch or inside the GEMM with rayon. Deterministic: the same inputs
//! give the same bits on every run with the same thread count. It is the reference the
//! GPU backend is checked against and the fallback where there is no GPU.

mod blas;

mod conv;
mod elementwise;
mod fc;
mod gemm;
pub mod loss;
mod lrn;
mod pool;

use rayon::prelude::*;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ir::{Op, Plan, Stage};
use crate::optim::Sgd;
use crate::philox::{self, DropoutMask};

/// The CPU backend. Uses rayon's global thread pool (`RAYON_NUM_THREADS` sets its size).
#[derive(Clone, Debug)]
pub struct Cpu {
    _private: (),
}

impl Default for Cpu {
    fn default() -> Self {
        Cpu::new()
    }
}

impl Cpu {
    /// The CPU backend; loads OpenBLAS now if the machine has it (see [`Cpu::gemm`]).
    pub fn new() -> Self {
        let _ = blas::get();
        Cpu { _private: () }
    }

    /// The matrix multiply in use: OpenBLAS's sgemm when `libopenblas.so.0` is installed
    /// (and `ALEXNET_CPU_GEMM` is not `gemm`), the `gemm` crate otherwise.
    pub fn gemm(&self) -> String {
        blas::describe()
    }

    pub fn threads(&self) -> usize {
        rayon::current_num_threads()
    }
}

fn check_len(what: &str, buf: &[f32], want: usize) -> Result<()> {
    if buf.len() < want {
        return Err(Error::Backend(format!(
            "cpu: {what} buffer holds {} values, the stage needs {want}",
            buf.len()
        )));
    }
    Ok(())
}

/// One stage's gradients, for [`Cpu::backward_slices`].
pub struct StageGrads<'a> {
    /// Gradient with respect to the stage's input; `None` when not needed (the first
    /// layer). Overwritten.
    pub dx: Option<&'a mut [f32]>,
    /// Gradients of the weight and the bias (learned layers only), accumulated into.
    pub dparams: Vec<&'a mut [f32]>,
}

impl Cpu {
    /// The backward pass of one stage on `batch` images: from the stage's input `x`, its
    /// output `y` (which also gives the fused ReLU's mask), the gradient `dy` of its
    /// output and its parameters, the gradients of its input and parameters (accumulated
    /// into `dparams`; [`Backend::backward_stage`] zeroes them first). Dropout is the
    /// identity here: training applies its mask through [`Backend::dropout`]. Checked
    /// against finite differences in tests/gradients.rs.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_slices(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        x: &[f32],
        y: &[f32],
        dy: &[f32],
        params: &[&[f32]],
        grads: StageGrads<'_>,
    ) -> Result<()> {
        let layer = &plan.layers[stage.layer];
        let (n_in, n_out) = (batch * layer.input.len(), batch * layer.output.len());
        check_len(&format!("{} input", layer.name), x, n_in)?;
        check_len(&format!("{} output", layer.name), y, n_out)?;
        check_len(&format!("{} output gradient", layer.name), dy, n_out)?;
        let (x, y, dy) = (&x[..n_in], &y[..n_out], &dy[..n_out]);
        let threads = self.threads();
        let StageGrads { dx, mut dparams } = grads;
        let dx = match dx {
            Some(d) => {
                check_len(&format!("{} input gradient", layer.name), d, n_in)?;
                Some(&mut d[..n_in])
            }
            None => None,
        };
        let needs_dx = || {
            Error::Backend(format!(
                "cpu: {} needs an input gradient buffer",
                layer.name
            ))
        };
        match layer.op {
            Op::Conv {
                k,
                stride,
                pad,
                groups,
                ..
            } => {
                let (w, dw, db) = learned(layer, params, &mut dparams)?;
                let g = conv::ConvGeom {
                    input: layer.input,
                    output: layer.output,
                    k,
                    stride,
                    pad,
                    groups,
                };
                conv::backward(x, w, y, dy, dx, dw, db, batch, g, stage.fused_relu, threads);
            }
            Op::Fc { out } => {
                let (w, dw, db) = learned(layer, params, &mut dparams)?;
                fc::backward(
                    x,
                    w,
                    y,
                    dy,
                    dx,
                    dw,
                    db,
                    batch,
                    layer.input.len(),
                    out,
                    stage.fused_relu,
                    threads,
                );
            }
            Op::Relu => elementwise::relu_backward(y, dy, dx.ok_or_else(needs_dx)?),
            Op::MaxPool { .. } | Op::AvgPool { .. } => {
                let (k, stride, kind) =
                    pool::window(&layer.op).unwrap_or_else(|| unreachable!("a pool"));
                pool::backward(
                    x,
                    dy,
                    dx.ok_or_else(needs_dx)?,
                    layer.input,
                    layer.output,
                    k,
                    stride,
                    kind,
                )
            }
            Op::Lrn { .. } => {
                let p = lrn::LrnParams::of(&layer.op).unwrap_or_else(|| unreachable!("an lrn"));
                lrn::backward(x, dy, dx.ok_or_else(needs_dx)?, layer.input, p)
            }
            Op::Dropout { .. } => dx.ok_or_else(needs_dx)?.copy_from_slice(dy),
            Op::Softmax => {
                elementwise::softmax_backward(y, dy, dx.ok_or_else(needs_dx)?, layer.input)
            }
        }
        Ok(())
    }
}

/// A learned layer's weight and the gradients of its weight and bias.
fn learned<'p, 'g>(
    layer: &crate::ir::Layer,
    params: &[&'p [f32]],
    dparams: &'g mut [&mut [f32]],
) -> Result<(&'p [f32], &'g mut [f32], &'g mut [f32])> {
    match (params, dparams) {
        ([w, _], [dw, db]) => Ok((w, dw, db)),
        _ => Err(Error::Backend(format!(
            "cpu: {} needs a weight, a bias and their gradients",
            layer.name
        ))),
    }
}

impl Backend for Cpu {
    type Buffer = Vec<f32>;

    fn name(&self) -> String {
        format!("cpu ({} threads, {})", self.threads(), self.gemm())
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }

    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }

    fn write(&self, buf: &mut Vec<f32>, data: &[f32]) -> Result<()> {
        check_len("destination", buf, data.len())?;
        buf[..data.len()].copy_from_slice(data);
        Ok(())
    }

    fn download_prefix(&self, buf: &Vec<f32>, len: usize) -> Result<Vec<f32>> {
        Ok(buf[..len.min(buf.len())].to_vec())
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn forward_stage(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        input: &Vec<f32>,
        params: &[&Vec<f32>],
        output: &mut Vec<f32>,
    ) -> Result<()> {
        let layer = &plan.layers[stage.layer];
        let (n_in, n_out) = (batch * layer.input.len(), batch * layer.output.len());
        check_len(&format!("{} input", layer.name), input, n_in)?;
        check_len(&format!("{} output", layer.name), output, n_out)?;
        let (x, y) = (&input[..n_in], &mut output[..n_out]);
        let wb = || -> Result<(&[f32], &[f32])> {
            match params {
                [w, b] => Ok((w, b)),
                _ => Err(Error::Backend(format!(
                    "cpu: {} needs a weight and a bias, got {} tensors",
                    layer.name,
                    params.len()
                ))),
            }
        };
        let threads = self.threads();
        match layer.op {
            Op::Conv {
                k,
                stride,
                pad,
                groups,
                ..
            } => {
                let (w, b) = wb()?;
                let g = conv::ConvGeom {
                    input: layer.input,
                    output: layer.output,
                    k,
                    stride,
                    pad,
                    groups,
                };
                conv::forward(x, w, b, y, batch, g, stage.fused_relu, threads);
            }
            Op::Fc { out } => {
                let (w, b) = wb()?;
                fc::forward(
                    x,
                    w,
                    b,
                    y,
                    batch,
                    layer.input.len(),
                    out,
                    stage.fused_relu,
                    threads,
                );
            }
            Op::Relu => elementwise::relu(x, y),
            Op::MaxPool { .. } | Op::AvgPool { .. } => {
                let (k, stride, kind) =
                    pool::window(&layer.op).unwrap_or_else(|| unreachable!("a pool"));
                pool::forward(x, y, layer.input, layer.output, k, stride, kind)
            }
            Op::Lrn { .. } => {
                let p = lrn::LrnParams::of(&layer.op).unwrap_or_else(|| unreachable!("an lrn"));
                lrn::forward(x, y, layer.input, p)
            }
            Op::Dropout { .. } => y.copy_from_slice(x),
            Op::Softmax => elementwise::softmax(x, y, layer.input),
        }
        Ok(())
    }

    fn backward_stage(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        x: &Vec<f32>,
        y: &Vec<f32>,
        dy: &mut Vec<f32>,
        params: &[&Vec<f32>],
        dx: Option<&mut Vec<f32>>,
        dparams: &mut [&mut Vec<f32>],
    ) -> Result<()> {
        let params: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
        let mut grads: Vec<&mut [f32]> = dparams.iter_mut().map(|d| d.as_mut_slice()).collect();
        for g in grads.iter_mut() {
            g.fill(0.0);
        }
        self.backward_slices(
            plan,
            stage,
            batch,
            x,
            y,
            dy,
            &params,
            StageGrads {
                dx: dx.map(|d| d.as_mut_slice()),
                dparams: grads,
            },
        )
    }

    fn dropout(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        mask: DropoutMask,
        input: &Vec<f32>,
        output: &mut Vec<f32>,
    ) -> Result<()> {
        let layer = &plan.layers[stage.layer];
        let Op::Dropout { p } = layer.op else {
            return Err(Error::Backend(format!(
                "cpu: {} is not dropout",
                layer.name
            )));
        };
        let n = batch * layer.input.len();
        check_len(&format!("{} input", layer.name), input, n)?;
        check_len(&format!("{} output", layer.name), output, n)?;
        let towers = plan.tower.map_or(1, |t| t.of);
        let n32 = u32::try_from(n * towers).map_err(|_| {
            Error::Backend(format!(
                "cpu: {}: {} values exceed dropout's 32-bit counter",
                layer.name,
                n * towers
            ))
        })?;
        let (threshold, scale) = philox::dropout_threshold_scale(p);
        let id = stage.layer as u32;
        const CHUNK: usize = 1 << 14;
        output[..n]
            .par_chunks_mut(CHUNK)
            .zip(input[..n].par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (out, inp))| {
                for (j, (o, &v)) in out.iter_mut().zip(inp).enumerate() {
                    let i = plan.dropout_counter(stage.layer, c * CHUNK + j) as u32;
                    debug_assert!(i < n32);
                    *o = if mask.draw(id, i) >= threshold {
                        v * scale
                    } else {
                        0.0
                    };
                }
            });
        Ok(())
    }

    fn softmax_cross_entropy(
        &self,
        _plan: &Plan,
        batch: usize,
        classes: usize,
        logits: &Vec<f32>,
        labels: &Vec<f32>,
        dlogits: &mut Vec<f32>,
        stats: &mut Vec<f32>,
    ) -> Result<()> {
        check_len("logits", logits, batch * classes)?;
        check_len("labels", labels, batch)?;
        check_len("logit gradient", dlogits, batch * classes)?;
        check_len("loss statistics", stats, 3)?;
        let labels: Vec<usize> = labels[..batch]
            .iter()
            .map(|&l| {
                if l >= 0.0 && (l as usize) < classes && l.fract() == 0.0 {
                    Ok(l as usize)
                } else {
                    Err(Error::Backend(format!(
                        "cpu: label {l} is not a class index below {classes}"
                    )))
                }
            })
            .collect::<Result<_>>()?;
        let out = loss::softmax_cross_entropy(&logits[..batch * classes], &labels, classes);
        dlogits[..batch * classes].copy_from_slice(&out.dlogits);
        stats[..3].copy_from_slice(&[
            (out.loss * batch as f64) as f32,
            out.top1_correct as f32,
            out.top5_correct as f32,
        ]);
        Ok(())
    }

    fn gather(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        own: &Vec<f32>,
        other: &Vec<f32>,
        whole: &mut Vec<f32>,
    ) -> Result<()> {
        let bufs = [
            ("own", own.len(), false),
            ("other", other.len(), false),
            ("whole", whole.len(), true),
        ];
        let (t, p) = crate::backend::check_exchange("cpu", plan, layer, batch, &bufs)?;
        whole[..batch * 2 * p]
            .par_chunks_mut(2 * p)
            .zip(own.par_chunks(p).zip(other.par_chunks(p)))
            .for_each(|(w, (a, b))| {
                w[t * p..(t + 1) * p].copy_from_slice(a);
                w[(1 - t) * p..(2 - t) * p].copy_from_slice(b);
            });
        Ok(())
    }

    fn pack_gradient(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        dx: &Vec<f32>,
        packed: &mut Vec<f32>,
    ) -> Result<()> {
        let bufs = [("dx", dx.len(), true), ("packed", packed.len(), false)];
        let (t, p) = crate::backend::check_exchange("cpu", plan, layer, batch, &bufs)?;
        let other = 1 - t;
        packed[..batch * p]
            .par_chunks_mut(p)
            .zip(dx.par_chunks(2 * p))
            .for_each(|(out, d)| out.copy_from_slice(&d[other * p..(other + 1) * p]));
        Ok(())
    }

    fn reduce_gradient(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        dx: &Vec<f32>,
        received: &Vec<f32>,
        dy: &mut Vec<f32>,
    ) -> Result<()> {
        let bufs = [
            ("dx", dx.len(), true),
            ("received", received.len(), false),
            ("dy", dy.len(), false),
        ];
        let (t, p) = crate::backend::check_exchange("cpu", plan, layer, batch, &bufs)?;
        dy[..batch * p]
            .par_chunks_mut(p)
            .zip(dx.par_chunks(2 * p).zip(received.par_chunks(p)))
            .for_each(|(out, (d, r))| {
                for ((o, a), b) in out.iter_mut().zip(&d[t * p..(t + 1) * p]).zip(r) {
                    *o = a + b;
                }
            });
        Ok(())
    }

    fn sgd_step(
        &self,
        plan: &Plan,
        sgd: Sgd,
        lr_mults: &[f32],
        params: &mut [&mut Vec<f32>],
        velocity: &mut [&mut Vec<f32>],
        grads: &[&Vec<f32>],
    ) -> Result<()> {
        let counts = [params.len(), velocity.len(), grads.len(), lr_mults.len()];
        let specs = crate::backend::check_sgd_args("cpu", plan, counts, |i| {
            [params[i].len(), velocity[i].len(), grads[i].len()]
        })?;
        for (i, spec) in specs.iter().enumerate() {
            let len = spec.len();
            const CHUNK: usize = 1 << 15;
            params[i][..len]
                .par_chunks_mut(CHUNK)
                .zip(velocity[i][..len].par_chunks_mut(CHUNK))
                .zip(grads[i][..len].par_chunks(CHUNK))
                .for_each(|((w, v), g)| sgd.step(w, v, g, lr_mults[i]));
        }
        Ok(())
    }
}
