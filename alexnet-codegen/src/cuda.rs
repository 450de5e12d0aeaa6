//! CUDA code generation: one translation unit per network, rendered from the templates in
//! `kernels_templates/` with every shape and tile size a constant, and the launch geometry
//! of each kernel.
//!
//! Tile heuristic (fixed for now; autotuning comes later): convolutions use 128-pixel
//! tiles by 128, 96 or 64 output channels (whichever wastes least; narrower groups round
//! up to 16), 8 x 8 outputs per thread (8 x 4 for the narrow ones), K in steps of 8;
//! fully connected layers, whose M is the (small) batch, use 32 x 64 tiles with 2 x 4 per
//! thread. Element-wise kernels use 256-thread blocks.

use std::fmt::Write;

use crate::ir::{KernelLaunch, Op, Plan, Shape};

/// The tiled GEMM core every GEMM kernel includes.
pub(crate) const GEMM_CORE: &str = include_str!("../../kernels_templates/gemm_core.cuh");
const GEMM: &str = include_str!("../../kernels_templates/gemm_fwd.cu");
const POOL: &str = include_str!("../../kernels_templates/pool_fwd.cu");
const LRN: &str = include_str!("../../kernels_templates/lrn_fwd.cu");
const SOFTMAX: &str = include_str!("../../kernels_templates/softmax_fwd.cu");
const ELEMENTWISE: &str = include_str!("../../kernels_templates/elementwise_fwd.cu");

/// Threads per block of the element-wise kernels.
pub(crate) const EW_THREADS: u32 = 256;

/// A network's generated CUDA: the source and how to launch each stage's kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaPlan {
    /// The whole translation unit: a header, then every kernel.
    pub source: String,
    /// One per stage of [`Plan::stages`] that runs a kernel (dropout runs none).
    pub kernels: Vec<KernelLaunch>,
    /// Each kernel's own source (a self-contained translation unit), in the order of
    /// `kernels`, so that a runtime can compile them in parallel.
    pub kernel_sources: Vec<String>,
}

/// A GEMM tile: (TM, RM, TN, RN, TK), a block computing TM x TN outputs, each thread RM x
/// RN of them, K in steps of TK.
pub type Tile = (usize, usize, usize, usize, usize);

/// Fully connected layers, whose M (the batch) is small: 32 x 64, 2 x 4 per thread.
pub(crate) const FC_TILE: Tile = (32, 2, 64, 4, 16);

/// The tile edge for `n` columns: 128 when that wastes under a tenth of the work, else the
/// one of 128, 96 and 64 that wastes least (the larger on a tie), or `n` rounded up to 16
/// below 64; with the columns per thread (8, or 4 for edges of 64 and below).
pub(crate) fn tile_edge(n: usize) -> (usize, usize) {
    if n < 64 {
        return (n.next_multiple_of(16), 4);
    }
    let waste = |t: usize| n.div_ceil(t) * t - n;
    if waste(128) * 10 < n {
        return (128, 8);
    }
    let t = [128, 96, 64]
        .into_iter()
        .min_by_key(|&t| (waste(t), usize::MAX - t))
        .unwrap_or(128);
    (t, if t == 64 { 4 } else { 8 })
}

/// A convolution GEMM with many rows (output pixels of the batch) and `n` columns:
/// 128-row tiles, 8 x 8 outputs per thread where the columns allow, K in steps of 8.
pub(crate) fn conv_tile(n: usize) -> Tile {
    let (tn, rn) = tile_edge(n);
    (128, 8, tn, rn, 8)
}

/// Replaces every `{{KEY}}` of `template`; panics (a bug in this module, caught by its
/// tests) if a key is left over or unknown.
pub fn render_template(template: &str, values: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (k, v) in values {
        let key = format!("{{{{{k}}}}}");
        assert!(out.contains(&key), "template has no {key}");
        out = out.replace(&key, v);
    }
    assert!(
        !out.contains("{{"),
        "unrendered key in template: {}",
        &out[out.find("{{").unwrap_or(0)..][..40.min(out.len())]
    );
    out
}

/// A C identifier from a layer name (Rust identifiers may hold non-ASCII letters).
pub(crate) fn c_ident(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A C float literal with the shortest round-trip digits: `1e-4f`, `0.75f`, `2.0f`.
pub(crate) fn c_float(v: f32) -> String {
    format!("{v:?}f")
}

pub(crate) fn shape_values(s: Shape) -> Vec<(&'static str, String)> {
    vec![
        ("C", s.c.to_string()),
        ("H", s.h.to_string()),
        ("W", s.w.to_string()),
    ]
}

/// The constants of a pooling or LRN layer's templates, which its forward and backward
/// kernels share: shapes, window, LRN's constants, threads per block.
pub(crate) fn window_values(layer: &crate::ir::Layer) -> Vec<(&'static str, String)> {
    let (i, o) = (layer.input, layer.output);
    let mut v = vec![("THREADS", EW_THREADS.to_string())];
    match layer.op {
        Op::MaxPool { k, stride } | Op::AvgPool { k, stride } => {
            v.extend(shape_values(i));
            v.extend([
                ("P", o.h.to_string()),
                ("Q", o.w.to_string()),
                ("K", k.to_string()),
                ("STRIDE", stride.to_string()),
                ("MAX", matches!(layer.op, Op::MaxPool { .. }).to_string()),
            ]);
        }
        Op::Lrn {
            size,
            alpha,
            beta,
            k,
            channel_groups,
        } => v.extend([
            ("C", i.c.to_string()),
            ("HW", (i.h * i.w).to_string()),
            ("SIZE", size.to_string()),
            ("GROUPS", channel_groups.to_string()),
            ("ALPHA", c_float(alpha)),
            ("BETA", c_float(beta)),
            ("KB", c_float(k)),
        ]),
        _ => {}
    }
    v
}

/// Renders the CUDA for every stage of `plan`.
pub fn render(plan: &Plan) -> CudaPlan {
    let mut source = format!(
        "// Generated by alexnet-codegen for network `{}` (input {}); do not edit.\n\
         // Templates: kernels_templates/. Every size below is a compile-time constant.\n",
        plan.name, plan.input
    );
    let mut kernels = Vec::new();
    let mut kernel_sources = Vec::new();
    for stage in plan.stages() {
        let layer = &plan.layers[stage.layer];
        let lname = c_ident(&layer.name);
        let (i, o) = (layer.input, layer.output);
        let desc = crate::ir::describe(&layer.op);
        let relu_name = c_ident(plan.stage_output_name(stage));
        let common = |name: &str| {
            vec![
                ("NAME", name.to_string()),
                ("LAYER", layer.name.to_string()),
                ("DESC", desc.clone()),
            ]
        };
        let (text, launch) = match layer.op {
            Op::Conv { .. } | Op::Fc { .. } => {
                let (k, stride, pad, groups) = match layer.op {
                    Op::Conv {
                        k,
                        stride,
                        pad,
                        groups,
                        ..
                    } => (k, stride, pad, groups),
                    _ => (1, 1, 0, 1),
                };
                // fc is a 1x1 convolution of the flattened input.
                let (inp, fc) = match layer.op {
                    Op::Fc { .. } => (Shape::new(i.len(), 1, 1), true),
                    _ => (i, false),
                };
                let (cg, og) = (inp.c / groups, o.c / groups);
                let (tm, rm, tn, rn, tk) = if fc { FC_TILE } else { conv_tile(og) };
                let threads = (tm / rm) * (tn / rn);
                let name = if fc {
                    format!("{lname}_fwd_i{}_o{}_t{tm}x{tn}", inp.c, og)
                } else {
                    format!("{lname}_fwd_c{cg}_k{og}_r{k}_t{tm}x{tn}")
                };
                let mut v = common(&name);
                v.extend(shape_values(inp));
                v.extend([
                    ("O", o.c.to_string()),
                    ("P", o.h.to_string()),
                    ("Q", o.w.to_string()),
                    ("R", k.to_string()),
                    ("STRIDE", stride.to_string()),
                    ("PAD", pad.to_string()),
                    ("GROUPS", groups.to_string()),
                    ("TM", tm.to_string()),
                    ("TN", tn.to_string()),
                    ("TK", tk.to_string()),
                    ("RM", rm.to_string()),
                    ("RN", rn.to_string()),
                    ("THREADS", threads.to_string()),
                    ("RELU", stage.fused_relu.to_string()),
                ]);
                let launch = KernelLaunch {
                    layer: stage.layer,
                    name: name.clone().into(),
                    block: threads as u32,
                    x_per_image: (o.h * o.w) as u64,
                    x_per_block: tm as u32,
                    x_fixed: 0,
                    grid_y: og.div_ceil(tn) as u32,
                    grid_z: groups as u32,
                };
                (
                    format!("{GEMM_CORE}\n{}", render_template(GEMM, &v)),
                    launch,
                )
            }
            Op::MaxPool { k, stride } | Op::AvgPool { k, stride } => {
                let max = matches!(layer.op, Op::MaxPool { .. });
                let name = format!(
                    "{lname}_fwd_{}_c{}_k{k}s{stride}",
                    if max { "max" } else { "avg" },
                    i.c
                );
                let mut v = common(&name);
                v.extend(window_values(layer));
                (
                    render_template(POOL, &v),
                    ew_launch(stage.layer, &name, o.len() as u64),
                )
            }
            Op::Lrn {
                size,
                channel_groups,
                ..
            } => {
                let name = format!("{lname}_fwd_c{}_n{size}_g{channel_groups}", i.c);
                let mut v = common(&name);
                v.extend(window_values(layer));
                (
                    render_template(LRN, &v),
                    ew_launch(stage.layer, &name, i.len() as u64),
                )
            }
            Op::Softmax => {
                let name = format!("{lname}_fwd_c{}", i.c);
                let mut v = common(&name);
                v.extend([
                    ("C", i.c.to_string()),
                    ("HW", (i.h * i.w).to_string()),
                    ("THREADS", EW_THREADS.to_string()),
                ]);
                (
                    render_template(SOFTMAX, &v),
                    ew_launch(stage.layer, &name, (i.h * i.w * 32) as u64),
                )
            }
            Op::Relu => {
                let name = format!("{relu_name}_fwd_n{}", i.len());
                let mut v = common(&name);
                v.extend([
                    ("LEN", i.len().to_string()),
                    ("THREADS", EW_THREADS.to_string()),
                ]);
                (
                    render_template(ELEMENTWISE, &v),
                    ew_launch(stage.layer, &name, i.len() as u64),
                )
            }
            // The identity at inference: the runtime skips it.
            Op::Dropout { .. } => continue,
        };
        let _ = writeln!(source, "\n{text}");
        kernels.push(launch);
        kernel_sources.push(text);
    }
    CudaPlan {
        source,
        kernels,
        kernel_sources,
    }
}

pub(crate) fn ew_launch(layer: usize, name: &str, per_image: u64) -> KernelLaunch {
    KernelLaunch {
        layer,
        name: name.to_string().into(),
        block: EW_THREADS,
        x_per_image: per_image,
        x_per_block: EW_THREADS,
        x_fixed: 0,
        grid_y: 1,
        grid_z: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alexnet_kernels_are_named_and_sized() {
        let plan = crate::alexnet_plan();
        let cuda = render(&plan);
        let names: Vec<&str> = cuda.kernels.iter().map(|k| k.name.as_ref()).collect();
        assert_eq!(names[0], "conv1_fwd_c3_k96_r11_t128x96");
        assert_eq!(names[3], "conv2_fwd_c48_k128_r5_t128x128");
        assert!(names.contains(&"fc6_fwd_i9216_o4096_t32x64"), "{names:?}");
        assert!(names.contains(&"lrn1_fwd_c96_n5_g2"), "{names:?}");
        assert!(names.contains(&"softmax_fwd_c1000"), "{names:?}");
        // Dropout runs no kernel; a fused ReLU has none of its own.
        assert_eq!(cuda.kernels.len(), plan.stages().len() - 2);
        for k in &cuda.kernels {
            assert!(
                cuda.source.contains(&format!("\n{}(", k.name)),
                "{} not in source",
                k.name
            );
        }
        assert!(!cuda.source.contains("{{"));
        // conv1 at batch 128: 128 * 55 * 55 pixels in tiles of 128, 96 channels in one.
        assert_eq!(cuda.kernels[0].grid(128), [3025, 1, 1]);
        assert_eq!(cuda.kernels[3].grid(1), [6, 1, 2]);
        assert_eq!(
            (tile_edge(48), tile_edge(192), tile_edge(364)),
            ((48, 4), (96, 8), (128, 8))
        );
    }

    #[test]
    fn float_literals_are_valid_c() {
        assert_eq!(c_float(2.0), "2.0f");
        assert_eq!(c_float(1e-4), "0.0001f");
        assert_eq!(c_float(0.75), "0.75f");
        assert_eq!(c_ident("conv1"), "conv1");
        assert_eq!(c_ident("cönv"), "c_nv");
    }
}
