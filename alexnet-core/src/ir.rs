//! The planned network: every layer with its operation and its per-image input and output
//! shapes, as the macro inferred them.
//!
//! These types are the contract between the compile-time side (the macro builds a [`Plan`]
//! and emits it as a `const`) and the run-time side (backends execute it). They are plain
//! data, constructible in `const` context, so the generated code carries its plan without
//! any run-time parsing.

use std::borrow::Cow;

pub use crate::kernels::{
    self,
    precision::Precision,
    spec::{Generated, KernelLaunch, KernelSpec, Kernels, Role},
};
pub use crate::layers::kinds::{self, *};
pub use crate::layers::{dropout_threshold_scale, LayerKind, Op};
pub use crate::shape::{Shape, TowerOf};

/// A layer of a planned network.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub name: Cow<'static, str>,
    pub op: Op,
    /// Per-image input shape.
    pub input: Shape,
    /// Per-image output shape.
    pub output: Shape,
}

/// One row of a network's layer table as a compile-time constant (the generated
/// `LAYERS`): usable in `const` contexts, e.g. `const _: () = assert!(Net::LAYERS[0].params < 1 << 20);`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    pub name: &'static str,
    /// The DSL keyword: `conv`, `relu`, ...
    pub op: &'static str,
    /// Per-image output shape `[C, H, W]`.
    pub output: [usize; 3],
    pub params: usize,
    /// Multiply-adds per image.
    pub macs: u64,
}

/// A learned tensor of a layer, in PyTorch layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// `"<layer>.weight"` or `"<layer>.bias"`.
    pub name: String,
    pub shape: Vec<usize>,
}

impl ParamSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Layer {
    /// Number of learned parameters (weights and biases).
    pub fn param_count(&self) -> usize {
        self.op
            .kind()
            .params(self.input)
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum()
    }

    /// Multiply-adds per image (convolutions and fully connected layers only).
    pub fn macs(&self) -> u64 {
        self.op.kind().macs(self.input, self.output)
    }

    /// The learned tensors, `weight` then `bias`, in PyTorch layouts
    /// (`[out, in/groups, kh, kw]` for conv, `[out, in]` for fc).
    pub fn params(&self) -> Vec<ParamSpec> {
        self.op
            .kind()
            .params(self.input)
            .into_iter()
            .map(|(what, shape)| ParamSpec {
                name: format!("{}.{what}", self.name),
                shape,
            })
            .collect()
    }
}

/// A network after shape inference: what the generated code carries and backends execute.
#[derive(Clone, Debug)]
pub struct Plan {
    pub name: Cow<'static, str>,
    /// Per-image input shape.
    pub input: Shape,
    /// Number of towers (`split 2` in the DSL), 1 for an unsplit network.
    pub split: usize,
    pub layers: Cow<'static, [Layer]>,
    /// For one tower's plan ([`Plan::tower`]): which tower of how many. Dropout draws each
    /// unit from its index in the whole network ([`Plan::dropout_counter`]), so a split
    /// network drops the same units as the unsplit one.
    pub tower: Option<TowerOf>,
    /// The kernels `network!` generated for this plan (and each tower's), when it came
    /// from the macro; backends use them instead of generating the same kernels again
    /// (`cuda::kernels`, which checks that they were generated for a plan with this
    /// plan's [`Plan::fingerprint`]). Derived from the rest, so not compared by `==`.
    pub generated: Option<&'static Generated>,
}

impl PartialEq for Plan {
    fn eq(&self, other: &Plan) -> bool {
        self.name == other.name
            && self.input == other.input
            && self.split == other.split
            && self.layers == other.layers
            && self.tower == other.tower
    }
}

/// Where a layer of a split network (`split 2`) gets its input, with each tower holding
/// half of every layer's output channels (half the neurons of an fc layer), as on the
/// paper's two GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TowerInput {
    /// The network's input, which every tower receives whole.
    NetworkInput,
    /// Its own tower's half of the previous output: grouped convolutions (groups a
    /// multiple of the towers), ReLU, pooling, LRN within the tower, dropout.
    OwnTower,
    /// Both halves: the other tower's half crosses before the layer runs (and the matching
    /// gradient crosses back in the backward pass): ungrouped convolutions, fully
    /// connected layers, and the final softmax, which normalises over every class.
    BothTowers,
}

/// A unit of execution: one layer, a convolution / fully connected layer with the ReLU
/// that follows it fused into its epilogue, or (at inference, [`Plan::inference_stages`])
/// an LRN with the pooling that follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage {
    /// Index of the layer in [`Plan::layers`].
    pub layer: usize,
    /// The next layer is a ReLU applied in this stage's epilogue.
    pub fused_relu: bool,
    /// The next layer is a pooling applied to this stage's values before they are stored:
    /// an LRN's, at inference, where nothing needs the normalised values themselves.
    pub fused_pool: bool,
}

impl Stage {
    /// The stage of layer `layer` alone.
    pub fn of(layer: usize) -> Stage {
        Stage {
            layer,
            fused_relu: false,
            fused_pool: false,
        }
    }

    /// Index of the last layer the stage computes: the one whose output it writes.
    pub fn last(&self) -> usize {
        self.layer + usize::from(self.fused_relu) + usize::from(self.fused_pool)
    }
}

impl Plan {
    /// A hash of everything a plan's kernels depend on (name, input, towers, every layer),
    /// stable across builds and machines (FNV-1a of the fields' `Debug` text, which
    /// spells floats exactly). `Generated::fingerprint` holds the one the macro saw.
    pub fn fingerprint(&self) -> u64 {
        let text = format!(
            "{:?}|{:?}|{}|{:?}|{:?}",
            self.name, self.input, self.split, self.layers, self.tower
        );
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// Per-image output shape.
    pub fn output(&self) -> Shape {
        self.layers.last().map_or(self.input, |l| l.output)
    }

    /// Whether the network's last layer is a softmax: its output is probabilities, not
    /// logits.
    pub fn ends_in_softmax(&self) -> bool {
        matches!(self.layers.last().map(|l| l.op), Some(Op::Softmax(_)))
    }

    /// Saturates rather than overflowing (a network that large is refused by the checker).
    pub fn param_count(&self) -> usize {
        self.layers
            .iter()
            .map(Layer::param_count)
            .fold(0, usize::saturating_add)
    }

    /// Saturates rather than overflowing.
    pub fn macs(&self) -> u64 {
        self.layers
            .iter()
            .map(Layer::macs)
            .fold(0, u64::saturating_add)
    }

    /// Every learned tensor, in layer order.
    pub fn params(&self) -> Vec<ParamSpec> {
        self.layers.iter().flat_map(Layer::params).collect()
    }

    pub fn layer(&self, name: &str) -> Option<&Layer> {
        self.layers.iter().find(|l| l.name == name)
    }

    /// The execution schedule of training (and of every backward pass): a ReLU directly
    /// after a conv or fc layer runs in that layer's epilogue; every other layer is its
    /// own stage, so that the backward pass finds each layer's input.
    pub fn stages(&self) -> Vec<Stage> {
        self.schedule(false)
    }

    /// The execution schedule of inference: [`Plan::stages`], and a pooling directly after
    /// an LRN runs in the LRN's stage (the normalised values are pooled before they are
    /// stored: a quarter of the writes, and no second pass over them for AlexNet's
    /// `lrn(5) maxpool(3, stride = 2)`). The same values as the separate stages, bit for
    /// bit, on every backend.
    pub fn inference_stages(&self) -> Vec<Stage> {
        self.schedule(true)
    }

    fn schedule(&self, inference: bool) -> Vec<Stage> {
        let mut stages = Vec::with_capacity(self.layers.len());
        let mut i = 0;
        while i < self.layers.len() {
            let next = self.layers.get(i + 1).map(|l| l.op);
            let fused_relu =
                self.layers[i].op.kind().fuses_relu() && matches!(next, Some(Op::Relu(_)));
            let fused_pool = inference
                && self.layers[i].op.kind().fuses_pool()
                && matches!(next, Some(Op::Pool(_)));
            let stage = Stage {
                layer: i,
                fused_relu,
                fused_pool,
            };
            stages.push(stage);
            i = stage.last() + 1;
        }
        stages
    }

    /// Where layer `layer` of a split network reads its input; `None` for an unsplit one.
    pub fn tower_input(&self, layer: usize) -> Option<TowerInput> {
        if self.split < 2 {
            return None;
        }
        if layer == 0 {
            return Some(TowerInput::NetworkInput);
        }
        let own = self
            .layers
            .get(layer)?
            .op
            .kind()
            .reads_own_tower(self.split);
        Some(if own {
            TowerInput::OwnTower
        } else {
            TowerInput::BothTowers
        })
    }

    /// Bytes (f32) that cross between the towers per image before layer `layer` runs, in
    /// both directions together: each tower receives the other's part of the input. Zero
    /// for an unsplit network and for layers that read their own tower. The backward pass
    /// sends as much back (the gradients of those activations).
    pub fn exchange_bytes(&self, layer: usize) -> usize {
        match self.tower_input(layer) {
            // Each of the towers receives the other towers' share of the input.
            Some(TowerInput::BothTowers) => self.layers[layer].input.len() * (self.split - 1) * 4,
            _ => 0,
        }
    }

    /// The plan of tower `t` of a split network (`None` for an unsplit one or `t` out of
    /// range): every layer but a final softmax (which needs every class and runs once on
    /// the gathered logits), with half of the layer's output channels (fc: half its
    /// neurons) and, as input, its own tower's half or, for the layers that read both
    /// towers, the whole of the previous output. Grouped convolutions keep half their
    /// groups; LRN normalises within the tower. Its parameters are rows
    /// `t * out / split .. (t + 1) * out / split` of the unsplit layer's weight and bias,
    /// so weights keep the one-process layout whatever the placement.
    pub fn tower(&self, t: usize) -> Option<Plan> {
        if self.split < 2 || t >= self.split {
            return None;
        }
        let s = self.split;
        let half = |sh: Shape| Shape::new(sh.c / s, sh.h, sh.w);
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            if l.op.kind().must_be_last() && i + 1 == self.layers.len() {
                break;
            }
            // The image goes whole to every tower unless the first layer reads only its own
            // tower's channels (a convolution grouped by towers, say), in which case each
            // takes its own channels.
            let own = match self.tower_input(i)? {
                TowerInput::BothTowers => false,
                TowerInput::OwnTower => true,
                TowerInput::NetworkInput => l.op.kind().reads_own_tower(s),
            };
            let input = if own { half(l.input) } else { l.input };
            let op = l.op.in_tower(s, own);
            layers.push(Layer {
                name: l.name.clone(),
                op,
                input,
                output: half(l.output),
            });
        }
        Some(Plan {
            name: format!("{}.tower{t}", self.name).into(),
            input: layers.first().map_or(self.input, |l| l.input),
            split: 1,
            layers: layers.into(),
            tower: Some(TowerOf { index: t, of: s }),
            generated: self.generated.and_then(|g| g.towers.get(t)),
        })
    }

    /// In one tower's plan ([`Plan::tower`]): whether `layer` reads every tower's output of
    /// the layer before it, so that an exchange runs before it (forward) and after its
    /// backward pass (its input gradient goes back to the towers). Such a layer's input is
    /// the towers' outputs side by side: [`TowerOf::of`] times the previous layer's output.
    /// Always false in a whole network's plan.
    pub fn gathers(&self, layer: usize) -> bool {
        match (self.tower, layer.checked_sub(1)) {
            (Some(TowerOf { of, .. }), Some(prev)) => self
                .layers
                .get(layer)
                .is_some_and(|l| l.input.len() == self.layers[prev].output.len() * of),
            _ => false,
        }
    }

    /// The Philox counter from which dropout layer `layer` draws element `i` of a batch:
    /// `i` itself, or in a tower's plan the element's index in the whole network's layout
    /// (a tower holds an equal channel part of each image's dropout input).
    pub fn dropout_counter(&self, layer: usize, i: usize) -> usize {
        match self.tower {
            None => i,
            Some(TowerOf { index, of }) => {
                let len = self.layers[layer].input.len();
                (i / len) * len * of + index * len + i % len
            }
        }
    }

    /// [`Plan::exchange_bytes`] summed over the network: per image, one direction of
    /// training (forward; backward sends as much again).
    pub fn exchange_bytes_total(&self) -> usize {
        (0..self.layers.len()).map(|i| self.exchange_bytes(i)).sum()
    }

    /// The pooling a stage runs after its layer ([`Stage::fused_pool`]) and its output,
    /// which the stage writes; `None` for a stage without one.
    pub fn stage_pool(&self, stage: Stage) -> Option<(Pool, Shape)> {
        let last = &self.layers[stage.last()];
        match last.op {
            Op::Pool(p) if stage.fused_pool => Some((p, last.output)),
            _ => None,
        }
    }

    /// The name of the layer whose output a stage produces (the fused ReLU or pooling,
    /// when there is one).
    pub fn stage_output_name(&self, stage: Stage) -> &str {
        &self.layers[stage.last()].name
    }

    /// What a stage computes, for timings: its layer's name, with `+relu` when the next
    /// layer, a ReLU, is fused into it (`conv1+relu`; [`Plan::stage_output_name`] names
    /// the ReLU, whose output the stage writes), and `+` the pooling's name when a pooling
    /// is (`lrn1+pool1`).
    pub fn stage_label(&self, stage: Stage) -> String {
        let name = &self.layers[stage.layer].name;
        if stage.fused_relu {
            format!("{name}+relu")
        } else if stage.fused_pool {
            format!("{name}+{}", self.layers[stage.last()].name)
        } else {
            name.to_string()
        }
    }

    /// A torchinfo-like table: layer, operation, output shape, parameters, multiply-adds.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let rule = "-".repeat(if self.split > 1 { 112 } else { 92 });
        let split = if self.split > 1 {
            format!(", split {}", self.split)
        } else {
            String::new()
        };
        let _ = writeln!(s, "{} (input {}{})", self.name, self.input, split);
        let _ = writeln!(s, "{rule}");
        let towers = |i: usize| match self.tower_input(i) {
            None => String::new(),
            Some(TowerInput::NetworkInput) => format!("  {:<8} {:>9}", "input", "-"),
            Some(TowerInput::OwnTower) => format!("  {:<8} {:>9}", "own", "-"),
            Some(TowerInput::BothTowers) => format!(
                "  {:<8} {:>9}",
                "both",
                group_digits(self.exchange_bytes(i) as u64)
            ),
        };
        let header = if self.split > 1 {
            format!("  {:<8} {:>9}", "reads", "x-bytes")
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "{:<10} {:<42} {:>12} {:>12} {:>12}{header}",
            "layer", "op", "output", "params", "mult-adds"
        );
        let _ = writeln!(s, "{rule}");
        for (i, l) in self.layers.iter().enumerate() {
            let _ = writeln!(
                s,
                "{:<10} {:<42} {:>12} {:>12} {:>12}{}",
                l.name,
                describe(&l.op),
                l.output.to_string(),
                group_digits(l.param_count() as u64),
                group_digits(l.macs()),
                towers(i)
            );
        }
        let _ = writeln!(s, "{rule}");
        let _ = writeln!(
            s,
            "total parameters: {}",
            group_digits(self.param_count() as u64)
        );
        let _ = writeln!(s, "mult-adds per image: {}", group_digits(self.macs()));
        let _ = writeln!(
            s,
            "parameter memory (f32): {:.1} MB",
            self.param_count() as f64 * 4.0 / 1e6
        );
        if self.split > 1 {
            let _ = writeln!(
                s,
                "towers: {}, each with half of every layer's channels; `own` reads its own tower, `both` receives x-bytes per image from the other first",
                self.split
            );
            let _ = writeln!(
                s,
                "exchanged between the towers per image: {} bytes forward, as many backward",
                group_digits(self.exchange_bytes_total() as u64)
            );
        }
        s
    }
}

/// The DSL spelling of an operation, with every argument (defaults included).
pub fn describe(op: &Op) -> String {
    op.kind().describe()
}

/// `60965224` -> `60,965,224`.
pub fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(group_digits(60965224), "60,965,224");
    }

    #[test]
    fn relu_after_learned_layers_is_fused() {
        let s = Shape::new(4, 8, 8);
        let v = Shape::new(10, 1, 1);
        let conv = Op::Conv(Conv {
            out: 4,
            k: 1,
            stride: 1,
            pad: 0,
            groups: 1,
        });
        let layers = vec![
            Layer {
                name: "conv1".into(),
                op: conv,
                input: s,
                output: s,
            },
            Layer {
                name: "relu1".into(),
                op: Op::Relu(Relu),
                input: s,
                output: s,
            },
            Layer {
                name: "relu1_2".into(),
                op: Op::Relu(Relu),
                input: s,
                output: s,
            },
            Layer {
                name: "fc2".into(),
                op: Op::Fc(Fc { out: 10 }),
                input: s,
                output: v,
            },
        ];
        let plan = Plan {
            name: "T".into(),
            input: s,
            split: 1,
            layers: layers.into(),
            tower: None,
            generated: None,
        };
        let stages = plan.stages();
        let relu = Stage {
            fused_relu: true,
            ..Stage::of(0)
        };
        assert_eq!(stages, vec![relu, Stage::of(2), Stage::of(3)]);
        assert_eq!(plan.inference_stages(), stages);
        assert_eq!(plan.stage_output_name(stages[0]), "relu1");
        assert_eq!(plan.stage_label(stages[0]), "conv1+relu");
        assert_eq!(plan.stage_label(stages[1]), plan.layers[2].name.to_string());
        assert_eq!(plan.param_count(), 4 * 4 + 4 + 10 * 256 + 10);
    }
}
