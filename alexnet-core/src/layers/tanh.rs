//! `tanh`: the hyperbolic tangent, element-wise (`kernels_templates/tanh.cuh`); its
//! gradient, `dy * (1 - y^2)`, reads the output.

use super::common::{activation_backward, activation_forward};
use super::dsl::{Keyword, Naming, ShapeError};
use super::kind::{KernelCx, Kind, LayerKind, ShapeContext};
use crate::kernels::spec::{int, read, write, Header, KernelSpec, Template};
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

    fn forward_kernels(&self, cx: &KernelCx<'_>) -> Vec<KernelSpec> {
        vec![activation_forward(cx, &FORWARD, "tanh")]
    }

    fn backward_kernels(&self, cx: &KernelCx<'_>) -> Vec<KernelSpec> {
        activation_backward(cx, &BACKWARD, "tanh")
    }
}
