//! What every layer kind implements: [`LayerKind`], the questions asked of one layer (its
//! shape rule, parameters, towers, kernels), and [`Kind`], what is known of the kind
//! before there is a layer (its keywords and templates, building it from arguments).

use std::fmt;

use super::dsl::{Keyword, ShapeError};
use crate::kernels::precision::Precision;
use crate::kernels::spec::{c_ident, Header, KernelSpec, Template};
use crate::kernels::tuning::Choice;
use crate::shape::{Shape, TowerOf};

/// What a shape rule is told besides the input shape.
pub struct ShapeContext<'a> {
    /// Where the input comes from, for messages: `` `pool2` `` or `the input`.
    pub from: &'a str,
    /// Towers of the network (1: unsplit).
    pub split: usize,
}

impl ShapeContext<'_> {
    /// `input 256x6x6 from `pool2``, for messages.
    pub fn input(&self, input: Shape) -> String {
        format!("input {input} from {}", self.from)
    }
}

/// What a layer's kernels need to know of its place in a plan.
#[derive(Clone, Copy, Debug)]
pub struct KernelCx<'a> {
    /// Index of the layer in the plan.
    pub layer: usize,
    /// The layer's name.
    pub name: &'a str,
    pub input: Shape,
    pub output: Shape,
    /// The ReLU that follows runs in this layer's epilogue.
    pub fused_relu: bool,
    /// The pooling that follows runs in this stage (an LRN's, at inference); the stage
    /// writes its output instead of `output`.
    pub pool: Option<FusedPool>,
    /// The forward GEMM's tile from a tuning table (`kernels::tuning`), or one the tuner
    /// tries; `None`: the heuristic's. A layer kind ignores a choice it cannot take (a
    /// SIMT tile in a tensor-core precision, a tile the template refuses).
    pub tuned: Option<Choice>,
    /// The backward pass computes the input gradient (a learned layer comes earlier).
    pub needs_dx: bool,
    /// For one tower's plan: which tower.
    pub tower: Option<TowerOf>,
    /// The arithmetic of the forward kernel asked for (training kernels are f32).
    pub precision: Precision,
}

/// A pooling fused into the stage before it (an LRN's, at inference): its window, as
/// `maxpool`/`avgpool` gave it, and its output shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FusedPool {
    /// Max pooling; average pooling otherwise.
    pub max: bool,
    pub k: usize,
    pub stride: usize,
    /// Per-image output of the pooling: what the stage writes.
    pub output: Shape,
}

impl KernelCx<'_> {
    /// The layer's name as a C identifier, the prefix of its kernels' names.
    pub fn c_name(&self) -> String {
        c_ident(self.name)
    }
}

/// Everything about one layer that does not depend on the device it runs on. Object safe:
/// `Op::kind` gives it for any layer.
pub trait LayerKind: fmt::Debug + Send + Sync {
    /// The DSL keyword of this layer.
    fn keyword(&self) -> &'static str;

    /// The DSL spelling with every argument (defaults included), for summaries and
    /// kernel comments: `conv(96, 11, stride = 4)`.
    fn describe(&self) -> String;

    /// Rules on the arguments' own values (no shapes involved), checked even where shape
    /// inference stopped earlier: the offending argument and the message.
    fn check_args(&self) -> Option<(&'static str, String)> {
        None
    }

    /// What this layer is called when it needs an image, so that it is refused after a
    /// fully connected layer (`convolution`, `pooling`); `None` when any input will do.
    fn needs_image(&self) -> Option<&'static str> {
        None
    }

    /// Flattens its input into a vector (fully connected): image layers may not follow.
    fn flattens(&self) -> bool {
        false
    }

    /// Must be the network's last layer (softmax); training folds it into the loss.
    fn must_be_last(&self) -> bool {
        false
    }

    /// The shape rule: the per-image output for `input`, or what is wrong. May complete
    /// the operation (LRN learns the towers its window stays within).
    fn infer(&mut self, input: Shape, cx: &ShapeContext<'_>) -> Result<Shape, ShapeError>;

    /// Whether the layer has weights and biases ([`LayerKind::params`] is not empty).
    fn is_learned(&self) -> bool {
        false
    }

    /// The learned tensors for `input`, weight then bias, named as PyTorch names them
    /// (`weight`, `bias`), in PyTorch's layouts.
    fn params(&self, input: Shape) -> Vec<(&'static str, Vec<usize>)> {
        let _ = input;
        Vec::new()
    }

    /// Multiply-adds per image.
    fn macs(&self, input: Shape, output: Shape) -> u64 {
        let _ = (input, output);
        0
    }

    /// In a network split into `towers` towers, whether the layer reads only its own
    /// tower's channels (otherwise the other towers' outputs cross to it first).
    fn reads_own_tower(&self, towers: usize) -> bool;

    /// A ReLU right after this layer runs in its epilogue.
    fn fuses_relu(&self) -> bool {
        false
    }

    /// At inference, a pooling right after this layer runs in its stage, on its values
    /// before they are stored (`Plan::inference_stages`); its forward kernel
    /// then reads [`KernelCx::pool`].
    fn fuses_pool(&self) -> bool {
        false
    }

    /// The identity at inference (dropout): no kernel and no stage there.
    fn identity_at_inference(&self) -> bool {
        false
    }

    /// The key of this layer's forward GEMM in a tuning table (`kernels::tuning`), from
    /// its input and output: its kind and every shape its kernel depends on; `None` for a
    /// layer with nothing to tune.
    fn tuning_key(&self, input: Shape, output: Shape) -> Option<String> {
        let _ = (input, output);
        None
    }

    /// The tiles the tuner tries for this stage's forward GEMM in `cx.precision`, the
    /// heuristic's first; each one the templates take (NVRTC may still find one that
    /// spills: the tuner drops those).
    fn candidates(&self, cx: &KernelCx<'_>) -> Vec<Choice> {
        let _ = cx;
        Vec::new()
    }

    /// The forward kernels of this layer's stage, in launch order: one (a `Forward`
    /// kernel), or a split-K GEMM and its ordered sum (`ForwardReduce`); none for the
    /// identity at inference.
    fn forward_kernels(&self, cx: &KernelCx<'_>) -> Vec<KernelSpec>;

    /// The training kernels of this layer's stage, in launch order.
    fn backward_kernels(&self, cx: &KernelCx<'_>) -> Vec<KernelSpec>;
}

/// What is known of a layer kind before there is a layer, and what makes a new one of it.
pub trait Kind: LayerKind + Copy + Sized {
    /// Its keywords in the DSL (max and average pooling are one kind).
    const KEYWORDS: &'static [Keyword];
    /// The headers of `kernels_templates/` it brings (the GEMM's are shared by conv and
    /// fc: `kernels::gemm`).
    const HEADERS: &'static [Header];
    /// Its device function templates.
    const TEMPLATES: &'static [Template];

    /// The layer from keyword `keyword` (one of [`Kind::KEYWORDS`]) and its argument
    /// values in signature order, defaults filled in, each checked against its type.
    fn build(keyword: &str, values: &[f64]) -> Self;

    /// The layer as each of `towers` towers runs it (half the output channels of a learned
    /// layer), reading its own tower's part of the input (`own`) or every tower's.
    fn in_tower(&self, towers: usize, own: bool) -> Self;
}
