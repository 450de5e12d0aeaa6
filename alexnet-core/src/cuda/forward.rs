//! The forward kernels of a plan: one per stage, from its layer kind (dropout, the
//! identity at inference, has none; a ReLU fused into conv or fc has none of its own).

use super::context;
use crate::ir::{Plan, Precision};
use crate::kernels::spec::KernelSpec;

/// The forward kernels of every stage of `plan` that runs any, in stage and launch order,
/// in `precision` (each layer kind decides what that precision changes for it).
pub fn forward(plan: &Plan, precision: Precision) -> Vec<KernelSpec> {
    plan.stages()
        .into_iter()
        .flat_map(|stage| {
            let op = plan.layers[stage.layer].op;
            op.kind()
                .forward_kernels(&context(plan, stage, false, precision))
        })
        .collect()
}
