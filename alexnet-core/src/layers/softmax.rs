//! `softmax`: softmax over channels at each spatial position; the network's last layer.
//! In training it folds into the fused softmax cross-entropy (`kernels_templates/loss.cuh`),
//! so it has no backward kernel; its forward kernel is `kernels_templates/softmax.cuh`.

use super::dsl::{Keyword, Naming, ShapeError};
use super::kind::{KernelCx, Kind, LayerKind, ShapeContext};
use crate::kernels::spec::{
    int, read, write, Header, Instance, KernelLaunch, KernelSpec, Len, Role, Template, EW_THREADS,
};
use crate::shape::Shape;

/// Softmax over channels (at each spatial position).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Softmax;

const FORWARD: Template = Template {
    header: "softmax.cuh",
    function: "softmax_fwd",
    params: &[read("x"), write("y"), int("batch")],
};

impl Kind for Softmax {
    const KEYWORDS: &'static [Keyword] = &[Keyword {
        name: "softmax",
        signature: &[],
        naming: Naming::Fixed("softmax"),
    }];
    const HEADERS: &'static [Header] = &[Header {
        name: "softmax.cuh",
        text: include_str!("../../../kernels_templates/softmax.cuh"),
    }];
    const TEMPLATES: &'static [Template] = &[FORWARD];

    fn build(_keyword: &str, _values: &[f64]) -> Self {
        Softmax
    }

    fn in_tower(&self, _towers: usize, _own: bool) -> Self {
        Softmax
    }
}

impl LayerKind for Softmax {
    fn keyword(&self) -> &'static str {
        "softmax"
    }

    fn describe(&self) -> String {
        "softmax".into()
    }

    fn must_be_last(&self) -> bool {
        true
    }

    fn infer(&mut self, input: Shape, _cx: &ShapeContext<'_>) -> Result<Shape, ShapeError> {
        Ok(input)
    }

    /// It normalises over every class, so every tower's logits.
    fn reads_own_tower(&self, _towers: usize) -> bool {
        false
    }

    fn forward_kernels(&self, cx: &KernelCx<'_>) -> Vec<KernelSpec> {
        let i = cx.input;
        let name = format!("{}_fwd_c{}", cx.c_name(), i.c);
        let per = Len::PerImage(i.len() as u64);
        vec![Instance {
            role: Role::Forward,
            launch: KernelLaunch::elementwise(cx.layer, &name, (i.h * i.w * 32) as u64),
            template: &FORWARD,
            doc: format!("forward of `{}` (softmax)", cx.name),
            consts: vec![
                ("C", i.c.into()),
                ("HW", (i.h * i.w).into()),
                ("THREADS", (EW_THREADS as usize).into()),
            ],
            lens: vec![("x", per), ("y", per)],
            gemm: None,
        }
        .spec()]
    }

    /// None: the loss kernel computes the gradient of a final softmax.
    fn backward_kernels(&self, _cx: &KernelCx<'_>) -> Vec<KernelSpec> {
        Vec::new()
    }
}
