//! `relu`: `max(x, 0)`. After a conv or fc layer it runs in that layer's epilogue (a fused
//! stage, see `Plan::stages`); elsewhere it is a kernel of its own
//! (`kernels_templates/relu.cuh`).

use super::common::{activation_backward, activation_forward};
use super::dsl::{Keyword, Naming, ShapeError};
use super::kind::{KernelCx, Kind, LayerKind, ShapeContext};
use crate::kernels::spec::{int, read, write, Header, KernelSpec, Template};
use crate::shape::Shape;

/// The rectified linear unit, `max(x, 0)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Relu;

const FORWARD: Template = Template {
    header: "relu.cuh",
    function: "relu_fwd",
    params: &[read("x"), write("y"), int("batch")],
};

const BACKWARD: Template = Template {
    header: "relu.cuh",
    function: "relu_bwd",
    params: &[read("y"), read("dy"), write("dx"), int("batch")],
};

impl Kind for Relu {
    const KEYWORDS: &'static [Keyword] = &[Keyword {
        name: "relu",
        signature: &[],
        naming: Naming::AfterLearned("relu"),
    }];
    const HEADERS: &'static [Header] = &[Header {
        name: "relu.cuh",
        text: include_str!("../../../kernels_templates/relu.cuh"),
    }];
    const TEMPLATES: &'static [Template] = &[FORWARD, BACKWARD];

    fn build(_keyword: &str, _values: &[f64]) -> Self {
        Relu
    }

    fn in_tower(&self, _towers: usize, _own: bool) -> Self {
        Relu
    }
}

impl LayerKind for Relu {
    fn keyword(&self) -> &'static str {
        "relu"
    }

    fn describe(&self) -> String {
        "relu".into()
    }

    fn infer(&mut self, input: Shape, _cx: &ShapeContext<'_>) -> Result<Shape, ShapeError> {
        Ok(input)
    }

    fn reads_own_tower(&self, _towers: usize) -> bool {
        true
    }

    fn forward_kernels(&self, cx: &KernelCx<'_>) -> Vec<KernelSpec> {
        vec![activation_forward(cx, &FORWARD, "relu")]
    }

    fn backward_kernels(&self, cx: &KernelCx<'_>) -> Vec<KernelSpec> {
        activation_backward(cx, &BACKWARD, "relu")
    }
}
