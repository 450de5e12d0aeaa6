//! The planned network: every layer with its operation and its per-image input and output
//! shapes, as the macro inferred them.
//!
//! These types are the contract between the compile-time side (the macro builds a [`Plan`]
//! and emits it as a `const`) and the run-time side (backends execute it). They are plain
//! data, constructible in `const` context, so the generated code carries its plan without
//! any run-time parsing.

use std::borrow::Cow;
use std::fmt;

/// A per-image activation shape `[C, H, W]`. Fully connected outputs are `[N, 1, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape {
    pub const fn new(c: usize, h: usize, w: usize) -> Self {
        Shape { c, h, w }
    }

    /// Elements per image.
    pub const fn len(&self) -> usize {
        self.c * self.h * self.w
    }

    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True for `[N, 1, 1]`, the shape of a fully connected layer's output.
    pub const fn is_vector(&self) -> bool {
        self.h == 1 && self.w == 1
    }

    pub const fn to_array(self) -> [usize; 3] {
        [self.c, self.h, self.w]
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_vector() {
            write!(f, "{}", self.c)
        } else {
            write!(f, "{}x{}x{}", self.c, self.h, self.w)
        }
    }
}

/// One layer's operation, with every hyper-parameter resolved (defaults filled in).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// 2-D convolution with bias; weight `[out, in/groups, k, k]`.
    Conv {
        out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
    },
    Relu,
    /// Max pooling, no padding, floor rounding; windows may overlap (`stride < k`).
    MaxPool {
        k: usize,
        stride: usize,
    },
    /// Average pooling, no padding, floor rounding.
    AvgPool {
        k: usize,
        stride: usize,
    },
    /// Local response normalisation across channels (PyTorch/ONNX/Caffe convention):
    /// `y = x / (k + alpha / size * sum_{window} x^2)^beta`. The window never crosses a
    /// boundary between the `channel_groups` equal channel groups (the towers of a
    /// `split 2` network, as on the paper's two GPUs); 1 means one group.
    Lrn {
        size: usize,
        alpha: f32,
        beta: f32,
        k: f32,
        channel_groups: usize,
    },
    /// Dropout with drop probability `p`: identity at inference.
    Dropout {
        p: f32,
    },
    /// Fully connected layer with bias over the flattened input; weight `[out, in]`.
    Fc {
        out: usize,
    },
    /// Softmax over channels (at each spatial position).
    Softmax,
}

impl Op {
    /// The DSL keyword of this operation.
    pub const fn keyword(&self) -> &'static str {
        match self {
            Op::Conv { .. } => "conv",
            Op::Relu => "relu",
            Op::MaxPool { .. } => "maxpool",
            Op::AvgPool { .. } => "avgpool",
            Op::Lrn { .. } => "lrn",
            Op::Dropout { .. } => "dropout",
            Op::Fc { .. } => "fc",
            Op::Softmax => "softmax",
        }
    }

    /// Whether the layer has weights and biases.
    pub const fn is_learned(&self) -> bool {
        matches!(self, Op::Conv { .. } | Op::Fc { .. })
    }
}

/// Training-time dropout of probability `p`: the Philox draw (a `u32`) below which a unit
/// is dropped, `p * 2^32`, and the scale of a kept unit, `1 / (1 - p)` (inverted dropout:
/// inference is the identity). The CPU backend and the generated CUDA both use these.
pub fn dropout_threshold_scale(p: f32) -> (u32, f32) {
    let threshold =
        (f64::from(p.clamp(0.0, 1.0)) * 4_294_967_296.0).min(f64::from(u32::MAX)) as u32;
    let scale = if p >= 1.0 { 0.0 } else { 1.0 / (1.0 - p) };
    (threshold, scale)
}

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

/// How to launch one generated CUDA kernel: its name in the network's `CUDA_SOURCE` and
/// its geometry, fixed at compile time except for the batch size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelLaunch {
    /// Index in [`Plan::layers`] of the stage's layer.
    pub layer: usize,
    pub name: Cow<'static, str>,
    /// Threads per block (one-dimensional blocks).
    pub block: u32,
    /// `grid.x = x_fixed + ceil(batch * x_per_image / x_per_block)`.
    pub x_per_image: u64,
    pub x_per_block: u32,
    /// Blocks that do not depend on the batch (reductions over parameters, the optimiser).
    pub x_fixed: u32,
    pub grid_y: u32,
    pub grid_z: u32,
}

impl KernelLaunch {
    /// The grid for a batch of `batch` images.
    pub const fn grid(&self, batch: usize) -> [u32; 3] {
        let x = (batch as u64 * self.x_per_image).div_ceil(self.x_per_block as u64);
        [self.x_fixed + x as u32, self.grid_y, self.grid_z]
    }
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
    pub const fn param_count(&self) -> usize {
        match self.op {
            Op::Conv { out, k, groups, .. } => out * (self.input.c / groups) * k * k + out,
            Op::Fc { out } => out * self.input.len() + out,
            _ => 0,
        }
    }

    /// Multiply-adds per image (convolutions and fully connected layers only).
    pub const fn macs(&self) -> u64 {
        match self.op {
            Op::Conv { k, groups, .. } => {
                (self.output.len() as u64) * ((self.input.c / groups) * k * k) as u64
            }
            Op::Fc { out } => (out as u64) * self.input.len() as u64,
            _ => 0,
        }
    }

    /// The learned tensors, `weight` then `bias`, in PyTorch layouts
    /// (`[out, in/groups, kh, kw]` for conv, `[out, in]` for fc).
    pub fn params(&self) -> Vec<ParamSpec> {
        let (w, b) = match self.op {
            Op::Conv { out, k, groups, .. } => (vec![out, self.input.c / groups, k, k], vec![out]),
            Op::Fc { out } => (vec![out, self.input.len()], vec![out]),
            _ => return Vec::new(),
        };
        vec![
            ParamSpec {
                name: format!("{}.weight", self.name),
                shape: w,
            },
            ParamSpec {
                name: format!("{}.bias", self.name),
                shape: b,
            },
        ]
    }
}

/// A network after shape inference: what the generated code carries and backends execute.
#[derive(Clone, Debug, PartialEq)]
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
}

/// Tower `index` of `of` (see [`Plan::tower`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TowerOf {
    pub index: usize,
    pub of: usize,
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

/// A unit of execution: one layer, or a convolution / fully connected layer with the ReLU
/// that follows it fused into its epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage {
    /// Index of the layer in [`Plan::layers`].
    pub layer: usize,
    /// The next layer is a ReLU applied in this stage's epilogue.
    pub fused_relu: bool,
}

impl Plan {
    /// Per-image output shape.
    pub fn output(&self) -> Shape {
        self.layers.last().map_or(self.input, |l| l.output)
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

    /// The execution schedule: a ReLU directly after a conv or fc layer runs in that layer's
    /// epilogue; every other layer is its own stage.
    pub fn stages(&self) -> Vec<Stage> {
        let mut stages = Vec::with_capacity(self.layers.len());
        let mut i = 0;
        while i < self.layers.len() {
            let fused_relu = self.layers[i].op.is_learned()
                && matches!(self.layers.get(i + 1).map(|l| l.op), Some(Op::Relu));
            stages.push(Stage {
                layer: i,
                fused_relu,
            });
            i += 1 + usize::from(fused_relu);
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
        let own = match self.layers.get(layer)?.op {
            Op::Conv { groups, .. } => groups % self.split == 0,
            Op::Fc { .. } | Op::Softmax => false,
            Op::Lrn { channel_groups, .. } => channel_groups % self.split == 0,
            Op::Relu | Op::MaxPool { .. } | Op::AvgPool { .. } | Op::Dropout { .. } => true,
        };
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
            if matches!(l.op, Op::Softmax) && i + 1 == self.layers.len() {
                break;
            }
            let own = match self.tower_input(i)? {
                TowerInput::BothTowers => false,
                TowerInput::OwnTower => true,
                // The image goes whole to every tower unless the first layer is grouped
                // by towers, in which case each takes its own channels.
                TowerInput::NetworkInput => {
                    matches!(l.op, Op::Conv { groups, .. } if groups % s == 0)
                }
            };
            let input = if own { half(l.input) } else { l.input };
            let op = match l.op {
                Op::Conv {
                    out,
                    k,
                    stride,
                    pad,
                    groups,
                } => Op::Conv {
                    out: out / s,
                    k,
                    stride,
                    pad,
                    groups: if own { groups / s } else { groups },
                },
                Op::Fc { out } => Op::Fc { out: out / s },
                Op::Lrn {
                    size,
                    alpha,
                    beta,
                    k,
                    channel_groups,
                } => Op::Lrn {
                    size,
                    alpha,
                    beta,
                    k,
                    channel_groups: (channel_groups / s).max(1),
                },
                other => other,
            };
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

    /// The name of the layer whose output a stage produces (the fused ReLU, when there is one).
    pub fn stage_output_name(&self, stage: Stage) -> &str {
        &self.layers[stage.layer + usize::from(stage.fused_relu)].name
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
    match *op {
        Op::Conv {
            out,
            k,
            stride,
            pad,
            groups,
        } => {
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
        Op::MaxPool { k, stride } => format!("maxpool({k}, stride = {stride})"),
        Op::AvgPool { k, stride } => format!("avgpool({k}, stride = {stride})"),
        Op::Lrn {
            size,
            alpha,
            beta,
            k,
            ..
        } => {
            format!("lrn({size}, alpha = {alpha:e}, beta = {beta}, k = {k})")
        }
        Op::Dropout { p } => format!("dropout({p})"),
        Op::Fc { out } => format!("fc({out})"),
        Op::Relu | Op::Softmax => op.keyword().to_string(),
    }
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
    fn alexnet_towers_exchange_where_the_paper_says() {
        let plan = crate::alexnet_plan();
        let both: Vec<&str> = (0..plan.layers.len())
            .filter(|&i| plan.tower_input(i) == Some(TowerInput::BothTowers))
            .map(|i| &*plan.layers[i].name)
            .collect();
        // The paper: the towers talk at conv3 and the fully connected layers (and the
        // softmax needs every class).
        assert_eq!(both, ["conv3", "fc6", "fc7", "fc8", "softmax"]);
        assert_eq!(plan.tower_input(0), Some(TowerInput::NetworkInput));
        // By hand, f32 bytes per image: conv3 reads pool2's 256x13x13, fc6 pool5's 256x6x6
        // (through drop6), fc7 and fc8 4096 values, softmax 1000.
        let hand = [256 * 13 * 13, 256 * 6 * 6, 4096, 4096, 1000].map(|n| n * 4);
        assert_eq!(
            plan.exchange_bytes(plan.layers.iter().position(|l| l.name == "conv3").unwrap()),
            hand[0]
        );
        assert_eq!(plan.exchange_bytes_total(), hand.iter().sum::<usize>());
        assert_eq!(plan.exchange_bytes_total(), 246_688);
        let summary = plan.summary();
        assert!(
            summary.contains("exchanged between the towers per image: 246,688 bytes"),
            "{summary}"
        );
        assert!(summary.contains("173,056"), "{summary}");
        // An unsplit network has no towers.
        let flat = crate::plan_from_str("T<3, 8, 8> { conv(4, 3) fc(2) }").unwrap();
        assert_eq!(flat.tower_input(1), None);
        assert_eq!(flat.exchange_bytes_total(), 0);
        assert!(!flat.summary().contains("reads"));

        // Tower plans: half of every layer, the whole input where both towers are read.
        let t1 = plan.tower(1).unwrap();
        assert_eq!(
            t1.layers.len(),
            plan.layers.len() - 1,
            "the final softmax runs once"
        );
        let at = |n: &str| t1.layers.iter().find(|l| l.name == n).unwrap().clone();
        assert_eq!(at("conv1").input, Shape::new(3, 227, 227));
        assert_eq!(at("conv1").output, Shape::new(48, 55, 55));
        assert_eq!(at("conv2").input, Shape::new(48, 27, 27));
        assert!(matches!(
            at("conv2").op,
            Op::Conv {
                out: 128,
                groups: 1,
                ..
            }
        ));
        assert_eq!(at("conv3").input, Shape::new(256, 13, 13));
        assert!(matches!(
            at("lrn1").op,
            Op::Lrn {
                channel_groups: 1,
                ..
            }
        ));
        assert_eq!(at("fc6").input, Shape::new(256, 6, 6));
        assert_eq!(at("fc8").output, Shape::new(500, 1, 1));
        // A tower gathers both towers' outputs where the whole network reads both.
        let gathered: Vec<&str> = (0..t1.layers.len())
            .filter(|&i| t1.gathers(i))
            .map(|i| &*t1.layers[i].name)
            .collect();
        assert_eq!(gathered, ["conv3", "fc6", "fc7", "fc8"]);
        assert!((0..plan.layers.len()).all(|i| !plan.gathers(i)));
        // Every parameter is split in two, rows by tower.
        assert_eq!(t1.param_count() * 2, plan.param_count());
        assert!(plan.tower(2).is_none() && flat.tower(0).is_none());
    }

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
        let conv = Op::Conv {
            out: 4,
            k: 1,
            stride: 1,
            pad: 0,
            groups: 1,
        };
        let layers = vec![
            Layer {
                name: "conv1".into(),
                op: conv,
                input: s,
                output: s,
            },
            Layer {
                name: "relu1".into(),
                op: Op::Relu,
                input: s,
                output: s,
            },
            Layer {
                name: "relu1_2".into(),
                op: Op::Relu,
                input: s,
                output: s,
            },
            Layer {
                name: "fc2".into(),
                op: Op::Fc { out: 10 },
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
        };
        let stages = plan.stages();
        assert_eq!(
            stages,
            vec![
                Stage {
                    layer: 0,
                    fused_relu: true
                },
                Stage {
                    layer: 2,
                    fused_relu: false
                },
                Stage {
                    layer: 3,
                    fused_relu: false
                },
            ]
        );
        assert_eq!(plan.stage_output_name(stages[0]), "relu1");
        assert_eq!(plan.param_count(), 4 * 4 + 4 + 10 * 256 + 10);
    }
}
