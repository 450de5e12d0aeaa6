//! `tanh`: the hyperbolic tangent, element-wise (`kernels_templates/tanh.cuh`); its
//! gradient, `dy * (1 - y^2)`, reads the output.

use super::common::elementwise;
use super::dsl::{Keyword, Naming, ShapeError};
use super::kind::{KernelCx, Kind, LayerKind, ShapeContext};
use crate::kernels::spec::{int, read, write, Header, KernelSpec, Len, Role, Template};
use crate::shape::Shape;

/// The hyperbolic tangent, `tanh(x)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tanh;

const FORWARD: Template = Template {
    header: "tanh.cuh",
    function: "tanh_fwd",
    params: &[read("x"), write("y"), int("batch")],
};

const BACKWARD: Template = Template {
    header: "tanh.cuh",
    function: "tanh_bwd",
    params: &[read("y"), read("dy"), write("dx"), int("batch")],
};

impl Kind for Tanh {
    const KEYWORDS: &'static [Keyword] = &[Keyword {
        name: "tanh",
        signature: &[],
        naming: Naming::AfterLearned("tanh"),
    }];
    const HEADERS: &'static [Header] = &[Header {
        name: "tanh.cuh",
        text: include_str!("../../../kernels_templates/tanh.cuh"),
    }];
    const TEMPLATES: &'static [Template] = &[FORWARD, BACKWARD];

    fn build(_keyword: &str, _values: &[f64]) -> Self {
        Tanh
    }

    fn in_tower(&self, _towers: usize, _own: bool) -> Self {
        Tanh
    }
}

impl LayerKind for Tanh {
    fn keyword(&self) -> &'static str {
        "tanh"
    }

    fn describe(&self) -> String {
        "tanh".into()
    }

    fn infer(&mut self, input: Shape, _cx: &ShapeContext<'_>) -> Result<Shape, ShapeError> {
        Ok(input)
    }

    fn reads_own_tower(&self, _towers: usize) -> bool {
        true
    }

    fn forward_kernel(&self, cx: &KernelCx<'_>) -> Option<KernelSpec> {
        let len = cx.input.len();
        let per = Len::PerImage(len as u64);
        Some(elementwise(
            cx,
            len,
            Role::Forward,
            &FORWARD,
            format!("{}_fwd_n{len}", cx.c_name()),
            format!("forward of `{}` (tanh)", cx.name),
            vec![("x", per), ("y", per)],
        ))
    }

    fn backward_kernels(&self, cx: &KernelCx<'_>) -> Vec<KernelSpec> {
        if !cx.needs_dx {
            return Vec::new();
        }
        let len = cx.input.len();
        let per = Len::PerImage(len as u64);
        vec![elementwise(
            cx,
            len,
            Role::Backward,
            &BACKWARD,
            format!("{}_bwd_n{len}", cx.c_name()),
            format!("gradient of `{}` (tanh)", cx.name),
            vec![("y", per), ("dy", per), ("dx", per)],
        )]
    }
}
