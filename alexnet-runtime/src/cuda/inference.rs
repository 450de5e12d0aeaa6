//! The forward pass on the GPU: each stage's generated kernel, loaded when a model is
//! prepared (with a tower's exchange kernels).

use std::sync::Arc;

use cudarc::driver::CudaSlice;

use super::binder::Binder;
use super::device::Cuda;
use super::launch::{batch_i32, Loaded};
use crate::backend::Inference;
use crate::error::{Error, Result};
use crate::ir::{Plan, Precision, Role, Stage};

impl Cuda {
    /// `plan`'s forward kernels in this backend's precision and its exchange kernels,
    /// loaded once: the ones `network!` generated, or, for a plan built at run time,
    /// generated now.
    pub(super) fn loaded(&self, plan: &Plan) -> Result<Arc<Loaded>> {
        let precision = self.precision;
        self.loaded_in(&self.inference, plan, |k| {
            let mut specs = k.forward_in(precision);
            specs.extend(k.exchanges.iter().cloned());
            specs
        })
    }
}

impl Inference for Cuda {
    fn precision(&self) -> Precision {
        self.precision
    }

    /// Compiles (or finds in the cache) and loads `plan`'s kernels; later calls for the
    /// same plan return at once.
    fn prepare(&self, plan: &Plan) -> Result<()> {
        self.loaded(plan).map(|_| ())
    }

    fn forward_stage(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        input: &CudaSlice<f32>,
        params: &[&CudaSlice<f32>],
        output: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let layer = &plan.layers[stage.layer];
        let want = layer.params().len();
        if params.len() != want {
            return Err(Error::Invalid(format!(
                "cuda: {} has {want} learned tensors, {} were given",
                layer.name,
                params.len()
            )));
        }
        let b = batch_i32(plan, stage.layer, batch)?;
        let loaded = self.loaded(plan)?;
        let role = if stage.fused_pool {
            Role::ForwardPooled
        } else {
            Role::Forward
        };
        let kernel = loaded.get(plan, stage.layer, role)?;
        // A split-K GEMM writes its parts to the workspace; their ordered sum, with the
        // epilogue, writes the output.
        if let Some(reduce) = loaded.find(stage.layer, Role::ForwardReduce) {
            let [w, bias] = params else {
                return Err(Error::Internal(format!(
                    "cuda: {}'s split-K GEMM has no weights",
                    layer.name
                )));
            };
            let len = workspace_len(&kernel.spec, batch)?;
            let mut ws = self.workspace(len)?;
            let ws: &mut CudaSlice<f32> = ws
                .as_mut()
                .ok_or_else(|| Error::Internal("cuda: no workspace".into()))?;
            let parts = Binder::new()
                .read("x", input)
                .read("w", w)
                .write("ws", &mut *ws)
                .int("batch", b);
            self.launch(kernel, batch, parts)?;
            let sum = Binder::new()
                .read("ws", ws)
                .read("bias", bias)
                .write("y", output)
                .int("batch", b);
            return self.launch(reduce, batch, sum);
        }
        let mut binder = Binder::new()
            .read("x", input)
            .write("y", output)
            .int("batch", b);
        if let [w, bias] = params {
            binder = binder.read("w", w).read("bias", bias);
        }
        self.launch(kernel, batch, binder)
    }
}

/// Values of the workspace `ws` that `spec` writes for `batch` images.
fn workspace_len(spec: &alexnet_core::ir::KernelSpec, batch: usize) -> Result<usize> {
    spec.args
        .iter()
        .find(|a| a.name == "ws")
        .and_then(|a| a.len)
        .and_then(|l| usize::try_from(l.needed(batch)).ok())
        .ok_or_else(|| Error::Internal(format!("cuda: {} has no workspace", spec.name())))
}
