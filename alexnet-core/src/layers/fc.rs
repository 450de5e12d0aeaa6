//! `fc(out)`: a fully connected layer with bias over the flattened input, weight
//! `[out, in]`; on the GPU, the 1x1 convolution GEMM of `kernels::gemm` with tiles for a
//! small M (the batch), or in tf32 and bf16 the tensor-core GEMM of `kernels::mma`.

use super::common::{learned_backward, learned_forward};
use super::dsl::{err, int, ArgSpec, Culprit, Default, Keyword, Naming, ShapeError, MAX_ELEMENTS};
use super::kind::{KernelCx, Kind, LayerKind, ShapeContext};
use crate::kernels::gemm::Gemm;
use crate::kernels::mma::{MmaConv, MmaGemm, MmaInputs, MmaTile};
use crate::kernels::spec::{Epilogue, Header, KernelSpec, Template};
use crate::kernels::tuning::{self, Choice};
use crate::shape::Shape;

/// Fully connected layer with bias over the flattened input; weight `[out, in]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fc {
    pub out: usize,
}

const SIGNATURE: &[ArgSpec] = &[int("out", 1, Default::Required, true)];

impl Fc {
    /// The tensor-core forward GEMM of stage `cx` with `choice` (`None`: the heuristic's
    /// [`MmaTile::SMALL_M`], split so that one image's grid has about 128 blocks), if it
    /// takes it.
    fn mma(&self, cx: &KernelCx<'_>, inputs: MmaInputs, choice: Option<Choice>) -> Option<MmaGemm> {
        let epilogue = Epilogue {
            bias: true,
            relu: cx.fused_relu,
        };
        let (n, k) = (cx.output.len(), cx.input.len());
        let tile = match choice {
            None => MmaTile::SMALL_M,
            Some(Choice::Mma { tile, .. }) => tile,
            Some(Choice::Simt(_)) => return None,
        };
        let g = MmaGemm::with_inputs(1, n, k, inputs, tile, epilogue).ok()?;
        match choice {
            Some(Choice::Mma { split, .. }) => g.with_split(split).ok(),
            _ => Some(g.with_split(g.split_for(128)).unwrap_or(g)),
        }
    }
}

impl Kind for Fc {
    const KEYWORDS: &'static [Keyword] = &[Keyword {
        name: "fc",
        signature: SIGNATURE,
        naming: Naming::Learned("fc"),
    }];
    /// The GEMM headers are shared with conv (`kernels::gemm`).
    const HEADERS: &'static [Header] = &[];
    const TEMPLATES: &'static [Template] = &[];

    fn build(_keyword: &str, v: &[f64]) -> Self {
        Fc { out: v[0] as usize }
    }

    fn in_tower(&self, towers: usize, _own: bool) -> Self {
        Fc {
            out: self.out / towers,
        }
    }
}

impl LayerKind for Fc {
    fn keyword(&self) -> &'static str {
        "fc"
    }

    fn describe(&self) -> String {
        format!("fc({})", self.out)
    }

    fn flattens(&self) -> bool {
        true
    }

    fn infer(&mut self, input: Shape, cx: &ShapeContext<'_>) -> Result<Shape, ShapeError> {
        let (out, split) = (self.out, cx.split);
        if split > 1 && !out.is_multiple_of(split) {
            return Err(err(
                Culprit::Arg("out"),
                format!("{out} outputs cannot be split evenly between {split} towers"),
            ));
        }
        let param = (out as u128) * (input.len() as u128);
        if param > MAX_ELEMENTS {
            return Err(err(
                Culprit::Layer,
                format!(
                    "weight of {out}x{} = {param} elements overflows the 2^31 element limit",
                    input.len()
                ),
            ));
        }
        Ok(Shape::new(out, 1, 1))
    }

    fn is_learned(&self) -> bool {
        true
    }

    fn params(&self, input: Shape) -> Vec<(&'static str, Vec<usize>)> {
        vec![
            ("weight", vec![self.out, input.len()]),
            ("bias", vec![self.out]),
        ]
    }

    fn macs(&self, input: Shape, _output: Shape) -> u64 {
        (self.out as u64) * input.len() as u64
    }

    fn reads_own_tower(&self, _towers: usize) -> bool {
        false
    }

    fn fuses_relu(&self) -> bool {
        true
    }

    /// The f32 GEMM; under `Precision::Tf32`, `Bf16` and `F16` the tensor-core
    /// GEMM (`kernels::mma`, with bias and the fused ReLU in its epilogue) where the input
    /// is whole 16-byte rows, split along K so that one image's grid has about 128 blocks
    /// ([`MmaGemm::split_for`]).
    fn tuning_key(&self, input: Shape, output: Shape) -> Option<String> {
        Some(format!("fc i{} o{}", input.len(), output.len()))
    }

    fn candidates(&self, cx: &KernelCx<'_>) -> Vec<Choice> {
        if let Some(inputs) = MmaInputs::for_precision(cx.precision) {
            let Some(g) = self.mma(cx, inputs, None) else {
                return Vec::new();
            };
            let first = Choice::Mma {
                tile: g.tile,
                split: g.split,
            };
            return tuning::mma_candidates(first, false)
                .into_iter()
                .filter(|c| self.mma(cx, inputs, Some(*c)).is_some())
                .collect();
        }
        let g = Gemm::fc(cx.input, cx.output);
        tuning::simt_candidates(g.forward_tile(), cx.output.len(), true)
    }

    fn forward_kernels(&self, cx: &KernelCx<'_>) -> Vec<KernelSpec> {
        if let Some(inputs) = MmaInputs::for_precision(cx.precision) {
            // The tuned tile and split where the GEMM takes them, the heuristic's
            // otherwise.
            if let Some(g) = self
                .mma(cx, inputs, cx.tuned)
                .or_else(|| self.mma(cx, inputs, None))
            {
                return g.specs(cx.layer, &cx.c_name());
            }
        }
        let g = Gemm::fc(cx.input, cx.output);
        vec![learned_forward(&g, cx, &self.describe())]
    }

    /// The f32 GEMMs; under `Precision::Tf32`, `Bf16` and `F16` the weight and input
    /// gradients on tensor cores, as those of a 1 x 1 convolution of a 1 x 1 image with
    /// the input's values as channels (`conv_mma_wgrad_*`, `conv_mma_dgrad_*`).
    fn backward_kernels(&self, cx: &KernelCx<'_>) -> Vec<KernelSpec> {
        let g = Gemm::fc(cx.input, cx.output);
        let conv = MmaConv {
            input: Shape::new(cx.input.len(), 1, 1),
            output: cx.output,
            r: 1,
            stride: 1,
            pad: 0,
            groups: 1,
        };
        learned_backward(&g, conv, cx, &self.describe())
    }
}
