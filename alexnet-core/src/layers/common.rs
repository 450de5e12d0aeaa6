//! Kernels that several kinds share: element-wise ones, and the GEMMs of learned layers
//! (conv and fc) with their fused ReLU.

use super::kind::KernelCx;
use crate::kernels::gemm::{Gemm, Owner};
use crate::kernels::mma::{MmaConv, MmaGemm, MmaInputs, MmaTile};
use crate::kernels::spec::{
    int, read, update, Instance, KernelLaunch, KernelSpec, Len, Role, Template, EW_THREADS,
};
use crate::kernels::tuning::Choice;

/// The gradient through a ReLU fused into conv or fc, in place (`relu.cuh`).
const FUSED_RELU_MASK: Template = Template {
    header: "relu.cuh",
    function: "relu_mask",
    params: &[read("y"), update("dy"), int("batch")],
};

/// Templates of this file that no kind lists as its own.
pub const TEMPLATES: &[Template] = &[FUSED_RELU_MASK];

/// An element-wise kernel over `len` values per image of layer `cx`, one thread each.
pub fn elementwise(
    cx: &KernelCx<'_>,
    len: usize,
    role: Role,
    template: &Template,
    name: String,
    doc: String,
    lens: Vec<(&'static str, Len)>,
) -> KernelSpec {
    Instance {
        role,
        launch: KernelLaunch::elementwise(cx.layer, &name, len as u64),
        template,
        doc,
        consts: vec![
            ("LEN", len.into()),
            ("THREADS", (EW_THREADS as usize).into()),
        ],
        lens,
        gemm: None,
    }
    .spec()
}

/// The forward kernel of an element-wise activation `keyword` (relu, tanh): `y = f(x)`
/// by `template` (parameters `x`, `y`, `batch`), named `<layer>_fwd_n<values>`.
pub fn activation_forward(cx: &KernelCx<'_>, template: &Template, keyword: &str) -> KernelSpec {
    let len = cx.input.len();
    let per = Len::PerImage(len as u64);
    elementwise(
        cx,
        len,
        Role::Forward,
        template,
        format!("{}_fwd_n{len}", cx.c_name()),
        format!("forward of `{}` ({keyword})", cx.name),
        vec![("x", per), ("y", per)],
    )
}

/// The gradient of an element-wise activation from its output (`y`, `dy` to `dx` by
/// `template`), named `<layer>_bwd_n<values>`; none when no learned layer comes earlier.
pub fn activation_backward(
    cx: &KernelCx<'_>,
    template: &Template,
    keyword: &str,
) -> Vec<KernelSpec> {
    if !cx.needs_dx {
        return Vec::new();
    }
    let len = cx.input.len();
    let per = Len::PerImage(len as u64);
    vec![elementwise(
        cx,
        len,
        Role::Backward,
        template,
        format!("{}_bwd_n{len}", cx.c_name()),
        format!("gradient of `{}` ({keyword})", cx.name),
        vec![("y", per), ("dy", per), ("dx", per)],
    )]
}

fn owner<'a>(cx: &'a KernelCx<'_>, name: &'a str, desc: &'a str) -> Owner<'a> {
    Owner {
        layer: cx.layer,
        name,
        desc,
        label: cx.name,
    }
}

/// A conv or fc layer's forward GEMM, with bias and the fused ReLU in its epilogue: on the
/// tuned SIMT tile where `cx` has one the template takes, the heuristic's otherwise.
pub fn learned_forward(g: &Gemm, cx: &KernelCx<'_>, desc: &str) -> KernelSpec {
    let name = cx.c_name();
    let tile = match cx.tuned {
        Some(Choice::Simt(t)) if Choice::simt_ok(&t) => t,
        _ => g.forward_tile(),
    };
    g.forward_tiled(&owner(cx, &name, desc), cx.fused_relu, tile)
}

/// The training kernels of a conv or fc layer: the fused ReLU's mask on the output
/// gradient, the weight and bias gradients and their reduction, and the input gradient
/// when needed. In a precision with tensor cores the weight and input gradients run on
/// them, the layer taken as the convolution `conv` (`MmaGemm::conv_weight_grad`, whose
/// chunks the f32 reduction adds, and `MmaGemm::conv_data_grad`); f32 otherwise.
pub fn learned_backward(g: &Gemm, conv: MmaConv, cx: &KernelCx<'_>, desc: &str) -> Vec<KernelSpec> {
    let name = cx.c_name();
    let owner = owner(cx, &name, desc);
    let mut v = Vec::with_capacity(4);
    if cx.fused_relu {
        let len = cx.output.len();
        let per = Len::PerImage(len as u64);
        v.push(elementwise(
            cx,
            len,
            Role::ReluMask,
            &FUSED_RELU_MASK,
            format!("{name}_relu_bwd_n{len}"),
            format!(
                "gradient through the ReLU fused into `{}` ({desc})",
                cx.name
            ),
            vec![("y", per), ("dy", per)],
        ));
    }
    let inputs = MmaInputs::for_precision(cx.precision);
    let wgrad = inputs.and_then(|inputs| {
        MmaGemm::conv_weight_grad(conv, inputs, MmaTile::wgrad_for(inputs)).ok()
    });
    match wgrad {
        // Its K is the chunk of output pixels a block sums.
        Some(m) => {
            v.push(m.spec(cx.layer, &name));
            v.push(g.weight_reduce_of(&owner, m.k));
        }
        None => {
            v.push(g.weight_grad(&owner));
            v.push(g.weight_reduce(&owner));
        }
    }
    if cx.needs_dx {
        let mma = inputs.and_then(|inputs| {
            let (i, few_rows) = (conv.input, conv.input.h * conv.input.w == 1);
            let tile = MmaTile::dgrad_for(inputs, i.c / conv.groups, few_rows);
            MmaGemm::conv_data_grad(conv, inputs, tile).ok()
        });
        v.push(match mma {
            Some(m) => m.spec(cx.layer, &name),
            None => g.data_grad(&owner),
        });
    }
    v
}
