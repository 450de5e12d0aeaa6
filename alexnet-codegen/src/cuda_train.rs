//! CUDA code generation for training: the backward kernels of every stage, the fused
//! softmax cross-entropy, training-time dropout and the fused SGD update, rendered from
//! `kernels_templates/` with every shape and tile size a constant, like the forward
//! kernels of [`crate::cuda`].
//!
//! Per stage, in the order the runtime launches them (backward runs the stages in
//! reverse):
//! - conv / fc: the fused ReLU's mask applied to the output gradient in place
//!   ([`Role::ReluMask`]), the weight and bias gradients as one GEMM whose sum over the
//!   batch is split into chunks ([`Role::WeightGrad`]) and, when there are several chunks,
//!   their ordered sum ([`Role::WeightReduce`]); then the input gradient
//!   ([`Role::DataGrad`]), generated only when a learned layer comes earlier (conv1 has
//!   none).
//! - relu, pooling, LRN: [`Role::Backward`].
//! - dropout: [`Role::Dropout`], the same kernel forward and backward.
//! - the last layer: [`Role::Loss`] (a final softmax is folded into it), and once per
//!   network [`Role::Sgd`].
//!
//! Tile heuristic: the data gradient tiles like the forward (input pixels x input
//! channels); the weight gradient tiles (output channels x filter weights + bias) with
//! the same edges (128, 96 or 64, 8 x 8 per thread) and picks the chunk length so that
//! batch 128 gives about 528 blocks (four per SM of an H100/H200).

use std::fmt::Write;

use crate::cuda::{
    c_float, c_ident, conv_tile, ew_launch, render_template, shape_values, tile_edge,
    window_values, Tile, EW_THREADS, FC_TILE, GEMM_CORE,
};
use crate::ir::{KernelLaunch, Op, Plan, Shape};

const BWD_DATA: &str = include_str!("../../kernels_templates/gemm_bwd_data.cu");
const BWD_WEIGHT: &str = include_str!("../../kernels_templates/gemm_bwd_weight.cu");
const RELU_BWD: &str = include_str!("../../kernels_templates/relu_bwd.cu");
const POOL_BWD: &str = include_str!("../../kernels_templates/pool_bwd.cu");
const LRN_BWD: &str = include_str!("../../kernels_templates/lrn_bwd.cu");
const DROPOUT: &str = include_str!("../../kernels_templates/dropout.cu");
const LOSS: &str = include_str!("../../kernels_templates/loss.cu");
const SGD: &str = include_str!("../../kernels_templates/sgd.cu");

/// Tensors one SGD launch updates; the runtime passes their pointers in a struct of this
/// many slots per role (`SgdTensors` in `sgd.cu`).
pub const SGD_SLOTS: usize = 64;
/// Blocks of the SGD kernel (a grid-stride loop; enough to fill any current GPU).
const SGD_BLOCKS: u32 = 1024;
/// Blocks of the weight gradient aimed at for a batch of 128.
const WGRAD_TARGET_BLOCKS: usize = 528;

/// What a training kernel does (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    ReluMask,
    DataGrad,
    WeightGrad,
    WeightReduce,
    Backward,
    Dropout,
    Loss,
    /// Updates tensors `first .. first + count` of [`Plan::params`].
    Sgd {
        first: usize,
        count: usize,
    },
}

/// One generated training kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainKernel {
    pub role: Role,
    /// Geometry; `launch.layer` is the stage's layer (the last layer for the loss, 0 for
    /// the optimiser).
    pub launch: KernelLaunch,
    /// A self-contained translation unit holding this kernel.
    pub source: String,
    /// For [`Role::WeightGrad`]: floats of workspace per chunk (`G * OG * (KCOL + 1)`);
    /// the chunk count at a batch is `launch.grid(batch)[0]`.
    pub workspace_per_chunk: usize,
}

/// Every training kernel of a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaTraining {
    /// All kernels in one translation unit (for reading and for `CUDA_TRAINING_SOURCE`).
    pub source: String,
    pub kernels: Vec<TrainKernel>,
}

impl CudaTraining {
    /// The kernel of `role` for the layer with index `layer`.
    pub fn find(&self, layer: usize, role: Role) -> Option<&TrainKernel> {
        self.kernels
            .iter()
            .find(|k| k.role == role && k.launch.layer == layer)
    }
}

/// The layer whose output (or, for a final softmax, whose input) is the logits, and how
/// many classes there are. `None` for one tower's plan: a tower holds part of the logits,
/// and the loss runs once on the gathered ones (see the runtime's towers).
pub fn logits_of(plan: &Plan) -> Option<(usize, usize)> {
    if plan.tower.is_some() {
        return None;
    }
    let last = plan.layers.len().checked_sub(1)?;
    let l = &plan.layers[last];
    Some(match l.op {
        Op::Softmax => (last, l.input.len()),
        _ => (last, l.output.len()),
    })
}

/// Renders every training kernel of `plan`.
pub fn render(plan: &Plan) -> CudaTraining {
    let mut kernels = Vec::new();
    let first_learned = plan.layers.iter().position(|l| l.op.is_learned());
    let stages = plan.stages();
    let net = c_ident(&plan.name);
    for stage in &stages {
        let layer = &plan.layers[stage.layer];
        // Nothing before the first learned layer needs a gradient; dropout there still
        // runs forward.
        if first_learned.is_none_or(|f| stage.layer < f) && !matches!(layer.op, Op::Dropout { .. })
        {
            continue;
        }
        let needs_dx = first_learned.is_some_and(|f| stage.layer > f);
        let lname = c_ident(&layer.name);
        let (i, o) = (layer.input, layer.output);
        let desc = crate::ir::describe(&layer.op);
        let common = |name: &str| {
            vec![
                ("NAME", name.to_string()),
                ("LAYER", layer.name.to_string()),
                ("DESC", desc.clone()),
            ]
        };
        let mut push = |role, launch: KernelLaunch, source: String, ws| {
            kernels.push(TrainKernel {
                role,
                launch,
                source,
                workspace_per_chunk: ws,
            })
        };
        match layer.op {
            Op::Conv { .. } | Op::Fc { .. } => {
                if stage.fused_relu {
                    let name = format!("{lname}_relu_bwd_n{}", o.len());
                    let mut v = common(&name);
                    v.extend([
                        ("LEN", o.len().to_string()),
                        ("THREADS", EW_THREADS.to_string()),
                    ]);
                    push(
                        Role::ReluMask,
                        ew_launch(stage.layer, &name, o.len() as u64),
                        render_template(RELU_BWD, &v),
                        0,
                    );
                }
                let g = Gemm::of(layer.op, i, o);
                let (launch, src, ws) = g.weight_grad(stage.layer, &lname, &common);
                push(Role::WeightGrad, launch, src, ws);
                let (launch, src) = g.weight_reduce(stage.layer, &lname, &common);
                push(Role::WeightReduce, launch, src, 0);
                if needs_dx {
                    let (launch, src) = g.data_grad(stage.layer, &lname, &common);
                    push(Role::DataGrad, launch, src, 0);
                }
            }
            Op::Relu if needs_dx => {
                let name = format!("{lname}_bwd_n{}", i.len());
                let mut v = common(&name);
                v.extend([
                    ("LEN", i.len().to_string()),
                    ("THREADS", EW_THREADS.to_string()),
                ]);
                push(
                    Role::Backward,
                    ew_launch(stage.layer, &name, i.len() as u64),
                    render_template(RELU_BWD, &v),
                    0,
                );
            }
            Op::MaxPool { k, stride } | Op::AvgPool { k, stride } if needs_dx => {
                let max = matches!(layer.op, Op::MaxPool { .. });
                let name = format!(
                    "{lname}_bwd_{}_c{}_k{k}s{stride}",
                    if max { "max" } else { "avg" },
                    i.c
                );
                let mut v = common(&name);
                v.extend(window_values(layer));
                push(
                    Role::Backward,
                    ew_launch(stage.layer, &name, i.len() as u64),
                    render_template(POOL_BWD, &v),
                    0,
                );
            }
            Op::Lrn {
                size,
                channel_groups,
                ..
            } if needs_dx => {
                let name = format!("{lname}_bwd_c{}_n{size}_g{channel_groups}", i.c);
                let mut v = common(&name);
                v.extend(window_values(layer));
                push(
                    Role::Backward,
                    ew_launch(stage.layer, &name, i.len() as u64),
                    render_template(LRN_BWD, &v),
                    0,
                );
            }
            // Softmax is always the last layer (the checker enforces it): the loss
            // kernel folds it in.
            Op::Dropout { p } => {
                let (threshold, scale) = crate::ir::dropout_threshold_scale(p);
                let name = format!("{lname}_dropout_n{}", i.len());
                let mut v = common(&name);
                let (tower, towers) = plan.tower.map_or((0, 1), |t| (t.index, t.of));
                v.extend([
                    ("LEN", i.len().to_string()),
                    ("TOWER", tower.to_string()),
                    ("TOWERS", towers.to_string()),
                    ("LAYER_ID", stage.layer.to_string()),
                    ("THRESHOLD", threshold.to_string()),
                    ("SCALE", c_float(scale)),
                    ("THREADS", EW_THREADS.to_string()),
                ]);
                push(
                    Role::Dropout,
                    ew_launch(stage.layer, &name, i.len() as u64),
                    render_template(DROPOUT, &v),
                    0,
                );
            }
            _ => {}
        }
    }
    if let Some((layer, classes)) = logits_of(plan) {
        let name = format!("{net}_softmax_xent_c{classes}");
        let threads = 1024u32;
        let v = vec![
            ("NAME", name.clone()),
            ("NETWORK", plan.name.to_string()),
            ("CLASSES", classes.to_string()),
            ("THREADS", threads.to_string()),
        ];
        kernels.push(TrainKernel {
            role: Role::Loss,
            launch: fixed_launch(layer, &name, threads, 1),
            source: render_template(LOSS, &v),
            workspace_per_chunk: 0,
        });
    }
    let params = plan.params();
    for (chunk, specs) in params.chunks(SGD_SLOTS).enumerate() {
        let first = chunk * SGD_SLOTS;
        let name = format!("{net}_sgd_t{first}_{}", first + specs.len());
        let lens: Vec<String> = specs.iter().map(|s| format!("{}u", s.len())).collect();
        let v = vec![
            ("NAME", name.clone()),
            ("NETWORK", plan.name.to_string()),
            ("TENSORS", specs.len().to_string()),
            ("SLOTS", SGD_SLOTS.to_string()),
            ("LENS", lens.join(", ")),
            ("BLOCKS", SGD_BLOCKS.to_string()),
            ("THREADS", EW_THREADS.to_string()),
        ];
        kernels.push(TrainKernel {
            role: Role::Sgd {
                first,
                count: specs.len(),
            },
            launch: fixed_launch(0, &name, EW_THREADS, SGD_BLOCKS),
            source: render_template(SGD, &v),
            workspace_per_chunk: 0,
        });
    }
    let mut source = format!(
        "// Generated by alexnet-codegen: training kernels of network `{}`; do not edit.\n{GEMM_CORE}",
        plan.name
    );
    let mut seen = std::collections::HashSet::new();
    for k in &kernels {
        // A weight gradient and its reduction share one translation unit.
        if seen.insert(&k.source) {
            let body = k.source.replace(GEMM_CORE, "");
            let _ = writeln!(source, "\n{body}");
        }
    }
    CudaTraining { source, kernels }
}

fn fixed_launch(layer: usize, name: &str, block: u32, blocks: u32) -> KernelLaunch {
    KernelLaunch {
        layer,
        name: name.to_string().into(),
        block,
        x_per_image: 0,
        x_per_block: 1,
        x_fixed: blocks,
        grid_y: 1,
        grid_z: 1,
    }
}

/// A conv or fc layer seen as the convolution its GEMMs work on.
struct Gemm {
    /// The input as the convolution sees it (fc: `[I, 1, 1]`).
    input: Shape,
    output: Shape,
    k: usize,
    stride: usize,
    pad: usize,
    groups: usize,
}

type Common<'a> = dyn Fn(&str) -> Vec<(&'static str, String)> + 'a;

impl Gemm {
    fn of(op: Op, input: Shape, output: Shape) -> Self {
        match op {
            Op::Conv {
                k,
                stride,
                pad,
                groups,
                ..
            } => Gemm {
                input,
                output,
                k,
                stride,
                pad,
                groups,
            },
            _ => Gemm {
                input: Shape::new(input.len(), 1, 1),
                output,
                k: 1,
                stride: 1,
                pad: 0,
                groups: 1,
            },
        }
    }

    fn is_fc(&self) -> bool {
        self.input.h == 1 && self.input.w == 1 && self.k == 1
    }

    fn values(&self) -> Vec<(&'static str, String)> {
        let mut v = shape_values(self.input);
        v.extend([
            ("O", self.output.c.to_string()),
            ("P", self.output.h.to_string()),
            ("Q", self.output.w.to_string()),
            ("R", self.k.to_string()),
            ("STRIDE", self.stride.to_string()),
            ("PAD", self.pad.to_string()),
            ("GROUPS", self.groups.to_string()),
        ]);
        v
    }

    fn tiles(v: &mut Vec<(&'static str, String)>, (tm, rm, tn, rn, tk): Tile) -> usize {
        let threads = (tm / rm) * (tn / rn);
        v.extend([
            ("TM", tm.to_string()),
            ("TN", tn.to_string()),
            ("TK", tk.to_string()),
            ("RM", rm.to_string()),
            ("RN", rn.to_string()),
            ("THREADS", threads.to_string()),
        ]);
        threads
    }

    /// Input gradient: rows are input pixels, columns the group's input channels.
    fn data_grad(&self, layer: usize, lname: &str, common: &Common<'_>) -> (KernelLaunch, String) {
        let cg = self.input.c / self.groups;
        let tile: Tile = if self.is_fc() { FC_TILE } else { conv_tile(cg) };
        let name = format!(
            "{lname}_bwd_data_c{cg}_k{}_r{}_t{}x{}",
            self.output.c / self.groups,
            self.k,
            tile.0,
            tile.2
        );
        let mut v = common(&name);
        v.extend(self.values());
        let threads = Self::tiles(&mut v, tile);
        v.push(("B_K_FAST", (self.k > 1).to_string()));
        let launch = KernelLaunch {
            layer,
            name: name.clone().into(),
            block: threads as u32,
            x_per_image: (self.input.h * self.input.w) as u64,
            x_per_block: tile.0 as u32,
            x_fixed: 0,
            grid_y: cg.div_ceil(tile.2) as u32,
            grid_z: self.groups as u32,
        };
        (
            launch,
            format!("{GEMM_CORE}\n{}", render_template(BWD_DATA, &v)),
        )
    }

    /// Rows are the group's output channels, columns its filter weights and the bias.
    fn wgrad_tile(&self) -> Tile {
        let (tm, rm) = tile_edge(self.output.c / self.groups);
        let (tn, rn) = tile_edge(self.kcol() + 1);
        (tm, rm, tn, rn, 8)
    }

    fn kcol(&self) -> usize {
        self.input.c / self.groups * self.k * self.k
    }

    fn weight_names(&self, lname: &str) -> (String, String) {
        let (og, kcol) = (self.output.c / self.groups, self.kcol());
        (
            format!(
                "{lname}_bwd_weight_o{og}_k{kcol}_t{}x{}",
                self.wgrad_tile().0,
                self.wgrad_tile().2
            ),
            format!("{lname}_bwd_weight_reduce_n{}", self.output.c * (kcol + 1)),
        )
    }

    /// Rows of the batch's sum each block of the weight gradient takes.
    fn chunk(&self) -> usize {
        let (tm, _, tn, _, tk) = self.wgrad_tile();
        let og = self.output.c / self.groups;
        let tiles = og.div_ceil(tm) * (self.kcol() + 1).div_ceil(tn) * self.groups;
        let chunks = WGRAD_TARGET_BLOCKS.div_ceil(tiles).max(1);
        let rows = 128 * self.output.h * self.output.w;
        rows.div_ceil(chunks).max(4 * tk).next_multiple_of(tk)
    }

    fn weight_values(&self, lname: &str, common: &Common<'_>) -> Vec<(&'static str, String)> {
        let (name, reduce) = self.weight_names(lname);
        let mut v = common(&name);
        v.extend(self.values());
        let spatial = self.output.h * self.output.w > 1;
        v.extend([
            ("CHUNK", self.chunk().to_string()),
            ("REDUCE", reduce),
            ("RTHREADS", EW_THREADS.to_string()),
            ("A_K_FAST", spatial.to_string()),
            ("B_K_FAST", spatial.to_string()),
        ]);
        v
    }

    /// Weight and bias gradients: rows are the group's output channels, columns its filter
    /// weights and the bias.
    fn weight_grad(
        &self,
        layer: usize,
        lname: &str,
        common: &Common<'_>,
    ) -> (KernelLaunch, String, usize) {
        let (tm, _, tn, _, _) = self.wgrad_tile();
        let og = self.output.c / self.groups;
        let mut v = self.weight_values(lname, common);
        let threads = Self::tiles(&mut v, self.wgrad_tile());
        let (name, _) = self.weight_names(lname);
        let launch = KernelLaunch {
            layer,
            name: name.into(),
            block: threads as u32,
            x_per_image: (self.output.h * self.output.w) as u64,
            x_per_block: self.chunk() as u32,
            x_fixed: 0,
            grid_y: (og.div_ceil(tm) * (self.kcol() + 1).div_ceil(tn)) as u32,
            grid_z: self.groups as u32,
        };
        (
            launch,
            format!("{GEMM_CORE}\n{}", render_template(BWD_WEIGHT, &v)),
            self.output.c * (self.kcol() + 1),
        )
    }

    /// The ordered sum of the weight gradient's chunks (same translation unit).
    fn weight_reduce(
        &self,
        layer: usize,
        lname: &str,
        common: &Common<'_>,
    ) -> (KernelLaunch, String) {
        let mut v = self.weight_values(lname, common);
        Self::tiles(&mut v, self.wgrad_tile());
        let (_, reduce) = self.weight_names(lname);
        let e = self.output.c * (self.kcol() + 1);
        let launch = fixed_launch(
            layer,
            &reduce,
            EW_THREADS,
            e.div_ceil(EW_THREADS as usize) as u32,
        );
        (
            launch,
            format!("{GEMM_CORE}\n{}", render_template(BWD_WEIGHT, &v)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alexnet_training_kernels() {
        let plan = crate::alexnet_plan();
        let t = render(&plan);
        // conv1 (layer 0) gets no input gradient; conv2 does.
        assert!(t.find(0, Role::DataGrad).is_none());
        assert!(t.find(0, Role::WeightGrad).is_some());
        assert!(t.find(4, Role::DataGrad).is_some());
        // Nothing before conv1; the final softmax is the loss.
        let loss = t.kernels.iter().find(|k| k.role == Role::Loss).unwrap();
        assert_eq!(loss.launch.name, "AlexNet_softmax_xent_c1000");
        assert_eq!(
            t.kernels.iter().filter(|k| k.role == Role::Dropout).count(),
            2
        );
        assert!(matches!(
            t.kernels.last().unwrap().role,
            Role::Sgd {
                first: 0,
                count: 16
            }
        ));
        // conv1's weight gradient at batch 128: 96 x 364 in 3 tiles of 96 x 128, split
        // into about 528 / 3 chunks.
        let w = t.find(0, Role::WeightGrad).unwrap();
        let [gx, gy, gz] = w.launch.grid(128);
        assert_eq!((gy, gz), (3, 1));
        assert!((170..=180).contains(&gx), "{gx}");
        assert_eq!(w.workspace_per_chunk, 96 * 364);
        assert!(!t.source.contains("{{"));
        for k in &t.kernels {
            assert!(
                t.source.contains(&format!("\n{}(", k.launch.name)),
                "{}",
                k.launch.name
            );
        }
    }

    #[test]
    fn a_tower_has_no_loss_kernel() {
        // The loss runs once, on the gathered logits; each tower still updates its own rows.
        let tower = crate::alexnet_plan().tower(1).unwrap();
        let t = render(&tower);
        assert!(t.kernels.iter().all(|k| k.role != Role::Loss));
        assert!(t.kernels.iter().any(|k| k.role == Role::Dropout));
        assert!(matches!(t.kernels.last().unwrap().role, Role::Sgd { .. }));
        assert!(render(&crate::alexnet_plan())
            .kernels
            .iter()
            .any(|k| k.role == Role::Loss));
    }
}
