//! The CPU backend: every layer in f32 (or, in [`Precision::Bf16`], the convolutions' and
//! fully connected layers' products from bf16 operands with f32 sums), convolution as
//! im2col + GEMM (OpenBLAS, the `gemm` crate, or this crate's packed AVX-512 micro-kernel),
//! parallel over the batch or inside the GEMM with rayon. Deterministic:
//! the same inputs give the same bits on every run with the same thread count (the batch
//! size is part of the inputs: under [`ConvAlgorithm::Auto`] a 3x3 layer runs direct at
//! batch 1 and as Winograd from batch 2, so an image alone and the same image in a batch
//! differ in their last bits). It is the
//! fallback where there is no GPU and, with the direct convolution ([`Cpu::reference`]),
//! the reference the GPU backend is checked against.
//!
//! One file per layer kind (`conv.rs`, `fc.rs`, `relu.rs`, `tanh.rs`, `pool.rs`,
//! `lrn.rs`, `dropout.rs`, `softmax.rs`), each implementing `CpuLayer` for the kind's
//! struct; the dispatch from an [`Op`] is generated from the registry of kinds
//! (`alexnet_core::for_each_layer_kind!`), so a kind without a CPU implementation does not
//! compile. This file is the memory and the forward pass; `training.rs` the rest of
//! training, `exchange.rs` the towers' exchanges, `augment.rs`
//! patches cut from 8-bit images, `upload.rs` uploads ahead (a copy). Beside the layers: `gemm.rs`, `blas.rs`
//! and `mat.rs` (the matrix multiply), `packed/` (the packed operands and AVX-512
//! micro-kernel, f32 and bf16), `winograd.rs` (Winograd F(4x4, 3x3) and F(4x4, 5x5) on
//! the packed micro-kernel: the 3x3 and 5x5 stride-1 layers where [`ConvAlgorithm::Auto`]
//! finds it pays), `pack.rs` (weights kept in a kernel's layout while they stay the
//! same) and [`probe`] (the machine's ceilings, for `bench`).

mod augment;
mod blas;
mod conv;
mod dropout;
mod exchange;
mod fc;
mod gemm;
pub mod loss;
mod lrn;
mod mat;
mod pack;
mod packed;
mod pool;
pub mod probe;
mod relu;
mod simd;
mod softmax;
mod tanh;
mod training;
mod upload;
mod winograd;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::backend::{Element, Inference, Memory};
use crate::error::{Error, Result};
use crate::ir::{Layer, Op, Plan, Pool, Precision, Shape, Stage};

pub use softmax::softmax;
pub use upload::CpuUploader;

/// The CPU backend. Uses rayon's global thread pool (`RAYON_NUM_THREADS` sets its size).
#[derive(Clone, Debug)]
pub struct Cpu {
    packs: pack::PackCache,
    conv: ConvAlgorithm,
    precision: Precision,
    /// Bumped whenever this backend (or a clone) may have changed a weight: the bf16
    /// packs are reused while it stays the same (see [`Cpu::weights_changed`]).
    weights: Arc<AtomicU64>,
}

/// How the CPU backend computes a convolution. Every choice computes the same function
/// (checked against the naive definition in tests/cpu_layers.rs); they differ in speed and
/// in rounding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvAlgorithm {
    /// The choice this project measured fastest on its machine (docs/benchmarks.md), per
    /// layer and batch: [`ConvAlgorithm::Direct`], except on a CPU with AVX-512F for
    /// Winograd's layers (stride 1, 3x3 or 5x5 filters): in f32 a 5x5 layer at any batch
    /// and a 3x3 one from batch 2 (AlexNet's conv2: 1.8x the direct convolution at batch 1,
    /// 2.4x at batch 16; conv3-conv5 1.3-1.5x at batch 16 and level at batch 1, where
    /// their transformed filters, 4x the filters, come from memory); in
    /// [`Precision::Bf16`] all of them. Winograd's relative error is about 8x the direct
    /// product's (3e-6 against 4e-7 on AlexNet's conv2-conv5; tests/cpu_layers.rs).
    #[default]
    Auto,
    /// The direct convolution everywhere, as an implicit GEMM: [`ConvAlgorithm::Packed`]
    /// where the CPU has AVX-512F, [`ConvAlgorithm::Im2col`] otherwise. The most exact
    /// choice ([`Cpu::reference`]): the GPU tests compare with it.
    Direct,
    /// im2col + GEMM (OpenBLAS's sgemm, or the `gemm` crate) everywhere.
    Im2col,
    /// This crate's AVX-512 micro-kernel everywhere: the im2col columns gathered a block
    /// at a time into the kernel's layout as it reaches them, the filters read in place,
    /// bias and ReLU in its epilogue; the portable kernel, much slower, on a CPU without
    /// AVX-512F.
    Packed,
    /// Winograd F(4x4, 3x3) and F(4x4, 5x5) on every 3x3 and 5x5 stride-1 layer (its
    /// products on the packed micro-kernel; the portable kernel, much slower, without
    /// AVX-512F), the others as [`ConvAlgorithm::Auto`] computes them. Its relative error
    /// is about 8x the direct product's (3e-6 against 4e-7 on AlexNet's conv2-conv5).
    Winograd,
}

impl ConvAlgorithm {
    /// From `ALEXNET_CPU_CONV` (`auto`, `direct`, `im2col`, `packed` or `winograd`);
    /// `Auto` when unset.
    pub fn from_env() -> Result<Self> {
        match std::env::var("ALEXNET_CPU_CONV").as_deref() {
            Err(_) | Ok("auto") => Ok(ConvAlgorithm::Auto),
            Ok("direct") => Ok(ConvAlgorithm::Direct),
            Ok("im2col") => Ok(ConvAlgorithm::Im2col),
            Ok("packed") => Ok(ConvAlgorithm::Packed),
            Ok("winograd") => Ok(ConvAlgorithm::Winograd),
            Ok(other) => Err(Error::Invalid(format!(
                "ALEXNET_CPU_CONV={other:?}: expected auto, direct, im2col, packed or winograd"
            ))),
        }
    }

    /// Whether the f32 convolutions that Winograd does not take run on the packed
    /// micro-kernel.
    pub(crate) fn packed(self) -> bool {
        match self {
            ConvAlgorithm::Packed => true,
            ConvAlgorithm::Auto | ConvAlgorithm::Direct | ConvAlgorithm::Winograd => {
                packed::Kernel::best().avx512()
            }
            ConvAlgorithm::Im2col => false,
        }
    }
}

impl Default for Cpu {
    fn default() -> Self {
        Cpu::new()
    }
}

impl Cpu {
    /// The CPU backend; loads OpenBLAS now if the machine has it (see [`Cpu::gemm`]).
    /// Convolutions use [`ConvAlgorithm::Auto`], or what `ALEXNET_CPU_CONV` names (an
    /// unknown name is ignored here with a warning on stderr; [`ConvAlgorithm::from_env`]
    /// reports it as an error).
    pub fn new() -> Self {
        let _ = blas::get();
        let conv = ConvAlgorithm::from_env().unwrap_or_else(|e| {
            eprintln!("warning: {e}; using auto");
            ConvAlgorithm::Auto
        });
        Cpu {
            packs: pack::PackCache::default(),
            conv,
            precision: Precision::F32,
            weights: Arc::default(),
        }
    }

    /// The CPU backend with [`ConvAlgorithm::Direct`] whatever `ALEXNET_CPU_CONV` says: the
    /// most exact f32 this backend computes, which the GPU's f32 is checked against (at
    /// relative L2 1e-5).
    pub fn reference() -> Self {
        Cpu::new().with_conv_algorithm(ConvAlgorithm::Direct)
    }

    /// This backend computing in `precision`: [`Precision::F32`] (the default; with
    /// [`Cpu::reference`], the reference) or [`Precision::Bf16`] (the convolutions' and fully connected layers'
    /// products from bf16 operands, summed in f32: [`Cpu::bf16_kernel`] says how). Tf32 is
    /// a GPU's: an [`Error::Invalid`] here.
    pub fn with_precision(mut self, precision: Precision) -> Result<Self> {
        if !precision.on_cpu() {
            return Err(Error::Invalid(format!(
                "precision {precision} runs on a GPU's tensor cores; the CPU backend computes in f32 or bf16"
            )));
        }
        self.precision = precision;
        Ok(self)
    }

    /// The micro-kernel of the bf16 products (and of [`ConvAlgorithm::Packed`]) on this
    /// CPU: AVX512_BF16's `vdpbf16ps` where the CPU has it and it issues at the FMA's rate
    /// (AMD's cores), AVX-512 FMAs on bf16 widened to f32 where the CPU has AVX-512F
    /// (`ALEXNET_CPU_PACKED=portable`, `fma` or `dot` chooses), a portable one otherwise.
    /// The fully connected layers stream their weights as bf16 (their time is bytes). With
    /// `vdpbf16ps` the direct convolutions run on bf16 pairs, and under
    /// [`ConvAlgorithm::Auto`] only 5x5 stride-1 layers go through Winograd's transforms;
    /// without it the convolutions keep their operands, rounded to bf16, in f32 words on
    /// the f32 kernel, and `Auto` takes Winograd on 3x3 and 5x5 stride-1 layers. Winograd's
    /// products run on the f32 kernel either way, on rounded transformed operands.
    pub fn bf16_kernel(&self) -> &'static str {
        packed::Kernel::best().name()
    }

    /// Says that weights this backend computes with may have changed. In bf16 the CPU
    /// packs each weight tensor once (rounded, in its kernel's layout) and reuses the pack
    /// until this is called, or a weight in a sample of each tensor differs (in f32 the
    /// packed convolution reads the filters in place, and Winograd's transformed filters
    /// compare every weight). The backend calls it itself wherever it writes a
    /// buffer a model's weights live in ([`Memory::write`], [`crate::Training::sgd_step`],
    /// [`Inference::prepare`] when a model is built); a caller that changes a weight
    /// buffer through its own `&mut Vec` and then runs [`Inference::forward_stage`] in
    /// bf16 must call it first. One epoch for the backend and its clones: any write
    /// invalidates every bf16 pack, which costs a repack, never a wrong result.
    pub fn weights_changed(&self) {
        self.weights.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether this backend may run 3x3 and 5x5 stride-1 convolutions as Winograd (asked
    /// for, or chosen by [`ConvAlgorithm::Auto`] on a CPU with AVX-512F): their time then
    /// stands for fewer multiplies than the direct convolution's.
    pub fn uses_winograd(&self) -> bool {
        winograd::taken(self.conv)
    }

    /// Bytes of `layer`'s parameters a forward pass of this backend reads: f32, except in
    /// bf16 a fully connected layer's weights, and the filters of a direct convolution on
    /// `vdpbf16ps` (in pairs: 2 bytes each). Elsewhere the bf16 filters stay rounded f32
    /// words, and Winograd's transformed filters are counted as the filters themselves.
    /// For `bench`'s roofline.
    pub fn param_bytes(&self, layer: &Layer) -> usize {
        match layer.op {
            Op::Fc(fc) => fc::param_bytes(layer.input.len(), fc.out, self.precision),
            // bf16 pairs of the filters, the bias in f32.
            Op::Conv(c) if self.dot_products(layer) => {
                2 * (layer.param_count() - c.out) + 4 * c.out
            }
            _ => 4 * layer.param_count(),
        }
    }

    /// Whether `layer`'s forward products run on AVX512_BF16's `vdpbf16ps` here (a fully
    /// connected layer, or a convolution that Winograd does not take, in bf16 on a kernel
    /// with dot products): `bench` puts them against that instruction's peak.
    pub fn dot_products(&self, layer: &Layer) -> bool {
        let dots = self.precision == Precision::Bf16 && packed::Kernel::best().dots();
        match layer.op {
            Op::Fc(_) => dots,
            Op::Conv(c) => {
                let g = c.gemm(layer.input, layer.output);
                dots && !winograd::applies(&g, self.conv, self.precision, 1)
            }
            _ => false,
        }
    }

    /// This backend with convolutions computed by `conv`.
    pub fn with_conv_algorithm(mut self, conv: ConvAlgorithm) -> Self {
        self.conv = conv;
        self
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

/// Fails unless `buf` holds `want` values.
fn check_len<T>(what: &str, buf: &[T], want: usize) -> Result<()> {
    if buf.len() < want {
        return Err(Error::BufferTooSmall {
            what: format!("cpu: {what}"),
            len: buf.len(),
            needed: want,
        });
    }
    Ok(())
}

/// One stage as a layer kind's CPU code sees it.
pub(crate) struct StageCx<'a> {
    pub layer: &'a Layer,
    pub batch: usize,
    /// The ReLU that follows runs in this stage (conv, fc).
    pub fused_relu: bool,
    /// The pooling that follows runs in this stage, and its output (an LRN's, at
    /// inference: [`Plan::inference_stages`]).
    pub pool: Option<(Pool, Shape)>,
    /// Threads of rayon's pool.
    pub threads: usize,
    /// Weights in the layouts the kernels prefer.
    pub packs: &'a pack::PackCache,
    /// How convolutions are computed.
    pub conv: ConvAlgorithm,
    /// f32 or bf16 products.
    pub precision: Precision,
    /// The backend's weight epoch ([`Cpu::weights_changed`]), which bf16 packs trust.
    pub weights_epoch: u64,
}

impl StageCx<'_> {
    /// How a bf16 pack of weights is known to be fresh: by the backend's weight epoch
    /// (reading all of fc6's f32 weights to compare them would cost what bf16 saves). The
    /// f32 paths never trust a caller to say that weights changed: the packed convolution
    /// reads its filters in place, Winograd's transformed filters compare every weight.
    pub fn bf16_freshness(&self) -> pack::Freshness {
        pack::Freshness::Epoch(self.weights_epoch)
    }

    /// A learned layer's weight and bias.
    pub fn weight_and_bias<'p>(&self, params: &[&'p [f32]]) -> Result<(&'p [f32], &'p [f32])> {
        match params {
            [w, b] => Ok((w, b)),
            _ => Err(Error::Invalid(format!(
                "cpu: {} needs a weight and a bias, got {} tensors",
                self.layer.name,
                params.len()
            ))),
        }
    }

    /// A learned layer's weight and the gradients of its weight and bias.
    pub fn learned<'p, 'g>(
        &self,
        params: &[&'p [f32]],
        dparams: &'g mut [&mut [f32]],
    ) -> Result<(&'p [f32], &'g mut [f32], &'g mut [f32])> {
        match (params, dparams) {
            ([w, _], [dw, db]) => Ok((w, dw, db)),
            _ => Err(Error::Invalid(format!(
                "cpu: {} needs a weight, a bias and their gradients",
                self.layer.name
            ))),
        }
    }

    /// The input gradient, which this stage's backward pass computes.
    pub fn dx<'d>(&self, dx: Option<&'d mut [f32]>) -> Result<&'d mut [f32]> {
        dx.ok_or_else(|| {
            Error::Invalid(format!(
                "cpu: {} needs an input gradient buffer",
                self.layer.name
            ))
        })
    }
}

/// A layer kind on the CPU. `x`, `y`, `dy` and `dx` hold exactly the batch's values.
pub(crate) trait CpuLayer {
    /// `y` from `x` (inference: dropout is the identity).
    fn forward(&self, s: &StageCx<'_>, x: &[f32], params: &[&[f32]], y: &mut [f32]) -> Result<()>;

    /// The gradients of the input (`dx`, overwritten, when given) and of the parameters
    /// (`dparams`, overwritten: a step writes each once, so nothing clears them first)
    /// from the stage's input `x`, output `y` and output gradient `dy`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        s: &StageCx<'_>,
        x: &[f32],
        y: &[f32],
        dy: &[f32],
        params: &[&[f32]],
        dx: Option<&mut [f32]>,
        dparams: &mut [&mut [f32]],
    ) -> Result<()>;
}

macro_rules! dispatch {
    ($($kind:ident),*) => {
        /// The CPU implementation of a layer's kind.
        fn cpu_layer(op: &Op) -> &dyn CpuLayer {
            match op {
                $(Op::$kind(k) => k),*
            }
        }
    };
}

alexnet_core::for_each_layer_kind!(dispatch);

/// One stage's gradients, for [`Cpu::backward_slices`].
pub struct StageGrads<'a> {
    /// Gradient with respect to the stage's input; `None` when not needed (the first
    /// layer). Overwritten.
    pub dx: Option<&'a mut [f32]>,
    /// Gradients of the weight and the bias (learned layers only). Overwritten.
    pub dparams: Vec<&'a mut [f32]>,
}

impl Cpu {
    fn stage<'a>(&'a self, plan: &'a Plan, stage: Stage, batch: usize) -> StageCx<'a> {
        StageCx {
            layer: &plan.layers[stage.layer],
            batch,
            fused_relu: stage.fused_relu,
            pool: plan.stage_pool(stage),
            threads: self.threads(),
            packs: &self.packs,
            conv: self.conv,
            precision: self.precision,
            weights_epoch: self.weights.load(Ordering::Relaxed),
        }
    }

    /// The backward pass of one stage on `batch` images: from the stage's input `x`, its
    /// output `y` (which also gives the fused ReLU's mask), the gradient `dy` of its
    /// output and its parameters, the gradients of its input and parameters (both
    /// overwritten). Dropout is
    /// the identity here: training applies its mask through [`crate::Training::dropout`].
    /// Checked against finite differences in tests/gradients.rs.
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
        if stage.fused_pool {
            return Err(Error::Invalid(format!(
                "cpu: {} fuses the pooling after it, an inference stage (Plan::inference_stages) with no backward pass; training runs Plan::stages",
                plan.stage_label(stage)
            )));
        }
        let s = self.stage(plan, stage, batch);
        let layer = s.layer;
        let (n_in, n_out) = (batch * layer.input.len(), batch * layer.output.len());
        check_len(&format!("{} input", layer.name), x, n_in)?;
        check_len(&format!("{} output", layer.name), y, n_out)?;
        check_len(&format!("{} output gradient", layer.name), dy, n_out)?;
        let StageGrads { dx, mut dparams } = grads;
        let dx = match dx {
            Some(d) => {
                check_len(&format!("{} input gradient", layer.name), d, n_in)?;
                Some(&mut d[..n_in])
            }
            None => None,
        };
        cpu_layer(&layer.op).backward(
            &s,
            &x[..n_in],
            &y[..n_out],
            &dy[..n_out],
            params,
            dx,
            &mut dparams,
        )
    }
}

impl Memory for Cpu {
    type Buffer<T: Element> = Vec<T>;

    fn name(&self) -> String {
        let winograd = match winograd::describe(self.conv, self.precision) {
            "" => String::new(),
            d => format!(", {d}"),
        };
        match self.precision {
            Precision::Bf16 => format!(
                "cpu ({} threads, bf16 products: {}{winograd})",
                self.threads(),
                self.bf16_kernel()
            ),
            // f32: the same FMA kernel whether or not bf16 would take dot products.
            _ if self.conv.packed() => format!(
                "cpu ({} threads, convolutions: {}{winograd}, other products: {})",
                self.threads(),
                if packed::Kernel::best().avx512() {
                    packed::Kernel::Avx512.name()
                } else {
                    packed::Kernel::Portable.name()
                },
                self.gemm()
            ),
            _ => format!(
                "cpu ({} threads, {}{winograd})",
                self.threads(),
                self.gemm()
            ),
        }
    }

    fn keeps_activations(&self) -> bool {
        true
    }

    fn alloc<T: Element>(&self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::default(); len])
    }

    fn upload<T: Element>(&self, data: &[T]) -> Result<Vec<T>> {
        Ok(data.to_vec())
    }

    fn download<T: Element>(&self, buf: &Vec<T>) -> Result<Vec<T>> {
        Ok(buf.clone())
    }

    fn download_prefix<T: Element>(&self, buf: &Vec<T>, len: usize) -> Result<Vec<T>> {
        Ok(buf[..len.min(buf.len())].to_vec())
    }

    fn write<T: Element>(&self, buf: &mut Vec<T>, data: &[T]) -> Result<()> {
        check_len("destination", buf, data.len())?;
        self.weights_changed();
        buf[..data.len()].copy_from_slice(data);
        Ok(())
    }
}

impl Inference for Cpu {
    fn precision(&self) -> Precision {
        self.precision
    }

    /// A model is being built: its weights are new (perhaps where an old model's were).
    fn prepare(&self, plan: &Plan) -> Result<()> {
        let _ = plan;
        self.weights_changed();
        Ok(())
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
        let s = self.stage(plan, stage, batch);
        let layer = s.layer;
        let out = plan.layers[stage.last()].output;
        let (n_in, n_out) = (batch * layer.input.len(), batch * out.len());
        check_len(&format!("{} input", layer.name), input, n_in)?;
        check_len(&format!("{} output", layer.name), output, n_out)?;
        let params: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
        cpu_layer(&layer.op).forward(&s, &input[..n_in], &params, &mut output[..n_out])
    }
}
