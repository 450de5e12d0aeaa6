//! Training on the GPU: the training kernels, loaded on first use (inference never
//! compiles them), launched from their specs. A stage's backward pass launches its layer
//! kind's kernels in the generator's order, binding the stage's buffers by the names the
//! templates use (`x`, `y`, `dy`, `dx`, `w`, `dw`, `db`, `ws`), so no layer kind has code
//! here.

use std::sync::{Arc, MutexGuard};

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::device::Cuda;
use super::launch::{batch_i32, Binder, Loaded, SgdTensors};
use crate::backend::{check_sgd_args, Training};
use crate::error::{Error, Result};
use crate::ir::kernels::spec::{Access, ArgTy, Len};
use crate::ir::{Plan, Role, Stage};
use crate::optim::Sgd;
use crate::philox::DropoutMask;
use alexnet_core::cuda::SGD_SLOTS;

/// The roles of a stage's backward kernels, launched in the generator's order.
const BACKWARD: [Role; 5] = [
    Role::ReluMask,
    Role::WeightGrad,
    Role::WeightReduce,
    Role::DataGrad,
    Role::Backward,
];

impl Cuda {
    /// `plan`'s training kernels, loaded on first use.
    pub(super) fn loaded_training(&self, plan: &Plan) -> Result<Arc<Loaded>> {
        self.loaded_in(&self.training, plan, |k| k.training.to_vec())
    }

    /// A workspace of at least `len` floats, grown on demand and reused (kernels on one
    /// stream run in order, so one workspace serves every layer).
    fn workspace(&self, len: usize) -> Result<MutexGuard<'_, Option<CudaSlice<f32>>>> {
        let mut ws = self
            .workspace
            .lock()
            .map_err(|_| Error::Internal("cuda: workspace poisoned".into()))?;
        if ws.as_ref().is_none_or(|w| w.len() < len) {
            *ws = None;
            *ws = Some(
                self.stream
                    .alloc_zeros::<f32>(len.max(1))
                    .map_err(self.err(format!("allocating a workspace of {len} values")))?,
            );
        }
        Ok(ws)
    }
}

impl Training for Cuda {
    fn prepare_training(&self, plan: &Plan) -> Result<()> {
        self.loaded_training(plan).map(|_| ())
    }

    fn backward_stage(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        x: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        dy: &mut CudaSlice<f32>,
        params: &[&CudaSlice<f32>],
        mut dx: Option<&mut CudaSlice<f32>>,
        dparams: &mut [&mut CudaSlice<f32>],
    ) -> Result<()> {
        let layer = &plan.layers[stage.layer];
        let want = layer.params().len();
        if params.len() != want || dparams.len() != want {
            return Err(Error::Invalid(format!(
                "cuda: {} has {want} learned tensors; got {} and {} gradients",
                layer.name,
                params.len(),
                dparams.len()
            )));
        }
        let b = batch_i32(plan, stage.layer, batch)?;
        let loaded = self.loaded_training(plan)?;
        let kernels: Vec<_> = loaded.of_layer(stage.layer, &BACKWARD).collect();
        if kernels.is_empty() {
            let why = if layer.op.kind().identity_at_inference() {
                "it is dropout: use Training::dropout"
            } else if layer.op.kind().must_be_last() {
                "it is the final softmax: the loss kernel computes its gradient"
            } else {
                "nothing before the first learned layer has one"
            };
            return Err(Error::Invalid(format!(
                "cuda: {} has no backward kernel: {why}",
                layer.name
            )));
        }
        // The split-K weight gradient's partial sums, and whether there are several.
        let split = kernels
            .iter()
            .flat_map(|k| k.spec.args.iter())
            .find_map(|a| match a.len {
                Some(l @ Len::Split { .. }) => Some(l.needed(batch) as usize),
                _ => None,
            });
        let mut ws = self.workspace(split.unwrap_or(0))?;
        for k in kernels {
            let role = k.spec.role;
            if role == Role::WeightReduce && split == Some(0) {
                // One chunk: the weight gradient wrote dw and db itself.
                continue;
            }
            let wants_dx = k.spec.args.iter().any(|a| a.name == "dx");
            if wants_dx && dx.is_none() {
                return Err(Error::Invalid(format!(
                    "cuda: {} needs an input gradient buffer",
                    layer.name
                )));
            }
            let mut binder = Binder::new().read("x", x).read("y", y).int("batch", b);
            // dy is read by the gradient GEMMs, updated in place by the fused ReLU's mask.
            let dy_written = k
                .spec
                .args
                .iter()
                .any(|a| a.name == "dy" && !matches!(a.ty, ArgTy::Ptr(_, Access::Read)));
            binder = if dy_written {
                binder.write("dy", &mut *dy)
            } else {
                binder.read("dy", &*dy)
            };
            if let Some(w) = params.first() {
                binder = binder.read("w", w);
            }
            if let [dw, db] = &mut *dparams {
                binder = binder.write("dw", dw).write("db", db);
            }
            if let Some(d) = dx.as_deref_mut() {
                binder = binder.write("dx", d);
            }
            if let Some(w) = ws.as_mut() {
                binder = binder.write("ws", w);
            }
            self.launch(k, batch, binder)?;
        }
        Ok(())
    }

    fn dropout(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        mask: DropoutMask,
        input: &CudaSlice<f32>,
        output: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let layer = &plan.layers[stage.layer];
        let n = batch * layer.input.len();
        // The kernel's Philox counter is the element's index in the whole network.
        let towers = plan.tower.map_or(1, |t| t.of);
        if u32::try_from(n * towers).is_err() {
            return Err(Error::Invalid(format!(
                "cuda: {}: {} values exceed dropout's 32-bit counter",
                layer.name,
                n * towers
            )));
        }
        let b = batch_i32(plan, stage.layer, batch)?;
        let loaded = self.loaded_training(plan)?;
        let kernel = loaded.get(plan, stage.layer, Role::Dropout)?;
        let binder = Binder::new()
            .read("x", input)
            .write("y", output)
            .uint("seed_lo", mask.seed as u32)
            .uint("seed_hi", (mask.seed >> 32) as u32)
            .uint("step_lo", mask.step as u32)
            .uint("step_hi", (mask.step >> 32) as u32)
            .int("batch", b);
        self.launch(kernel, batch, binder)
    }

    fn softmax_cross_entropy(
        &self,
        plan: &Plan,
        batch: usize,
        classes: usize,
        logits: &CudaSlice<f32>,
        labels: &CudaSlice<f32>,
        dlogits: &mut CudaSlice<f32>,
        stats: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (layer, c) = alexnet_core::cuda::logits_of(plan).ok_or_else(|| {
            Error::Invalid(format!(
                "cuda: `{}` has no logits (an empty network, or one tower's plan)",
                plan.name
            ))
        })?;
        if c != classes {
            return Err(Error::Invalid(format!(
                "cuda: the loss kernel of `{}` takes {c} classes, not {classes}",
                plan.name
            )));
        }
        let b = batch_i32(plan, layer, batch)?;
        let loaded = self.loaded_training(plan)?;
        let kernel = loaded.get(plan, layer, Role::Loss)?;
        // The kernel reads a logit by label only for labels in [0, classes) (others give
        // a NaN loss); the caller checks them.
        let binder = Binder::new()
            .read("logits", logits)
            .read("labels", labels)
            .write("dlogits", dlogits)
            .write("stats", stats)
            .int("batch", b);
        self.launch(kernel, batch, binder)
    }

    fn sgd_step(
        &self,
        plan: &Plan,
        sgd: Sgd,
        lr_mults: &[f32],
        params: &mut [&mut CudaSlice<f32>],
        velocity: &mut [&mut CudaSlice<f32>],
        grads: &[&CudaSlice<f32>],
    ) -> Result<()> {
        let counts = [params.len(), velocity.len(), grads.len(), lr_mults.len()];
        let n = check_sgd_args("cuda", plan, counts, |i| {
            [params[i].len(), velocity[i].len(), grads[i].len()]
        })?
        .len();
        let loaded = self.loaded_training(plan)?;
        let mut first = 0;
        while first < n {
            let count = (n - first).min(SGD_SLOTS);
            let kernel = loaded.get(plan, 0, Role::Sgd { first, count })?;
            let mut t = SgdTensors {
                w: [0; SGD_SLOTS],
                v: [0; SGD_SLOTS],
                g: [0; SGD_SLOTS],
                lr: [0.0; SGD_SLOTS],
            };
            // The guards record the buffers' use by this launch when dropped (after it).
            let mut guards = Vec::with_capacity(3 * count);
            let range = first..first + count;
            let tensors = params[range.clone()]
                .iter_mut()
                .zip(velocity[range.clone()].iter_mut())
                .zip(&grads[range.clone()])
                .zip(&lr_mults[range]);
            for (j, (((p, v), g), m)) in tensors.enumerate() {
                let (w, gw) = p.device_ptr_mut(&self.stream);
                let (v, gv) = v.device_ptr_mut(&self.stream);
                let (g, gg) = g.device_ptr(&self.stream);
                (t.w[j], t.v[j], t.g[j]) = (w, v, g);
                t.lr[j] = sgd.lr * m;
                guards.extend([gw, gv, gg]);
            }
            let binder = Binder::new()
                .sgd("t", t)
                .float("momentum", sgd.momentum)
                .float("decay", sgd.weight_decay);
            self.launch(kernel, 0, binder)?;
            drop(guards);
            first += count;
        }
        Ok(())
    }
}
