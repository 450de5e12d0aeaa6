//! `maxpool(k, stride = k)` and `avgpool(k, stride = k)`: pooling over k x k windows, no
//! padding, floor rounding; windows may overlap (`stride < k`, as in the paper). The GPU
//! kernels are `kernels_templates/pool.cuh`.

use super::dsl::{int, window, ArgSpec, Default, Keyword, Naming, ShapeError};
use super::kind::{FusedPool, KernelCx, Kind, LayerKind, ShapeContext};
use crate::kernels::spec::{
    int as int_arg, read, write, Header, Instance, KernelLaunch, KernelSpec, Len, Role, Template,
    Value, EW_THREADS,
};
use crate::shape::Shape;

/// Max or average pooling, no padding, floor rounding; windows may overlap.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pool {
    /// Max pooling; average pooling otherwise.
    pub max: bool,
    pub k: usize,
    pub stride: usize,
}

/// The stride defaults to the kernel size (non-overlapping), as in PyTorch.
const SIGNATURE: &[ArgSpec] = &[
    int("k", 1, Default::Required, true),
    int("stride", 1, Default::SameAs("k"), false),
];

const FORWARD: Template = Template {
    header: "pool.cuh",
    function: "pool_fwd",
    params: &[read("x"), write("y"), int_arg("batch")],
};

const BACKWARD: Template = Template {
    header: "pool.cuh",
    function: "pool_bwd",
    params: &[read("x"), read("dy"), write("dx"), int_arg("batch")],
};

impl Kind for Pool {
    const KEYWORDS: &'static [Keyword] = &[
        Keyword {
            name: "maxpool",
            signature: SIGNATURE,
            naming: Naming::AfterLearned("pool"),
        },
        Keyword {
            name: "avgpool",
            signature: SIGNATURE,
            naming: Naming::AfterLearned("pool"),
        },
    ];
    const HEADERS: &'static [Header] = &[Header {
        name: "pool.cuh",
        text: include_str!("../../../kernels_templates/pool.cuh"),
    }];
    const TEMPLATES: &'static [Template] = &[FORWARD, BACKWARD];

    fn build(keyword: &str, v: &[f64]) -> Self {
        Pool {
            max: keyword == "maxpool",
            k: v[0] as usize,
            stride: v[1] as usize,
        }
    }

    fn in_tower(&self, _towers: usize, _own: bool) -> Self {
        *self
    }
}

impl Pool {
    pub(super) fn mode(&self) -> &'static str {
        if self.max {
            "max"
        } else {
            "avg"
        }
    }

    /// This pooling fused into the stage before it, writing `output` ([`FusedPool`]).
    pub fn fused(&self, output: Shape) -> FusedPool {
        FusedPool {
            max: self.max,
            k: self.k,
            stride: self.stride,
            output,
        }
    }

    /// The pooling of a [`FusedPool`].
    pub fn of_fused(f: &FusedPool) -> Pool {
        Pool {
            max: f.max,
            k: f.k,
            stride: f.stride,
        }
    }

    /// The constants its two templates share.
    fn consts(&self, cx: &KernelCx<'_>) -> Vec<(&'static str, Value)> {
        self.consts_of(cx.input, cx.output)
    }

    /// The constants of a pooling of `i` to `o` (the LRN's fused kernel takes them too).
    pub(super) fn consts_of(&self, i: Shape, o: Shape) -> Vec<(&'static str, Value)> {
        vec![
            ("THREADS", (EW_THREADS as usize).into()),
            ("C", i.c.into()),
            ("H", i.h.into()),
            ("W", i.w.into()),
            ("P", o.h.into()),
            ("Q", o.w.into()),
            ("K", self.k.into()),
            ("STRIDE", self.stride.into()),
            ("MAX", self.max.into()),
        ]
    }
}

impl LayerKind for Pool {
    fn keyword(&self) -> &'static str {
        if self.max {
            "maxpool"
        } else {
            "avgpool"
        }
    }

    fn describe(&self) -> String {
        format!("{}({}, stride = {})", self.keyword(), self.k, self.stride)
    }

    fn needs_image(&self) -> Option<&'static str> {
        Some("pooling")
    }

    fn infer(&mut self, input: Shape, cx: &ShapeContext<'_>) -> Result<Shape, ShapeError> {
        let (k, stride) = (self.k, self.stride);
        window(input, k, 0, &cx.input(input))?;
        Ok(Shape::new(
            input.c,
            (input.h - k) / stride + 1,
            (input.w - k) / stride + 1,
        ))
    }

    fn reads_own_tower(&self, _towers: usize) -> bool {
        true
    }

    fn forward_kernels(&self, cx: &KernelCx<'_>) -> Vec<KernelSpec> {
        let (i, o) = (cx.input, cx.output);
        let name = format!(
            "{}_fwd_{}_c{}_k{}s{}",
            cx.c_name(),
            self.mode(),
            i.c,
            self.k,
            self.stride
        );
        vec![Instance {
            role: Role::Forward,
            launch: KernelLaunch::elementwise(cx.layer, &name, o.len() as u64),
            template: &FORWARD,
            doc: format!("forward of `{}` ({})", cx.name, self.describe()),
            consts: self.consts(cx),
            lens: vec![
                ("x", Len::PerImage(i.len() as u64)),
                ("y", Len::PerImage(o.len() as u64)),
            ],
            gemm: None,
        }
        .spec()]
    }

    fn backward_kernels(&self, cx: &KernelCx<'_>) -> Vec<KernelSpec> {
        if !cx.needs_dx {
            return Vec::new();
        }
        let (i, o) = (cx.input, cx.output);
        let name = format!(
            "{}_bwd_{}_c{}_k{}s{}",
            cx.c_name(),
            self.mode(),
            i.c,
            self.k,
            self.stride
        );
        vec![Instance {
            role: Role::Backward,
            launch: KernelLaunch::elementwise(cx.layer, &name, i.len() as u64),
            template: &BACKWARD,
            doc: format!("gradient of `{}` ({})", cx.name, self.describe()),
            consts: self.consts(cx),
            lens: vec![
                ("x", Len::PerImage(i.len() as u64)),
                ("dy", Len::PerImage(o.len() as u64)),
                ("dx", Len::PerImage(i.len() as u64)),
            ],
            gemm: None,
        }
        .spec()]
    }
}
