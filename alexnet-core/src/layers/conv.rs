//! `conv(out, k, stride = 1, pad = 0, groups = 1)`: 2-D convolution with bias, weight
//! `[out, in/groups, k, k]`; an implicit GEMM on the GPU (`kernels::gemm`).

use super::common::{learned_backward, learned_forward};
use super::dsl::{
    err, int, window, ArgSpec, Culprit, Default, Keyword, Naming, ShapeError, MAX_ELEMENTS,
};
use super::kind::{KernelCx, Kind, LayerKind, ShapeContext};
use crate::kernels::gemm::Gemm;
use crate::kernels::mma::{MmaConv, MmaGemm, MmaInputs, MmaTile};
use crate::kernels::spec::{Epilogue, Header, KernelSpec, Template};
use crate::kernels::tuning::{self, Choice};
use crate::shape::Shape;

/// 2-D convolution with bias; weight `[out, in/groups, k, k]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conv {
    pub out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

const SIGNATURE: &[ArgSpec] = &[
    int("out", 1, Default::Required, true),
    int("k", 1, Default::Required, true),
    int("stride", 1, Default::Value(1.0), false),
    int("pad", 0, Default::Value(0.0), false),
    int("groups", 1, Default::Value(1.0), false),
];

impl Kind for Conv {
    const KEYWORDS: &'static [Keyword] = &[Keyword {
        name: "conv",
        signature: SIGNATURE,
        naming: Naming::Learned("conv"),
    }];
    /// The GEMM headers are shared with fc (`kernels::gemm`).
    const HEADERS: &'static [Header] = &[];
    const TEMPLATES: &'static [Template] = &[];

    fn build(_keyword: &str, v: &[f64]) -> Self {
        Conv {
            out: v[0] as usize,
            k: v[1] as usize,
            stride: v[2] as usize,
            pad: v[3] as usize,
            groups: v[4] as usize,
        }
    }

    fn in_tower(&self, towers: usize, own: bool) -> Self {
        Conv {
            out: self.out / towers,
            groups: if own {
                self.groups / towers
            } else {
                self.groups
            },
            ..*self
        }
    }
}

impl Conv {
    /// The layer as the GEMM-shaped convolution its kernels compute, between `input` and
    /// `output` (the CPU backend's kernels take it as their geometry too).
    pub fn gemm(&self, input: Shape, output: Shape) -> Gemm {
        Gemm::conv(input, output, self.k, self.stride, self.pad, self.groups)
    }

    /// The layer between stage `cx`'s input and output, as the tensor-core kernels take it.
    fn mma_conv(&self, cx: &KernelCx<'_>) -> MmaConv {
        MmaConv {
            input: cx.input,
            output: cx.output,
            r: self.k,
            stride: self.stride,
            pad: self.pad,
            groups: self.groups,
        }
    }

    /// The tensor-core forward GEMM of stage `cx` with `choice` (`None`: the heuristic's
    /// tile), if it takes it (a convolution has no split-K).
    fn mma(&self, cx: &KernelCx<'_>, inputs: MmaInputs, choice: Option<Choice>) -> Option<MmaGemm> {
        let tile = match choice {
            None => MmaTile::conv_for(inputs),
            Some(Choice::Mma { tile, split: 1 }) => tile,
            Some(_) => return None,
        };
        let conv = self.mma_conv(cx);
        let epilogue = Epilogue {
            bias: true,
            relu: cx.fused_relu,
        };
        MmaGemm::conv(conv, inputs, tile, epilogue).ok()
    }
}

impl LayerKind for Conv {
    fn keyword(&self) -> &'static str {
        "conv"
    }

    fn describe(&self) -> String {
        let Conv {
            out,
            k,
            stride,
            pad,
            groups,
        } = *self;
        let mut s = format!("conv({out}, {k}");
        if stride != 1 {
            s += &format!(", stride = {stride}");
        }
        if pad != 0 {
            s += &format!(", pad = {pad}");
        }
        if groups != 1 {
            s += &format!(", groups = {groups}");
        }
        s + ")"
    }

    fn needs_image(&self) -> Option<&'static str> {
        Some("convolution")
    }

    fn infer(&mut self, input: Shape, cx: &ShapeContext<'_>) -> Result<Shape, ShapeError> {
        let Conv {
            out,
            k,
            stride,
            pad,
            groups,
        } = *self;
        let ctx = cx.input(input);
        let split = cx.split;
        window(input, k, pad, &ctx)?;
        if !input.c.is_multiple_of(groups) {
            return Err(err(
                Culprit::Arg("groups"),
                format!(
                    "groups {groups} does not divide the {} input channels ({ctx})",
                    input.c
                ),
            ));
        }
        if !out.is_multiple_of(groups) {
            return Err(err(
                Culprit::Arg("groups"),
                format!("groups {groups} does not divide the {out} output channels"),
            ));
        }
        if split > 1 {
            if !out.is_multiple_of(split) {
                return Err(err(
                    Culprit::Arg("out"),
                    format!("{out} output channels cannot be split evenly between {split} towers"),
                ));
            }
            if groups != 1 && !groups.is_multiple_of(split) {
                return Err(err(
                    Culprit::Arg("groups"),
                    format!("groups {groups} would straddle the {split} towers: with `split {split}` groups must be 1 (read both towers) or a multiple of {split}"),
                ));
            }
        }
        let param = (out as u128) * (input.c / groups) as u128 * (k as u128) * (k as u128);
        if param > MAX_ELEMENTS {
            return Err(err(
                Culprit::Layer,
                format!("weight of {param} elements overflows the 2^31 element limit"),
            ));
        }
        Ok(Shape::new(
            out,
            (input.h + 2 * pad - k) / stride + 1,
            (input.w + 2 * pad - k) / stride + 1,
        ))
    }

    fn is_learned(&self) -> bool {
        true
    }

    fn params(&self, input: Shape) -> Vec<(&'static str, Vec<usize>)> {
        let (out, k) = (self.out, self.k);
        vec![
            ("weight", vec![out, input.c / self.groups, k, k]),
            ("bias", vec![out]),
        ]
    }

    fn macs(&self, input: Shape, output: Shape) -> u64 {
        (output.len() as u64) * ((input.c / self.groups) * self.k * self.k) as u64
    }

    fn reads_own_tower(&self, towers: usize) -> bool {
        self.groups.is_multiple_of(towers)
    }

    fn fuses_relu(&self) -> bool {
        true
    }

    /// The f32 implicit GEMM; under `Precision::Tf32`, `Bf16` and `F16` the tensor-core
    /// one (`conv_mma_tf32`, `conv_mma_bf16r`, `conv_mma_f16r`, 128 x 128 tiles).
    fn tuning_key(&self, input: Shape, output: Shape) -> Option<String> {
        Some(format!(
            "conv c{}x{}x{} o{} r{} s{} p{} g{}",
            input.c, input.h, input.w, output.c, self.k, self.stride, self.pad, self.groups
        ))
    }

    fn candidates(&self, cx: &KernelCx<'_>) -> Vec<Choice> {
        if let Some(inputs) = MmaInputs::for_precision(cx.precision) {
            let first = Choice::Mma {
                tile: MmaTile::conv_for(inputs),
                split: 1,
            };
            return tuning::mma_candidates(first, true)
                .into_iter()
                .filter(|c| self.mma(cx, inputs, Some(*c)).is_some())
                .collect();
        }
        let g = self.gemm(cx.input, cx.output);
        tuning::simt_candidates(g.forward_tile(), cx.output.c / self.groups, false)
    }

    fn forward_kernels(&self, cx: &KernelCx<'_>) -> Vec<KernelSpec> {
        if let Some(inputs) = MmaInputs::for_precision(cx.precision) {
            // The tuned tile where the GEMM takes it, the heuristic's otherwise.
            if let Some(g) = self
                .mma(cx, inputs, cx.tuned)
                .or_else(|| self.mma(cx, inputs, None))
            {
                return g.specs(cx.layer, &cx.c_name());
            }
        }
        let g = self.gemm(cx.input, cx.output);
        vec![learned_forward(&g, cx, &self.describe())]
    }

    /// The f32 GEMMs; under `Precision::Tf32`, `Bf16` and `F16` the weight and input
    /// gradients on tensor cores (`conv_mma_wgrad_*`, `conv_mma_dgrad_*`).
    fn backward_kernels(&self, cx: &KernelCx<'_>) -> Vec<KernelSpec> {
        let g = self.gemm(cx.input, cx.output);
        learned_backward(&g, self.mma_conv(cx), cx, &self.describe())
    }
}
