//! The training kernels of a plan: the backward kernels of every stage, from its layer
//! kind, in the order the runtime launches them (the backward pass runs the stages in
//! reverse); the fused softmax cross-entropy of the logits (a final softmax folds into
//! it); the check of every parameter's gradient for values that are not finite (NaN,
//! infinity), before the update; and the SGD update of every parameter, both in launches
//! of up to [`SGD_SLOTS`] tensors.
//!
//! Per stage (see each kind): conv / fc, the fused ReLU's mask applied to the output
//! gradient in place (`Role::ReluMask`), the weight and bias gradients as one GEMM whose
//! sum over the batch is split into chunks (`Role::WeightGrad`) and their ordered sum
//! (`Role::WeightReduce`, run when there are several chunks), then the input gradient
//! (`Role::DataGrad`), generated only when a learned layer comes earlier (conv1 has none);
//! relu, tanh, pooling, LRN: `Role::Backward`, when a learned layer comes earlier;
//! dropout: `Role::Dropout`, the same kernel forward and backward.

use super::context;
use crate::ir::{Plan, Precision};
use crate::kernels::spec::{
    c_ident, int, read, write, ArgTy, Instance, KernelLaunch, KernelSpec, Len, Param, Role,
    Template, Value, EW_THREADS,
};

/// Tensors one SGD launch updates; the runtime passes their pointers in a struct of this
/// many slots per role (`SgdTensors` in `sgd.cuh`, whose `ALEXNET_SGD_SLOTS` agrees).
pub const SGD_SLOTS: usize = 64;
/// Blocks of the SGD kernel (a grid-stride loop; enough to fill any current GPU).
const SGD_BLOCKS: u32 = 1024;
/// Threads of the loss kernel's one block.
const LOSS_THREADS: u32 = 1024;

pub const LOSS_TEMPLATE: Template = Template {
    header: "loss.cuh",
    function: "softmax_xent",
    params: &[
        read("logits"),
        read("labels"),
        write("dlogits"),
        write("stats"),
        int("batch"),
    ],
};

pub const SGD_TEMPLATE: Template = Template {
    header: "sgd.cuh",
    function: "sgd",
    params: &[
        Param {
            name: "t",
            ty: ArgTy::Struct("SgdTensors"),
        },
        Param {
            name: "momentum",
            ty: ArgTy::Float,
        },
        Param {
            name: "decay",
            ty: ArgTy::Float,
        },
    ],
};

pub const FINITE_TEMPLATE: Template = Template {
    header: "finite.cuh",
    function: "finite",
    params: &[
        Param {
            name: "t",
            ty: ArgTy::Struct("SgdTensors"),
        },
        write("flags"),
    ],
};

/// The layer whose output (or, for a final softmax, whose input) is the logits, and how
/// many classes there are. `None` for one tower's plan: a tower holds part of the logits,
/// and the loss runs once on the gathered ones (see the runtime's towers).
pub fn logits_of(plan: &Plan) -> Option<(usize, usize)> {
    if plan.tower.is_some() {
        return None;
    }
    let last = plan.layers.len().checked_sub(1)?;
    let l = &plan.layers[last];
    Some(if l.op.kind().must_be_last() {
        (last, l.input.len())
    } else {
        (last, l.output.len())
    })
}

/// Every training kernel of `plan` in `precision` (tf32, bf16 and f16: the learned
/// layers' weight and input gradients on tensor cores; everything else f32).
pub fn training(plan: &Plan, precision: Precision) -> Vec<KernelSpec> {
    let first_learned = plan.layers.iter().position(|l| l.op.is_learned());
    let net = c_ident(&plan.name);
    let mut kernels = Vec::new();
    for stage in plan.stages() {
        // Nothing before the first learned layer needs a gradient (dropout still runs
        // forward there, and generates its kernel whatever it is told).
        let needs_dx = first_learned.is_some_and(|f| stage.layer > f);
        let op = plan.layers[stage.layer].op;
        kernels.extend(
            op.kind()
                .backward_kernels(&context(plan, stage, needs_dx, precision, None)),
        );
    }
    if let Some((layer, classes)) = logits_of(plan) {
        let name = format!("{net}_softmax_xent_c{classes}");
        let per = Len::PerImage(classes as u64);
        kernels.push(
            Instance {
                role: Role::Loss,
                launch: KernelLaunch::fixed(layer, &name, LOSS_THREADS, 1),
                template: &LOSS_TEMPLATE,
                doc: format!(
                    "softmax cross-entropy of `{}`'s {classes} logits per image",
                    plan.name
                ),
                consts: vec![
                    ("CLASSES", classes.into()),
                    ("THREADS", (LOSS_THREADS as usize).into()),
                ],
                lens: vec![
                    ("logits", per),
                    ("labels", Len::PerImage(1)),
                    ("dlogits", per),
                    ("stats", Len::Fixed(3)),
                ],
                gemm: None,
            }
            .spec(),
        );
    }
    // Over every parameter tensor, SGD_SLOTS at a time: the check, then the update.
    let params = plan.params();
    for finite in [true, false] {
        for (chunk, specs) in params.chunks(SGD_SLOTS).enumerate() {
            let (first, count) = (chunk * SGD_SLOTS, specs.len());
            let end = first + count;
            let (role, kind, template, what, lens) = if finite {
                (
                    Role::Finite { first, count },
                    "finite",
                    &FINITE_TEMPLATE,
                    "which of the gradients of tensors",
                    vec![("flags", Len::Fixed(count as u64))],
                )
            } else {
                (
                    Role::Sgd { first, count },
                    "sgd",
                    &SGD_TEMPLATE,
                    "one SGD step of tensors",
                    Vec::new(),
                )
            };
            let name = format!("{net}_{kind}_t{first}_{end}");
            kernels.push(
                Instance {
                    role,
                    launch: KernelLaunch::fixed(0, &name, EW_THREADS, SGD_BLOCKS),
                    template,
                    doc: format!(
                        "{what} {first}..{end} of `{}`{}",
                        plan.name,
                        if finite { " are not finite" } else { "" }
                    ),
                    consts: vec![
                        ("TENSORS", count.into()),
                        (
                            "LEN",
                            Value::Uints(specs.iter().map(|s| s.len() as u64).collect()),
                        ),
                        ("BLOCKS", (SGD_BLOCKS as usize).into()),
                        ("THREADS", (EW_THREADS as usize).into()),
                    ],
                    lens,
                    gemm: None,
                }
                .spec(),
            );
        }
    }
    kernels
}
