//! The forward kernels of a plan: one per stage, from its layer kind (dropout, the
//! identity at inference, has none; a ReLU fused into conv or fc has none of its own),
//! for the stages of training and of inference (an LRN with its pooling fused).

use super::context;
use crate::ir::{Plan, Precision, Stage};
use crate::kernels::spec::KernelSpec;
use crate::kernels::tuning::{Table, DEFAULT_ARCH};

/// The forward kernels of every stage of `plan` that runs any, in `precision` (each layer
/// kind decides what that precision changes for it): those of [`Plan::stages`] in stage
/// and launch order, then those only [`Plan::inference_stages`] has (the fused
/// `ForwardPooled` ones).
pub fn forward(plan: &Plan, precision: Precision) -> Vec<KernelSpec> {
    forward_with(plan, precision, Table::builtin(DEFAULT_ARCH))
}

/// [`forward`] with the GEMMs' tiles from `table`.
pub fn forward_with(plan: &Plan, precision: Precision, table: Option<&Table>) -> Vec<KernelSpec> {
    let of = |stage: Stage| {
        let op = plan.layers[stage.layer].op;
        op.kind()
            .forward_kernels(&context(plan, stage, false, precision, table))
    };
    let mut out: Vec<KernelSpec> = plan.stages().into_iter().flat_map(of).collect();
    for stage in plan.inference_stages() {
        for k in of(stage) {
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    out
}
