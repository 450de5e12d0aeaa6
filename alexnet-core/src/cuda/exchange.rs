//! The kernels of a tower's exchanges: before each layer of a tower's plan that reads both
//! towers (`Plan::gathers`), the forward pass gathers the towers' outputs into the layer's
//! whole input, and the backward pass sends each tower its part of the input gradient
//! (`kernels_templates/exchange.cuh`, with the part's length and the tower constants).
//! The kernels read the other tower's buffer in place when both towers share a GPU, or
//! the runtime's peer copy of it (two GPUs).

use crate::ir::{Plan, TowerOf};
use crate::kernels::spec::{
    c_ident, int, read, write, Instance, KernelLaunch, KernelSpec, Len, Role, Template, EW_THREADS,
};

const GATHER: Template = Template {
    header: "exchange.cuh",
    function: "exchange_gather",
    params: &[read("own"), read("other"), write("whole"), int("batch")],
};

const PACK: Template = Template {
    header: "exchange.cuh",
    function: "exchange_pack",
    params: &[read("dx"), write("packed"), int("batch")],
};

const REDUCE: Template = Template {
    header: "exchange.cuh",
    function: "exchange_reduce",
    params: &[read("dx"), read("received"), write("dy"), int("batch")],
};

pub(super) const TEMPLATES: &[Template] = &[GATHER, PACK, REDUCE];

/// One kernel of an exchange: its role, template, name suffix, what it does, and how much
/// each buffer holds.
type Exchange<'a> = (
    Role,
    &'a Template,
    &'a str,
    &'a str,
    Vec<(&'static str, Len)>,
);

/// The exchanges of one tower's plan, in layer order, gather, pack and reduce for each
/// (`launch.layer` is the layer they feed); none for a whole network's plan. Only the
/// paper's two towers are supported (the DSL accepts `split 2` only).
pub fn exchanges(plan: &Plan) -> Vec<KernelSpec> {
    let Some(TowerOf { index, of }) = plan.tower else {
        return Vec::new();
    };
    assert_eq!(of, 2, "exchanges are generated for two towers");
    let mut v = Vec::new();
    for l in (0..plan.layers.len()).filter(|&l| plan.gathers(l)) {
        let layer = &plan.layers[l];
        let part = plan.layers[l - 1].output.len();
        let prefix = format!("{}_exchange_p{part}_t{index}", c_ident(&layer.name));
        let desc = layer.op.kind().describe();
        let (one, two) = (Len::PerImage(part as u64), Len::PerImage(2 * part as u64));
        let kernels: [Exchange; 3] = [
            (
                Role::Gather,
                &GATHER,
                "gather",
                "forward exchange: both towers' outputs side by side",
                vec![("own", one), ("other", one), ("whole", two)],
            ),
            (
                Role::Pack,
                &PACK,
                "pack",
                "backward exchange: the other tower's part of the input gradient",
                vec![("dx", two), ("packed", one)],
            ),
            (
                Role::Reduce,
                &REDUCE,
                "reduce",
                "backward exchange: this tower's part plus the part received",
                vec![("dx", two), ("received", one), ("dy", one)],
            ),
        ];
        for (role, template, suffix, what, lens) in kernels {
            let name = format!("{prefix}_{suffix}");
            v.push(
                Instance {
                    role,
                    launch: KernelLaunch::elementwise(l, &name, part as u64),
                    template,
                    doc: format!(
                        "tower {index} of 2 before `{}` ({desc}), {what}",
                        layer.name
                    ),
                    consts: vec![
                        ("PART", part.into()),
                        ("TOWER", index.into()),
                        ("THREADS", (EW_THREADS as usize).into()),
                    ],
                    lens,
                    gemm: None,
                }
                .spec(),
            );
        }
    }
    v
}
