//! CUDA code generation for a tower's exchanges: before each layer of a tower's plan that
//! reads both towers ([`Plan::gathers`]), the forward pass gathers the towers' outputs into
//! the layer's whole input, and the backward pass sends each tower its part of the input
//! gradient. Rendered from `kernels_templates/exchange.cu` with the part's length and the
//! tower a constant. The kernels read the other tower's buffer in place when both towers
//! share a GPU, or the runtime's peer copy of it (two GPUs).

use crate::cuda::{c_ident, ew_launch, render_template, EW_THREADS};
use crate::ir::{KernelLaunch, Plan, TowerOf};

const EXCHANGE: &str = include_str!("../../kernels_templates/exchange.cu");

/// The three kernels of one exchange (one translation unit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// The layer the exchange feeds.
    pub layer: usize,
    /// Values per image of one tower's part of the layer's input.
    pub part: usize,
    /// The geometry every kernel of the exchange launches with (one thread per element of
    /// a part); `launch.name` is the kernels' common prefix.
    pub launch: KernelLaunch,
    /// `{prefix}_gather(own, other, whole, batch)`, forward.
    pub gather: String,
    /// `{prefix}_pack(dx, packed, batch)`: the other tower's part of this tower's input
    /// gradient, contiguous.
    pub pack: String,
    /// `{prefix}_reduce(dx, received, dy, batch)`: this tower's output gradient.
    pub reduce: String,
    pub source: String,
}

/// The exchanges of one tower's plan, in layer order; none for a whole network's plan.
/// Only the paper's two towers are supported (the DSL accepts `split 2` only).
pub fn render(plan: &Plan) -> Vec<Exchange> {
    let Some(TowerOf { index, of }) = plan.tower else {
        return Vec::new();
    };
    assert_eq!(of, 2, "exchanges are generated for two towers");
    (0..plan.layers.len())
        .filter(|&l| plan.gathers(l))
        .map(|l| {
            let layer = &plan.layers[l];
            let part = plan.layers[l - 1].output.len();
            let prefix = format!("{}_exchange_p{part}_t{index}", c_ident(&layer.name));
            let source = render_template(
                EXCHANGE,
                &[
                    ("NAME", prefix.clone()),
                    ("LAYER", layer.name.to_string()),
                    ("DESC", crate::ir::describe(&layer.op)),
                    ("TOWER", index.to_string()),
                    ("PART", part.to_string()),
                    ("THREADS", EW_THREADS.to_string()),
                ],
            );
            Exchange {
                layer: l,
                part,
                launch: ew_launch(l, &prefix, part as u64),
                gather: format!("{prefix}_gather"),
                pack: format!("{prefix}_pack"),
                reduce: format!("{prefix}_reduce"),
                source,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alexnet_towers_exchange_before_conv3_and_the_fc_layers() {
        let plan = crate::alexnet_plan();
        assert!(render(&plan).is_empty(), "a whole network has no exchanges");
        let t1 = render(&plan.tower(1).unwrap());
        let names: Vec<&str> = t1.iter().map(|e| e.launch.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "conv3_exchange_p21632_t1",
                "fc6_exchange_p4608_t1",
                "fc7_exchange_p2048_t1",
                "fc8_exchange_p2048_t1"
            ]
        );
        for e in &t1 {
            for f in [&e.gather, &e.pack, &e.reduce] {
                assert!(e.source.contains(&format!("\n{f}(")), "{f} not in source");
            }
            assert!(e.source.contains("TOWER = 1"));
        }
        // conv3 at batch 128: 128 images of 128 x 13 x 13 values, 256 per block.
        assert_eq!(t1[0].launch.grid(128), [10816, 1, 1]);
    }
}
