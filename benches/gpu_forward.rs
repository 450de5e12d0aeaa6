//! The generated CUDA against the vendor libraries, on the lent GPU machine
//! (`cargo bench --bench gpu_forward`, or packed by scripts/gpu-check.sh). Without a GPU
//! it says why and exits 0.
//!
//! For the paper's AlexNet, f32 (no TF32): NVRTC cold compile and cache-hit times; each
//! generated stage at batch 128 (median of 20, the stream synchronised around each
//! stage) beside the same layer through cuDNN (convolution, FMA math, its heuristic's
//! algorithm; without bias and ReLU, which the generated kernels include) or cuBLAS
//! (sgemm), and their ratio (LRN with its pooling fused, as inference runs them, beside
//! nothing); the whole forward pass at batch 1 and 128 in images/s, launched from the host
//! and replayed as a CUDA graph. Then
//! the same with `Precision::Tf32` (the convolutions and the fc layers on tensor cores) beside
//! cuBLAS with TF32 allowed and cuDNN's convolutions with TF32 allowed (its default math),
//! and the whole pass in `Precision::Bf16`.

use std::sync::Arc;
use std::time::Instant;

use alexnet::ir::{Conv, Fc, Op, Plan, Precision};
use alexnet::nets::AlexNet;
use alexnet::runtime::prelude::*;
use alexnet::runtime::{Cuda, Model, Tensor};
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::cudnn::{self, ConvForward, Cudnn};
use cudarc::driver::CudaStream;

type AnyError = Box<dyn std::error::Error>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of `f` (which enqueues work on `stream`), synchronised around each run.
fn time(
    stream: &Arc<CudaStream>,
    runs: usize,
    mut f: impl FnMut() -> Result<(), AnyError>,
) -> Result<f64, AnyError> {
    for _ in 0..3 {
        f()?;
    }
    stream.synchronize()?;
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        f()?;
        stream.synchronize()?;
        t.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(t))
}

/// The same layer through cuDNN or cuBLAS, in seconds; `None` for layers they do not cover.
/// With `tf32`, cuBLAS may use TF32 tensor cores (`CUBLAS_TF32_TENSOR_OP_MATH`, as
/// PyTorch's `allow_tf32`) and cuDNN its default math (TF32 tensor cores allowed).
fn vendor(
    plan: &Plan,
    layer: usize,
    batch: usize,
    stream: &Arc<CudaStream>,
    tf32: bool,
) -> Result<Option<f64>, AnyError> {
    let l = &plan.layers[layer];
    let c = |v: usize| v as i32;
    match l.op {
        Op::Conv(Conv {
            k,
            stride,
            pad,
            groups,
            out,
        }) => {
            let dnn = Cudnn::new(stream.clone())?;
            let nchw = cudnn::sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
            let x = dnn.create_4d_tensor::<f32>(
                nchw,
                [c(batch), c(l.input.c), c(l.input.h), c(l.input.w)],
            )?;
            let w =
                dnn.create_4d_filter::<f32>(nchw, [c(out), c(l.input.c / groups), c(k), c(k)])?;
            let y = dnn
                .create_4d_tensor::<f32>(nchw, [c(batch), c(out), c(l.output.h), c(l.output.w)])?;
            let mut conv = dnn.create_conv2d::<f32>(
                [c(pad); 2],
                [c(stride); 2],
                [1, 1],
                cudnn::sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )?;
            conv.set_group_count(c(groups))?;
            conv.set_math_type(if tf32 {
                cudnn::sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
            } else {
                cudnn::sys::cudnnMathType_t::CUDNN_FMA_MATH
            })?;
            let op = ConvForward {
                conv: &conv,
                x: &x,
                w: &w,
                y: &y,
            };
            let algo = op.pick_algorithm()?;
            let mut ws = stream.alloc_zeros::<u8>(op.get_workspace_size(algo)?.max(1))?;
            let xs = stream.alloc_zeros::<f32>(batch * l.input.len())?;
            let ws_f = stream.alloc_zeros::<f32>(out * (l.input.c / groups) * k * k)?;
            let mut ys = stream.alloc_zeros::<f32>(batch * l.output.len())?;
            let t = time(stream, 20, || {
                // SAFETY: the buffers have the sizes and layouts of the descriptors above.
                unsafe { op.launch(algo, Some(&mut ws), (1.0, 0.0), &xs, &ws_f, &mut ys) }?;
                Ok(())
            })?;
            Ok(Some(t))
        }
        Op::Fc(Fc { out }) => {
            let blas = CudaBlas::new(stream.clone())?;
            if tf32 {
                use cudarc::cublas::sys::{cublasMath_t, cublasSetMathMode, cublasStatus_t};
                // SAFETY: the handle is `blas`'s, alive for this call.
                let status = unsafe {
                    cublasSetMathMode(*blas.handle(), cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH)
                };
                if status != cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                    return Err(format!("cublasSetMathMode: {status:?}").into());
                }
            }
            let inputs = l.input.len();
            let x = stream.alloc_zeros::<f32>(batch * inputs)?;
            let w = stream.alloc_zeros::<f32>(out * inputs)?;
            let mut y = stream.alloc_zeros::<f32>(batch * out)?;
            // Column-major, y^T (out x batch) = W x^T: W is stored [out, in] (so op T),
            // x is stored [batch, in] (column-major in x batch, so op N).
            let cfg = GemmConfig {
                transa: cublasOperation_t::CUBLAS_OP_T,
                transb: cublasOperation_t::CUBLAS_OP_N,
                m: c(out),
                n: c(batch),
                k: c(inputs),
                alpha: 1.0f32,
                lda: c(inputs),
                ldb: c(inputs),
                beta: 0.0f32,
                ldc: c(out),
            };
            let t = time(stream, 20, || {
                // SAFETY: W is out x in, x is batch x in, y is batch x out, as configured.
                unsafe { blas.gemm(cfg, &w, &x, &mut y) }?;
                Ok(())
            })?;
            Ok(Some(t))
        }
        _ => Ok(None),
    }
}

fn main() -> Result<(), AnyError> {
    if let Some(why) = Cuda::unavailable_reason() {
        println!("gpu_forward: skipped: {why}");
        return Ok(());
    }
    let plan = AlexNet::plan();

    // Compile: cold (empty cache) and from the cache, each in a fresh context.
    let cache = std::env::temp_dir().join(format!("alexnet-gpu-bench-{}", std::process::id()));
    std::env::set_var("ALEXNET_CACHE_DIR", &cache);
    let t0 = Instant::now();
    Cuda::new(0)?.prepare(plan)?;
    let cold = t0.elapsed().as_secs_f64();
    let gpu = Cuda::new(0)?;
    let t1 = Instant::now();
    gpu.prepare(plan)?;
    let hit = t1.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&cache);
    println!(
        "{}: AlexNet kernels: cold NVRTC compile + load {:.0} ms, from the cache {:.1} ms",
        gpu.name(),
        cold * 1e3,
        hit * 1e3
    );

    stages(plan, Model::init(gpu, plan.clone(), 0)?)?;
    // --precision tf32: the convolutions and the fc layers on tensor cores (a backend of its own, loading the
    // tf32 kernels), beside cuBLAS allowed TF32.
    let gpu = Cuda::new(0)?.with_precision(Precision::Tf32)?;
    stages(plan, Model::init(gpu, plan.clone(), 0)?)?;
    // --precision bf16: the whole pass only (no vendor library computes bf16 products of
    // f32 operands).
    let gpu = Cuda::new(0)?.with_precision(Precision::Bf16)?;
    let mut model = Model::init(gpu, plan.clone(), 0)?;
    println!("\n{}", model.backend().name());
    whole(plan, &mut model)?;
    Ok(())
}

/// The whole forward pass at batch 1 and 128, launched stage by stage from the host
/// (`Model::forward`) and replayed as one CUDA graph (`Model::capture`), alternating in
/// rounds; both with the input's upload and the output's download.
fn whole(plan: &Plan, model: &mut Model<Cuda>) -> Result<(), AnyError> {
    let stream = model.backend().stream().clone();
    let s = plan.input;
    for batch in [1usize, 128] {
        let x = Tensor::new(vec![batch, s.c, s.h, s.w], vec![0.1; batch * s.len()])?;
        let mut graph = model.capture(batch)?;
        let model = graph.model();
        let (mut host, mut replay) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            host.push(time(&stream, 10, || {
                model.forward(&x)?;
                Ok(())
            })?);
            replay.push(time(&stream, 10, || {
                graph.forward(&x)?;
                Ok(())
            })?);
        }
        let (t, g) = (median(host), median(replay));
        println!("forward, batch {batch:>3}: {:8.3} ms  {:9.1} images/s launched from the host; as a CUDA graph {:8.3} ms  {:9.1} images/s (input upload and output download included)", t * 1e3, batch as f64 / t, g * 1e3, batch as f64 / g);
    }
    Ok(())
}

/// The whole forward pass ([`whole`]), then each stage at batch 128 beside cuDNN or
/// cuBLAS in the model's precision.
fn stages(plan: &Plan, mut model: Model<Cuda>) -> Result<(), AnyError> {
    let tf32 = model.backend().precision() == Precision::Tf32;
    println!("\n{}", model.backend().name());
    let stream = model.backend().stream().clone();
    let s = plan.input;
    whole(plan, &mut model)?;

    let batch = 128;
    let x = Tensor::new(vec![batch, s.c, s.h, s.w], vec![0.1; batch * s.len()])?;
    let mut per_stage: Vec<(String, Vec<f64>)> = Vec::new();
    for _ in 0..20 {
        let (_, times) = model.forward_timed(&x)?;
        for (i, (name, t)) in times.into_iter().enumerate() {
            if per_stage.len() <= i {
                per_stage.push((name, Vec::new()));
            }
            per_stage[i].1.push(t);
        }
    }
    let stages: Vec<_> = plan
        .inference_stages()
        .into_iter()
        .filter(|st| !plan.layers[st.layer].op.kind().identity_at_inference())
        .collect();
    let what = if tf32 {
        "tf32: the convolutions and fc on tensor cores; cuBLAS and cuDNN with TF32 allowed"
    } else {
        "f32 (no TF32)"
    };
    println!("\nbatch {batch}, {what}");
    println!(
        "{:<10} {:>12} {:>14} {:>8}",
        "stage", "generated ms", "cuDNN/cuBLAS ms", "ratio"
    );
    let mut total = 0.0;
    for ((name, times), st) in per_stage.into_iter().zip(stages) {
        let ours = median(times);
        total += ours;
        match vendor(plan, st.layer, batch, &stream, tf32)? {
            Some(v) => println!(
                "{name:<10} {:>12.3} {:>14.3} {:>8.2}",
                ours * 1e3,
                v * 1e3,
                ours / v
            ),
            None => println!("{name:<10} {:>12.3} {:>14} {:>8}", ours * 1e3, "-", "-"),
        }
    }
    println!("{:<10} {:>12.3}", "sum", total * 1e3);
    Ok(())
}
