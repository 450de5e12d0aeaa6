//! `dropout(p = 0.5)`: inverted dropout of probability `p` at training time, the identity
//! at inference. Which units drop is decided by Philox4x32-10 on (seed, layer, step,
//! unit), the same on the CPU and in `kernels_templates/dropout.cuh`.

use super::dsl::{ArgSpec, ArgType, Default, Keyword, Naming, ShapeError};
use super::kind::{KernelCx, Kind, LayerKind, ShapeContext};
use crate::kernels::spec::{
    int, read, write, ArgTy, Header, Instance, KernelLaunch, KernelSpec, Len, Param, Role,
    Template, Value, EW_THREADS,
};
use crate::shape::Shape;

/// Dropout with drop probability `p`: identity at inference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub p: f32,
}

const SIGNATURE: &[ArgSpec] = &[ArgSpec {
    name: "p",
    ty: ArgType::Real {
        min: 0.0,
        max: 1.0,
        max_inclusive: false,
    },
    default: Default::Value(0.5),
    positional: true,
}];

const fn uint(name: &'static str) -> Param {
    Param {
        name,
        ty: ArgTy::Uint,
    }
}

const TRAINING: Template = Template {
    header: "dropout.cuh",
    function: "dropout",
    params: &[
        read("x"),
        write("y"),
        uint("seed_lo"),
        uint("seed_hi"),
        uint("step_lo"),
        uint("step_hi"),
        int("batch"),
    ],
};

/// Training-time dropout of probability `p`: the Philox draw (a `u32`) below which a unit
/// is dropped, `p * 2^32`, and the scale of a kept unit, `1 / (1 - p)` (inverted dropout:
/// inference is the identity). The CPU backend and the generated CUDA both use these.
pub fn dropout_threshold_scale(p: f32) -> (u32, f32) {
    let threshold =
        (f64::from(p.clamp(0.0, 1.0)) * 4_294_967_296.0).min(f64::from(u32::MAX)) as u32;
    let scale = if p >= 1.0 { 0.0 } else { 1.0 / (1.0 - p) };
    (threshold, scale)
}

impl Kind for Dropout {
    const KEYWORDS: &'static [Keyword] = &[Keyword {
        name: "dropout",
        signature: SIGNATURE,
        naming: Naming::BeforeLearned("drop"),
    }];
    const HEADERS: &'static [Header] = &[Header {
        name: "dropout.cuh",
        text: include_str!("../../../kernels_templates/dropout.cuh"),
    }];
    const TEMPLATES: &'static [Template] = &[TRAINING];

    fn build(_keyword: &str, v: &[f64]) -> Self {
        Dropout { p: v[0] as f32 }
    }

    fn in_tower(&self, _towers: usize, _own: bool) -> Self {
        *self
    }
}

impl LayerKind for Dropout {
    fn keyword(&self) -> &'static str {
        "dropout"
    }

    fn describe(&self) -> String {
        format!("dropout({})", self.p)
    }

    fn infer(&mut self, input: Shape, _cx: &ShapeContext<'_>) -> Result<Shape, ShapeError> {
        Ok(input)
    }

    fn reads_own_tower(&self, _towers: usize) -> bool {
        true
    }

    fn identity_at_inference(&self) -> bool {
        true
    }

    fn forward_kernels(&self, _cx: &KernelCx<'_>) -> Vec<KernelSpec> {
        Vec::new()
    }

    /// The training-time kernel, forward and backward alike (it runs before the first
    /// learned layer too, where nothing else of the backward pass does).
    fn backward_kernels(&self, cx: &KernelCx<'_>) -> Vec<KernelSpec> {
        let len = cx.input.len();
        let (threshold, scale) = dropout_threshold_scale(self.p);
        let (tower, towers) = cx.tower.map_or((0, 1), |t| (t.index, t.of));
        let name = format!("{}_dropout_n{len}", cx.c_name());
        let per = Len::PerImage(len as u64);
        vec![Instance {
            role: Role::Dropout,
            launch: KernelLaunch::elementwise(cx.layer, &name, len as u64),
            template: &TRAINING,
            doc: format!(
                "training-time dropout of `{}` ({})",
                cx.name,
                self.describe()
            ),
            consts: vec![
                ("LEN", Value::Uint(len as u64)),
                ("TOWER", Value::Uint(tower as u64)),
                ("TOWERS", Value::Uint(towers as u64)),
                ("LAYER_ID", Value::Uint(cx.layer as u64)),
                ("THRESHOLD", Value::Uint(threshold.into())),
                ("SCALE", scale.into()),
                ("THREADS", (EW_THREADS as usize).into()),
            ],
            lens: vec![("x", per), ("y", per)],
            gemm: None,
        }
        .spec()]
    }
}
