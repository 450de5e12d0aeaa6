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

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ir::{Op, Plan, Stage};

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

/// One stage's gradients, for [`Cpu::backward_stage`].
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
    /// output and its parameters, the gradients of its input and parameters. Dropout is
    /// the identity here (the training mask comes with the optimiser). A building block of
    /// training, checked against finite differences in tests/gradients.rs.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_stage(
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
}
